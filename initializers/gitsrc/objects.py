"""Reading one commit's committer date straight from a fresh repository's object store.

git-init needs the date of the commit it fetched for its results. Asking `git log` costs a
process (a few ms of every run); the fetch has just written the commit as a loose object
(small fetches) or into a pack with its index, both simple formats (gitformat-pack). Any
case this reader does not know (a deltified object, an unusual index) returns None and the
caller asks git. tests/test_gitinit_objects.py compares it with `git log` on real fetches.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

_IDX_MAGIC = b"\377tOc"
_COMMIT, _TAG = 1, 4
_MAX_PEEL = 8


def committer_date(git_dir: Path, sha: str) -> tuple[str, str] | None:
    """(commit, committer timestamp) that sha names, annotated tags peeled; None when unsure."""
    for _ in range(_MAX_PEEL):
        found = _read(git_dir, sha)
        if found is None:
            return None
        kind, body = found
        head = body.split(b"\n\n", 1)[0].split(b"\n")
        if kind == _COMMIT:
            for line in head:
                if line.startswith(b"committer "):
                    parts = line.rsplit(b" ", 2)
                    if len(parts) == 3 and parts[1].isdigit():
                        return sha, parts[1].decode()
            return None
        if kind != _TAG:
            return None
        target = [line[7:].decode() for line in head if line.startswith(b"object ")]
        if len(target) != 1 or not _is_hex(target[0], len(sha)):
            return None
        sha = target[0]
    return None


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdef" for c in value)


def _read(git_dir: Path, sha: str) -> tuple[int, bytes] | None:
    if not _is_hex(sha, 40) and not _is_hex(sha, 64):
        return None
    objects = git_dir / "objects"
    try:
        raw = (objects / sha[:2] / sha[2:]).read_bytes()
    except FileNotFoundError:
        return _read_packed(objects / "pack", bytes.fromhex(sha))
    except OSError:
        return None
    try:
        data = zlib.decompress(raw)
    except zlib.error:
        return None
    header, _, body = data.partition(b"\0")
    kind, _, size = header.partition(b" ")
    if not size.isdigit() or int(size) != len(body):
        return None
    return {b"commit": _COMMIT, b"tag": _TAG}.get(kind, 0), body


def _read_packed(pack_dir: Path, oid: bytes) -> tuple[int, bytes] | None:
    try:
        names = [n for n in os.listdir(pack_dir) if n.endswith(".idx")]
    except OSError:
        return None
    for name in names:
        offset = _find(pack_dir / name, oid)
        if offset is not None:
            return _unpack(pack_dir / (name[: -len(".idx")] + ".pack"), offset)
    return None


def _find(idx: Path, oid: bytes) -> int | None:
    """oid's offset in the pack, from a version 2 index; None when absent or unsure."""
    try:
        data = idx.read_bytes()
    except OSError:
        return None
    width = len(oid)
    if data[:4] != _IDX_MAGIC or int.from_bytes(data[4:8], "big") != 2:
        return None
    fanout = 8
    total = int.from_bytes(data[fanout + 255 * 4 : fanout + 256 * 4], "big")
    first = oid[0]
    lo = int.from_bytes(data[fanout + (first - 1) * 4 : fanout + first * 4], "big") if first else 0
    hi = int.from_bytes(data[fanout + first * 4 : fanout + (first + 1) * 4], "big")
    names = fanout + 256 * 4
    if len(data) < names + total * (width + 8):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        here = data[names + mid * width : names + (mid + 1) * width]
        if here == oid:
            break
        if here < oid:
            lo = mid + 1
        else:
            hi = mid
    else:
        return None
    offsets = names + total * (width + 4)
    offset = int.from_bytes(data[offsets + mid * 4 : offsets + (mid + 1) * 4], "big")
    if offset & 0x80000000:
        large = offsets + total * 4 + (offset & 0x7FFFFFFF) * 8
        if len(data) < large + 8:
            return None
        offset = int.from_bytes(data[large : large + 8], "big")
    return offset


def _unpack(pack: Path, offset: int) -> tuple[int, bytes] | None:
    """The whole (undeltified) object at offset; None for a delta or anything unexpected."""
    try:
        with pack.open("rb") as f:
            f.seek(offset)
            chunk = f.read(64)
            byte = chunk[0]
            kind = (byte >> 4) & 7
            size = byte & 15
            shift, pos = 4, 1
            while byte & 0x80:
                byte = chunk[pos]
                size |= (byte & 0x7F) << shift
                shift += 7
                pos += 1
            if kind not in (_COMMIT, _TAG) or size > 1 << 24:
                return None
            inflate = zlib.decompressobj()
            body = inflate.decompress(chunk[pos:])
            while not inflate.eof:
                more = f.read(65536)
                if not more:
                    return None
                body += inflate.decompress(more)
    except (OSError, IndexError, zlib.error):
        return None
    return (kind, body) if len(body) == size else None
