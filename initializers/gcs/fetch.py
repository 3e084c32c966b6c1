"""gcs-fetcher's work: download into a private staging directory, verify, extract, then move into place."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import queue
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from initializers.gcs.spec import DEFAULT_STAGING, FetchSpec, check_bucket
from stepkit import gcsmanifest
from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.gcs import GcsClient, Location, TransientError, parse_goog_hash
from stepkit.staging import remove_tree, staging_dir
from stepkit.validate import shown

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# A progress line this often during long work; STEPKIT_GCS_PROGRESS_SECONDS overrides it.
PROGRESS_SECONDS = 5.0
MAX_MANIFEST_BYTES = 64 << 20
MAX_SYMLINK_TARGET = 4096
CONNECT_TIMEOUT = 30.0
# Objects at least this big are fetched as parallel byte ranges of RANGE_PART bytes.
RANGE_THRESHOLD = 32 << 20
RANGE_PART = 16 << 20
RANGE_STREAMS = 8
# How long an interrupted or failed fetch waits for its workers to notice before cleaning up.
SHUTDOWN_WAIT = 2.0
_STARS = "*" * 54
STAGING_PREFIX = "stepkit-gcs-"


class DigestError(StepkitError):
    """The bytes arrived intact (GCS's checksum matched) but are not what the manifest promised."""


class _Cancelled(Exception):
    """Another download failed or the user interrupted: stop this one at the next chunk."""


class _DaemonPool:
    """A bounded worker pool like but of daemon threads.

    A worker blocked waiting for a stalled server's answer cannot be woken (its socket is
    not reachable until the answer starts); ThreadPoolExecutor would make the interpreter
    wait for it at exit, so an interrupt would hang for a whole read timeout. These
    threads are left behind instead, once the staging folder they write into is gone.
    """

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self.queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self.threads: list[threading.Thread] = []

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        self.queue.put((future, fn))
        if len(self.threads) < self.size:
            thread = threading.Thread(
                target=self._work, name=f"{self.name}-{len(self.threads)}", daemon=True
            )
            thread.start()
            self.threads.append(thread)
        return future

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, timeout: float) -> None:
        """Stop the workers once the queue is drained, waiting at most `timeout` seconds."""
        for _ in self.threads:
            self.queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(deadline - time.monotonic(), 0))


@dataclass
class Stats:
    """What the statistics block and the progress lines report; updated by every worker."""

    workers_requested: int
    workers: int = 1
    files: int = 0
    files_done: int = 0
    retries: int = 0
    size: int = 0  # bytes of completed downloads
    streamed: int = 0  # bytes received so far, retried attempts included
    total_bytes: int | None = None
    started_wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    download_started: float | None = None
    download_seconds: float = 0.0
    manifest_seconds: float | None = None
    extract_seconds: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_streamed(self, n: int) -> None:
        with self.lock:
            self.streamed += n

    def add_retry(self) -> None:
        with self.lock:
            self.retries += 1

    def file_done(self, size: int) -> None:
        with self.lock:
            self.files_done += 1
            self.size += size


@dataclass(frozen=True)
class Fetched:
    location: Location  # with the generation actually fetched
    size: int


class Downloader:
    """Downloads one object at a time per calling thread, with retries, a deadline per attempt and checks."""

    def __init__(
        self, client: GcsClient, spec: FetchSpec, stats: Stats, cancel: threading.Event
    ) -> None:
        self.client = client
        self.spec = spec
        self.stats = stats
        self.cancel = cancel
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()

    @contextmanager
    def _tracked(self, resp: Any) -> Iterator[Any]:
        """Keep resp where abort() can reach it, and close it however the attempt ends."""
        with self._open_lock:
            self._open.add(resp)
        try:
            if self.cancel.is_set():
                raise _Cancelled
            yield resp
        finally:
            with self._open_lock:
                self._open.discard(resp)
            resp.close()

    def abort(self) -> None:
        """Cancel every download now: shut down the sockets workers are blocked reading.

        Closing a socket does not wake a thread blocked in recv() on Linux; shutdown() does,
        so an interrupt or a failure elsewhere never waits out a read timeout.
        """
        self.cancel.set()
        with self._open_lock:
            responses = list(self._open)
        for resp in responses:
            sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
            if sock is not None:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def retrying(self, label: str, attempt: Callable[[float], Any]) -> Any:
        """attempt(deadline) up to 1 + retries times, with doubling backoff, for transient failures."""
        delay = self.spec.backoff
        for number in range(self.spec.retries + 1):
            if self.cancel.is_set():
                raise _Cancelled
            try:
                return attempt(time.monotonic() + self.spec.timeout)
            except TransientError as exc:
                if self.cancel.is_set():
                    raise _Cancelled from None
                if number == self.spec.retries:
                    raise StepkitError(
                        f"{label}: failed after {number + 1} attempts: {exc.message}"
                    ) from None
                self.stats.add_retry()
                level = logging.INFO if self.spec.verbose else logging.DEBUG
                log.log(level, "%s: %s; retrying in %.2fs", label, exc.message, delay)
                if self.cancel.wait(delay):
                    raise _Cancelled from None
                delay *= 2
        raise AssertionError("unreachable")

    def metadata(self, loc: Location, label: str) -> dict[str, Any]:
        def attempt(deadline: float) -> dict[str, Any]:
            try:
                return self.client.metadata(loc, timeout=max(deadline - time.monotonic(), 0.1))
            except _network_errors() as exc:
                raise TransientError(f"{loc}: {_describe(exc)}") from None

        result: dict[str, Any] = self.retrying(label, attempt)
        return result

    def fetch(
        self,
        loc: Location,
        target: Path,
        *,
        label: str,
        sha1: str | None = None,
        meta: dict[str, Any] | None = None,
        max_size: int | None = None,
    ) -> Fetched:
        """Download loc to target (created or truncated), verified; the generation is kept as fetched.

        With `meta` (the object's JSON resource, same generation) the expected size and
        checksums come from it and a big object may be fetched as parallel ranges.
        """
        size = int(meta["size"]) if meta and str(meta.get("size", "")).isdigit() else None
        if max_size is not None and size is not None and size > max_size:
            raise StepkitError(f"{label}: {size} bytes, more than the {max_size} allowed")
        if (
            meta is not None
            and size is not None
            and size >= RANGE_THRESHOLD
            and self.spec.workers > 1
            and sha1 is None
            and meta.get("contentEncoding") != "gzip"
        ):
            return self._fetch_ranges(loc, target, label=label, size=size, meta=meta)

        def attempt(deadline: float) -> Fetched:
            return self._once(
                loc, target, label=label, sha1=sha1, meta=meta, deadline=deadline, max_size=max_size
            )

        fetched: Fetched = self.retrying(label, attempt)
        self.stats.file_done(fetched.size)
        return fetched

    def _once(
        self,
        loc: Location,
        target: Path,
        *,
        label: str,
        sha1: str | None,
        meta: dict[str, Any] | None,
        deadline: float,
        max_size: int | None,
    ) -> Fetched:
        try:
            resp = self.client.media(
                loc,
                connect_timeout=min(CONNECT_TIMEOUT, self.spec.timeout),
                read_timeout=self.spec.timeout,
            )
        except _network_errors() as exc:
            raise TransientError(f"{loc}: {_describe(exc)}") from None
        with self._tracked(resp):
            headers = resp.headers
            generation = headers.get("x-goog-generation")
            fetched_loc = Location(
                loc.bucket,
                loc.name,
                int(generation) if generation and generation.isdigit() else loc.generation,
            )
            if loc.generation is not None and fetched_loc.generation != loc.generation:
                raise StepkitError(
                    f"{loc}: server answered with generation {fetched_loc.generation}"
                )
            hashes = parse_goog_hash(headers.get("x-goog-hash", ""))
            length = headers.get("content-length")
            gzipped = headers.get("content-encoding", "").lower() == "gzip"
            crc = _crc32c()
            # md5 only when no crc32c will be there to compare with: it costs as much again.
            md5 = (
                hashlib.md5(usedforsecurity=False)
                if "crc32c" not in hashes and not (meta and meta.get("crc32c"))
                else None
            )
            sha = hashlib.sha1(usedforsecurity=False)
            inflate = zlib.decompressobj(wbits=31) if gzipped else None
            received = 0
            written = 0
            try:
                out = target.open("wb")
            except OSError as exc:
                raise StepkitError(f"{label}: cannot write staging file: {exc.strerror}") from None
            with out:
                for chunk in _body(resp, loc):
                    if self.cancel.is_set():
                        raise _Cancelled
                    if time.monotonic() > deadline:
                        raise TransientError(
                            f"{loc}: attempt cancelled after {self.spec.timeout:g}s (--timeout)"
                        )
                    received += len(chunk)
                    crc.update(chunk)
                    if md5 is not None:
                        md5.update(chunk)
                    self.stats.add_streamed(len(chunk))
                    for data in _inflated(inflate, chunk, loc):
                        written += len(data)
                        if max_size is not None and written > max_size:
                            raise StepkitError(f"{label}: more than the {max_size} bytes allowed")
                        sha.update(data)
                        try:
                            out.write(data)
                        except OSError as exc:
                            raise StepkitError(
                                f"{label}: cannot write staging file: {exc.strerror}"
                            ) from None
                if inflate is not None and not inflate.eof:
                    raise TransientError(f"{loc}: gzip stream ends early")
        if length is not None and length.isdigit() and received != int(length):
            raise TransientError(f"{loc}: truncated body ({received} of {length} bytes)")
        self._verify(
            fetched_loc, received, crc.digest(), md5.digest() if md5 else None, hashes, meta
        )
        if sha1 is not None and sha.hexdigest() != sha1:
            raise DigestError(
                f"{label}: sha1sum mismatch: the manifest says {sha1}, "
                f"{fetched_loc} has {sha.hexdigest()}"
            )
        if self.spec.verbose:
            log.info("fetched %s (%d bytes)", fetched_loc, written)
        return Fetched(fetched_loc, written)

    def _verify(
        self,
        loc: Location,
        received: int,
        crc: bytes,
        md5: bytes | None,
        hashes: dict[str, bytes],
        meta: dict[str, Any] | None,
    ) -> None:
        """Compare the bytes with GCS's own checksums: from the answer's X-Goog-Hash, else metadata."""
        if not hashes:
            if meta is None:
                # gcp-storage-emulator and some proxies send no X-Goog-Hash: ask for the
                # object's resource of the generation just fetched instead.
                try:
                    meta = self.client.metadata(loc, timeout=self.spec.timeout)
                except _network_errors() as exc:
                    raise TransientError(f"{loc}: {_describe(exc)}") from None
            hashes = {}
            for key, field_name in (("crc32c", "crc32c"), ("md5", "md5Hash")):
                value = meta.get(field_name)
                if isinstance(value, str) and value:
                    try:
                        hashes[key] = base64.b64decode(value, validate=True)
                    except ValueError:
                        continue
            size = str(meta.get("size", ""))
            if size.isdigit() and int(size) != received:
                raise TransientError(f"{loc}: got {received} bytes, the object has {size}")
        if "crc32c" in hashes:
            if hashes["crc32c"] != crc:
                raise TransientError(f"{loc}: crc32c mismatch (corrupted in transfer)")
        elif "md5" in hashes and md5 is not None:
            if hashes["md5"] != md5:
                raise TransientError(f"{loc}: md5 mismatch (corrupted in transfer)")
        else:
            log.debug("%s: the server gives no checksum; only the length was checked", loc)

    def _fetch_ranges(
        self, loc: Location, target: Path, *, label: str, size: int, meta: dict[str, Any]
    ) -> Fetched:
        """A big object as parallel byte ranges of one generation, written in place, then checked whole."""
        generation = str(meta.get("generation", ""))
        pinned = Location(
            loc.bucket, loc.name, int(generation) if generation.isdigit() else loc.generation
        )
        with target.open("wb") as out:
            out.truncate(size)
        parts = [(start, min(start + RANGE_PART, size) - 1) for start in range(0, size, RANGE_PART)]

        def part(bounds: tuple[int, int]) -> None:
            start, end = bounds

            def attempt(deadline: float) -> None:
                self._range_once(pinned, target, start, end, deadline)

            self.retrying(f"{label} bytes {start}-{end}", attempt)

        pool = _DaemonPool(min(RANGE_STREAMS, self.spec.workers, len(parts)), "gcs-range")
        try:
            futures = [pool.submit(partial(part, p)) for p in parts]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is not None:
                    self.abort()
                    wait(futures, timeout=SHUTDOWN_WAIT)
                    raise error
        finally:
            pool.shutdown(SHUTDOWN_WAIT)
        crc = _crc32c()
        md5 = None if meta.get("crc32c") else hashlib.md5(usedforsecurity=False)
        with target.open("rb") as data:
            while block := data.read(4 << 20):
                crc.update(block)
                if md5 is not None:
                    md5.update(block)
        try:
            self._verify(pinned, size, crc.digest(), md5.digest() if md5 else None, {}, meta)
        except TransientError as exc:
            raise StepkitError(f"{label}: {exc.message}") from None
        self.stats.file_done(size)
        if self.spec.verbose:
            log.info("fetched %s (%d bytes in %d ranges)", pinned, size, len(parts))
        return Fetched(pinned, size)

    def _range_once(
        self, loc: Location, target: Path, start: int, end: int, deadline: float
    ) -> None:
        try:
            resp = self.client.media(
                loc,
                start=start,
                end=end,
                connect_timeout=min(CONNECT_TIMEOUT, self.spec.timeout),
                read_timeout=self.spec.timeout,
            )
        except _network_errors() as exc:
            raise TransientError(f"{loc}: {_describe(exc)}") from None
        want = end - start + 1
        received = 0
        with self._tracked(resp):
            if resp.status_code != 206:
                raise TransientError(f"{loc}: range request answered {resp.status_code}")
            fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
            try:
                for chunk in _body(resp, loc):
                    if self.cancel.is_set():
                        raise _Cancelled
                    if time.monotonic() > deadline:
                        raise TransientError(
                            f"{loc}: attempt cancelled after {self.spec.timeout:g}s (--timeout)"
                        )
                    if received + len(chunk) > want:
                        raise TransientError(f"{loc}: range answer longer than asked")
                    os.pwrite(fd, chunk, start + received)
                    received += len(chunk)
                    self.stats.add_streamed(len(chunk))
            finally:
                os.close(fd)
        if received != want:
            raise TransientError(f"{loc}: truncated range ({received} of {want} bytes)")


def _crc32c() -> Any:
    import importlib

    # The C implementation that google-cloud-storage installs; it ships no type information.
    crc32c: Any = importlib.import_module("google_crc32c")
    return crc32c.Checksum()


def _network_errors() -> tuple[type[BaseException], ...]:
    import urllib3.exceptions

    return (urllib3.exceptions.HTTPError, OSError)


def _describe(exc: BaseException) -> str:
    import urllib3.exceptions

    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection broken (reset or truncated)"
    if isinstance(exc, urllib3.exceptions.NewConnectionError | ConnectionError):
        return "connection failed or reset"
    return type(exc).__name__


def _inflated(inflate: Any, chunk: bytes, loc: Location) -> Iterator[bytes]:
    """chunk as written to disk: itself, or gunzipped in bounded pieces (a gzip bomb stays small in memory)."""
    if inflate is None:
        yield chunk
        return
    try:
        data = inflate.decompress(chunk, CHUNK * 4)
        while True:
            if data:
                yield data
            if not inflate.unconsumed_tail:
                return
            data = inflate.decompress(inflate.unconsumed_tail, CHUNK * 4)
    except zlib.error:
        raise TransientError(f"{loc}: corrupt gzip stream") from None


def _body(resp: Any, loc: Location) -> Iterator[bytes]:
    """The stored bytes as they arrive; network failures become TransientError."""
    stream = resp.raw.stream(CHUNK, decode_content=False)
    while True:
        try:
            chunk = next(stream)
        except StopIteration:
            return
        except _network_errors() as exc:
            raise TransientError(f"{loc}: {_describe(exc)}") from None
        if chunk:
            yield chunk


# ---------------------------------------------------------------------------------------------
# The two kinds of source
# ---------------------------------------------------------------------------------------------


def _check_symlink(path: str, target: str) -> None:
    """A manifest symlink stays inside the tree: relative, leading '..' only, no deeper than its dir."""
    what = f"manifest entry {shown(path)}"
    if not target or "\x00" in target or len(target.encode()) > MAX_SYMLINK_TARGET:
        raise InputError(f"{what}: invalid symlink target {shown(target)}")
    if target.startswith("/"):
        raise InputError(f"{what}: symlink target {shown(target)} is absolute")
    parts = target.split("/")
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    rest = [p for p in parts[ups:] if p not in ("", ".")]
    # ".." after a real component is refused outright: through another symlink it climbs
    # from wherever that one points, which a lexical check cannot see.
    if ".." in rest or ups > path.count("/"):
        raise InputError(f"{what}: symlink target {shown(target)} leaves the destination")


def _assemble(entries: list[gcsmanifest.Entry], objects: Path, tree: Path) -> None:
    """Move downloaded objects to their paths in tree and make the symlinks, all under staging."""
    links: list[tuple[gcsmanifest.Entry, str]] = []
    made: set[Path] = {tree}  # directories known to exist: one mkdir per directory, not per file
    for index, entry in enumerate(entries):
        staged = objects / str(index)
        if entry.is_symlink:
            raw = staged.read_bytes()
            try:
                target = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(
                    f"manifest entry {shown(entry.path)}: symlink target is not UTF-8"
                ) from None
            _check_symlink(entry.path, target)
            links.append((entry, target))
            continue
        final = tree / entry.path
        if final.parent not in made:
            final.parent.mkdir(parents=True, exist_ok=True)
            made.add(final.parent)
        os.replace(staged, final)
        os.chmod(final, entry.perm)
    for entry, target in links:
        final = tree / entry.path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, final)


class Fetcher:
    def __init__(self, spec: FetchSpec, client: GcsClient) -> None:
        self.spec = spec
        self.stats = Stats(workers_requested=spec.workers)
        self.cancel = threading.Event()
        self.downloader = Downloader(client, spec, self.stats, self.cancel)
        self.fetched: Location | None = None

    def _pool_wait(self, futures: list[Future[Any]]) -> None:
        """Wait for all futures, logging progress; on the first failure cancel the rest and raise it."""
        pending = set(futures)
        last_bytes, last_time = 0, time.monotonic()
        interval = _progress_interval()
        while pending:
            done, pending = wait(pending, timeout=interval, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                self.downloader.abort()
                # A worker still waiting for an answer cannot be woken: it is left behind.
                wait(pending, timeout=SHUTDOWN_WAIT)
                errors = [f.exception() for f in futures if f.done() and f.exception()]
                real = [e for e in errors if not isinstance(e, _Cancelled)]
                # A denial outranks the rest: it is the one the user must act on.
                first: BaseException | None = next(
                    (e for e in real if isinstance(e, DeniedError)), None
                )
                first = first or (real[0] if real else errors[0])
                if len(real) > 1:
                    log.error("%d downloads failed; the first: %s", len(real), first)
                assert first is not None
                raise first
            if pending:
                last_bytes, last_time = self._progress(last_bytes, last_time)

    def _progress(self, last_bytes: int, last_time: float) -> tuple[int, int | float]:
        now = time.monotonic()
        with self.stats.lock:
            streamed, done, files = self.stats.streamed, self.stats.files_done, self.stats.files
        rate = (streamed - last_bytes) / max(now - last_time, 1e-6) / (1 << 20)
        if self.stats.total_bytes:
            log.info(
                "progress: %.1f of %.1f MiB, %.1f MiB/s",
                streamed / (1 << 20),
                self.stats.total_bytes / (1 << 20),
                rate,
            )
        else:
            log.info(
                "progress: %d of %d files, %.1f MiB, %.1f MiB/s",
                done,
                files,
                streamed / (1 << 20),
                rate,
            )
        return streamed, now

    def _single(self, pool: _DaemonPool, fn: Callable[[], Any]) -> Any:
        future = pool.submit(fn)
        self._pool_wait([future])
        return future.result()

    def fetch_archive(self, work: Path, pool: _DaemonPool) -> None:
        from stepkit import archive

        spec = self.spec
        label = f"archive {spec.location}"
        log.info("Fetching archive %s.", spec.location)
        meta = self._single(pool, lambda: self.downloader.metadata(spec.location, label))
        self.stats.files = 1
        self.stats.total_bytes = int(meta["size"]) if str(meta.get("size", "")).isdigit() else None
        source = work / ("source.zip" if spec.kind == "zip" else "source.tar.gz")
        pinned = _pinned(spec.location, meta)
        self.stats.download_started = time.monotonic()
        fetched: Fetched = self._single(
            pool, lambda: self.downloader.fetch(pinned, source, label=label, meta=meta)
        )
        self.stats.download_seconds = time.monotonic() - self.stats.download_started
        self.fetched = fetched.location
        tree = work / "tree"
        started = time.monotonic()
        extracted = archive.extract(
            source,
            tree,
            kind=spec.kind if spec.kind in ("zip", "tar") else "auto",
            allow_git=spec.allow_git,
            label=str(fetched.location),
        )
        self.stats.extract_seconds = time.monotonic() - started
        self.stats.files = extracted.files
        archive.place(tree, spec.dest)

    def fetch_manifest(self, work: Path, pool: _DaemonPool) -> None:
        from stepkit import archive

        spec = self.spec
        label = f"manifest {spec.location}"
        log.info("Fetching manifest %s.", spec.location)
        started = time.monotonic()
        meta = self._single(pool, lambda: self.downloader.metadata(spec.location, label))
        pinned = _pinned(spec.location, meta)
        source = work / "manifest.json"
        fetched: Fetched = self._single(
            pool,
            lambda: self.downloader.fetch(
                pinned, source, label=label, meta=meta, max_size=MAX_MANIFEST_BYTES
            ),
        )
        self.fetched = fetched.location
        self.stats.manifest_seconds = time.monotonic() - started
        entries = gcsmanifest.parse(source.read_bytes(), what=f"manifest {fetched.location}")
        for entry in entries:
            if spec.allowed_buckets is not None:  # (the message is built only when needed)
                check_bucket(
                    entry.source, spec.allowed_buckets, what=f"manifest entry {shown(entry.path)}"
                )
            if not spec.allow_git and any(
                archive.is_git_name(part) for part in entry.path.split("/")
            ):
                raise InputError(
                    f"manifest entry {shown(entry.path)}: a .git directory would let the "
                    "manifest configure git for later steps (allow it with -allow-git)"
                )
        with self.stats.lock:
            self.stats.files = len(entries)
            self.stats.files_done = 0
            self.stats.size = 0
            self.stats.streamed = 0
        self.stats.workers = max(1, min(spec.workers, len(entries)))
        log.info("Processing %d files.", len(entries))
        objects = work / "objects"
        objects.mkdir()
        self.stats.download_started = time.monotonic()
        # One job per worker, each taking the next entry until none is left: no Future per
        # object, and every thread is started before any of them downloads, so starting the
        # 200th does not wait for the GIL behind 199 busy ones.
        todo = iter(enumerate(entries))
        todo_lock = threading.Lock()
        go = threading.Event()

        def worker() -> None:
            go.wait()
            while True:
                if self.cancel.is_set():
                    raise _Cancelled
                with todo_lock:
                    item = next(todo, None)
                if item is None:
                    return
                index, entry = item
                self.downloader.fetch(
                    entry.source,
                    # Staged under its index, never under a name taken from the object or key.
                    objects / str(index),
                    label=f"manifest entry {shown(entry.path)} ({entry.source})",
                    sha1=entry.sha1,
                    max_size=MAX_SYMLINK_TARGET if entry.is_symlink else None,
                )

        try:
            futures = [pool.submit(worker) for _ in range(self.stats.workers)]
        finally:
            go.set()
        self._pool_wait(futures)
        self.stats.download_seconds = time.monotonic() - self.stats.download_started
        tree = work / "tree"
        tree.mkdir()
        _assemble(entries, objects, tree)
        archive.place(tree, spec.dest)

    def print_stats(self, status: str) -> None:
        s = self.stats
        total = time.monotonic() - s.started
        mib = s.size / (1 << 20)
        seconds = s.download_seconds
        if not seconds and s.download_started is not None:
            seconds = time.monotonic() - s.download_started  # failed part-way
        mibps = mib / seconds if seconds > 0 else 0.0
        lines = [
            _STARS,
            f"Status:                      {status}",
            f"Started:                     {s.started_wall.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            f"Completed:                   {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        ]
        if self.spec.kind == "manifest":
            lines += [
                f"Requested workers: {s.workers_requested:6d}",
                f"Actual workers:    {s.workers:6d}",
            ]
        lines += [
            f"Total files:       {s.files:6d}",
            f"Total retries:     {s.retries:6d}",
            f"MiB downloaded:    {mib:9.2f} MiB",
            f"MiB/s throughput:  {mibps:9.2f} MiB/s",
        ]
        if self.spec.kind == "manifest":
            if s.manifest_seconds is not None:
                lines.append(f"Time for manifest: {s.manifest_seconds * 1000:9.2f} ms")
        else:
            name = "zipfile" if self.spec.kind == "zip" else "tgzfile"
            verb = "unzip" if self.spec.kind == "zip" else "untgz"
            lines.append(f"Time for {name}:  {s.download_seconds:9.2f} s")
            if s.extract_seconds is not None:
                lines.append(f"Time to {verb}:     {s.extract_seconds:9.2f} s")
        lines += [f"Total time:        {total:9.2f} s", _STARS]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


def _progress_interval() -> float:
    try:
        value = float(os.environ.get("STEPKIT_GCS_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS
    return value if value > 0 else PROGRESS_SECONDS


def _pinned(loc: Location, meta: dict[str, Any]) -> Location:
    """The location at the generation the metadata describes, so every byte comes from one generation."""
    generation = str(meta.get("generation", ""))
    if not (generation.isdigit() and int(generation) > 0):
        return loc
    if loc.generation is not None and int(generation) != loc.generation:
        # A server that ignores ?generation= (gcp-storage-emulator does) would hand out
        # the live object: refuse rather than fetch bytes nobody asked for.
        raise StepkitError(f"{loc}: the server answered with generation {generation} instead")
    return Location(loc.bucket, loc.name, int(generation))


@contextmanager
def _staging(spec: FetchSpec) -> Iterator[Path]:
    """A private directory under the staging folder, removed on every exit (the source kept on
    request); one a killed run left is removed by the next run."""
    with staging_dir(
        spec.staging,
        STAGING_PREFIX,
        flag="--staging_folder",
        create_parent=True,
        # The default folder is gcs-fetcher's own (the reference removes it whole): it goes
        # when empty, also when a killed run made it.
        remove_empty_parent=spec.staging == spec.dest / DEFAULT_STAGING,
    ) as staging:
        try:
            yield staging.path
        finally:
            if spec.keep_source:
                for name in ("tree", "objects"):
                    remove_tree(staging.path / name)
                staging.keep()
                log.info("kept the source in %s (--keep_source)", staging.path)


def run(spec: FetchSpec) -> int:
    """Fetch spec.location into spec.dest; print the statistics block whatever happens."""
    from stepkit.gcs import open_client

    if spec.type_name == "Archive":
        log.warning("-type=Archive is deprecated; use -type=ZipArchive")
    try:
        spec.dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StepkitError(
            f"--dest_dir: cannot create {shown(str(spec.dest))}: {exc.strerror}"
        ) from None
    fetcher = Fetcher(spec, open_client(pool_size=spec.workers + RANGE_STREAMS))
    status = "FAILURE"
    try:
        with _staging(spec) as work:
            pool = _DaemonPool(max(spec.workers, 1), "gcs-fetch")
            try:
                if spec.kind == "manifest":
                    fetcher.fetch_manifest(work, pool)
                else:
                    fetcher.fetch_archive(work, pool)
            finally:
                # Workers stop at their next chunk (or read timeout): nothing keeps writing
                # into staging while it is removed.
                fetcher.downloader.abort()
                pool.shutdown(SHUTDOWN_WAIT)
        if fetcher.fetched is not None and (spec.termination_path or spec.results_dir):
            from stepkit.results import write_results

            write_results(
                {"location": fetcher.fetched.url()},
                termination_path=spec.termination_path,
                results_dir=spec.results_dir,
            )
        status = "SUCCESS"
    finally:
        fetcher.print_stats(status)
    return 0
