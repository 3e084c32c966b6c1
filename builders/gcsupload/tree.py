"""The local side of an upload: walk a directory without following symlinks, refuse what a manifest can't hold, hash."""

from __future__ import annotations

import errno
import hashlib
import importlib
import io
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.gcsmanifest import GO_MODE_SYMLINK, check_path
from stepkit.validate import has_control, shown

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Item:
    """One regular file or symlink found under the directory; `key` is its manifest path."""

    key: str
    path: Path
    mode: int  # Go os.FileMode as the manifest stores it
    link: bytes | None = None  # a symlink's target: the object's content

    @property
    def is_symlink(self) -> bool:
        return self.link is not None


@dataclass(frozen=True)
class Hashed:
    item: Item
    sha1: str
    crc32c: int
    size: int


@dataclass(frozen=True)
class Walked:
    items: list[Item]
    empty_dirs: list[str]


def _key(root: Path, path: Path) -> str:
    rel = path.relative_to(root).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        # os.fsdecode keeps undecodable bytes as surrogates; JSON can't carry them.
        shown_name = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(f"--dir: file name {shown(shown_name)} is not valid UTF-8") from None
    if has_control(rel) or "\\" in rel:
        raise InputError(
            f"--dir: file name {shown(rel)} holds a control character or backslash, "
            "which a manifest path cannot carry"
        )
    check_path(rel, what="--dir")
    return rel


def _check_link(root: Path, real_root: Path, key: str, path: Path, target: str) -> bytes:
    where = f"--dir: symlink {shown(key)}"
    try:
        data = target.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{where}: its target is not valid UTF-8") from None
    if not target or has_control(target) or "\\" in target:
        raise InputError(f"{where}: its target is empty or holds a control character or backslash")
    if target.startswith("/"):
        raise InputError(f"{where} points to an absolute path; only links inside --dir are kept")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(key), target))
    # Lexically inside is not enough: `d/up -> ..` then `d/x -> up/..` stays inside on
    # paper but leaves through the first link, so the resolved path is checked as well.
    resolved = Path(os.path.realpath(path))
    if joined == ".." or joined.startswith("../") or not resolved.is_relative_to(real_root):
        raise InputError(f"{where} points outside --dir ({shown(target)})")
    return data


def walk(root: Path) -> Walked:
    """Every regular file and symlink under root, sorted by key; InputError naming the first unfit one."""
    items: list[Item] = []
    empty: list[str] = []
    real_root = Path(os.path.realpath(root))
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except PermissionError:
            raise DeniedError(
                f"--dir: cannot read directory {directory}: permission denied"
            ) from None
        except OSError as exc:
            raise StepkitError(
                f"--dir: cannot read directory {directory}: {exc.strerror}"
            ) from None
        if not entries and directory != root:
            empty.append(_key(root, directory))
        for entry in entries:
            path = Path(entry.path)
            key = _key(root, path)
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                items.append(Item(key, path, stat.S_IMODE(st.st_mode) & 0o777))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                link = _check_link(root, real_root, key, path, target)
                items.append(Item(key, path, GO_MODE_SYMLINK | 0o777, link))
            else:
                kind = (
                    "a named pipe"
                    if stat.S_ISFIFO(st.st_mode)
                    else "a socket"
                    if stat.S_ISSOCK(st.st_mode)
                    else "a device"
                )
                raise InputError(
                    f"--dir: {shown(key)} is {kind}; only regular files and symlinks can be uploaded"
                )
    items.sort(key=lambda i: i.key)
    empty.sort()
    return Walked(items, empty)


def hash_item(item: Item) -> Hashed:
    """SHA-1 (the object's name) and CRC32C (to check what the server stored) of one item's content."""
    # Through importlib: google-crc32c ships no type information.
    google_crc32c: Any = importlib.import_module("google_crc32c")
    if item.link is not None:
        return Hashed(
            item,
            hashlib.sha1(item.link, usedforsecurity=False).hexdigest(),
            google_crc32c.value(item.link),
            len(item.link),
        )
    sha1 = hashlib.sha1(usedforsecurity=False)
    crc = google_crc32c.Checksum()
    size = 0
    with open_regular(item) as f:
        while chunk := f.read(_CHUNK):
            sha1.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return Hashed(item, sha1.hexdigest(), int.from_bytes(crc.digest(), "big"), size)


def open_regular(item: Item) -> io.FileIO:
    """Open a file found by walk, refusing it if it was swapped for a symlink, pipe or device since."""
    try:
        # O_NONBLOCK: a pipe put in the file's place must not hang the open.
        fd = os.open(item.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        raise DeniedError(f"--dir: cannot read {shown(item.key)}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StepkitError(
                f"--dir: {shown(item.key)} became a symlink while it was being uploaded"
            ) from None
        raise StepkitError(f"--dir: cannot read {shown(item.key)}: {exc.strerror}") from None
    f = io.FileIO(fd, "rb", closefd=True)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise StepkitError(f"--dir: {shown(item.key)} stopped being a regular file")
    return f
