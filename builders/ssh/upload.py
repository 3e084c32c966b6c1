"""Uploads: what `-upload SRC=DEST` sends, planned in full before a byte goes out.

A source is a file or a directory inside the workspace. A directory is sent with its tree:
directories and files keep their permission bits (setuid, setgid and sticky dropped),
symbolic links that stay inside the source are recreated as links, and a link that leads
out of it (absolute, or `..` past the top, or through another link) refuses the whole
upload before anything is sent: following it could ship `$HOME/.ssh` or a mounted secret.
Named pipes, sockets and devices are refused too. Each file is written to a temporary
name beside its destination and renamed into place, so a failed upload leaves no
half-written file under the real name.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from stepkit.errors import InputError
from stepkit.validate import has_control, shown

PERMISSION_BITS = 0o777


@dataclass(frozen=True)
class Upload:
    """One `-upload SRC=DEST` as given: the source resolved in the workspace, the remote path."""

    source: Path
    dest: str
    given: str  # SRC as the user wrote it, for messages


@dataclass(frozen=True)
class Entry:
    """One thing to create remotely: a directory, a file or a symlink, at dest (a remote path)."""

    kind: str  # "dir", "parent" (a directory made only when missing), "file", "link"
    dest: str
    mode: int = 0
    local: Path | None = None  # a file's content
    target: str = ""  # a link's target, relative


def parse(value: str, workspace: Path) -> Upload:
    """`SRC=DEST`, split at the first `=`; SRC must be inside the workspace."""
    where = f"--upload {shown(value)}"
    src, sep, dest = value.partition("=")
    if not sep or not src or not dest:
        raise InputError(f"{where}: give SRC=DEST (a local path, '=', a remote path)")
    if has_control(value):
        raise InputError(f"{where}: control characters are not allowed")
    root = workspace.resolve()
    path = Path(os.path.abspath(workspace / src))
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise InputError(f"{where}: {shown(src)} does not exist in the workspace") from None
    except (OSError, RuntimeError):
        raise InputError(f"{where}: {shown(src)} cannot be resolved") from None
    if not real.is_relative_to(root):
        raise InputError(
            f"{where}: {shown(src)} is outside the workspace {root} "
            "(a symbolic link out of it, or an absolute path elsewhere)"
        )
    return Upload(source=real, dest=dest, given=src)


def _remote_join(base: str, rel: PurePosixPath) -> str:
    return str(PurePosixPath(base) / rel) if rel.parts else base


def plan(upload: Upload) -> list[Entry]:
    """The entries to create, parents before children; InputError when the source cannot be sent as it is."""
    where = f"--upload {shown(upload.given)}"
    top = upload.source
    info = top.lstat()
    if stat.S_ISREG(info.st_mode):
        dest = upload.dest
        if dest.endswith("/"):
            dest = dest + top.name
        entries = []
        parent = str(PurePosixPath(dest).parent)
        if parent not in ("", "."):
            entries.append(Entry("parent", parent))  # made when missing, left as it is if not
        entries.append(Entry("file", dest, stat.S_IMODE(info.st_mode) & PERMISSION_BITS, local=top))
        return entries
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{where}: not a regular file or directory")
    base = upload.dest.rstrip("/") or "/"
    entries = [Entry("dir", base, stat.S_IMODE(info.st_mode) & PERMISSION_BITS)]
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = here / name
            rel = PurePosixPath(path.relative_to(top).as_posix())
            shown_rel = shown(rel.as_posix())
            if has_control(name):
                raise InputError(f"{where}: {shown_rel} has control characters in its name")
            st = path.lstat()
            dest = _remote_join(base, rel)
            mode = stat.S_IMODE(st.st_mode) & PERMISSION_BITS
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry("link", dest, target=_inside_link(path, top, where)))
                if name in dirnames:
                    dirnames.remove(name)  # os.walk lists a link to a directory as one
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry("dir", dest, mode))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry("file", dest, mode, local=path))
            else:
                raise InputError(
                    f"{where}: {shown_rel} is not a regular file, directory or symbolic link"
                )
    return entries


def _inside_link(path: Path, top: Path, where: str) -> str:
    """A symlink's target when it, and every link it goes through, stays inside top."""
    target = os.readlink(path)
    rel = shown(path.relative_to(top).as_posix())
    if os.path.isabs(target):
        raise InputError(
            f"{where}: symbolic link {rel} points to an absolute path; refusing to upload it"
        )
    try:
        real = path.resolve(strict=False)
    except (OSError, RuntimeError):
        raise InputError(f"{where}: symbolic link {rel} cannot be resolved (a loop?)") from None
    lexical = Path(os.path.normpath(path.parent / target))
    if not (real.is_relative_to(top) and lexical.is_relative_to(top)):
        raise InputError(
            f"{where}: symbolic link {rel} leads out of the uploaded directory; "
            "refusing to upload it"
        )
    return target
