"""Extracting untrusted zip and tar archives into a new directory, and placing a staged tree into a workspace, safely.

Rules (ADVERSARIAL.md items 33-41 and 44), each refusing the whole archive with an
ArchiveError that names the entry, never renaming or skipping it:

- Entry names are relative, UTF-8, free of control characters and backslashes, at most
  `Limits.max_path_bytes` long, with no drive letter and no `..` component anywhere
  (`a/../b` too: normalising it gains nothing and is where extractors go wrong). Empty
  and `.` components are dropped (`./src/x` is common); a name that is then empty is
  only accepted for a directory (the root itself).
- No two entries may have the same path, except two directories (tar lists a directory
  both implied and explicit). Replacing an earlier entry is how tar archives plant a
  hard link or symlink and then write through it.
- Nothing is ever written below a symlink the archive created: `l -> sub` then
  `l/x` is refused even though it would stay inside. Symlink targets are resolved
  lexically from the link's directory against the tree built so far (earlier symlinks
  substituted by their resolution); a `..` may only step out of a directory that already
  exists as a real directory of the tree, so a later entry cannot change what an
  accepted link means. Absolute targets and targets leaving the tree are refused.
- Hard links must name an earlier regular file of the same archive; they are linked. A
  hard link naming itself (GNU tar's way of storing a file listed twice) changes nothing.
- Only regular files, directories and symlinks: devices and FIFOs are refused. Sparse
  files are written with their holes, their full size counted against the limits. Files
  end up 0644, or 0755 when the archive gives any execute bit; directories 0755; owner
  is the running user; set-id and sticky bits never apply.
- Bytes are counted as they are written; the total is capped by `Limits.max_bytes` and,
  past 1 MiB, by `Limits.max_ratio` times the archive's size. Entries and path lengths
  are capped too.
- Zip: every entry's local record must lie between the previous one and the central
  directory (overlapping entries are how the best zip bombs work, CVE-2024-0450), and
  its sizes must agree with the central directory.
- Tar headers are parsed here, not by `tarfile`: the Python in the images (3.11.2)
  predates its extraction filters and several parsing fixes (negative sizes looping,
  CVE-2025-8194; unbounded extended headers). Offsets only ever move forward. Where GNU
  tar, bsdtar and Go's archive/tar (Docker, containerd) read an archive alike, it is read
  their way; where they disagree it is refused (iter_tar lists the cases).
- A `.git` component (any case) is refused unless allow_git: an archive's `.git/config`
  would run code the next time a step runs git there.

Files are created with O_CREAT|O_EXCL|O_NOFOLLOW relative to directory descriptors in a
private staging directory next to the destination, which is renamed into place only
after the whole archive was read. Modification times are not restored (nor by the
reference fetcher). Tar streams may be gzip, bzip2, xz or zstd compressed, read by their
first bytes; zstd comes from backports.zstd (the stdlib's compression.zstd from Python
3.14 on), imported only when zstd data is met.

`place()` merges such a tree into a workspace that may already hold files (a git
checkout with symlinks in it): every directory of the tree must meet a real directory or
nothing, never a symlink, checked for the whole tree before the first rename. Symlinks of
the archive are checked against the archive's own tree: one whose target descends through
a name the archive does not create (`l -> sub/x`, no `sub` in the archive) points wherever
the workspace's `sub` does.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.validate import has_control, shown

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The steps after a fetcher may run under another UID: like tar, everything is readable.
_DIR_MODE = 0o755
_DRIVE = re.compile(r"^[A-Za-z]:")
_MIN_RATIO_FLOOR = 1 << 20
_ZERO_BLOCK = bytes(512)
# Extended tar headers (pax records, GNU long names) only carry names and a few numbers.
_MAX_EXT_HEADER = 64 << 10
_MAX_EXT_PER_ENTRY = 4
_MAX_EXT_TOTAL = 64 << 20
_ZSTD_FRAME = b"\x28\xb5\x2f\xfd"
# A zstd frame header names the window its decoder must allocate, up to 2 TiB: 128 MiB is
# what zstd itself accepts by default (and what `zstd --long` writes).
_ZSTD_WINDOW_LOG_MAX = 27
# What reading a decompressed stream raises for bad data; zstd's error joins once loaded.
_DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    ValueError,
)


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 10 * 1024**3
    max_entries: int = 200_000
    max_path_bytes: int = 1024
    max_ratio: float = 250.0


@dataclass(frozen=True)
class ExtractStats:
    files: int
    dirs: int
    symlinks: int
    bytes: int


class ArchiveError(InputError):
    """The archive is malformed, hostile or too large; the message names the entry and why."""


def detect(path: Path, *, label: str | None = None) -> str:
    """Return "zip" or "tar" (plain, gzip, bzip2, xz, zstd) from the content, whatever the name says.

    A valid tar header (or the zero block of an empty tar) wins over a zip directory at
    the end: a tar whose last member is a zip ends like a zip, and is the tar it says
    first. A zip is found by its end of central directory, so one behind a self-extracting
    stub is a zip too.
    """
    label = label or str(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
            if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or _is_zstd(head):
                return "tar"
            if len(head) == 512 and (head == _ZERO_BLOCK or _checksum_ok(head)):
                return "tar"
            if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or zipfile.is_zipfile(fh):
                return "zip"
    except OSError as exc:
        raise InputError(f"cannot read archive {label}: {exc.strerror}") from None
    if len(head) == 512 and head[257:262] == b"ustar":
        return "tar"  # a damaged header: reading it says where
    raise ArchiveError(f"{label}: not a zip or tar archive")


def _is_zstd(head: bytes) -> bool:
    """A zstd frame, or a skippable frame (pzstd and seekable zstd start with one), as containerd reads them."""
    return head.startswith(_ZSTD_FRAME) or (
        len(head) >= 8 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"
    )


# --- entry names (shared with stepkit.oci.layers) -------------------------------------


def entry_error(label: str, name: str, why: str) -> ArchiveError:
    """The one-line refusal naming an archive's entry."""
    return ArchiveError(f"{label}: entry {shown(name)}: {why}")


def check_text(
    value: str,
    name: str,
    what: str,
    *,
    limits: Limits,
    label: str,
    allow_backslash: bool = False,
) -> None:
    """Refuse an entry's name or link target that is empty, too long, absolute or has control characters."""
    if not value:
        raise entry_error(label, name, f"empty {what}")
    if len(value.encode("utf-8", "surrogateescape")) > limits.max_path_bytes:
        raise entry_error(label, name, f"{what} longer than {limits.max_path_bytes} bytes")
    if has_control(value):
        raise entry_error(label, name, f"control character in {what}")
    if "\\" in value and not allow_backslash:
        raise entry_error(label, name, f"backslash in {what} (a Windows path separator)")
    if value.startswith("/"):
        raise entry_error(label, name, f"absolute {what}")
    if _DRIVE.match(value):
        raise entry_error(label, name, f"{what} starts with a drive letter")


def is_git_name(part: str) -> bool:
    """Whether a path component names a .git directory (any case; NTFS drops trailing dots and spaces)."""
    return part.rstrip(". ").lower() == ".git"


def split_name(
    name: str,
    *,
    limits: Limits,
    label: str,
    what: str = "name",
    entry: str | None = None,
    allow_git: bool = False,
    allow_backslash: bool = False,
) -> tuple[str, ...]:
    """An entry name checked and split into components, empty and '.' ones dropped; '..' refused."""
    entry = name if entry is None else entry
    check_text(name, entry, what, limits=limits, label=label, allow_backslash=allow_backslash)
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise entry_error(label, entry, f"'..' in {what}")
    if not allow_git and any(is_git_name(part) for part in parts):
        raise entry_error(
            label,
            entry,
            "a .git directory would let the archive configure git for later steps "
            "(allow it explicitly with the helper's --allow-git option)",
        )
    return parts


# --- the tree being built -------------------------------------------------------------

_DIR, _FILE, _LINK = "d", "f", "l"


class _Tree:
    """The staging tree: a model of every path created, and the descriptors to create them.

    Keys of `nodes` are real paths (no symlink in them), because nothing is ever created
    below a symlink; a symlink's value is its lexical resolution at creation time.
    """

    def __init__(
        self,
        root_fd: int,
        *,
        limits: Limits,
        cap: int,
        cap_reason: str,
        allow_git: bool,
        label: str,
    ) -> None:
        self.root_fd = root_fd
        self.limits = limits
        self.cap = cap
        self.cap_reason = cap_reason
        self.allow_git = allow_git
        self.label = label
        self.nodes: dict[tuple[str, ...], str] = {(): _DIR}
        self.resolved: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.entries = 0
        self.files = self.dirs = self.symlinks = self.bytes = 0
        # The directory chain last written into, root first: archives list a directory's
        # entries together, so this is nearly always the one needed next.
        self._chain: list[tuple[tuple[str, ...], int]] = [((), root_fd)]
        self._chmod = _chmod_needed()

    def close(self) -> None:
        for _, fd in self._chain[1:]:
            os.close(fd)
        self._chain = self._chain[:1]

    def fail(self, name: str, why: str) -> ArchiveError:
        return entry_error(self.label, name, why)

    # names

    def check_text(self, value: str, name: str, what: str) -> None:
        check_text(value, name, what, limits=self.limits, label=self.label)

    def parts(self, name: str, what: str = "name", entry: str | None = None) -> tuple[str, ...]:
        return split_name(
            name,
            limits=self.limits,
            label=self.label,
            what=what,
            entry=entry,
            allow_git=self.allow_git,
        )

    # placement

    def _new(self, name: str, parts: tuple[str, ...], kind: str) -> int:
        """Check parts may be created as kind and return the descriptor of its directory."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise self.fail(name, f"more than {self.limits.max_entries} entries")
        if not parts:
            raise self.fail(name, "names the destination itself")
        for i in range(1, len(parts)):
            node = self.nodes.get(parts[:i])
            if node == _LINK:
                raise self.fail(
                    name, f"its directory {shown('/'.join(parts[:i]))} is a symlink of the archive"
                )
            if node == _FILE:
                raise self.fail(name, f"its directory {shown('/'.join(parts[:i]))} is a file")
        existing = self.nodes.get(parts)
        if existing is not None and not (existing == _DIR and kind == _DIR):
            raise self.fail(name, "appears twice in the archive")
        return self._dir_fd(parts[:-1])

    def _dir_fd(self, parts: tuple[str, ...]) -> int:
        chain = self._chain
        keep = 1
        while keep < len(chain) and keep <= len(parts) and chain[keep][0] == parts[:keep]:
            keep += 1
        for _, fd in chain[keep:]:
            os.close(fd)
        del chain[keep:]
        fd = chain[-1][1]
        for i in range(keep, len(parts) + 1):
            sub = parts[:i]
            if sub not in self.nodes:
                os.mkdir(parts[i - 1], _DIR_MODE, dir_fd=fd)
                self.nodes[sub] = _DIR
                self.dirs += 1
                if self._chmod:
                    os.chmod(parts[i - 1], _DIR_MODE, dir_fd=fd, follow_symlinks=False)
            fd = os.open(parts[i - 1], _DIR_FLAGS, dir_fd=fd)
            chain.append((sub, fd))
        return fd

    def add_dir(self, name: str) -> None:
        parts = self.parts(name)
        if not parts:
            return  # "./": the destination itself
        fd = self._new(name, parts, _DIR)
        if parts not in self.nodes:
            os.mkdir(parts[-1], _DIR_MODE, dir_fd=fd)
            self.nodes[parts] = _DIR
            self.dirs += 1
            if self._chmod:
                os.chmod(parts[-1], _DIR_MODE, dir_fd=fd, follow_symlinks=False)

    def add_file(
        self,
        name: str,
        mode: int,
        size: int,
        read: Callable[[int], bytes],
        *,
        sparse: Sparse | None = None,
    ) -> None:
        """Write a regular file of exactly `size` bytes (holes included), pulled from read(n) in chunks."""
        parts = self.parts(name)
        if size < 0:
            raise self.fail(name, "negative size")
        if self.bytes + size > self.cap:
            raise self.fail(name, self.cap_reason)
        fd = self._new(name, parts, _FILE)
        perm = 0o755 if mode & 0o111 else 0o644
        ffd = os.open(parts[-1], _FILE_FLAGS, perm, dir_fd=fd)
        self.nodes[parts] = _FILE
        try:
            if self._chmod:
                os.fchmod(ffd, perm)
            write_data(ffd, size, read, lambda why: self.fail(name, why), sparse=sparse)
        finally:
            os.close(ffd)
        self.bytes += size
        self.files += 1

    def add_symlink(self, name: str, target: str) -> None:
        parts = self.parts(name)
        fd = self._new(name, parts, _LINK)
        resolved = self._resolve(name, parts, target)
        os.symlink(target, parts[-1], dir_fd=fd)
        self.nodes[parts] = _LINK
        self.resolved[parts] = resolved
        self.symlinks += 1

    def _resolve(self, name: str, parts: tuple[str, ...], target: str) -> tuple[str, ...]:
        self.check_text(target, name, "symlink target")
        stack = list(parts[:-1])
        for comp in target.split("/"):
            if comp in ("", "."):
                continue
            if comp == "..":
                if not stack:
                    raise self.fail(name, f"symlink target {shown(target)} leaves the destination")
                if self.nodes.get(tuple(stack)) != _DIR:
                    # Only a real directory's parent is known for good; anything else could
                    # still become a symlink and send '..' elsewhere.
                    raise self.fail(
                        name,
                        f"symlink target {shown(target)} goes up from {shown('/'.join(stack))}, "
                        "which is not a directory of the archive at that point",
                    )
                stack.pop()
            else:
                stack.append(comp)
                if self.nodes.get(tuple(stack)) == _LINK:
                    stack = list(self.resolved[tuple(stack)])
        return tuple(stack)

    def add_hardlink(self, name: str, target: str) -> None:
        parts = self.parts(name)
        tparts = self.parts(target, "hard link target", name)
        if tparts == parts and self.nodes.get(parts) == _FILE:
            # GNU tar writes a file it is given twice (`tar cf x.tar $(find d)`) as a hard
            # link to itself the second time: as GNU tar reads it, nothing to do.
            self.entries += 1
            if self.entries > self.limits.max_entries:
                raise self.fail(name, f"more than {self.limits.max_entries} entries")
            return
        if self.nodes.get(tparts) != _FILE:
            raise self.fail(
                name,
                f"hard link to {shown(target)}, which is not an earlier regular file of the archive",
            )
        fd = self._new(name, parts, _FILE)
        os.link(
            "/".join(tparts),
            parts[-1],
            src_dir_fd=self.root_fd,
            dst_dir_fd=fd,
            follow_symlinks=False,
        )
        self.nodes[parts] = _FILE
        self.files += 1

    def stats(self) -> ExtractStats:
        return ExtractStats(
            files=self.files, dirs=self.dirs, symlinks=self.symlinks, bytes=self.bytes
        )


def _umask() -> int | None:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _chmod_needed() -> bool:
    """Whether a umask (or not knowing it) may take bits from the modes files are created with."""
    umask = _umask()
    return umask is None or (umask & ~0o022) != 0


# --- tar ------------------------------------------------------------------------------


def _checksum_ok(block: bytes) -> bool:
    try:
        want = _octal(block[148:156])
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if want == unsigned:
        return True
    # Some old writers summed signed chars.
    high = sum(1 for b in block[:148] if b >= 128) + sum(1 for b in block[156:] if b >= 128)
    return want == unsigned - 256 * high


def _octal(field: bytes) -> int:
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise ValueError("not an octal number")
    return int(text, 8)


def _number(field: bytes) -> int:
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            raise ValueError("negative number")
        return int.from_bytes(field[1:], "big")
    return _octal(field)


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


class _Reader:
    """Reads the (decompressed) archive, turning every decoding failure into ArchiveError."""

    def __init__(self, fh: io.BufferedIOBase | IO[bytes], label: str) -> None:
        self.fh = fh
        self.label = label
        self.pos = 0

    def read(self, n: int) -> bytes:
        try:
            data = self.fh.read(n)
        except _DECODE_ERRORS as exc:
            raise ArchiveError(
                f"{self.label}: corrupt or truncated compressed data at byte {self.pos} ({exc})"
            ) from None
        self.pos += len(data)
        return data

    def skip(self, n: int, what: str) -> None:
        while n:
            data = self.read(min(n, CHUNK))
            if not data:
                raise ArchiveError(f"{self.label}: truncated archive ({what})")
            n -= len(data)

    def exact(self, n: int, what: str) -> bytes:
        parts = []
        left = n
        while left:
            data = self.read(min(left, CHUNK))
            if not data:
                raise ArchiveError(f"{self.label}: truncated archive ({what})")
            parts.append(data)
            left -= len(data)
        return b"".join(parts)


def _pad(size: int) -> int:
    return -size % 512


def _pax_records(data: bytes, fail: Callable[[str], ArchiveError]) -> list[tuple[str, bytes]]:
    """A pax header's records in order (GNU sparse 0.0 repeats its keys, so order matters)."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 24)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise fail("malformed pax header record")
        length = int(digits)
        record = data[pos : pos + length]
        if length <= len(digits) + 3 or len(record) != length or not record.endswith(b"\n"):
            raise fail("malformed pax header record length")
        key, eq, value = record[len(digits) + 1 : -1].partition(b"=")
        if not eq or not key:
            raise fail("malformed pax header record")
        out.append((key.decode("utf-8", "replace"), value))
        pos += length
    return out


def _text(raw: bytes, fail: Callable[[str], ArchiveError], what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"{what} is not UTF-8") from None


def _failer(label: str, raw_name: bytes) -> Callable[[str], ArchiveError]:
    def fail(why: str) -> ArchiveError:
        return ArchiveError(f"{label}: entry {shown(raw_name.decode('utf-8', 'replace'))}: {why}")

    return fail


Sparse = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class TarEntry:
    """One tar entry, its name and link target decoded but not yet checked."""

    kind: str  # "file" | "dir" | "symlink" | "hardlink"
    name: str
    link: str
    mode: int
    size: int  # a sparse file's full size, holes included
    # Pulls the file's data, at most n bytes a call; what is left unread is skipped.
    read: Callable[[int], bytes]
    fail: Callable[[str], ArchiveError]
    # A sparse file's data regions, (offset, length) in order: read() gives their bytes one
    # after the other, and everything between them is a hole.
    sparse: Sparse | None = None


# GNU tar's old sparse format ('S'): four (offset, numbytes) pairs of 12 bytes in the header,
# then extension blocks of 21 while the "isextended" byte is set; the full size at 483.
_OLD_SPARSE_AT = 386
_OLD_SPARSE_EXTENDED = 482
_OLD_SPARSE_REALSIZE = slice(483, 495)
_MAX_SPARSE_REGIONS = 1 << 16
_MAX_SPARSE_MAP = 4 << 20  # GNU sparse 1.0's map, decimal text before the data
_SPARSE_KEYS = frozenset({"GNU.sparse.offset", "GNU.sparse.numbytes"})


def _old_gnu_sparse(
    block: bytes, reader: _Reader, fail: Callable[[str], ArchiveError]
) -> tuple[list[tuple[int, int]], int, int]:
    """The regions and full size of an old-format GNU sparse header, and the bytes of its extension blocks."""
    regions: list[tuple[int, int]] = []

    def take(area: bytes, count: int) -> None:
        for i in range(count):
            entry = area[i * 24 : i * 24 + 24]
            if entry[0] == 0:  # the list ends here (GNU tar and Go stop at the same place)
                return
            if len(regions) >= _MAX_SPARSE_REGIONS:
                raise fail(f"sparse map with more than {_MAX_SPARSE_REGIONS} regions")
            try:
                regions.append((_number(entry[:12]), _number(entry[12:])))
            except ValueError as exc:
                raise fail(f"bad sparse map field ({exc})") from None

    take(block[_OLD_SPARSE_AT:_OLD_SPARSE_EXTENDED], 4)
    try:
        realsize = _number(block[_OLD_SPARSE_REALSIZE])
    except ValueError as exc:
        raise fail(f"bad header field ({exc})") from None
    extended = block[_OLD_SPARSE_EXTENDED]
    spent = 0
    while extended:
        ext = reader.exact(512, "sparse header")
        spent += 512
        take(ext[:504], 21)
        extended = ext[504]
    return regions, realsize, spent


def _decimal(value: bytes, fail: Callable[[str], ArchiveError], what: str) -> int:
    if not value.isdigit():
        raise fail(f"bad {what} {shown(value.decode('utf-8', 'replace'))}")
    return int(value)


def _pax_sparse(
    pax: dict[str, bytes], pairs: list[tuple[str, bytes]], fail: Callable[[str], ArchiveError]
) -> tuple[str, list[tuple[int, int]], int]:
    """GNU tar's pax sparse formats: (version, regions, full size); 1.0 keeps its map in the data."""
    if "GNU.sparse.major" in pax or "GNU.sparse.minor" in pax:
        version = (
            pax.get("GNU.sparse.major", b"?") + b"." + pax.get("GNU.sparse.minor", b"?")
        ).decode("utf-8", "replace")
        if version != "1.0":
            raise fail(f"unknown GNU sparse format version {shown(version)}")
        if pairs or "GNU.sparse.map" in pax:
            raise fail("a GNU sparse 1.0 header with a sparse map of another version")
        realsize = pax.get("GNU.sparse.realsize", pax.get("GNU.sparse.size"))
        if realsize is None:
            raise fail("a GNU sparse header without the file's size")
        return version, [], _decimal(realsize, fail, "sparse file size")
    if "GNU.sparse.map" in pax and pairs:
        raise fail("a GNU sparse header with two sparse maps")
    if "GNU.sparse.map" in pax:
        version = "0.1"
        text = pax["GNU.sparse.map"]
        numbers = text.split(b",") if text else []
    else:
        version = "0.0"
        # Go pairs the values up in order whatever their keys; GNU tar by key: only the
        # alternation both read alike is accepted.
        if [k for k, _ in pairs] != ["GNU.sparse.offset", "GNU.sparse.numbytes"] * (
            len(pairs) // 2
        ):
            raise fail("malformed GNU sparse map (offsets and sizes do not alternate)")
        numbers = [v for _, v in pairs]
    if "GNU.sparse.size" not in pax or "GNU.sparse.numblocks" not in pax:
        raise fail("a GNU sparse header without its size or number of regions")
    count = _decimal(pax["GNU.sparse.numblocks"], fail, "sparse region count")
    if count > _MAX_SPARSE_REGIONS:
        raise fail(f"sparse map with more than {_MAX_SPARSE_REGIONS} regions")
    if len(numbers) != 2 * count:
        raise fail(f"sparse map does not hold the {count} regions its header announces")
    values = [_decimal(n, fail, "sparse map number") for n in numbers]
    regions = list(zip(values[::2], values[1::2], strict=True))
    return version, regions, _decimal(pax["GNU.sparse.size"], fail, "sparse file size")


def _sparse_map_1_0(
    reader: _Reader, stored: int, fail: Callable[[str], ArchiveError]
) -> tuple[list[tuple[int, int]], int]:
    """GNU sparse 1.0's map at the start of the data: decimal lines (count, then offset and size
    pairs) padded with NULs to whole blocks. Returns the regions and the bytes the map took."""
    text = b""
    numbers: list[int] = []
    want: int | None = None
    used = 0
    while want is None or len(numbers) < 2 * want:
        if used + 512 > min(stored, _MAX_SPARSE_MAP):
            raise fail("GNU sparse map runs past the entry's data or its size limit")
        text += reader.exact(512, "sparse map")
        used += 512
        *lines, text = text.split(b"\n")
        for line in lines:
            if want is not None and len(numbers) == 2 * want:
                raise fail("GNU sparse map holds more numbers than it announces")
            value = _decimal(line, fail, "sparse map number")
            if want is None:
                if value > _MAX_SPARSE_REGIONS:
                    raise fail(f"sparse map with more than {_MAX_SPARSE_REGIONS} regions")
                want = value
            else:
                numbers.append(value)
        if (want is None or len(numbers) < 2 * want) and len(text) > 40:
            raise fail("malformed GNU sparse map")
    if text.strip(b"\0"):
        raise fail("GNU sparse map holds more than it announces")
    return list(zip(numbers[::2], numbers[1::2], strict=True)), used


def _check_sparse(
    regions: list[tuple[int, int]], realsize: int, data: int, fail: Callable[[str], ArchiveError]
) -> Sparse:
    """Regions in order, apart, inside the file, and holding exactly the entry's data."""
    end = 0
    for offset, length in regions:
        if offset < 0 or length < 0:
            raise fail("sparse map with a negative offset or size")
        if offset < end:
            raise fail("sparse map with regions out of order or overlapping")
        end = offset + length
        if end > realsize:
            raise fail(f"sparse map region ends at {end}, past the file's size {realsize}")
    total = sum(length for _, length in regions)
    if total != data:
        raise fail(
            f"sparse map describes {total} bytes of data but the entry holds {data} "
            "(a corrupt or forged sparse file)"
        )
    return tuple(regions)


# Header-only types whose size field GNU tar, bsdtar and Go all ignore (an old writer's
# allocation hint, or the linked file's size): no data follows them.
_SIZE_IGNORED = (b"1", b"5")


def iter_tar(stream: io.BufferedIOBase | IO[bytes], label: str) -> Iterator[TarEntry]:
    """The entries of a (decompressed) tar stream; anything but files, directories and links is refused.

    Where tar readers disagree on what an archive holds, it is refused rather than read one
    of their ways; where they agree, it is read their way:

    - A second pax 'x' header replaces the first (GNU tar, bsdtar and Go use only the last);
      so does a second GNU 'L' or 'K'. A GNU long name together with a pax path (or long
      link with pax linkpath) is refused: Go takes the GNU one, GNU tar the pax one.
    - A pax 'g' header applies to every later entry in GNU tar and to none in Go and bsdtar:
      one setting path, linkpath, size or sparse keys is refused, others are ignored. One
      between an extended header and its entry is refused (Go drops the extended header).
    - Directory and hard link entries have no data whatever their size field says; a pax
      size on them is refused (GNU tar and bsdtar then read data, Go does not), as is a
      size on symlinks and on old-style directories (a '/'-ended AREGTYPE), which GNU tar
      reads data for.
    - GNU volume labels ('V') are skipped; GNU incremental directories ('D') are directories
      whose data (the dumpdir) is skipped. Sparse files (old GNU 'S', pax 0.0, 0.1 and 1.0)
      are files with holes.
    """
    reader = _Reader(stream, label)
    long_name: bytes | None = None
    long_link: bytes | None = None
    pax: dict[str, bytes] = {}
    pax_pairs: list[tuple[str, bytes]] = []
    ext_count = 0
    ext_total = 0
    first = True
    while True:
        offset = reader.pos
        block = reader.read(512)
        if not block:
            if first:
                raise ArchiveError(f"{label}: empty archive")
            # No end-of-archive blocks: GNU tar and Go accept that too.
            if ext_count:
                raise ArchiveError(f"{label}: truncated archive (extended header without entry)")
            return
        if len(block) < 512:
            raise ArchiveError(f"{label}: truncated archive (header at byte {offset})")
        if block == _ZERO_BLOCK:
            if ext_count:
                raise ArchiveError(f"{label}: extended header without entry at byte {offset}")
            return
        if not _checksum_ok(block):
            if first:
                raise ArchiveError(f"{label}: not a tar archive")
            raise ArchiveError(f"{label}: corrupt tar header at byte {offset}")
        first = False
        hname = _cstr(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345] != 0:
            hname = _cstr(block[345:500]) + b"/" + hname
        fail = _failer(label, hname)
        typeflag = block[156:157]
        try:
            size = _number(block[124:136])
            mode = _octal(block[100:108]) if block[100] not in (0x80, 0xFF) else 0o644
        except ValueError as exc:
            raise fail(f"bad header field ({exc})") from None

        if typeflag in (b"L", b"K", b"x", b"g"):
            ext_count += 1
            ext_total += size
            if (
                ext_count > _MAX_EXT_PER_ENTRY
                or size > _MAX_EXT_HEADER
                or ext_total > _MAX_EXT_TOTAL
            ):
                raise fail("oversized or too many extended headers")
            data = reader.exact(size + _pad(size), "extended header")[:size]
            if typeflag == b"L":
                long_name = _cstr(data)
            elif typeflag == b"K":
                long_link = _cstr(data)
            elif typeflag == b"x":
                records = _pax_records(data, fail)
                pax = dict(records)
                pax_pairs = [(k, v) for k, v in records if k in _SPARSE_KEYS]
            else:
                if ext_count > 1:
                    raise fail(
                        "a global pax header between an extended header and its entry "
                        "(tar readers disagree on which entry the extended header is for)"
                    )
                keys = {k for k, _ in _pax_records(data, fail)}
                if {"path", "linkpath", "size"} & keys or any(
                    k.startswith("GNU.sparse.") for k in keys
                ):
                    raise fail(
                        "a global pax header setting path, linkpath, size or sparse keys "
                        "(GNU tar applies it to every later entry, other readers to none)"
                    )
                ext_count = 0
            continue

        if typeflag == b"V":
            # GNU tar's volume label (tar -V): no file, skipped as every reader does.
            if ext_count:
                raise fail("an extended header before a volume label")
            if size:
                raise fail("a volume label with data (tar readers disagree on its length)")
            continue

        sparse_name = pax.get("GNU.sparse.name")
        if long_name is not None and ("path" in pax or sparse_name is not None):
            raise fail(
                f"both a GNU long name {shown(long_name.decode('utf-8', 'replace'))} and a pax "
                "path: tar readers disagree on which one names the entry"
            )
        if long_link is not None and "linkpath" in pax:
            raise fail(
                f"both a GNU long link {shown(long_link.decode('utf-8', 'replace'))} and a pax "
                "linkpath: tar readers disagree on which one the link names"
            )
        for key in ("path", "linkpath"):
            if pax.get(key) == b"":
                raise fail(f"empty pax {key} (readers differ on whether it clears the name)")
        raw_name = pax.get("path", long_name if long_name is not None else hname)
        if sparse_name is not None:
            # GNU tar's 0.1 and 1.0 formats give the real name here; path names a stand-in.
            raw_name = sparse_name
        raw_link = (
            pax["linkpath"]
            if "linkpath" in pax
            else long_link
            if long_link is not None
            else _cstr(block[157:257])
        )
        fail = _failer(label, raw_name)
        pax_size = "size" in pax
        if pax_size:
            size = _decimal(pax["size"], fail, "pax size")
        sparse_keys = pax_pairs or any(k.startswith("GNU.sparse.") for k in pax)
        record, pairs = pax, pax_pairs
        long_name = long_link = None
        pax = {}
        pax_pairs = []
        ext_count = 0
        name = _text(raw_name, fail, "name")

        if typeflag == b"S" or sparse_keys:
            if typeflag not in (b"S", b"0", b"\0", b"7") or name.endswith("/"):
                raise fail("sparse headers on an entry that is not a regular file")
            data_start = reader.pos
            if typeflag == b"S":
                if sparse_keys:
                    raise fail("an old GNU sparse entry with pax sparse headers")
                regions, realsize, spent = _old_gnu_sparse(block, reader, fail)
                ext_total += spent
                data_start = reader.pos
                map_bytes = 0
            else:
                version, regions, realsize = _pax_sparse(record, pairs, fail)
                map_bytes = 0
                if version == "1.0":
                    regions, map_bytes = _sparse_map_1_0(reader, size, fail)
                    ext_total += map_bytes
            if ext_total > _MAX_EXT_TOTAL:
                raise fail("oversized or too many extended headers")
            layout = _check_sparse(regions, realsize, size - map_bytes, fail)
            end = data_start + size
            yield TarEntry("file", name, "", mode, realsize, reader.read, fail, layout)
            if reader.pos < end:
                reader.skip(end - reader.pos, "data")
            reader.exact(_pad(size), "padding")
            continue
        if typeflag in (b"0", b"\0", b"7") and not (typeflag == b"\0" and name.endswith("/")):
            if name.endswith("/"):
                raise fail("a file whose name ends with '/'")
            end = reader.pos + size
            yield TarEntry("file", name, "", mode, size, reader.read, fail)
            if reader.pos < end:
                reader.skip(end - reader.pos, "data")
            reader.exact(_pad(size), "padding")
            continue
        if typeflag == b"D":
            # GNU incremental directory (tar -g): its data lists the directory's names for
            # a restore that deletes the others; extracted as a plain directory, as bsdtar
            # does. The listing is metadata, counted with the extended headers.
            ext_total += size
            if ext_total > _MAX_EXT_TOTAL:
                raise fail("oversized incremental directory listing")
            reader.skip(size + _pad(size), "incremental directory listing")
            yield TarEntry("dir", name, "", mode, 0, reader.read, fail)
            continue
        if size and (pax_size or typeflag not in _SIZE_IGNORED):
            what = "directory" if typeflag in (b"5", b"\0") else "link"
            raise fail(f"a {what} with data (tar readers disagree on whether it has any)")
        if typeflag in (b"5", b"\0"):  # AREGTYPE with a trailing '/' is an old-style directory
            yield TarEntry("dir", name, "", mode, 0, reader.read, fail)
            continue
        if typeflag in (b"1", b"2"):
            if name.endswith("/"):
                raise fail("a link whose name ends with '/'")
            link = _text(raw_link, fail, "link target")
            kind = "symlink" if typeflag == b"2" else "hardlink"
            yield TarEntry(kind, name, link, mode, 0, reader.read, fail)
            continue
        kinds = {b"3": "character device", b"4": "block device", b"6": "FIFO"}
        what = kinds.get(typeflag, f"unsupported entry type {typeflag!r}")
        raise fail(f"{what} entries are not allowed")


def write_data(
    fd: int,
    size: int,
    read: Callable[[int], bytes],
    fail: Callable[[str], ArchiveError],
    *,
    sparse: Sparse | None = None,
    truncated: str = "truncated archive",
) -> None:
    """Write a file's `size` bytes pulled from read(n); a sparse file's regions at their offsets, holes unwritten."""
    regions = sparse if sparse is not None else ((0, size),)
    for offset, length in regions:
        if sparse is not None:
            os.lseek(fd, offset, os.SEEK_SET)
        left = length
        while left:
            data = read(min(left, CHUNK))
            if not data:
                raise fail(f"data ends early ({truncated})")
            if len(data) > left:
                raise fail("more data than its size says")
            left -= len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
    if sparse is not None:
        os.ftruncate(fd, size)


def _tar_entries(stream: io.BufferedIOBase | IO[bytes], tree: _Tree) -> None:
    for entry in iter_tar(stream, tree.label):
        if entry.kind == "file":
            tree.add_file(entry.name, entry.mode, entry.size, entry.read, sparse=entry.sparse)
        elif entry.kind == "dir":
            tree.add_dir(entry.name)
        elif entry.kind == "symlink":
            tree.add_symlink(entry.name, entry.link)
        else:
            tree.add_hardlink(entry.name, entry.link)


def open_tar_stream(raw: IO[bytes], *, label: str = "archive") -> io.BufferedIOBase | IO[bytes]:
    """The tar stream inside raw, decompressed as its first bytes say (gzip, bzip2, xz, zstd or none)."""
    head = raw.read(8)
    raw.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")
    if _is_zstd(head):
        return _zstd_file(raw, label)
    return raw


def _zstd_file(raw: IO[bytes], label: str) -> io.BufferedIOBase:
    """A reader of raw's zstd frames (all of them, skippable ones skipped; truncation is an error)."""
    global _DECODE_ERRORS
    try:
        if sys.version_info >= (3, 14):
            from compression import zstd
        else:
            from backports import zstd
    except ImportError:
        raise StepkitError(
            f"{label}: zstd-compressed data needs the backports.zstd package, which stepkit's "
            "gcs and oci extras install (pip install 'stepkit[gcs]' or 'stepkit[oci]')"
        ) from None
    if zstd.ZstdError not in _DECODE_ERRORS:
        _DECODE_ERRORS = (*_DECODE_ERRORS, zstd.ZstdError)
    options: dict[int, int] = {zstd.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG_MAX}
    return zstd.ZstdFile(raw, mode="rb", options=options)


# --- zip ------------------------------------------------------------------------------

_LOCAL = struct.Struct("<4sHHHHHIIIHH")


def _zip_entries(raw: BinaryIO, size: int, tree: _Tree) -> None:
    label = tree.label
    try:
        zf = zipfile.ZipFile(raw)
    except NotImplementedError as exc:
        # zipfile refuses the whole archive for one entry's "version needed to extract"
        # above what it knows: find that entry to name it.
        entry = _zip_entry_needing(raw, size, _ZIP_MAX_VERSION)
        if entry is None:
            raise ArchiveError(f"{label}: not supported ({exc})") from None
        name, version = entry
        raise entry_error(
            label,
            name,
            f"needs zip version {version // 10}.{version % 10} to extract; "
            f"this extractor reads up to {_ZIP_MAX_VERSION // 10}.{_ZIP_MAX_VERSION % 10}",
        ) from None
    except (zipfile.BadZipFile, OSError, ValueError, struct.error, EOFError) as exc:
        raise ArchiveError(f"{label}: not a valid zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > tree.limits.max_entries:
            raise ArchiveError(f"{label}: more than {tree.limits.max_entries} entries")
        _check_zip_layout(raw, infos, getattr(zf, "start_dir", size), label)
        for info in infos:
            name = _zip_name(info)
            if info.flag_bits & 0x1:
                raise tree.fail(name, "encrypted entries are not supported")
            unix = info.external_attr >> 16 if info.create_system == 3 else 0
            fmt = stat.S_IFMT(unix)
            if name.endswith("/") or fmt == stat.S_IFDIR:
                if info.file_size:
                    raise tree.fail(name, "a directory with data")
                tree.add_dir(name)
            elif fmt == stat.S_IFLNK:
                if info.file_size > tree.limits.max_path_bytes:
                    raise tree.fail(
                        name, f"symlink target longer than {tree.limits.max_path_bytes} bytes"
                    )
                target = _zip_read_all(zf, info, tree)
                tree.add_symlink(
                    name, _text(target, _failer(label, name.encode()), "symlink target")
                )
            elif fmt in (0, stat.S_IFREG):
                with _zip_open(zf, info, tree) as member:
                    tree.add_file(name, unix, info.file_size, _zip_reader(member, name, tree))
            else:
                raise tree.fail(name, "only files, directories and symlinks are allowed")


_ZIP_MAX_VERSION: int = getattr(zipfile, "MAX_EXTRACT_VERSION", 63)
_EOCD = struct.Struct("<4s4H2LH")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")


def _zip_entry_needing(raw: BinaryIO, size: int, limit: int) -> tuple[str, int] | None:
    """The first central directory entry whose version needed to extract is above limit."""
    tail_at = max(0, size - (1 << 16) - _EOCD.size)
    tail = os.pread(raw.fileno(), size - tail_at, tail_at)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        return None
    *_, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, at)
    start = tail_at + at - cd_size  # where the directory is, stub or not
    if start < 0 or cd_offset == 0xFFFFFFFF:
        return None
    directory = os.pread(raw.fileno(), cd_size, start)
    pos = 0
    while pos + _CENTRAL.size <= len(directory):
        record = _CENTRAL.unpack_from(directory, pos)
        if record[0] != b"PK\x01\x02":
            return None
        flags, name_len, extra_len, comment_len = record[5], record[12], record[13], record[14]
        raw_name = directory[pos + _CENTRAL.size : pos + _CENTRAL.size + name_len]
        if record[3] > limit:
            try:
                name = raw_name.decode("utf-8")
            except UnicodeDecodeError:
                name = raw_name.decode("cp437") if not flags & 0x800 else repr(raw_name)
            return name, record[3]
        pos += _CENTRAL.size + name_len + extra_len + comment_len
    return None


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The entry's name, from Info-ZIP's Unicode Path field when the UTF-8 flag is not set.

    zip on Linux may put the UTF-8 name in extra field 0x7075 (Python reads it only from
    3.12 on); zipfile decodes an unflagged name as cp437.
    """
    name = info.filename
    if info.flag_bits & 0x800:
        return name
    extra = info.extra
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if tag == 0x7075 and len(body) > 5 and body[0] == 1:
            try:
                raw = info.orig_filename.encode("cp437")
            except UnicodeEncodeError:
                return name
            if struct.unpack_from("<I", body, 1)[0] == zlib.crc32(raw):
                try:
                    return body[5:].decode("utf-8")
                except UnicodeDecodeError:
                    return name
        pos += 4 + size
    # Info-ZIP without Unicode support, and Go's writer (the reference fetcher's peer), store
    # the bytes as they are: UTF-8 on any current system. cp437 only when that fails.
    try:
        return info.orig_filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return name


def _check_zip_layout(
    raw: BinaryIO, infos: list[zipfile.ZipInfo], start_dir: int, label: str
) -> None:
    """Each local record must end before the next begins: overlapping entries are refused."""
    fd = raw.fileno()
    end_prev = 0
    prev = ""
    for info in sorted(infos, key=lambda i: i.header_offset):
        head = os.pread(fd, _LOCAL.size, info.header_offset)
        if len(head) < _LOCAL.size or head[:4] != b"PK\x03\x04":
            raise ArchiveError(f"{label}: entry {shown(info.filename)}: bad local header")
        _sig, _ver, flags, _meth, _t, _d, _crc, csize, usize, nlen, elen = _LOCAL.unpack(head)
        if info.header_offset < end_prev:
            raise ArchiveError(
                f"{label}: entry {shown(info.filename)}: overlaps entry {shown(prev)} "
                "(a zip bomb or a forged archive)"
            )
        if (
            not flags & 0x08
            and csize != 0xFFFFFFFF
            and usize != 0xFFFFFFFF
            and (csize != info.compress_size or usize != info.file_size)
        ):
            raise ArchiveError(
                f"{label}: entry {shown(info.filename)}: sizes differ between local header "
                "and central directory"
            )
        end_prev = info.header_offset + _LOCAL.size + nlen + elen + info.compress_size
        if flags & 0x08:
            end_prev += 12  # the shortest data descriptor
        prev = info.filename
    if end_prev > start_dir:
        raise ArchiveError(f"{label}: entry {shown(prev)}: overlaps the central directory")


@contextlib.contextmanager
def _zip_open(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: _Tree) -> Iterator[BinaryIO]:
    try:
        member = zf.open(info)
    except (
        zipfile.BadZipFile,
        NotImplementedError,
        RuntimeError,
        OSError,
        ValueError,
        EOFError,
    ) as exc:
        raise tree.fail(info.filename, f"cannot be read ({exc})") from None
    with member:
        yield member  # type: ignore[misc]


def _zip_reader(member: BinaryIO, name: str, tree: _Tree) -> Callable[[int], bytes]:
    def read(n: int) -> bytes:
        try:
            return member.read(n)
        except (
            zipfile.BadZipFile,
            OSError,
            EOFError,
            zlib.error,
            lzma.LZMAError,
            ValueError,
        ) as exc:
            raise tree.fail(name, f"corrupt data ({exc})") from None

    return read


def _zip_read_all(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: _Tree) -> bytes:
    with _zip_open(zf, info, tree) as member:
        data: bytes = _zip_reader(member, info.filename, tree)(info.file_size + 1)
    if len(data) != info.file_size:
        raise tree.fail(info.filename, "size differs from the central directory")
    return data


# --- entry points ---------------------------------------------------------------------


def extract(
    archive: Path,
    dest: Path,
    *,
    kind: str = "auto",
    limits: Limits = Limits(),
    allow_git: bool = False,
    label: str | None = None,
) -> ExtractStats:
    """Extract archive into dest, which must not exist: all of it, or nothing at dest."""
    label = label or str(archive)
    if kind == "auto":
        kind = detect(archive, label=label)
    elif kind not in ("zip", "tar"):
        raise InputError(f"archive type must be zip or tar, not {shown(kind)}")
    if os.path.lexists(dest):
        raise InputError(f"destination {dest} already exists")
    if not dest.parent.is_dir():
        raise InputError(f"destination's directory {dest.parent} does not exist")
    staging = dest.parent / f".{dest.name}.stepkit-{os.urandom(6).hex()}"
    try:
        os.mkdir(staging, 0o700)
    except OSError as exc:
        raise _os_error(exc, f"cannot create {staging}") from None
    try:
        with open(archive, "rb", buffering=CHUNK) as raw:
            size = os.fstat(raw.fileno()).st_size
            cap, reason = expansion_cap(
                limits, size, limits.max_bytes, what="the archive", whole="the archive"
            )
            root_fd = os.open(staging, _DIR_FLAGS)
            tree = _Tree(
                root_fd, limits=limits, cap=cap, cap_reason=reason, allow_git=allow_git, label=label
            )
            try:
                if kind == "zip":
                    _zip_entries(raw, size, tree)
                else:
                    with open_tar_stream(raw, label=label) as stream:
                        _tar_entries(stream, tree)
            finally:
                tree.close()
                os.close(root_fd)
        os.chmod(staging, _DIR_MODE)
        if os.path.lexists(dest):
            raise InputError(f"destination {dest} appeared while extracting")
        os.rename(staging, dest)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _os_error(exc, f"cannot extract {label} into {dest}") from None
        raise
    return tree.stats()


def expansion_cap(
    limits: Limits, size: int, room: int, *, what: str, whole: str
) -> tuple[int, str]:
    """How many bytes `what`, `size` bytes compressed, may write with `room` left, and why not more."""
    by_ratio = max(_MIN_RATIO_FLOOR, int(limits.max_ratio * size))
    if by_ratio < room:
        return by_ratio, (
            f"{what} expands to more than {limits.max_ratio:g} times its size (a compression bomb?)"
        )
    return room, f"{whole} holds more than {limits.max_bytes} bytes"


def _os_error(exc: OSError, what: str) -> StepkitError:
    if isinstance(exc, PermissionError):
        return DeniedError(f"{what}: {exc.strerror}")
    if exc.errno == errno.ENOSPC:
        return StepkitError(f"{what}: no space left on the device")
    return StepkitError(f"{what}: {exc.strerror or exc}")


def place(src: Path, dest: Path) -> None:
    """Move the staged tree src into dest, merging directories and replacing files.

    The whole plan is checked before anything moves: every existing path in dest that the
    tree goes through must be a real directory (a symlink there, planted by an earlier
    source, would send files outside), and no directory may replace a file or the reverse.
    dest itself may be a symlink: the caller chose it. When src is on another filesystem
    (a --staging_folder elsewhere, or a mount inside dest) entries are copied to a temporary
    name in their directory and renamed over, with the same checks.
    """
    if not os.path.lexists(dest):
        try:
            os.rename(src, dest)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise _os_error(exc, f"cannot move {src} to {dest}") from None
        try:
            os.mkdir(dest, _DIR_MODE)
        except OSError as exc:
            raise _os_error(exc, f"cannot create {dest}") from None
    try:
        sfd = os.open(src, _DIR_FLAGS)
        try:
            dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            os.close(sfd)
            raise
    except NotADirectoryError:
        raise ArchiveError(f"{dest} exists and is not a directory") from None
    except OSError as exc:
        raise _os_error(exc, f"cannot open {dest}") from None
    try:
        _place(sfd, dfd, (), dest, act=False)
        _place(sfd, dfd, (), dest, act=True)
    except OSError as exc:
        raise _os_error(exc, f"cannot move files into {dest}") from None
    finally:
        os.close(sfd)
        os.close(dfd)
    shutil.rmtree(src, ignore_errors=True)


def _place(sfd: int, dfd: int, rel: tuple[str, ...], dest: Path, *, act: bool) -> None:
    with os.scandir(sfd) as it:
        names = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in sorted(names):
        path = "/".join((*rel, name))
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None:
            if act:
                _move(sfd, dfd, name)
            continue
        if stat.S_ISLNK(st.st_mode) and is_dir:
            raise ArchiveError(f"{dest}/{path}: refusing to write through a symbolic link")
        if is_dir != stat.S_ISDIR(st.st_mode):
            have, other = ("a directory", "something else") if is_dir else ("a file", "a directory")
            raise ArchiveError(
                f"{dest}/{path}: the archive has {have} where the destination has {other}"
            )
        if not is_dir:
            if act:
                _move(sfd, dfd, name)
            continue
        sub_s = os.open(name, _DIR_FLAGS, dir_fd=sfd)
        try:
            try:
                sub_d = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ArchiveError(
                        f"{dest}/{path}: refusing to write through a symbolic link"
                    ) from None
                raise
            try:
                _place(sub_s, sub_d, (*rel, name), dest, act=act)
            finally:
                os.close(sub_d)
        finally:
            os.close(sub_s)


def _move(sfd: int, dfd: int, name: str) -> None:
    try:
        os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy(sfd, dfd, name)


def _copy(sfd: int, dfd: int, name: str) -> None:
    """Copy one entry across filesystems to a temporary name beside its target, then rename it over."""
    st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
    tmp = f".{name}.stepkit-{os.urandom(6).hex()}"
    try:
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(tmp, 0o700, dir_fd=dfd)
            sub_s = os.open(name, _DIR_FLAGS, dir_fd=sfd)
            try:
                sub_d = os.open(tmp, _DIR_FLAGS, dir_fd=dfd)
                try:
                    for child in os.listdir(sub_s):
                        _copy(sub_s, sub_d, child)
                    os.fchmod(sub_d, stat.S_IMODE(st.st_mode))
                finally:
                    os.close(sub_d)
            finally:
                os.close(sub_s)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=sfd), tmp, dir_fd=dfd)
        else:
            ifd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
            try:
                ofd = os.open(tmp, _FILE_FLAGS, 0o600, dir_fd=dfd)
                try:
                    while data := os.read(ifd, CHUNK):
                        view = memoryview(data)
                        while view:
                            view = view[os.write(ofd, view) :]
                    os.fchmod(ofd, stat.S_IMODE(st.st_mode))
                finally:
                    os.close(ofd)
            finally:
                os.close(ifd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(tmp, dir_fd=dfd)
            else:
                os.unlink(tmp, dir_fd=dfd)
        raise
