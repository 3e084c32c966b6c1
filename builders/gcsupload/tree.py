"""The local side of an upload: walk a directory without following symlinks, refuse what a manifest can't hold, hash."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import io
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.gcsmanifest import GO_MODE_SYMLINK, check_path
from stepkit.validate import has_control, shown

_CHUNK = 1 << 20


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a pipe put in a file's place must not hang the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Item:
    """One regular file or symlink found under the directory; `key` is its manifest path."""

    key: str
    mode: int  # Go os.FileMode as the manifest stores it
    link: bytes | None = None  # a symlink's target: the object's content

    @property
    def is_symlink(self) -> bool:
        return self.link is not None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.key.split("/"))


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


class Root:
    """--dir, opened once; everything below it is opened from this descriptor, one component at
    a time with O_NOFOLLOW, so a directory swapped for a symlink after the scan is never followed.

    The root itself may be a symlink (the user named it); nothing below it is followed. Reading
    by path instead would follow a swapped parent: O_NOFOLLOW guards only the last component.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            raise DeniedError(f"--dir: cannot open {path}: permission denied") from None
        except OSError as exc:
            raise StepkitError(f"--dir: cannot open {path}: {exc.strerror}") from None

    def __enter__(self) -> Root:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def open_dir(self, parts: tuple[str, ...], key: str) -> int:
        """A descriptor of the directory at parts, walked from the root; `key` names the entry
        being read in errors. The caller closes it."""
        fd = os.dup(self.fd)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        # Linux says ENOTDIR for a symlink under O_DIRECTORY|O_NOFOLLOW: look.
                        with contextlib.suppress(OSError):
                            if stat.S_ISLNK(
                                os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                            ):
                                exc = OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    raise _read_error(exc, key, "/".join(parts[:depth])) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


def _read_error(exc: OSError, key: str, component: str) -> StepkitError:
    """The error for a failed open of `component` (a directory on the way to `key`, or key)."""
    if isinstance(exc, PermissionError):
        return DeniedError(f"--dir: cannot read {shown(key)}: permission denied")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        # ELOOP: O_NOFOLLOW met a symlink; ENOTDIR: O_DIRECTORY met something else.
        what = "a symlink" if exc.errno == errno.ELOOP else "not a directory"
        if component == key:
            return StepkitError(
                f"--dir: {shown(key)} was replaced by a symlink while gcs-uploader ran; nothing "
                "outside --dir is read, so run again"
            )
        return StepkitError(
            f"--dir: cannot read {shown(key)}: {shown(component)} is {what} now, it was a "
            "directory when --dir was scanned; nothing outside --dir is read, so run again"
        )
    return StepkitError(f"--dir: cannot read {shown(key)}: {exc.strerror}")


def _key(parts: tuple[str, ...]) -> str:
    rel = "/".join(parts)
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


def _check_link(root: Path, real_root: Path, key: str, target: str) -> bytes:
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
    # (Only the manifest's content depends on this check: a link is stored, never followed.)
    resolved = Path(os.path.realpath(root / key))
    if joined == ".." or joined.startswith("../") or not resolved.is_relative_to(real_root):
        raise InputError(f"{where} points outside --dir ({shown(target)})")
    return data


def walk(root: Root) -> Walked:
    """Every regular file and symlink under root, sorted by key; InputError naming the first unfit one."""
    items: list[Item] = []
    empty: list[str] = []
    real_root = Path(os.path.realpath(root.path))
    stack: list[tuple[str, ...]] = [()]
    while stack:
        parts = stack.pop()
        directory = root.path.joinpath(*parts)
        fd = root.open_dir(parts, "/".join(parts) or ".")
        try:
            # scandir(fd) and its entries' stat() work relative to fd: nothing is looked up
            # by path, so what is listed is the directory that was opened.
            try:
                with os.scandir(fd) as it:
                    entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
            except PermissionError:
                raise DeniedError(
                    f"--dir: cannot read directory {directory}: permission denied"
                ) from None
            except OSError as exc:
                raise StepkitError(
                    f"--dir: cannot read directory {directory}: {exc.strerror}"
                ) from None
            if not entries and parts:
                empty.append(_key(parts))
            for name, st in entries:
                key = _key((*parts, name))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((*parts, name))
                elif stat.S_ISREG(st.st_mode):
                    items.append(Item(key, stat.S_IMODE(st.st_mode) & 0o777))
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=fd)
                    link = _check_link(root.path, real_root, key, target)
                    items.append(Item(key, GO_MODE_SYMLINK | 0o777, link))
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
        finally:
            os.close(fd)
    items.sort(key=lambda i: i.key)
    empty.sort()
    return Walked(items, empty)


def hash_item(root: Root, item: Item) -> Hashed:
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
    with open_regular(root, item) as f:
        while chunk := f.read(_CHUNK):
            sha1.update(chunk)
            crc.update(chunk)
            size += len(chunk)
    return Hashed(item, sha1.hexdigest(), int.from_bytes(crc.digest(), "big"), size)


def open_regular(root: Root, item: Item) -> io.FileIO:
    """Open a file found by walk, through directory descriptors from the root; refused if it, or
    a directory on its way, was swapped for a symlink (or a pipe or device) since."""
    parts = item.parts
    dir_fd = root.open_dir(parts[:-1], item.key)
    try:
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise _read_error(exc, item.key, item.key) from None
    finally:
        os.close(dir_fd)
    f = io.FileIO(fd, "rb", closefd=True)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise StepkitError(f"--dir: {shown(item.key)} stopped being a regular file")
    return f
