"""The creds-init flags and secret volumes a Build's ServiceAccount gives (knative/build v0.7.0:
pkg/credentials dockercreds and gitcreds MatchingAnnotations, SortAnnotations; pod.go
makeCredentialInitializer; validate_build.go validateSecrets)."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from controller.pod.model import Secret, shown
from controller.pod.validate import DNS_LABEL

log = logging.getLogger(__name__)

# Knative's annotation prefix, and Tekton's, which Tekton's creds-init reads the same way.
PREFIXES = ("build.knative.dev/", "tekton.dev/")
BASIC_AUTH = "kubernetes.io/basic-auth"
SSH_AUTH = "kubernetes.io/ssh-auth"
DOCKER_CONFIG_JSON = "kubernetes.io/dockerconfigjson"
DOCKERCFG = "kubernetes.io/dockercfg"
# credentials.VolumePath: where creds-init finds each secret, one directory per secret.
VOLUME_PATH = "/var/build-secrets"
SECRET_VOLUME_PREFIX = "secret-volume-"  # noqa: S105 - a volume name, not a password

# The keys creds-init reads for each type: a Secret document that lists its data but lacks
# one would make creds-init fail inside the pod.
REQUIRED_KEYS = {
    BASIC_AUTH: ("username", "password"),
    SSH_AUTH: ("ssh-privatekey",),
    DOCKER_CONFIG_JSON: (".dockerconfigjson",),
    DOCKERCFG: (".dockercfg",),
}

_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class SecretMount:
    """A secret mounted into creds-init: its volume's name and the secret's name."""

    volume: str
    secret: str

    @property
    def mount_path(self) -> str:
        # credentials.VolumeName
        return f"{VOLUME_PATH}/{self.secret}"


@dataclass(frozen=True)
class Credentials:
    args: tuple[str, ...]
    mounts: tuple[SecretMount, ...]


def sort_annotations(secret: Secret, kind: str) -> list[tuple[str, str]]:
    """SortAnnotations: the values of the annotations `<prefix><kind>-*`, sorted as strings
    (Go's sort.Strings; code point order is byte order for UTF-8), with the key each came from.

    Knative read only `build.knative.dev/`; Tekton's `tekton.dev/` counts the same here, and a
    value given under both is one value.
    """
    found: dict[str, str] = {}
    for key in sorted(secret.meta.annotations):
        if any(key.startswith(f"{prefix}{kind}-") for prefix in PREFIXES):
            found.setdefault(secret.meta.annotations[key], key)
    return sorted(found.items())


def volume_name(secret: str) -> str:
    """makeCredentialInitializer's `secret-volume-<secret>`, when that is a volume name Kubernetes
    takes (a DNS label of at most 63 characters); otherwise a name derived from it that is."""
    name = SECRET_VOLUME_PREFIX + secret
    if len(name) <= 63 and DNS_LABEL.fullmatch(name):
        return name
    # A secret name may hold '.' and run to 253 characters; the API server would refuse the
    # Pod Knative made from it.
    digest = hashlib.sha256(secret.encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9-]", "-", secret)[:38].strip("-")
    return f"{SECRET_VOLUME_PREFIX}{stem}-{digest}"


def _ssh_target(secret: Secret, key: str, value: str, build: str) -> str:
    """An ssh-auth annotation names an ssh host (`github.com`, `host:2222`); users copy the basic-auth
    example's `https://github.com` instead, which Knative passed on and its creds-init then
    wrote as `Host https` / `Port //github.com`. The scheme is dropped, with a warning."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("https", "http"):
        return value
    authority, _, path = rest.partition("/")
    where = ("metadata", "annotations", key)
    if "@" in authority or not authority:
        raise secret.origin.error(
            where,
            f"{shown(value)}: an ssh-auth secret names an ssh host such as 'github.com'",
            build=build,
        )
    host = authority
    bracketed = authority.startswith("[")
    if (bracketed and "]:" in authority) or (not bracketed and ":" in authority):
        raise secret.origin.error(
            where,
            f"{shown(value)} names an {scheme.lower()} port; an ssh-auth secret names an ssh host "
            "and port such as 'git.example.com:2222'",
            build=build,
        )
    scope = " (the key serves every repository there)" if path.strip("/") else ""
    log.warning(
        "Secret %s annotation %s: an ssh-auth secret names an ssh host, not a URL: using %s for %s%s",
        shown(secret.meta.name),
        shown(key),
        shown(host),
        shown(value),
        scope,
    )
    return host


def _flags(secret: Secret, build: str) -> list[tuple[str, str, str]]:
    """(flag, target, annotation key) for one secret: dockercreds' MatchingAnnotations, then
    gitcreds', the order makeCredentialInitializer asks its builders in."""
    out: list[tuple[str, str, str]] = []
    if secret.type == BASIC_AUTH:
        out += [("-basic-docker", v, k) for v, k in sort_annotations(secret, "docker")]
    elif secret.type == DOCKER_CONFIG_JSON:
        out.append(("-docker-config", "", ""))
    elif secret.type == DOCKERCFG:
        out.append(("-docker-cfg", "", ""))
    if secret.type in (BASIC_AUTH, SSH_AUTH):
        flag = "-basic-git" if secret.type == BASIC_AUTH else "-ssh-git"
        values = sort_annotations(secret, "git")
        if secret.type == SSH_AUTH:
            fixed: dict[str, str] = {}
            for value, key in values:
                fixed.setdefault(_ssh_target(secret, key, value, build), key)
            values = sorted(fixed.items())
        out += [(flag, v, k) for v, k in values]
    return out


def check_secret_annotations(secret: Secret, build: str) -> None:
    """validateSecrets: a docker annotation of `index.docker.io` is refused, since Docker Hub's
    credentials are keyed `https://index.docker.io/v1/` (knative/build#195)."""
    for key, value in sorted(secret.meta.annotations.items()):
        if any(key.startswith(f"{p}docker-") for p in PREFIXES) and value == "index.docker.io":
            raise secret.origin.error(
                ("metadata", "annotations", key),
                "'index.docker.io' should be 'https://index.docker.io/v1/' "
                "(Knative: BadSecretAnnotation)",
                build=build,
            )


def make_credentials(secrets: list[Secret], build: str) -> Credentials:
    """makeCredentialInitializer: for each of the account's secrets in its order, the flags its
    type and annotations give; a secret that gives any is mounted into creds-init."""
    args: list[str] = []
    mounts: list[SecretMount] = []
    seen_targets: dict[tuple[str, str], Secret] = {}
    done: set[str] = set()
    for secret in secrets:
        name = secret.meta.name
        if name in done:
            continue
        done.add(name)
        check_secret_annotations(secret, build)
        flags = _flags(secret, build)
        if not flags:
            continue
        if not _SECRET_NAME.fullmatch(name):
            raise secret.origin.error(
                ("metadata", "name"), f"{shown(name)} is not a Kubernetes secret name", build=build
            )
        if secret.keys is not None:
            for needed in REQUIRED_KEYS.get(secret.type, ()):
                if needed not in secret.keys:
                    raise secret.origin.error(
                        ("data",),
                        f"has no key {shown(needed)}, which creds-init reads for {secret.type}",
                        build=build,
                    )
        for flag, target, key in flags:
            if not target:
                args.append(f"{flag}={name}")
                continue
            other = seen_targets.get((flag, target))
            if other is not None:
                raise secret.origin.error(
                    ("metadata", "annotations", key),
                    f"{shown(target)} also has {flag} credentials from Secret "
                    f"{shown(other.meta.name)}; creds-init takes each once",
                    build=build,
                )
            seen_targets[(flag, target)] = secret
            args.append(f"{flag}={name}={target}")
        mounts.append(SecretMount(volume_name(name), name))
    return Credentials(tuple(args), tuple(mounts))
