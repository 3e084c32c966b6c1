"""Private staging directories that go on every exit, and that the next run removes when a killed run could not."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from stepkit.errors import DeniedError, StepkitError
from stepkit.validate import shown

log = logging.getLogger(__name__)

# Held (flock) by the run that owns the staging directory for as long as it lives: the kernel
# lets go of it when the process dies, SIGKILL included, so a lock that can be taken marks a
# dead run's leftovers. It only ever appears under this name already locked.
LOCK = ".lock"
# A concurrent run may remove an empty parent between our making it and our mkdtemp in it.
_CREATE_ATTEMPTS = 3


def remove_tree(path: Path) -> None:
    """Remove a directory tree whatever modes were given to it (a 0555 directory blocks
    rmtree); a symlink or file in its place is unlinked, never followed. Best effort: what
    cannot be removed stays, and the caller checks if it must."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            os.unlink(path)
            return
    except OSError:
        return

    def retry(func: Callable[..., Any], name: str, _exc: Any) -> None:
        parent = os.path.dirname(name)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if func is not os.rmdir and os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, stat.S_IRWXU)
            func(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _name_pattern(prefix: str) -> re.Pattern[str]:
    """What tempfile.mkdtemp names a directory: the prefix and 8 of its characters."""
    return re.compile(re.escape(prefix) + r"[a-z0-9_]{8}")


class Staging:
    """A run's staging directory, locked as the run's own until the run ends."""

    def __init__(self, path: Path, lock: int | None) -> None:
        self.path = path
        self._lock = lock
        self.kept = False

    def keep(self) -> None:
        """Leave the directory in place at exit, as a plain directory: without its lock file,
        no later run takes it for a dead run's staging."""
        with suppress(FileNotFoundError):
            os.unlink(self.path / LOCK)
        self.kept = True

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _lock(work: Path) -> int | None:
    """Lock a new staging directory as this run's; the descriptor holds the lock until closed.

    None where the filesystem has no locks (an NFS mount with nolock): the run goes on, and
    its staging, having no lock file, is one a later run leaves alone.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(work / f"{LOCK}.new", flags, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            log.warning(
                "cannot lock the staging directory %s (%s): if this run is killed, "
                "a later one will not remove it",
                work,
                exc.strerror,
            )
            os.close(fd)
            return None
        # Renamed only once locked: another run never finds the lock free while we live.
        os.rename(work / f"{LOCK}.new", work / LOCK)
    except BaseException:
        with suppress(OSError):
            os.close(fd)
        raise
    return fd


def remove_dead(parent: Path, prefix: str) -> None:
    """Remove the staging directories in parent that runs killed before they could (SIGKILL,
    an OOM kill, a node lost): ours by name, owner and lock file, whose lock nobody holds.

    Nothing else is touched: not a symlink, a file or another user's directory named like
    staging, not one without its lock file (a kept one among them), and never a live run's
    (its lock is held).
    """
    try:
        names = os.listdir(parent)
    except OSError:
        return
    pattern = _name_pattern(prefix)
    me = os.geteuid()
    for name in names:
        if not pattern.fullmatch(name):
            continue
        path = parent / name
        try:
            seen = os.lstat(path)
            if not stat.S_ISDIR(seen.st_mode) or seen.st_uid != me:
                continue
            dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            opened = os.fstat(dfd)
            if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
                continue
            lock_flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                lfd = os.open(LOCK, lock_flags, dir_fd=dfd)
            except OSError:
                continue  # no lock file (or a symlink in its place): nothing says it is ours
            try:
                lock = os.fstat(lfd)
                if not stat.S_ISREG(lock.st_mode) or lock.st_uid != me:
                    continue
                try:
                    fcntl.flock(lfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live run holds it
                now = os.lstat(path)
                if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
                    continue
                remove_tree(path)
            finally:
                os.close(lfd)
        except OSError:
            continue
        finally:
            os.close(dfd)
        if os.path.lexists(path):
            log.warning("could not remove all of %s, left by an earlier run", path)
        else:
            log.warning("removed %s, the staging directory left by an earlier run", path)


def _make_parents(parent: Path, flag: str) -> list[Path]:
    """Create parent and what is missing above it; the directories created, deepest first."""
    created: list[Path] = []
    missing = parent
    while not missing.exists() and not missing.is_symlink():
        created.append(missing)
        missing = missing.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(exc, f"{flag}: cannot create {shown(str(parent))}") from None
    return created


def _error(exc: OSError, message: str) -> StepkitError:
    text = f"{message}: {exc.strerror}"
    return DeniedError(text) if exc.errno in (errno.EACCES, errno.EPERM) else StepkitError(text)


@contextmanager
def staging_dir(
    parent: Path,
    prefix: str,
    *,
    flag: str,
    create_parent: bool = False,
    remove_empty_parent: bool = False,
) -> Iterator[Staging]:
    """A private directory `prefix`XXXXXXXX in parent, locked as this run's and removed on every
    exit (Ctrl-C and SIGTERM included) unless kept; dead runs' directories of the same prefix
    are removed first, since a SIGKILLed run could not remove its own.

    `create_parent` makes parent (and what is missing above it) and removes, at exit, those
    it made that are empty by then. `remove_empty_parent` removes parent at exit when it is
    empty whoever made it: for a folder that is the tool's own by convention, which is how
    a folder left by a killed run goes too. `flag` names the option errors are about.
    """
    remove_dead(parent, prefix)
    created: list[Path] = []
    for attempt in range(_CREATE_ATTEMPTS):
        if create_parent:
            created = _make_parents(parent, flag) or created
        try:
            work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            break
        except FileNotFoundError as exc:
            if not create_parent or attempt + 1 == _CREATE_ATTEMPTS:
                raise _error(exc, _in(flag, parent)) from None
        except OSError as exc:
            raise _error(exc, _in(flag, parent)) from None
    try:
        lock = _lock(work)
    except OSError as exc:
        remove_tree(work)
        raise StepkitError(f"cannot lock the staging directory {work}: {exc.strerror}") from None
    staging = Staging(work, lock)
    try:
        yield staging
    finally:
        try:
            if not staging.kept:
                remove_tree(work)
                # Deepest first, up to the first that is not empty (another run's is in it).
                for path in created or ([parent] if remove_empty_parent else []):
                    try:
                        path.rmdir()
                    except OSError:
                        break
        finally:
            staging._release()


def _in(flag: str, parent: Path) -> str:
    return f"{flag}: cannot create a staging directory in {shown(str(parent))}"
