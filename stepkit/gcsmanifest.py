"""The GCS source manifest: a JSON object mapping destination paths to objects, as gcs-fetcher reads it.

Format (cloud-builders gcs-fetcher and gcs-uploader)::

    {"dir/file.txt": {"sourceUrl": "gs://bucket/object#generation",
                      "sha1sum": "<hex>", "mode": 420}}

Field names are matched case-insensitively, as Go's encoding/json does, so the
reference's `SourceURL` / `Sha1Sum` spellings parse too. `mode` is a Go `os.FileMode`
integer: the low nine bits are the permissions, the high bits the type. Only regular
files and symlinks are accepted; permissions are applied masked to 0755 or 0644
(`Entry.perm`), never setuid, setgid or sticky.

Symlinks are our extension for round trips: an entry whose mode has
`GO_MODE_SYMLINK` names an object whose content is the link target, and stepkit's
fetcher creates a symlink (the target must be relative and stay inside the
destination). The reference fetcher ignores the mode and writes a regular file holding
the target text, which is a graceful degradation rather than a failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stepkit.errors import InputError
from stepkit.gcs import Location, parse_location
from stepkit.validate import has_control, shown

GO_MODE_DIR = 1 << 31
GO_MODE_APPEND = 1 << 30
GO_MODE_EXCLUSIVE = 1 << 29
GO_MODE_TEMPORARY = 1 << 28
GO_MODE_SYMLINK = 1 << 27
GO_MODE_DEVICE = 1 << 26
GO_MODE_NAMED_PIPE = 1 << 25
GO_MODE_SOCKET = 1 << 24
GO_MODE_SETUID = 1 << 23
GO_MODE_SETGID = 1 << 22
GO_MODE_CHAR_DEVICE = 1 << 21
GO_MODE_STICKY = 1 << 20
GO_MODE_IRREGULAR = 1 << 19
GO_MODE_PERM = 0o777

# setuid/setgid/sticky and the POSIX 0o7000 bits are tolerated on input (uploaders copy
# st_mode) but never applied; every other type bit means "not a regular file or symlink".
_TOLERATED = GO_MODE_PERM | 0o7000 | GO_MODE_SETUID | GO_MODE_SETGID | GO_MODE_STICKY
_ALLOWED = _TOLERATED | GO_MODE_SYMLINK
MAX_PATH = 1024
_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")
_FIELDS = ("sourceurl", "sha1sum", "mode")


@dataclass(frozen=True)
class Entry:
    """One destination path and the object that fills it."""

    path: str
    source: Location
    sha1: str | None
    mode: int

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & GO_MODE_SYMLINK)

    @property
    def perm(self) -> int:
        """0o755 when any execute bit is set, else 0o644: nothing else survives a fetch."""
        return 0o755 if self.mode & 0o111 else 0o644


def check_path(path: str, *, what: str) -> str:
    """A relative POSIX path that cannot leave the directory it is joined to."""
    if not path:
        raise InputError(f"{what}: empty path")
    if has_control(path):
        raise InputError(f"{what}: control characters in path {shown(path)}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InputError(f"{what}: path longer than {MAX_PATH} bytes")
    if path.startswith("/"):
        raise InputError(f"{what}: absolute path {shown(path)}")
    if "\\" in path:
        raise InputError(f"{what}: backslash in path {shown(path)}")
    if re.match(r"^[A-Za-z]:", path):
        raise InputError(f"{what}: drive path {shown(path)}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise InputError(
            f"{what}: path {shown(path)} has an empty, '.' or '..' component "
            "(it must stay inside the destination)"
        )
    return path


def _field(raw: dict[str, Any], name: str) -> Any:
    # Go's encoding/json: an exact match wins, then the last case-insensitive one.
    if name in raw:
        return raw[name]
    found = None
    for key, value in raw.items():
        if key.lower() == name.lower():
            found = value
    return found


def _entry(path: str, raw: Any, *, what: str) -> Entry:
    where = f"{what}: entry {shown(path)}"
    check_path(path, what=where)
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected an object with sourceUrl, sha1sum and mode")
    unknown = [k for k in raw if k.lower() not in _FIELDS]
    if unknown:
        raise InputError(f"{where}: unknown field {shown(str(unknown[0]))}")
    url = _field(raw, "sourceUrl")
    if not isinstance(url, str):
        raise InputError(f"{where}: sourceUrl missing or not a string")
    source = parse_location(url, what=f"{where}: sourceUrl")
    sha1 = _field(raw, "sha1sum")
    if sha1 is not None and not isinstance(sha1, str):
        raise InputError(f"{where}: sha1sum is not a string")
    if sha1 == "":
        sha1 = None
    if sha1 is not None and not _SHA1.fullmatch(sha1):
        raise InputError(f"{where}: sha1sum {shown(sha1)} is not 40 hexadecimal digits")
    mode = _field(raw, "mode")
    if mode is None:
        mode = 0o644
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode < 1 << 32:
        raise InputError(f"{where}: mode {shown(str(mode))} is not a Go file mode")
    if mode & ~_ALLOWED:
        raise InputError(
            f"{where}: mode {mode:#o} is not a regular file or symlink "
            "(directories, devices, pipes and sockets are not fetched)"
        )
    return Entry(path, source, sha1.lower() if sha1 else None, mode)


def parse(data: bytes, *, what: str) -> list[Entry]:
    """The entries of a manifest, sorted by path; InputError naming the entry at fault."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=pairs)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what}: not a JSON manifest ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{what}: expected a JSON object mapping paths to entries")
    entries = [_entry(path, value, what=what) for path, value in raw.items()]
    if duplicates:
        raise InputError(f"{what}: entry {shown(duplicates[0])} appears twice")
    # The keys of one JSON object, so each path once (case is kept: Linux is case-sensitive).
    paths = {entry.path for entry in entries}
    for entry in entries:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in paths:
                raise InputError(
                    f"{what}: entry {shown(parent)} is a file and also the parent "
                    f"directory of {shown(entry.path)}"
                )
    return sorted(entries, key=lambda e: e.path)


def dump(entries: Iterable[Entry]) -> bytes:
    """The manifest JSON gcs-uploader writes: keys sorted, fields as the reference spells them."""
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        check_path(entry.path, what="manifest")
        if entry.path in out:
            raise InputError(f"manifest: entry {shown(entry.path)} appears twice")
        out[entry.path] = {
            "sourceUrl": entry.source.url(),
            "sha1sum": entry.sha1 or "",
            "mode": entry.mode,
        }
    return json.dumps(out, sort_keys=True, ensure_ascii=False).encode("utf-8")
