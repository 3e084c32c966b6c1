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

# The names uname and Debian use, mapped to the GOARCH spelling indexes use, with the variant
# each implies (None: keep the one given), as containerd's platforms.Normalize maps them.
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "i386": ("386", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}
# What an architecture's variant is when none is written (containerd leaves these out).
_DEFAULT_VARIANT = {"amd64": "v1", "arm64": "v8"}


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
    """An image platform as OCI indexes name it (GOOS/GOARCH, with an optional variant).

    Matching follows containerd's platforms package (Normalize, and Only's ordered vector):
    both sides are normalised (arm64/v8 and amd64/v1 carry no variant, arm without one is
    arm/v7), and a platform also runs older variants of its architecture, best first.
    """

    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, value: str, *, what: str) -> Platform:
        """ "linux/amd64" or "linux/arm64/v8", normalised as containerd does (aarch64, armhf, …)."""
        parts = value.lower().split("/")
        if not 2 <= len(parts) <= 3 or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
            raise InputError(
                f"{what}: platform {_shown(value)} is not os/architecture[/variant] "
                "(for example linux/amd64 or linux/arm64/v8)"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None).normalized()

    @classmethod
    def current(cls) -> Platform:
        """The platform this process runs on, as an index would name it."""
        machine = _platform.machine().lower()
        osname = "linux" if sys.platform.startswith("linux") else _platform.system().lower()
        if machine.startswith("armv") and machine[4:5].isdigit():
            return cls(osname, "arm", f"v{machine[4]}").normalized()  # armv7l, armv6l, armv8l
        if machine in ("i686", "i586"):
            return cls(osname, "386")
        return cls(osname, machine).normalized()

    def normalized(self) -> Platform:
        """The canonical form: lower case, GOARCH names, default variants left out."""
        os_name = self.os.lower()
        if os_name == "macos":
            os_name = "darwin"
        arch, variant = self.architecture.lower(), (self.variant or "").lower()
        alias = _ARCH_ALIASES.get(arch)
        if alias is not None:
            arch = alias[0]
            if alias[1] is not None:
                variant = alias[1]
        if arch == "arm":
            if variant in ("", "7"):
                variant = "v7"
            elif variant in ("5", "6", "8"):
                variant = "v" + variant
        elif arch == "arm64" and variant == "8":
            variant = ""
        if variant == _DEFAULT_VARIANT.get(arch):
            variant = ""
        return Platform(os_name, arch, variant or None)

    def candidates(self) -> tuple[Platform, ...]:
        """The platforms this one runs, best first: itself, then older variants (containerd's
        platformVector): amd64/vN down to v1 then 386; arm/vN down to v5; arm64/v9.x down to
        v9, then v8.(x+5) down to v8, then 32-bit arm from v8."""
        me = self.normalized()
        out = [me]
        arch, variant = me.architecture, me.variant or _DEFAULT_VARIANT.get(me.architecture, "")

        def add(architecture: str, var: str | None) -> None:
            out.append(Platform(me.os, architecture, var).normalized())

        if arch == "amd64":
            level = _level(variant)
            for n in range(level - 1, 0, -1) if level is not None else ():
                add("amd64", f"v{n}")
            add("386", None)
        elif arch == "arm":
            level = _level(variant)
            for n in range(level - 1, 4, -1) if level is not None else ():
                add("arm", f"v{n}")
        elif arch == "arm64":
            major_text, dot, minor_text = variant.partition(".")
            major = _level(major_text)
            if major is not None and major >= 8:
                # containerd reads a minor only in the four-character form "v8.2".
                minor = int(minor_text) if dot and len(variant) == 4 and minor_text.isdigit() else 0
                if major == 9:
                    for n in range(minor - 1, -1, -1):
                        add("arm64", f"v9.{n}" if n else "v9")
                    # v9.x took over from v8.(x+5).
                    major, minor = 8, minor + 5
                    add("arm64", f"v8.{minor}")
                for n in range(minor - 1, -1, -1):
                    add("arm64", f"v{major}.{n}" if n else f"v{major}")
            arm = "v8" if variant.startswith(("v8.", "v9.")) else variant
            out.extend(Platform(me.os, "arm", arm).candidates())
        return tuple(dict.fromkeys(out))

    def rank(self, entry: Platform) -> int | None:
        """How well an index entry's platform suits this requested one: 0 for the same
        platform, higher for older variants it also runs; None when it does not run it."""
        try:
            return self.candidates().index(entry.normalized())
        except ValueError:
            return None

    def matches(self, entry: Platform) -> bool:
        """Whether an index entry's platform runs on this requested one (see rank)."""
        return self.rank(entry) is not None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def _level(variant: str) -> int | None:
    """N of a variant "vN" (or "N"), as containerd reads it; None when it is not one."""
    digits = variant[1:] if variant.startswith("v") else variant
    return int(digits) if digits.isdigit() and len(digits) <= 3 else None
