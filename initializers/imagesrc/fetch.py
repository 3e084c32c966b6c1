"""image-fetcher's work: resolve, then fetch and apply one verified layer at a time in private staging, then place."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from initializers.imagesrc.spec import ImageSpec
from stepkit.errors import StepkitError
from stepkit.staging import staging_dir
from stepkit.validate import shown

log = logging.getLogger(__name__)

# A progress line this often during long work; STEPKIT_IMAGE_PROGRESS_SECONDS overrides it.
PROGRESS_SECONDS = 5.0
STAGING_PREFIX = ".stepkit-image-"
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
