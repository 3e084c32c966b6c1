"""image-fetcher's work: resolve, then fetch layers and apply each verified one in order in private staging, then place.

Layers download in order, PARALLEL_DOWNLOADS at a time and at most LAYERS_AHEAD beyond the
one being applied, each into its own file in the staging directory, while the main thread
applies the earlier ones in the image's order: a
layer is applied only once its whole blob is on disk and its size and digest checked, and
its decompression limits hold while it is applied. Nothing reaches --dest_dir before every
layer has been applied; a failure of any layer (a download or applying one) stops the
others and leaves the destination as it was.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from initializers.imagesrc.spec import ImageSpec
from stepkit.errors import StepkitError
from stepkit.staging import staging_dir
from stepkit.validate import shown

if TYPE_CHECKING:
    from stepkit.oci.layers import RootFs
    from stepkit.oci.registry import Image, RegistryClient

log = logging.getLogger(__name__)

# A progress line this often during long work; STEPKIT_IMAGE_PROGRESS_SECONDS overrides it.
PROGRESS_SECONDS = 5.0
STAGING_PREFIX = ".stepkit-image-"
_MIB = 1 << 20
# Layer blobs downloading or downloaded and waiting, at most; so at most this many
# compressed layers are on disk beside the rootfs (skopeo downloads up to 6 at once).
LAYERS_AHEAD = 3
# Of those, downloading at the same time, started in the image's order: layer 1 shares the
# bandwidth with one other download only, so applying can begin early, while a second
# stream hides a request's round trip when layers are small.
PARALLEL_DOWNLOADS = 2


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


def _staging_parent(dest: Path) -> Path:
    """Where the private staging directory goes: inside dest when it exists, so every rename
    into place stays on one filesystem (the workspace is usually a mount of its own); else
    the nearest directory above dest that exists."""
    parent = dest
    while not parent.is_dir():
        parent = parent.parent
    return parent


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A private directory removed on every exit; one a killed run left is removed by the next."""
    with staging_dir(_staging_parent(dest), STAGING_PREFIX, flag="--dest_dir") as staging:
        yield staging.path


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


class _Cancelled(BaseException):
    """Raised inside a download's progress callback once the pull has failed or ended: stop."""


class _Download:
    """One layer blob downloading in a daemon thread into its own file (a stalled download
    must not keep the process alive after the pull has failed or been interrupted)."""

    def __init__(self, target: Callable[[], None], name: str, changed: threading.Condition) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._target = target
        self._changed = changed
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:  # handed to the main thread, which raises it
            self.error = exc
        finally:
            with self._changed:
                self.done.set()
                self._changed.notify_all()


def _pull_layers(
    client: RegistryClient, image: Image, work: Path, rootfs: RootFs, progress: Progress
) -> None:
    """Download the image's layers in order, PARALLEL_DOWNLOADS at a time and at most LAYERS_AHEAD
    beyond the one being applied, applying each in order once verified."""
    blobs = work / "layers"
    blobs.mkdir()
    layers = image.layers
    count = len(layers)
    stop = threading.Event()
    changed = threading.Condition()
    turn = [0]  # the next layer whose download may start
    active = [0]  # downloads running

    def received(n: int) -> None:
        if stop.is_set():
            raise _Cancelled
        progress.add(n)

    def start(index: int) -> _Download:
        path = blobs / str(index)

        def fetch() -> None:
            with changed:
                while turn[0] != index or active[0] >= PARALLEL_DOWNLOADS:
                    if stop.is_set():
                        raise _Cancelled
                    changed.wait()
                turn[0] += 1
                active[0] += 1
            try:
                client.fetch_blob(image.reference, layers[index], path, progress=received)
            finally:
                with changed:
                    active[0] -= 1
                    changed.notify_all()

        return _Download(fetch, f"layer-{index + 1}", changed)

    downloads: dict[int, _Download] = {}
    try:
        for index in range(min(LAYERS_AHEAD, count)):
            downloads[index] = start(index)
        for index, layer in enumerate(layers):
            label = f"layer {index + 1} of {count} ({layer.digest})"
            progress.phase = f"downloading {label}"
            with changed:
                # Wake for this layer's end or any failure: a later layer's bad digest stops
                # the pull without waiting for this one.
                while not downloads[index].done.is_set():
                    _raise_first_failure(downloads)
                    changed.wait(1.0)
            _raise_first_failure(downloads)
            del downloads[index]
            progress.phase = f"applying {label}"
            path = blobs / str(index)
            rootfs.apply(path, media_type=layer.media_type, label=label)
            # Only the rootfs counts once applied; the window moves on by one layer.
            path.unlink()
            progress.layers_done = index + 1
            if index + LAYERS_AHEAD < count:
                downloads[index + LAYERS_AHEAD] = start(index + LAYERS_AHEAD)
    finally:
        with changed:
            stop.set()
            changed.notify_all()
        # Downloads that see `stop` end at their next chunk; one stalled in a read cannot
        # be waited for (its thread is a daemon; its file goes with the staging directory).
        deadline = time.monotonic() + 2.0
        for download in downloads.values():
            download.done.wait(max(0.0, deadline - time.monotonic()))


def _raise_first_failure(downloads: dict[int, _Download]) -> None:
    """The error of the earliest layer whose download failed, if any has."""
    for index in sorted(downloads):
        download = downloads[index]
        if download.done.is_set() and download.error is not None:
            raise download.error


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
            _pull_layers(client, image, work, rootfs, progress)
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
