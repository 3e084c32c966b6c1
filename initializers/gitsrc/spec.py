"""The inputs of git-init, validated before git runs: no user value can become a git option or transport."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from stepkit.errors import InputError
from stepkit.giturl import RepoUrl, check_ref_name, parse_url
from stepkit.giturl import reject_controls as _reject_controls
from stepkit.validate import has_control, shown

__all__ = [
    "FULL_SHA",
    "HEX",
    "FetchSpec",
    "RepoUrl",
    "check_ref_name",
    "parse_refspecs",
    "parse_revision",
    "parse_sparse",
    "parse_url",
    "resolve_dest",
]

HEX = re.compile(r"^[0-9a-f]{4,64}$")
FULL_SHA = re.compile(r"^([0-9a-f]{40}|[0-9a-f]{64})$")
_PULL = re.compile(r"^(refs/)?pull/[0-9]+/(head|merge)$")


@dataclass(frozen=True)
class FetchSpec:
    url: RepoUrl
    revision: str
    refspecs: tuple[str, ...]
    dest: Path
    workspace: Path
    depth: int
    submodules: bool
    ssl_verify: bool
    sparse_dirs: tuple[str, ...]
    termination_path: str | None
    results_dir: str | None
    retries: int
    backoff: float
    timeout: float
    force: bool
    allowed_schemes: frozenset[str]


def parse_revision(value: str, flag: str = "-revision") -> str:
    if value.startswith("-"):
        raise InputError(f"{flag} must not start with '-'")
    _reject_controls(flag, "revision", value)
    # Returned as given: a branch may be called "Cafe"; fetch lowers it only to use it as a SHA.
    if value and not HEX.match(value.lower()):
        check_ref_name(flag, value)
    return value


def parse_refspecs(value: str, flag: str = "-refspec") -> tuple[str, ...]:
    """Tekton's refspec: space-separated `[+]src[:dst]` items."""
    if has_control(value.replace(" ", "")):
        raise InputError(f"{flag}: holds a control character")
    out: list[str] = []
    for item in value.split():
        if item.startswith("-"):
            raise InputError(f"{flag}: {shown(item)} must not start with '-'")
        body = item[1:] if item.startswith("+") else item
        src, _, dst = body.partition(":")
        for side in (src, dst) if dst else (src,):
            if HEX.match(side) and side is src:
                continue
            check_ref_name(flag, side, pattern=True)
        out.append(item)
    return tuple(out)


def parse_sparse(value: str, flag: str = "-sparseCheckoutDirectories") -> tuple[str, ...]:
    dirs: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        _reject_controls(flag, "directory", item)
        parts = PurePosixPath(item.strip("/")).parts
        if item.startswith("-") or any(p in ("..", ".") for p in parts) or not parts:
            raise InputError(f"{flag}: {shown(item)} is not a plain relative directory")
        if any(ch in item for ch in "*?[]!\\"):
            raise InputError(f"{flag}: {shown(item)} holds a pattern character; give directories")
        dirs.append("/".join(parts))
    return tuple(dirs)


def resolve_dest(workspace: Path, path: str, flag: str = "-path") -> Path:
    """The checkout directory: inside the workspace, reached through no symlink."""
    _reject_controls(flag, "path", path) if path else None
    ws = Path(os.path.abspath(workspace))
    target = Path(os.path.normpath(ws / path)) if path else ws
    if target != ws and not target.is_relative_to(ws):
        raise InputError(f"{flag}: {shown(path)} is outside the workspace {ws}")
    current = ws
    for part in target.relative_to(ws).parts:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            break
        if stat.S_ISLNK(st.st_mode):
            raise InputError(f"{flag}: {current} is a symbolic link; refusing to fetch through it")
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{flag}: {current} exists and is not a directory")
    return target
