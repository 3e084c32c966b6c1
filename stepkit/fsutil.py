"""Writing files below a root directory safely: never through a symlink, final mode from creation, atomic."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath
from types import TracebackType

from stepkit.errors import DeniedError, InputError, StepkitError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(rel: str) -> tuple[str, ...]:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", ".") for p in parts):
        raise ValueError(f"not a plain relative path: {rel!r}")
    return parts


class SafeTree:
    """A directory opened once; every path below it is walked with O_NOFOLLOW, one component at a time.

    The root itself may be a symlink (the pod or the admin chose it); nothing below it may be.
    """

    def __init__(self, root: Path, *, create: bool = True, label: str | None = None) -> None:
        self.root = root
        self.label = label or str(root)
        if create:
            try:
                os.makedirs(root, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise DeniedError(f"cannot create {self.label}: {exc.strerror}") from None
        try:
            self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise DeniedError(f"cannot open {self.label}: {exc.strerror}") from None

    def __enter__(self) -> SafeTree:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _name(self, rel: str) -> str:
        return f"{self.label}/{rel}"

    def _open_dir(self, parts: tuple[str, ...], *, create: bool, mode: int) -> int | None:
        """Open the directory chain; None when a component is missing and create is False."""
        fd = os.dup(self._fd)
        walked: list[str] = []
        try:
            for part in parts:
                walked.append(part)
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, mode, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise InputError(
                            f"refusing to use {self._name('/'.join(walked))}: it is a symbolic "
                            "link or not a directory"
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
                if create:
                    # mkdir honours the umask and an existing directory keeps its mode:
                    # set the mode we promise either way.
                    os.fchmod(fd, mode)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def check_writable(self, rel: str) -> None:
        """Fail now, before anything is written, if rel could not be written safely later."""
        parts = _parts(rel)
        try:
            fd = self._open_dir(parts[:-1], create=False, mode=0o700)
        except PermissionError as exc:
            raise DeniedError(f"cannot open {self._name(rel)}: {exc.strerror}") from None
        if fd is None:
            return
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        finally:
            os.close(fd)
        if stat.S_ISLNK(st.st_mode):
            raise InputError(f"refusing to write {self._name(rel)}: it is a symbolic link")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"refusing to write {self._name(rel)}: it is not a regular file")

    def read(self, rel: str, *, limit: int = 4 << 20) -> bytes | None:
        """A regular file's bytes, or None when it does not exist; a symlink is refused."""
        parts = _parts(rel)
        fd = self._open_dir(parts[:-1], create=False, mode=0o700)
        if fd is None:
            return None
        try:
            try:
                ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise InputError(
                        f"refusing to read {self._name(rel)}: it is a symbolic link"
                    ) from None
                raise
            with os.fdopen(ffd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise InputError(f"refusing to read {self._name(rel)}: not a regular file")
                data = fh.read(limit + 1)
            if len(data) > limit:
                raise InputError(f"{self._name(rel)} is larger than {limit} bytes")
            return data
        finally:
            os.close(fd)

    def write(
        self,
        rel: str,
        data: bytes,
        *,
        mode: int = 0o600,
        dir_mode: int = 0o700,
        durable: bool = False,
    ) -> None:
        """Create or replace rel atomically, with `mode` from the first byte on.

        durable adds fsync of the file and its directory. Credentials don't need it: the
        steps that read them share this page cache, and a node that crashes takes the pod
        with it; results do, since the kubelet reads them after the container has exited.
        """
        parts = _parts(rel)
        try:
            fd = self._open_dir(parts[:-1], create=True, mode=dir_mode)
        except PermissionError as exc:
            raise DeniedError(f"cannot create {self._name(rel)}: {exc.strerror}") from None
        assert fd is not None
        name = parts[-1]
        tmp = f".{name}.stepkit-{os.urandom(6).hex()}"
        try:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise InputError(
                        f"refusing to write {self._name(rel)}: it is a symbolic link or not a "
                        "regular file"
                    )
            except FileNotFoundError:
                pass
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            ffd = os.open(tmp, flags, mode, dir_fd=fd)
            try:
                os.fchmod(ffd, mode)  # the umask may have taken bits away
                view = memoryview(data)
                while view:
                    view = view[os.write(ffd, view) :]
                if durable:
                    os.fsync(ffd)
            finally:
                os.close(ffd)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            if durable:
                os.fsync(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            if isinstance(exc, PermissionError):
                raise DeniedError(f"cannot write {self._name(rel)}: {exc.strerror}") from None
            if isinstance(exc, OSError) and not isinstance(exc, StepkitError):
                raise StepkitError(f"cannot write {self._name(rel)}: {exc.strerror}") from None
            raise
        finally:
            os.close(fd)


def scratch_dir(prefix: str) -> Path:
    """A new private (0700) directory for one run's temporary files; the caller removes it.

    $TMPDIR, /tmp and /var/tmp in that order, then $HOME: in a pod with a read-only root
    filesystem only the mounted volumes are writable, and Python's own fallback, the working
    directory, is the workspace the helper is filling.
    """
    import tempfile  # lazy: creds-init imports this module and never needs it (start-up time)

    candidates = [os.environ.get("TMPDIR", ""), "/tmp", "/var/tmp", os.environ.get("HOME", "")]
    failures = []
    for base in candidates:
        if not base or not os.path.isabs(base):
            continue
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        except OSError as exc:
            failures.append(f"{base}: {exc.strerror}")
    raise StepkitError("no writable directory for temporary files (" + "; ".join(failures) + ")")
