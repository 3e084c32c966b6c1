"""git-push's inputs, checked before git runs: no user value can become a git option."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from stepkit.errors import InputError
from stepkit.giturl import RepoUrl, check_ref_name, parse_url, reject_controls
from stepkit.validate import has_control, shown

# A remote's name as `git remote add` would take it, never option-like.
_REMOTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
# "Name <email>": a name of printable characters without angle brackets, one address.
_AUTHOR = re.compile(r"^(?P<name>[^<>]*[^<>\s])\s*<(?P<email>[^<>\s]+)>$")
_MAX_MESSAGE = 64 * 1024


@dataclass(frozen=True)
class Author:
    name: str
    email: str


@dataclass(frozen=True)
class PushTarget:
    """Where to push and how to talk to it (a stepkit.gitrun.GitTarget)."""

    url: RepoUrl
    ssl_verify: bool
    retries: int
    backoff: float
    timeout: float
    allowed_schemes: frozenset[str]


def parse_message(value: str) -> str:
    if not value.strip():
        raise InputError("--message must not be empty")
    if has_control(value.replace("\n", "").replace("\t", "")) or "\r" in value:
        raise InputError("--message holds a control character other than newline and tab")
    if len(value.encode()) > _MAX_MESSAGE:
        raise InputError(f"--message is longer than {_MAX_MESSAGE} bytes")
    return value.strip("\n") + "\n"


def parse_author(value: str) -> Author | None:
    """`Name <email>`; it reaches git through the environment, never its command line."""
    if not value:
        return None
    if has_control(value):
        raise InputError("--author holds a control character")
    match = _AUTHOR.match(value.strip())
    if not match or match.group("name").lstrip().startswith("-"):
        raise InputError(f"--author: {shown(value)} is not of the form 'Name <email>'")
    return Author(match.group("name").strip(), match.group("email"))


def parse_ref(flag: str, value: str) -> str:
    """A branch or tag name: a plain name (refs/heads/ and refs/tags/ are added by git-push)."""
    if not value:
        return ""
    if value.startswith("-"):
        raise InputError(f"{flag} must not start with '-'")
    reject_controls(flag, "name", value)
    for prefix in ("refs/heads/", "refs/tags/"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
    check_ref_name(flag, value)
    if value == "HEAD":
        raise InputError(f"{flag}: 'HEAD' is not a branch or tag name")
    return value


def remote_name(value: str) -> str | None:
    """The remote's name, or None when value is a url (checked later by parse_url)."""
    if value.startswith("-"):
        raise InputError("--remote must not start with '-'")
    reject_controls("--remote", "remote", value)
    if _REMOTE_NAME.match(value) and value not in (".", ".."):
        return value
    return None


def parse_remote_url(value: str, *, allow_http: bool, allow_local: bool, flag: str) -> RepoUrl:
    return parse_url(value, allow_http=allow_http, allow_local=allow_local, flag=flag)


def parse_add(values: list[str], checkout: Path) -> tuple[str, ...]:
    """Paths to stage, relative to the checkout; literal (no pathspec magic), never option-like."""
    out: list[str] = []
    for raw in values:
        reject_controls("--add", "path", raw) if raw.strip() != raw or has_control(raw) else None
        if not raw:
            raise InputError("--add: an empty path")
        if raw.startswith("-"):
            raise InputError(f"--add: {shown(raw)} must not start with '-'")
        pure = PurePosixPath(raw)
        if pure.is_absolute() or ".." in pure.parts:
            raise InputError(f"--add: {shown(raw)} is not a relative path inside the checkout")
        if pure.parts and pure.parts[0] == ".git":
            raise InputError(f"--add: {shown(raw)} is inside .git")
        out.append(str(pure))
    return tuple(out)
