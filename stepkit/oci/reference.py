"""Image references, digests and platforms as docker and the OCI specs spell them, validated before use."""

from __future__ import annotations

import platform as _platform
import re
import sys
from dataclasses import dataclass

from stepkit.errors import InputError
from stepkit.validate import shown

DIGEST_ALGORITHMS = {"sha256": 64, "sha512": 128}

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

# distribution/reference's grammar (reference/regexp.go); fullmatch only, `$` lets "\n" by.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?"
)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PLATFORM_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_NAME_MAX = 255
_SHOWN_MAX = 200

# The names uname and other tools use, mapped to the GOARCH spelling image indexes use.
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386"}


def _shown(value: str) -> str:
    """A value for an error message, cut short: a hostile server can send a megabyte of it."""
    if len(value) > _SHOWN_MAX:
        return shown(value[:_SHOWN_MAX]) + "…"
    return shown(value)


def validate_digest(value: str, *, what: str) -> str:
    """`value` if it is "<algorithm>:<lower-case hex of the algorithm's length>"; else InputError.

    Digests come from servers and users and end up in URLs and file names, so nothing but
    this exact form passes ("sha256:../../etc/passwd", "SHA256:…", 63 hex digits, "md5:…").
    """
    algorithm, sep, hexpart = value.partition(":")
    length = DIGEST_ALGORITHMS.get(algorithm)
    if not sep or length is None:
        raise InputError(
            f"{what}: digest {_shown(value)} is not a supported digest "
            f"({' or '.join(f'{a}:<{n} hex digits>' for a, n in DIGEST_ALGORITHMS.items())})"
        )
    if len(hexpart) != length or not all(c in "0123456789abcdef" for c in hexpart):
        raise InputError(
            f"{what}: digest {_shown(value)} is not {algorithm}: followed by "
            f"{length} lower-case hex digits"
        )
    return value


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; `registry` is docker.io for Docker Hub, whatever it was written as."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def api_host(self) -> str:
        """The host[:port] the registry API answers on."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to `digest` (no tag)."""
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(value: str, *, what: str) -> Reference:
    """Parse an image reference with docker's normalisation ("alpine" -> docker.io/library/alpine:latest)."""
    if not value:
        raise InputError(f"{what}: image reference is empty")
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise InputError(
            f"{what}: image reference {_shown(value)} holds spaces, control or non-ASCII characters"
        )
    rest, at, digest = value.partition("@")
    if at:
        validate_digest(digest, what=what)
    # The tag is after the last ':' that follows the last '/'; a ':' before it is a port.
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag: str | None = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InputError(
                f"{what}: tag {_shown(tag)} in {_shown(value)} is not a valid tag "
                "(letters, digits, '_', '.', '-'; at most 128, not starting with '.' or '-')"
            )
    first, slash_sep, remainder = rest.partition("/")
    if slash_sep and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    ):
        registry = first
        if not _DOMAIN.fullmatch(registry):
            raise InputError(
                f"{what}: registry {_shown(registry)} in {_shown(value)} is not a host[:port]"
            )
        registry = registry.lower()
        if registry == "index.docker.io":
            registry = DOCKER_HUB
    else:
        registry, remainder = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in remainder:
        remainder = f"library/{remainder}"
    if not remainder:
        raise InputError(f"{what}: image reference {_shown(value)} names no repository")
    for component in remainder.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise InputError(f"{what}: repository in {_shown(value)} must be lower-case")
        raise InputError(
            f"{what}: repository component {_shown(component)} in {_shown(value)} is not valid "
            "(lower-case letters and digits, separated by '.', '_', '__' or '-')"
        )
    if len(registry) + 1 + len(remainder) > _NAME_MAX:
        raise InputError(
            f"{what}: image name in {_shown(value)} is longer than {_NAME_MAX} characters"
        )
    if tag is None and not at:
        tag = "latest"
    return Reference(registry, remainder, tag, digest if at else None)


@dataclass(frozen=True)
class Platform:
    """An image platform as OCI indexes name it (GOOS/GOARCH, with an optional variant)."""

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, value: str, *, what: str) -> Platform:
        """ "linux/amd64" or "linux/arm64/v8"; "x86_64" and "aarch64" are read as amd64 and arm64."""
        parts = value.split("/")
        if not 2 <= len(parts) <= 3 or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
            raise InputError(
                f"{what}: platform {_shown(value)} is not os/architecture[/variant] "
                "(for example linux/amd64 or linux/arm64/v8)"
            )
        arch = _ARCH_ALIASES.get(parts[1], parts[1])
        return cls(parts[0], arch, parts[2] if len(parts) == 3 else None)

    @classmethod
    def current(cls) -> Platform:
        """The platform this process runs on, as an index would name it."""
        machine = _platform.machine().lower()
        osname = "linux" if sys.platform.startswith("linux") else _platform.system().lower()
        if machine in ("armv7l", "armv7"):
            return cls(osname, "arm", "v7")
        if machine in ("armv6l", "armv6"):
            return cls(osname, "arm", "v6")
        if machine in ("i686", "i586"):
            return cls(osname, "386")
        return cls(osname, _ARCH_ALIASES.get(machine, machine))

    def matches(self, other: Platform) -> bool:
        """Whether an index entry's platform `other` satisfies this requested one.

        The variant counts only when asked for; arm64 entries without a variant are v8.
        """
        if self.os != other.os or self.architecture != other.architecture:
            return False
        if self.variant is None:
            return True
        theirs = other.variant
        if theirs is None and self.architecture == "arm64":
            theirs = "v8"
        return self.variant == theirs

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")
