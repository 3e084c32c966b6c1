"""The inputs of creds-init: flag values parsed and validated once, before any secret is read."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from stepkit import validate
from stepkit.errors import InputError
from stepkit.validate import shown

# Used with fullmatch: `$` alone also lets a value ending in "\n" through. '=' may appear
# in a repository path (SPEC §1: the flag splits on the first '=' only).
_URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/=\[\]-]+$")
_PATH = re.compile(r"^(/[A-Za-z0-9._~=-]+)*/?$")
_SSH_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_SSH_TARGET = re.compile(r"^[A-Za-z0-9._:\[\]-]+$")

DEFAULT_CRED_HELPERS = ("ecr-login", "gcr", "gcloud", "acr-env")


@dataclass(frozen=True)
class BasicGit:
    """`-basic-git secret=url`: basic-auth credentials for a git server, or one repository on it."""

    secret: str
    scheme: str
    netloc: str  # host[:port], IPv6 in brackets
    path: str  # "" for the whole host, else "/org/repo" without a trailing ".git" or "/"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"


@dataclass(frozen=True)
class SshGit:
    """`-ssh-git secret=host[:port]` or `secret=ssh://[user@]host[:port]/org/repo`."""

    secret: str
    host: str  # IPv6 without brackets
    port: int
    user: str | None
    path: str  # "" for the whole host, else "org/repo" without a trailing ".git"


@dataclass(frozen=True)
class BasicDocker:
    """`-basic-docker secret=registry`."""

    secret: str
    registry: str


@dataclass(frozen=True)
class CredsSpec:
    home: Path
    secrets_dir: Path
    basic_git: tuple[BasicGit, ...] = ()
    ssh_git: tuple[SshGit, ...] = ()
    basic_docker: tuple[BasicDocker, ...] = ()
    docker_config: tuple[str, ...] = ()
    docker_cfg: tuple[str, ...] = ()
    require_known_hosts: bool = False
    cred_helpers: frozenset[str] = field(default_factory=lambda: frozenset(DEFAULT_CRED_HELPERS))


def split_pair(flag: str, value: str) -> tuple[str, str]:
    """Split `secret=target` on the first '=' (a url may hold more of them)."""
    name, sep, target = value.partition("=")
    if not sep or not target:
        raise InputError(f"{flag}: expected <secret>=<target>, got {shown(value)}")
    return validate.secret_name(name, flag), target


def _strip_repo_suffix(path: str) -> str:
    path = path.rstrip("/")
    return path[: -len(".git")] if path.endswith(".git") else path


def _check_path(flag: str, path: str) -> None:
    segments = [s for s in path.split("/") if s]
    if not _PATH.fullmatch(path) or any(s in (".", "..") or s.startswith("-") for s in segments):
        raise InputError(
            f"{flag}: repository path {shown(path)} holds characters or segments not allowed"
        )


def _idn_host(where: str, host: str) -> None:
    """An internationalised host fails with its IDNA form named, rather than with the generic message."""
    if host and not host.isascii():
        validate.host(host, where)


def parse_basic_git(value: str) -> BasicGit:
    flag = "-basic-git"
    secret, url = split_pair(flag, value)
    where = f"{flag} {secret}"
    if not url.isascii() and not validate.has_control(url):
        with contextlib.suppress(ValueError):
            _idn_host(where, urlsplit(url).hostname or "")
    if validate.has_control(url) or not _URL_CHARS.fullmatch(url):
        raise InputError(
            f"{where}: url {shown(url)} may hold only letters, digits and ._~:/=- "
            "(no wildcard, quote, space, userinfo, query or fragment)"
        )
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced '[' or ']'
        raise InputError(f"{where}: url {shown(url)} has an invalid host") from None
    if parts.scheme.lower() not in ("https", "http") or "://" not in url:
        raise InputError(f"{where}: url {shown(url)} must start with https:// or http://")
    netloc = parts.netloc
    if not netloc:
        raise InputError(f"{where}: url {shown(url)} has no host")
    host_part, port_part = netloc, ""
    if netloc.startswith("["):
        close = netloc.find("]")
        host_part, rest = netloc[: close + 1], netloc[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InputError(f"{where}: url {shown(url)} has an invalid host")
            port_part = rest[1:]
    elif ":" in netloc:
        host_part, _, port_part = netloc.partition(":")
    name = validate.host(host_part, where)
    clean = validate.host_for_url(name)
    if port_part or netloc.endswith(":"):
        clean += f":{validate.port(port_part, where)}"
    _check_path(where, parts.path)
    return BasicGit(secret, parts.scheme.lower(), clean, _strip_repo_suffix(parts.path))


def parse_ssh_git(value: str) -> SshGit:
    flag = "-ssh-git"
    secret, target = split_pair(flag, value)
    where = f"{flag} {secret}"
    if validate.has_control(target):
        raise InputError(f"{where}: host {shown(target)} holds a control character")
    user: str | None = None
    path = ""
    if target.startswith("ssh://"):
        rest = target[len("ssh://") :]
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            user, _, authority = authority.rpartition("@")
            if not _SSH_USER.fullmatch(user):
                raise InputError(f"{where}: user {shown(user)} is not a plain user name")
        if slash:
            _check_path(where, "/" + path)
            path = _strip_repo_suffix(path.strip("/"))
        target = authority
    _idn_host(where, target.partition(":")[0])
    if not _SSH_TARGET.fullmatch(target):
        raise InputError(
            f"{where}: host {shown(target)} must be host, host:port or ssh://[user@]host[:port]/repo "
            "(no pattern, quote, space or list characters)"
        )
    host_part, port_part = target, ""
    if target.startswith("["):
        close = target.find("]")
        if close < 0:
            raise InputError(f"{where}: host {shown(target)} is not a valid IPv6 address")
        host_part, rest = target[: close + 1], target[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise InputError(f"{where}: host {shown(target)} is not valid")
            port_part = rest[1:]
            if not port_part:
                raise InputError(f"{where}: host {shown(target)} has an empty port")
    elif ":" in target:
        host_part, _, port_part = target.partition(":")
        if not port_part:
            raise InputError(f"{where}: host {shown(target)} has an empty port")
    name = validate.host(host_part, where)
    number = validate.port(port_part, where) if port_part else 22
    return SshGit(secret, name, number, user, path)


_REGISTRY = re.compile(r"^(https?://)?[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?$")


def parse_basic_docker(value: str) -> BasicDocker:
    flag = "-basic-docker"
    secret, registry = split_pair(flag, value)
    if validate.has_control(registry) or not _REGISTRY.fullmatch(registry):
        raise InputError(
            f"{flag} {secret}: registry {shown(registry)} is not a registry host or URL"
        )
    return BasicDocker(secret, registry)


def unique(flag: str, keys: list[tuple[str, str]]) -> None:
    """Each url, host or registry may be given once per flag (SPEC §1)."""
    seen: dict[str, str] = {}
    for key, secret in keys:
        if key in seen:
            raise InputError(
                f"{flag}: {shown(key)} is given twice (secrets {shown(seen[key])} and {shown(secret)})"
            )
        seen[key] = secret
