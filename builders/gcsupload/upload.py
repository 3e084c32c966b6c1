"""Upload a walked directory: content objects named by SHA-1 (each written at most once), then the manifest."""

from __future__ import annotations

import base64
import concurrent.futures
import importlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from builders.gcsupload import transport, tree
from builders.gcsupload.spec import UploadSpec
from stepkit import gcs, gcsmanifest, results
from stepkit.errors import StepkitError
from stepkit.gcs import Location
from stepkit.log import printable
from stepkit.validate import shown

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
PROGRESS_EVERY = 5.0
_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"


@dataclass
class Stats:
    """Counters shared by the workers; `lock` guards every update."""

    files: int = 0
    symlinks: int = 0
    objects: int = 0
    uploaded: int = 0
    present: int = 0
    bytes_total: int = 0
    bytes_uploaded: int = 0
    retries: int = 0
    done: int = 0
    hashed: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Stored:
    """A content object as it is in the bucket now."""

    name: str
    generation: int
    uploaded: bool


def make_client(workers: int) -> Any:
    """A storage client: application default credentials, anonymous when there are none or for an emulator.

    Not stepkit.gcs.open_client: that one asks for a read-only scope.
    """
    import google.auth
    import google.auth.exceptions

    # Through importlib: google-cloud-storage and google-auth's credentials and transport
    # ship no type information; every use here is a documented call.
    storage: Any = importlib.import_module("google.cloud.storage")
    anonymous: Any = importlib.import_module("google.auth.credentials").AnonymousCredentials
    session_type: Any = importlib.import_module("google.auth.transport.requests").AuthorizedSession

    credentials: Any
    project: str | None = None
    if os.environ.get(gcs.EMULATOR_ENV):
        credentials = anonymous()
    else:
        try:
            credentials, project = google.auth.default(scopes=[_SCOPE])
        except google.auth.exceptions.DefaultCredentialsError:
            log.info("no application default credentials found; making anonymous requests")
            credentials = anonymous()
    session = session_type(credentials)
    # One connection per worker and one for the manifest: requests keeps 10 per host by
    # default, and every worker beyond that would open and drop a connection per request.
    adapter = transport.GuardedAdapter(
        pool_connections=4, pool_maxsize=max(workers + 1, 10), max_retries=0
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return storage.Client(project=project or "<none>", credentials=credentials, _http=session)


def _crc_b64(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


def _server_message(exc: Any) -> str:
    """GCS's own error message, from the answer's body; never the request's URL.

    The library's text for a failed upload is "PUT <url>: <body>: ...", and that URL can be
    a resumable session's, so the message comes from the response when there is one.
    """
    response = getattr(exc, "response", None)
    text = str(getattr(response, "text", "") or "") if response is not None else ""
    if not text:
        text = str(getattr(exc, "message", "") or exc)
        text = _METHOD_URL.sub("", text)
    brace = text.find("{")
    if brace >= 0:
        try:
            body, _ = json.JSONDecoder().raw_decode(text[brace:])
            text = str(body["error"]["message"])
        except (ValueError, KeyError, TypeError):
            pass
    return printable(transport.scrub(" ".join(text.split())))[:200]


# How google-cloud-storage starts the message of an upload error: "PUT http://host/path?query: ".
_METHOD_URL = re.compile(r"^[A-Z]+ https?://\S+: ")


def _api_error(exc: Exception, location: Location, action: str, permission: str) -> Exception:
    """The one-line error (or gcs.TransientError) for a failed request."""
    import requests
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import TransportError
    from google.resumable_media.common import DataCorruption

    if isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | TransportError
        | DataCorruption,
    ):
        return gcs.TransientError(printable(transport.scrub(f"{type(exc).__name__}: {exc}"))[:300])
    if not isinstance(exc, gexc.GoogleAPICallError):
        return exc
    code = int(exc.code or 0)
    message = _server_message(exc)
    if code in (401, 403):
        return gcs.denied(code, location, permission, message)
    if code in (408, 429) or code >= 500:
        return gcs.TransientError(f"HTTP {code}: {message}")
    if code == 404:
        return StepkitError(f"cannot {action} {location}: bucket {location.bucket} does not exist")
    return StepkitError(f"cannot {action} {location}: HTTP {code}: {message}")


class Uploader:
    def __init__(self, spec: UploadSpec, root: tree.Root, bucket: Any, stats: Stats) -> None:
        self.spec = spec
        self.root = root
        self.bucket = bucket
        self.stats = stats

    def _attempts(self, what: str, fn: Callable[[], T]) -> T:
        """fn, retried on transient failures with doubling, jittered backoff."""
        delay = self.spec.backoff
        for attempt in range(self.spec.retries + 1):
            try:
                return fn()
            except gcs.TransientError as exc:
                if attempt == self.spec.retries:
                    raise StepkitError(
                        f"{what}: still failing after "
                        f"{_count(self.spec.retries, 'retry', 'retries')}: {exc}"
                    ) from None
                log.debug("%s: attempt %d failed (%s); retrying", what, attempt + 1, exc)
                with self.stats.lock:
                    self.stats.retries += 1
                time.sleep(delay * (0.5 + random.random()))  # noqa: S311 -- jitter, not a secret
                delay *= 2
        raise AssertionError("unreachable")

    def ensure(self, hashed: tree.Hashed) -> Stored:
        """The object holding this content: found in the bucket, or uploaded with a does-not-exist precondition."""
        loc = Location(self.bucket.name, self.spec.prefix + hashed.sha1)
        stored = self._attempts(loc.url(), lambda: self._ensure_once(hashed, loc))
        with self.stats.lock:
            self.stats.done += 1
            if stored.uploaded:
                self.stats.uploaded += 1
                self.stats.bytes_uploaded += hashed.size
            else:
                self.stats.present += 1
        return stored

    def _ensure_once(self, hashed: tree.Hashed, loc: Location) -> Stored:
        from google.api_core import exceptions as gexc

        name, url, timeout = loc.name, loc.url(), self.spec.timeout
        try:
            existing = self.bucket.get_blob(name, timeout=timeout, retry=None)
        except Exception as exc:
            raise _api_error(exc, loc, "read", "storage.objects.get") from None
        expect_generation = 0
        if existing is not None:
            assert existing.generation is not None
            if existing.size == hashed.size and existing.crc32c == _crc_b64(hashed.crc32c):
                return Stored(name, int(existing.generation), uploaded=False)
            # Named by a SHA-1 it doesn't have: written by something else, or damaged. The
            # manifest pins the generation written now, so replacing it is safe for readers.
            log.warning(
                "%s holds other content than its name says (size %s, crc32c %s); replacing it",
                url,
                existing.size,
                existing.crc32c,
            )
            expect_generation = existing.generation
        blob = self.bucket.blob(name)
        try:
            if hashed.item.link is not None:
                blob.upload_from_string(
                    hashed.item.link,
                    content_type="application/octet-stream",
                    if_generation_match=expect_generation,
                    timeout=timeout,
                    retry=None,
                )
            else:
                with tree.open_regular(self.root, hashed.item) as f:
                    blob.upload_from_file(
                        f,
                        size=hashed.size,
                        content_type="application/octet-stream",
                        if_generation_match=expect_generation,
                        timeout=timeout,
                        retry=None,
                        crc32c_checksum_value=_crc_b64(hashed.crc32c),
                    )
        except gexc.PreconditionFailed:
            # Another writer got there between our look and our write: look again.
            raise gcs.TransientError(f"{url} was written concurrently") from None
        except StepkitError:
            raise
        except Exception as exc:
            raise _api_error(exc, loc, "upload", "storage.objects.create") from None
        assert blob.generation is not None
        if blob.size != hashed.size or blob.crc32c != _crc_b64(hashed.crc32c):
            # The file changed after it was hashed: this object doesn't hold what its name says.
            try:
                self.bucket.delete_blob(
                    name, generation=blob.generation, timeout=timeout, retry=None
                )
            except Exception:
                log.warning(
                    "could not delete %s#%s, which holds the wrong content", url, blob.generation
                )
            raise StepkitError(
                f"--dir: {shown(hashed.item.key)} changed while it was being uploaded; run again"
            )
        return Stored(name, int(blob.generation), uploaded=True)

    def write_manifest(self, data: bytes) -> int:
        location = self.spec.manifest
        url = location.url()

        def once() -> int:
            blob = self.bucket.blob(location.name)
            try:
                # Unconditional: re-running an upload replaces the manifest, and a retry of
                # an attempt that did land just writes the same bytes again.
                blob.upload_from_string(
                    data,
                    content_type="application/json",
                    timeout=self.spec.timeout,
                    retry=None,
                )
            except Exception as exc:
                raise _api_error(exc, location, "write", "storage.objects.create") from None
            return int(blob.generation)

        return self._attempts(url, once)


def _size(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _count(n: int, what: str, plural: str = "") -> str:
    return f"{n} {what}" if n == 1 else f"{n} {plural or what + 's'}"


def _progress(stats: Stats, total: int) -> None:
    with stats.lock:
        elapsed = max(time.monotonic() - stats.started, 1e-6)
        log.info(
            "%d of %d objects (%d uploaded, %d already present), %s uploaded, %s/s",
            stats.done,
            total,
            stats.uploaded,
            stats.present,
            _size(stats.bytes_uploaded),
            _size(stats.bytes_uploaded / elapsed),
        )


def _run_pool(
    workers: int, fn: Callable[[T], R], items: Iterable[T], on_tick: Callable[[], None]
) -> list[R]:
    """fn over items in a bounded pool, results in order; the first failure cancels what hasn't started."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gcs")
    try:
        futures = [pool.submit(fn, item) for item in items]
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending, timeout=PROGRESS_EVERY, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            for future in done:
                exc = future.exception()
                if exc is not None:
                    raise exc
            if pending:
                on_tick()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [future.result() for future in futures]


def run(spec: UploadSpec) -> int:
    """Upload, then write the result `manifest` where spec says."""
    manifest = upload(spec)
    results.write_results(
        {"manifest": manifest.url()},
        termination_path=spec.termination_path,
        results_dir=spec.results_dir,
    )
    return 0


def upload(spec: UploadSpec) -> Location:
    """Upload spec.dir; the manifest written, with its generation."""
    with tree.Root(spec.dir) as root:
        return _upload(spec, root)


def _upload(spec: UploadSpec, root: tree.Root) -> Location:
    walked = tree.walk(root)
    for empty in walked.empty_dirs:
        log.warning(
            "empty directory %s is not uploaded: a manifest holds only files and symlinks",
            shown(empty),
        )
    items = walked.items
    if not items:
        log.warning("%s holds no files: the manifest will be empty", spec.dir)
    stats = Stats()
    stats.files = sum(1 for i in items if not i.is_symlink)
    stats.symlinks = len(items) - stats.files
    log.info(
        "hashing %s and %s in %s",
        _count(stats.files, "file"),
        _count(stats.symlinks, "symlink"),
        spec.dir,
    )
    hash_workers = max(1, min(spec.workers, (os.cpu_count() or 1) * 2))

    def hash_one(item: tree.Item) -> tree.Hashed:
        result = tree.hash_item(root, item)
        with stats.lock:
            stats.hashed += 1
        return result

    def hash_progress() -> None:
        with stats.lock:
            log.info("hashed %d of %d", stats.hashed, len(items))

    hashed = _run_pool(hash_workers, hash_one, items, hash_progress)
    unique: dict[str, tree.Hashed] = {}
    for h in hashed:
        unique.setdefault(h.sha1, h)
        stats.bytes_total += h.size
    stats.objects = len(unique)

    client = make_client(spec.workers)
    bucket = client.bucket(spec.manifest.bucket)
    uploader = Uploader(spec, root, bucket, stats)
    stats.started = time.monotonic()
    log.info(
        "uploading %s to gs://%s/%s",
        _count(len(unique), "object"),
        spec.manifest.bucket,
        spec.prefix,
    )
    stored = _run_pool(
        spec.workers, uploader.ensure, list(unique.values()), lambda: _progress(stats, len(unique))
    )
    generations = {s.name: s.generation for s in stored}
    entries = [
        gcsmanifest.Entry(
            path=h.item.key,
            source=Location(
                spec.manifest.bucket, spec.prefix + h.sha1, generations[spec.prefix + h.sha1]
            ),
            sha1=h.sha1,
            mode=h.item.mode,
        )
        for h in hashed
    ]
    data = gcsmanifest.dump(entries)
    generation = uploader.write_manifest(data)
    manifest = Location(spec.manifest.bucket, spec.manifest.name, generation)
    elapsed = max(time.monotonic() - stats.started, 1e-6)
    log.info(
        "%s and %s as %s: %d uploaded (%s), %d already present; %s in all; %s/s; %s; %.1f s",
        _count(stats.files, "file"),
        _count(stats.symlinks, "symlink"),
        _count(stats.objects, "object"),
        stats.uploaded,
        _size(stats.bytes_uploaded),
        stats.present,
        _size(stats.bytes_total),
        _size(stats.bytes_uploaded / elapsed),
        _count(stats.retries, "retry", "retries"),
        elapsed,
    )
    log.info("wrote manifest %s", manifest.url())
    return manifest
