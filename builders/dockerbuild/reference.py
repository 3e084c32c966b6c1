"""Image references as the builder accepts them: `[registry/]path[:tag]`, never a digest."""

from __future__ import annotations

import re
from dataclasses import dataclass

from stepkit.errors import InputError
from stepkit.validate import shown

DOCKER_HUB = "docker.io"
# The key docker's config.json and its credential helpers use for Docker Hub.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")


@dataclass(frozen=True)
class Reference:
    """One `image` param: where it goes and under which tag."""

    text: str  # as the user wrote it
    domain: str  # the registry host[:port], docker.io for Docker Hub
    repository: str  # what the daemon pushes: [domain/]path, as written
    tag: str

    @property
    def name(self) -> str:
        """repository:tag"""
        return f"{self.repository}:{self.tag}"

    @property
    def registry_key(self) -> str:
        """The key config.json and credential helpers know this registry by."""
        return DOCKER_HUB_KEY if self.domain == DOCKER_HUB else self.domain


def parse(text: str, flag: str = "--image") -> Reference:
    """A reference to push to; InputError (exit 2) naming the flag when it is not one."""
    bad = f"{flag}: {shown(text)} is not an image reference ([registry/]name[:tag])"
    if not text or text != text.strip() or len(text) > 4096:
        raise InputError(bad)
    if "@" in text:
        raise InputError(f"{flag}: {shown(text)} names a digest; name a tag to push to")
    if text.startswith("-"):
        raise InputError(bad)
    remainder, tag = text, "latest"
    last = text.rsplit("/", 1)[-1]
    if ":" in last:
        remainder, tag = text.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise InputError(f"{flag}: {shown(text)}: {shown(tag)} is not a valid tag")
    first, slash, rest = remainder.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _DOMAIN.fullmatch(first):
            raise InputError(f"{flag}: {shown(text)}: {shown(first)} is not a registry host")
        domain, path = first, rest
    else:
        domain, path = DOCKER_HUB, remainder
    if not _PATH.fullmatch(path) or len(remainder) > 255:
        raise InputError(bad)
    if domain.lower() in _HUB_ALIASES:
        domain = DOCKER_HUB
    return Reference(text=text, domain=domain, repository=remainder, tag=tag)
