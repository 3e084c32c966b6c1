"""image-fetcher's work: resolve, then fetch and apply one verified layer at a time in private staging, then place."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from initializers.imagesrc.spec import ImageSpec
from stepkit.errors import DeniedError, StepkitError
from stepkit.validate import shown

log = logging.getLogger(__name__)

# A progress line this often during long work; STEPKIT_IMAGE_PROGRESS_SECONDS overrides it.
PROGRESS_SECONDS = 5.0
STAGING_PREFIX = ".stepkit-image-"
# What tempfile.mkdtemp names a staging directory: the prefix and 8 of its characters.
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"[a-z0-9_]{8}")
# Held (flock) by the run that owns the staging directory for as long as it lives: the kernel
# lets go of it when the process dies, SIGKILL included, so a lock that can be taken marks a
# dead run's leftovers. It only ever appears under this name already locked.
_LOCK = ".lock"
_MIB = 1 << 20


@dataclass
class Progress:
    """What the progress lines and the summary report; written by the main thread only."""

    layers: int = 0
    layers_done: int = 0
    phase: str = "resolving"
    bytes: int = 0  # layer bytes received so far
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, count: int) -> None:
        with self.lock:
            self.bytes += count

    def line(self, last_bytes: int, last_time: float) -> tuple[int, float]:
        now = time.monotonic()
        with self.lock:
            done, received, phase = self.layers_done, self.bytes, self.phase
        rate = (received - last_bytes) / max(now - last_time, 1e-6) / _MIB
        log.info(
            "progress: %s, %d of %d layers done, %s received, %.1f MiB/s",
            phase,
            done,
            self.layers,
            _size(received),
            rate,
        )
        return received, now


def _size(count: int) -> str:
    return f"{count / _MIB:.1f} MiB" if count >= _MIB else f"{count / 1024:.1f} KiB"


@contextmanager
def _ticker(progress: Progress) -> Iterator[None]:
    """A daemon thread logging a progress line every few seconds until the block ends."""
    stop = threading.Event()
    interval = _progress_interval()

    def tick() -> None:
        last_bytes, last_time = 0, time.monotonic()
        while not stop.wait(interval):
            last_bytes, last_time = progress.line(last_bytes, last_time)

    thread = threading.Thread(target=tick, name="image-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(1.0)


def _progress_interval() -> float:
    try:
        value = float(os.environ.get("STEPKIT_IMAGE_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS
    return value if value > 0 else PROGRESS_SECONDS


def _remove_tree(path: Path) -> None:
    """Remove staging whatever the image's modes made of it (a 0555 directory blocks rmtree)."""

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


def _staging_parent(dest: Path) -> Path:
    """Where the private staging directory goes: inside dest when it exists, so every rename
    into place stays on one filesystem (the workspace is usually a mount of its own); else
    the nearest directory above dest that exists."""
    parent = dest
    while not parent.is_dir():
        parent = parent.parent
    return parent


def _lock_staging(work: Path) -> int | None:
    """Lock a new staging directory as this run's; the descriptor holds the lock until closed.

    None where the filesystem has no locks (an NFS mount with nolock): the run goes on, and
    its staging, having no lock file, is one a later run leaves alone.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(work / f"{_LOCK}.new", flags, 0o600)
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
        os.rename(work / f"{_LOCK}.new", work / _LOCK)
    except BaseException:
        with suppress(OSError):
            os.close(fd)
        raise
    return fd


def _remove_dead_staging(parent: Path) -> None:
    """Remove the staging directories in parent that runs killed before they could (SIGKILL,
    an OOM kill, a node lost): ours by name, owner and lock file, whose lock nobody holds.

    Nothing else is touched: not a symlink, a file or another user's directory named like
    staging, not one without its lock file, and never a live run's (its lock is held).
    """
    try:
        names = os.listdir(parent)
    except OSError:
        return
    me = os.geteuid()
    for name in names:
        if not _STAGING_NAME.fullmatch(name):
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
                lfd = os.open(_LOCK, lock_flags, dir_fd=dfd)
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
                _remove_tree(path)
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


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A private directory removed on every exit, Ctrl-C and SIGTERM included; one that a
    killed run could not remove is removed by the next run (see _remove_dead_staging)."""
    parent = _staging_parent(dest)
    _remove_dead_staging(parent)
    try:
        work = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    except PermissionError as exc:
        raise DeniedError(
            f"--dest_dir: cannot create a staging directory in {shown(str(parent))}: {exc.strerror}"
        ) from None
    except OSError as exc:
        raise StepkitError(
            f"--dest_dir: cannot create a staging directory in {shown(str(parent))}: {exc.strerror}"
        ) from None
    try:
        lock = _lock_staging(work)
    except OSError as exc:
        _remove_tree(work)
        raise StepkitError(f"cannot lock the staging directory {work}: {exc.strerror}") from None
    try:
        yield work
    finally:
        try:
            _remove_tree(work)
        finally:
            if lock is not None:
                os.close(lock)


def _count(root: Path) -> tuple[int, int]:
    """Files (symlinks included) and bytes of the exported tree, for the summary."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            files += 1
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return files, size


def _docker_config() -> Path | None:
    """Where docker (and creds-init) keep credentials: $DOCKER_CONFIG/config.json, else $HOME/.docker."""
    if os.environ.get("DOCKER_CONFIG"):
        return Path(os.environ["DOCKER_CONFIG"]) / "config.json"
    home = os.environ.get("HOME")
    return Path(home) / ".docker" / "config.json" if home else None


def _place(out: Path, dest: Path) -> None:
    from stepkit import archive

    if not dest.exists():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StepkitError(
                f"--dest_dir: cannot create {shown(str(dest.parent))}: {exc.strerror}"
            ) from None
    archive.place(out, dest)


def run(spec: ImageSpec) -> int:
    """Fetch spec.reference's filesystem (spec.path of it) into spec.dest; 0 on success."""
    from stepkit.oci.layers import RootFs
    from stepkit.oci.registry import RegistryClient

    started = time.monotonic()
    progress = Progress()
    client = RegistryClient(
        docker_config=_docker_config(),
        insecure=spec.insecure,
        token_realm_hosts=spec.token_realm_hosts,
        ca_file=spec.ca_file,
        retries=spec.retries,
        timeout=spec.timeout,
    )
    try:
        with _staging(spec.dest) as work, _ticker(progress):
            image = client.resolve(spec.reference, spec.platform)
            shown_image = f"{image.reference.registry}/{image.reference.repository}@{image.digest}"
            progress.layers = len(image.layers)
            log.info(
                "Fetching %s (%s, %d layers, %s).",
                shown_image,
                spec.platform,
                len(image.layers),
                _size(sum(layer.size for layer in image.layers)),
            )
            root = work / "rootfs"
            root.mkdir()
            rootfs = RootFs(root, allow_git=spec.allow_git)
            blob = work / "layer"
            for index, layer in enumerate(image.layers):
                label = f"layer {index + 1} of {len(image.layers)} ({layer.digest})"
                progress.phase = f"downloading {label}"
                client.fetch_blob(image.reference, layer, blob, progress=progress.add)
                progress.phase = f"applying {label}"
                rootfs.apply(blob, media_type=layer.media_type, label=label)
                # Only one layer file on disk at a time: the rootfs holds what counts.
                blob.unlink()
                progress.layers_done = index + 1
            progress.phase = f"exporting {spec.path}"
            # A directory's contents, or a file as the one entry of `out`.
            out = work / "out"
            rootfs.export(spec.path, out)
            files, size = _count(out)
            progress.phase = f"placing into {spec.dest}"
            _place(out, spec.dest)
        if spec.termination_path or spec.results_dir:
            from stepkit.results import write_results

            write_results(
                {"digest": image.digest, "image": shown_image},
                termination_path=spec.termination_path,
                results_dir=spec.results_dir,
            )
    finally:
        client.close()
    log.info(
        "Fetched %s%s into %s: %d layers, %d files, %s received, %s extracted, %.1f s.",
        shown_image,
        "" if spec.path == "/" else f" {spec.path}",
        spec.dest,
        len(image.layers),
        files,
        _size(progress.bytes),
        _size(size),
        time.monotonic() - started,
    )
    return 0
