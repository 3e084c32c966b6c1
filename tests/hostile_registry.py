"""A registry that misbehaves on purpose, and a second host, on loopback (ADVERSARIAL 45-53).

What a well-behaved registry (docker-registry in tests/peers.py) never does, these do on
request: serve bytes that do not match their digest, lie about a manifest's Content-Type,
redirect a blob to another host, send a Bearer challenge whose realm is another (or a plain
HTTP) host, serve index chains deeper than any sane bound. Both servers record every request
with all its headers, so a test asserts what reached which host.

    with HostileRegistry(tmp_path) as reg, OtherHost(tmp_path) as other:
        layer = reg.add_blob(b"layer bytes")
        digest = reg.add_image("org/app", "v1", [b"layer bytes"])
        other.serve("/blob", b"layer bytes")
        reg.redirect_blob(layer, other.url + "/blob")
        reg.require_basic("alice", "s3cret")
        ...run the client with ca_file=reg.ca_file against reg.host...
        assert all(r.authorization is None for r in other.requests)

HostileRegistry(workdir, *, tls=True, host="127.0.0.1", own_ca=False) serves the pull side of
the registry API v2: GET/HEAD /v2/, /v2/<name>/manifests/<tag or digest>,
/v2/<name>/blobs/<digest> (Range requests answered with 206 unless `honour_range` is False).
Blobs are global (any repository name serves them); manifests belong to a repository.

- add_blob(data, *, digest=None, serve=None, chunked=False) -> digest: stored under `digest`
  (default: data's sha256), answering `serve` (default: data) - different or longer bytes
  than the digest promises (45). chunked: no Content-Length, so a client cannot refuse early.
- add_manifest(repo, ref, body, *, media_type=None, content_type=None, digest_header=None,
  chunked=False) -> the body's true digest. body is bytes or a dict (JSON-encoded compactly).
  media_type defaults to the body's "mediaType"; the Content-Type answered is content_type
  when given (the lie of 46), else media_type. ref is a tag or a digest; the body is also
  served under its true digest unless a manifest was added explicitly under that digest.
  Serving a body under a digest that is not its own is how a lying registry makes cycles.
  Docker-Content-Digest is the true digest, or digest_header ("" sends none).
- add_image(repo, tag, layers, *, media="oci"|"docker", platform=..., config=None) -> the
  manifest digest: config and layer blobs added, a correct manifest tagged (the happy path to
  spoil afterwards). add_index(repo, tag, {platform: manifest digest}, *, media=...) -> digest.
- add_index_chain(repo, tag, depth, *, leaf=None) -> [digest of each index, top first]: the
  tag names an index whose only entry (for the running platform) is the next index, `depth`
  of them, the last pointing at `leaf` (a manifest digest in repo) or at a made-up digest.
- add_index_cycle(repo, tag) -> (index digest, the digest its entry names): an index whose
  entry names a digest under which the server answers the same index again (53).
- redirect_blob(digest, location, *, status=307): GETs and HEADs of that blob redirect (48).
- break_blob(digest, *, after, times=1): the next `times` GETs of the blob announce the whole
  length but send `after` body bytes and close the connection (to test resuming with Range).
- require_basic(user, password) / require_bearer(realm, *, service="hostile", header=None) /
  no_auth(): what every /v2/ request needs. A Bearer token is accepted when any token
  endpoint of this module issued it; the challenge is WWW-Authenticate: Bearer
  realm="<realm>",service="<service>"[,scope="repository:<name>:pull"] or exactly `header`.

OtherHost(workdir, *, tls=True, host=None, own_ca=False) is the attacker, or the blob storage a
registry redirects to, on 127.0.0.2 when that binds (a different host name, not only a
different port), else 127.0.0.1. Both classes also have:

- serve(path, data, *, status=200, headers=None): a fixed answer at `path` (query ignored).
- issue_tokens(path="/token", *, credentials=None, field="token"): a token endpoint (GET and
  POST); with credentials=(user, password) it demands that Basic pair, else it gives anyone a
  token. Each call is in `token_requests` (TokenRequest: .basic is the Basic pair sent or None).
- fail(path_match, *, status, times=1, headers=None): the next `times` requests whose path
  re.search-es path_match answer `status` (times=None: all of them). Checked before anything.
- requests: list[Recorded], appended when a request arrives and complete (with its status)
  before any byte of the answer leaves: seq (order across all servers), server ("host:port"
  that answered), method, path (raw, with query), headers (case-insensitive Mapping),
  body, status; .authorization is the Authorization header or None.
- host ("127.0.0.x:PORT"), url (https:// or http://), ca_file (PEM of the CA to trust).

Every server of this module shares one test CA (unless own_ca=True), and its certificate names
127.0.0.1, 127.0.0.2 and localhost: a client given any server's ca_file trusts them all. The
unknown (404) answers carry the registry's JSON error body ({"errors": [{"code": ...}]}).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import itertools
import json
import platform as _platform
import re
import secrets
import socket
import socketserver
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import trustme

from tests.peers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    LOOPBACK,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    _HttpPeer,
    _LoopbackHttpd,
    _PeerHandler,
    _read_http_body,
)

OTHER_LOOPBACK = "127.0.0.2"

_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
_V2_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")

_lock = threading.Lock()
_seq = itertools.count(1)
# Every token any endpoint of this module issued: random, so one test's tokens can never be
# mistaken for another's, and a registry accepts tokens from an issuer on another host.
_issued: set[str] = set()
_shared: tuple[Any, Any] | None = None


def sha256(data: bytes) -> str:
    """The OCI digest of data: "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def current_platform() -> str:
    """The running platform as an index entry names it: "linux/amd64" or "linux/arm64"."""
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    return f"linux/{arch.get(machine, machine)}"


def platform_dict(value: str) -> dict[str, str]:
    """{"os": ..., "architecture": ...[, "variant": ...]} from "os/arch[/variant]"."""
    parts = value.split("/")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2:
        out["variant"] = parts[2]
    return out


def _encode(body: bytes | Mapping[str, Any]) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, separators=(",", ":")).encode()


def _new_ca() -> tuple[Any, Any]:
    ca = trustme.CA()
    return ca, ca.issue_cert(LOOPBACK, OTHER_LOOPBACK, "localhost")


def _shared_ca() -> tuple[Any, Any]:
    global _shared
    with _lock:
        if _shared is None:
            _shared = _new_ca()
        return _shared


class Headers(Mapping[str, str]):
    """A request's headers, looked up case-insensitively; repeated ones joined with ", "."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self.items_in_order = tuple(items)
        self._joined: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            self._joined[key] = f"{self._joined[key]}, {value}" if key in self._joined else value

    def __getitem__(self, name: str) -> str:
        return self._joined[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._joined)

    def __len__(self) -> int:
        return len(self._joined)

    def get_all(self, name: str) -> list[str]:
        """Every value of header `name`, in the order sent (a repeated header stays apart)."""
        return [v for k, v in self.items_in_order if k.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"Headers({dict(self._joined)!r})"


@dataclass
class Recorded:
    """One request a server of this module received."""

    seq: int
    server: str
    method: str
    path: str
    headers: Headers
    body: bytes = b""
    status: int = 0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")


@dataclass(frozen=True)
class TokenRequest:
    """One request to a token endpoint: what was asked, and the Basic pair sent with it."""

    request: Recorded
    basic: tuple[str, str] | None
    params: dict[str, str]

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")

    @property
    def service(self) -> str | None:
        return self.params.get("service")


@dataclass
class _Fixed:
    data: bytes
    status: int
    headers: dict[str, str]


@dataclass
class _Failure:
    pattern: re.Pattern[str]
    status: int
    left: int | None
    headers: dict[str, str]


@dataclass
class _TokenEndpoint:
    credentials: tuple[str, str] | None
    field: str


@dataclass
class _Blob:
    serve: bytes
    chunked: bool


@dataclass
class _Manifest:
    body: bytes
    content_type: str
    digest_header: str
    chunked: bool


@dataclass
class _Break:
    after: int
    left: int


def all_requests(*servers: _HostileServer) -> list[Recorded]:
    """The requests of all `servers`, in the order they arrived."""
    merged = [r for s in servers for r in s.requests]
    return sorted(merged, key=lambda r: r.seq)


def _basic_pair(header: str | None) -> tuple[str, str] | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return user, password


class _HostileHttpd(_LoopbackHttpd):
    def __init__(
        self,
        peer: _HostileServer,
        handler: type[BaseHTTPRequestHandler],
        host: str,
        context: ssl.SSLContext | None,
    ) -> None:
        # _LoopbackHttpd binds 127.0.0.1 only; OtherHost may live on 127.0.0.2.
        self.peer = peer
        self.bind_host = host
        self.context = context
        ThreadingHTTPServer.__init__(self, (host, 0), handler)

    def server_bind(self) -> None:
        # As _LoopbackHttpd: no getfqdn() reverse lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.bind_host
        self.server_port = self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.context is not None:
            # The handshake happens in the handler thread: one slow or distrustful client must
            # not stall the accept loop.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hang up on a hostile server all the time; that is no test failure.
        self.peer._log(f"connection from {client_address} ended in an error")


class _HostileHandler(_PeerHandler):
    server_version = "stepkit-hostile-registry/1"
    # A client that stops talking must not keep a handler thread forever.
    timeout = 60

    record: Recorded | None = None

    @property
    def hostile(self) -> _HostileServer:
        peer = self.peer
        assert isinstance(peer, _HostileServer)
        return peer

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (OSError, ValueError) as exc:
                # With TLS 1.3 a client that distrusts the certificate says so only after the
                # server's side of the handshake is done, so this catches some refusals only.
                self.hostile._log(f"TLS handshake failed: {exc}")
                return
        with contextlib.suppress(OSError):
            super().handle()

    def send_response(self, code: int, message: str | None = None) -> None:
        # The record is complete before the client can see any answer, so a test that reads
        # `requests` after its client returned never races the handler thread.
        if self.record is not None:
            self.record.status = code
        super().send_response(code, message)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def answer(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> None:
        """Send a whole answer (headers only for HEAD)."""
        self.send_response(status)
        names = {k.lower() for k in (headers or {})}
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if chunked and self.command != "HEAD":
            self.send_header("Transfer-Encoding", "chunked")
        elif "content-length" not in names:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if chunked:
            for start in range(0, len(body), 65536):
                self._chunk(body[start : start + 65536])
            self._chunk(b"")
        else:
            self.wfile.write(body)

    def error(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """The registry's JSON error answer."""
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self.answer(
            status, body, {**_API_VERSION, "Content-Type": "application/json", **(headers or {})}
        )

    def _handle(self) -> None:
        server = self.hostile
        body = b"" if self.command in ("GET", "HEAD") else _read_http_body(self)
        record = Recorded(
            seq=next(_seq),
            server=server.host,
            method=self.command,
            path=self.path,
            headers=Headers(list(self.headers.items())),
            body=body,
        )
        self.record = record
        with server._lock:
            server.requests.append(record)
        path = urllib.parse.urlsplit(self.path).path
        failure = server._take_failure(path)
        if failure is not None:
            self.error(failure.status, "INJECTED", "injected failure", failure.headers)
            return
        fixed = server._fixed.get(path)
        if fixed is not None:
            self.answer(fixed.status, fixed.data, fixed.headers)
            return
        endpoint = server._tokens.get(path)
        if endpoint is not None:
            self._token(endpoint, record)
            return
        server._route(self, path)

    def _token(self, endpoint: _TokenEndpoint, record: Recorded) -> None:
        server = self.hostile
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        if self.command == "POST":
            params.update(urllib.parse.parse_qsl(record.body.decode(errors="replace")))
        basic = _basic_pair(record.authorization)
        with server._lock:
            server.token_requests.append(TokenRequest(record, basic, params))
        if endpoint.credentials is not None and basic != endpoint.credentials:
            self.error(
                401, "UNAUTHORIZED", "bad credentials", {"WWW-Authenticate": 'Basic realm="tokens"'}
            )
            return
        token = secrets.token_hex(16)
        with _lock:
            _issued.add(token)
        reply: dict[str, Any] = {"expires_in": 300}
        if endpoint.field in ("token", "both"):
            reply["token"] = token
        if endpoint.field in ("access_token", "both"):
            reply["access_token"] = token
        self.answer(200, json.dumps(reply).encode(), {"Content-Type": "application/json"})


class _HostileServer(_HttpPeer):
    """What HostileRegistry and OtherHost share: TLS, recording, fixed answers, tokens, faults."""

    _handler = _HostileHandler

    def __init__(
        self, workdir: Path, *, tls: bool = True, host: str = LOOPBACK, own_ca: bool = False
    ) -> None:
        super().__init__()
        self.workdir = workdir
        self.tls = tls
        self.bind_host = host
        self.ca_file = workdir / ("own-ca.pem" if own_ca else "hostile-ca.pem")
        self._ca, self._cert = _new_ca() if own_ca else _shared_ca()
        self.requests: list[Recorded] = []
        self.token_requests: list[TokenRequest] = []
        self._fixed: dict[str, _Fixed] = {}
        self._tokens: dict[str, _TokenEndpoint] = {}
        self._failures: list[_Failure] = []

    @property
    def host(self) -> str:
        return f"{self.bind_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def serve(
        self, path: str, data: bytes, *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer every request for `path` (query ignored) with status, headers and data."""
        with self._lock:
            self._fixed[path] = _Fixed(data, status, dict(headers or {}))

    def issue_tokens(
        self,
        path: str = "/token",
        *,
        credentials: tuple[str, str] | None = None,
        field: str = "token",
    ) -> None:
        """A token endpoint at `path`: {"token": ...} (field "access_token" or "both" too)."""
        if field not in ("token", "access_token", "both"):
            raise ValueError(f"field must be token, access_token or both, not {field!r}")
        with self._lock:
            self._tokens[path] = _TokenEndpoint(credentials, field)

    def fail(
        self,
        path_match: str,
        *,
        status: int,
        times: int | None = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """The next `times` requests whose path matches (re.search) answer `status`."""
        with self._lock:
            self._failures.append(
                _Failure(re.compile(path_match), status, times, dict(headers or {}))
            )

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.left != 0 and failure.pattern.search(path):
                    if failure.left is not None:
                        failure.left -= 1
                    return failure
        return None

    def _route(self, handler: _HostileHandler, path: str) -> None:
        handler.error(404, "NOT_FOUND", f"nothing is served at {path}")

    def __enter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._cert.configure_cert(context)
        self._stop.clear()
        # The socket listens once the constructor returns: no need to poll for readiness.
        self._httpd = _HostileHttpd(self, self._handler, self.bind_host, context)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{type(self).__name__}-{self.port}",
        )
        self._thread.start()
        return self


def _other_loopback() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((OTHER_LOOPBACK, 0))
    except OSError:
        return LOOPBACK
    return OTHER_LOOPBACK


class OtherHost(_HostileServer):
    """A second server: the attacker's host, or the blob storage a registry redirects to."""

    def __init__(
        self, workdir: Path, *, tls: bool = True, host: str | None = None, own_ca: bool = False
    ) -> None:
        super().__init__(workdir, tls=tls, host=host or _other_loopback(), own_ca=own_ca)


class HostileRegistry(_HostileServer):
    """The pull side of the registry API v2, with the misbehaviour each test asks for."""

    def __init__(
        self, workdir: Path, *, tls: bool = True, host: str = LOOPBACK, own_ca: bool = False
    ) -> None:
        super().__init__(workdir, tls=tls, host=host, own_ca=own_ca)
        self.honour_range = True
        self._blobs: dict[str, _Blob] = {}
        self._redirects: dict[str, tuple[int, str]] = {}
        self._breaks: dict[str, _Break] = {}
        # (repo, ref) -> manifest; explicit entries win over the true-digest aliases.
        self._manifests: dict[tuple[str, str], _Manifest] = {}
        self._aliases: dict[tuple[str, str], _Manifest] = {}
        self._auth: tuple[str, Any] = ("none", None)

    # -- content ------------------------------------------------------------------------

    def add_blob(
        self,
        data: bytes,
        *,
        digest: str | None = None,
        serve: bytes | None = None,
        chunked: bool = False,
    ) -> str:
        """Store a blob under `digest` (default: data's own) answering `serve` (default data)."""
        digest = digest or sha256(data)
        with self._lock:
            self._blobs[digest] = _Blob(data if serve is None else serve, chunked)
        return digest

    def add_manifest(
        self,
        repo: str,
        ref: str,
        body: bytes | Mapping[str, Any],
        *,
        media_type: str | None = None,
        content_type: str | None = None,
        digest_header: str | None = None,
        chunked: bool = False,
    ) -> str:
        """Serve `body` as repo's manifest `ref` (tag or digest); return its true digest."""
        data = _encode(body)
        if media_type is None:
            try:
                media_type = json.loads(data).get("mediaType")
            except (ValueError, AttributeError):
                media_type = None
            if not isinstance(media_type, str):
                raise ValueError("the body has no mediaType: pass media_type")
        true_digest = sha256(data)
        manifest = _Manifest(
            data,
            content_type if content_type is not None else media_type,
            true_digest if digest_header is None else digest_header,
            chunked,
        )
        with self._lock:
            self._manifests[(repo, ref)] = manifest
            self._aliases.setdefault((repo, true_digest), manifest)
        return true_digest

    def manifest_descriptor(
        self, repo: str, digest: str, *, platform: str | None = None
    ) -> dict[str, Any]:
        """The descriptor of repo's stored manifest `digest` (media type, digest, size)."""
        with self._lock:
            manifest = self._manifests.get((repo, digest)) or self._aliases[(repo, digest)]
        desc: dict[str, Any] = {
            "mediaType": json.loads(manifest.body).get("mediaType", manifest.content_type),
            "digest": digest,
            "size": len(manifest.body),
        }
        if platform is not None:
            desc["platform"] = platform_dict(platform)
        return desc

    def add_image(
        self,
        repo: str,
        tag: str,
        layers: Sequence[bytes],
        *,
        media: str = "oci",
        platform: str | None = None,
        config: bytes | None = None,
    ) -> str:
        """Add config and layer blobs and a correct manifest tagged `tag`; return its digest."""
        docker = _media(media)
        plat = platform_dict(platform or current_platform())
        if config is None:
            diff_ids = [sha256(_gunzip(layer)) for layer in layers]
            config = _encode({**plat, "rootfs": {"type": "layers", "diff_ids": diff_ids}})
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": {
                "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                "digest": self.add_blob(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": _layer_type(layer, docker=docker),
                    "digest": self.add_blob(layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
        return self.add_manifest(repo, tag, manifest)

    def add_index(
        self, repo: str, tag: str, manifests: Mapping[str, str], *, media: str = "oci"
    ) -> str:
        """Tag an index of repo's stored manifests ({platform: digest}); return its digest."""
        index = {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST if _media(media) else OCI_INDEX,
            "manifests": [
                self.manifest_descriptor(repo, digest, platform=plat)
                for plat, digest in manifests.items()
            ],
        }
        return self.add_manifest(repo, tag, index)

    def add_index_chain(
        self, repo: str, tag: str, depth: int, *, leaf: str | None = None
    ) -> list[str]:
        """`depth` nested indexes under `tag`, each naming the next; return them top first.

        Content addressing makes a true cycle impossible for an honest registry (a document
        cannot contain its own digest), so "index -> index -> ..." deeper than any bound is
        how an honest one exhausts a client. The innermost names `leaf` (a manifest of repo)
        or, without one, a made-up digest that is not served.
        """
        plat = current_platform()
        if leaf is not None:
            target = self.manifest_descriptor(repo, leaf, platform=plat)
        else:
            missing = _encode({"stepkit": "no such manifest"})
            target = {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(missing),
                "size": len(missing),
                "platform": platform_dict(plat),
            }
        digests: list[str] = []
        for level in range(depth):
            index = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [target],
                # Each level differs, so no two share a digest.
                "annotations": {"stepkit.depth": str(depth - level)},
            }
            ref = tag if level == depth - 1 else sha256(_encode(index))
            digest = self.add_manifest(repo, ref, index)
            digests.append(digest)
            target = self.manifest_descriptor(repo, digest, platform=plat)
        digests.reverse()
        return digests

    def add_index_cycle(self, repo: str, tag: str) -> tuple[str, str]:
        """An index whose only entry names a digest under which the index itself is served.

        The lying registry's cycle: the entry's digest is not the body's, so a client that
        verifies each manifest against the digest it asked for stops at the first hop; one
        that does not would follow the index to itself forever. Returns (the index's true
        digest, the digest its entry names).
        """
        plat = current_platform()
        claimed = sha256(b"stepkit: the digest a lying registry serves its index under")
        entry: dict[str, Any] = {
            "mediaType": OCI_INDEX,
            "digest": claimed,
            "size": 0,
            "platform": platform_dict(plat),
        }
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
        # The entry's size must be the served body's, or a client stops on the size and never
        # meets the digest lie; the body holds its own size, so iterate to the fixed point.
        data = _encode(index)
        while entry["size"] != len(data):
            entry["size"] = len(data)
            data = _encode(index)
        true_digest = self.add_manifest(repo, tag, data)
        self.add_manifest(repo, claimed, data, digest_header=claimed)
        return true_digest, claimed

    # -- misbehaviour ---------------------------------------------------------------------

    def redirect_blob(self, digest: str, location: str, *, status: int = 307) -> None:
        """Answer GET/HEAD of blob `digest` (any repository) with `status` to `location`."""
        with self._lock:
            self._redirects[digest] = (status, location)

    def break_blob(self, digest: str, *, after: int, times: int = 1) -> None:
        """Cut the next `times` GETs of blob `digest` after `after` body bytes."""
        with self._lock:
            self._breaks[digest] = _Break(after, times)

    def require_basic(self, username: str, password: str) -> None:
        """Every /v2/ request needs exactly this Basic pair; else 401 with a Basic challenge."""
        self._auth = ("basic", (username, password))

    def require_bearer(
        self, realm: str, *, service: str = "hostile", header: str | None = None
    ) -> None:
        """Every /v2/ request needs a Bearer token this module issued; else 401 challenging."""
        self._auth = ("bearer", (realm, service, header))

    def no_auth(self) -> None:
        self._auth = ("none", None)

    # -- serving --------------------------------------------------------------------------

    def _challenge(self, name: str | None) -> str | None:
        """The WWW-Authenticate for an unauthenticated request, or None when it may pass."""
        mode, arg = self._auth
        if mode == "basic":
            return 'Basic realm="hostile"'
        realm, service, header = arg
        if header is not None:
            return str(header)
        scope = f',scope="repository:{name}:pull"' if name else ""
        return f'Bearer realm="{realm}",service="{service}"{scope}'

    def _authorized(self, authorization: str | None) -> bool:
        mode, arg = self._auth
        if mode == "none":
            return True
        if mode == "basic":
            return _basic_pair(authorization) == tuple(arg)
        scheme, _, token = (authorization or "").partition(" ")
        with _lock:
            return scheme.lower() == "bearer" and token.strip() in _issued

    def _route(self, handler: _HostileHandler, path: str) -> None:
        if path not in ("/v2", "/v2/") and not path.startswith("/v2/"):
            handler.error(404, "NOT_FOUND", f"nothing is served at {path}")
            return
        match = _V2_PATH.match(path)
        name = match["name"] if match else None
        assert handler.record is not None
        if not self._authorized(handler.record.authorization):
            challenge = self._challenge(name)
            headers = {"WWW-Authenticate": challenge} if challenge else {}
            handler.error(401, "UNAUTHORIZED", "authentication required", headers)
            return
        if match is None:
            if path in ("/v2", "/v2/"):
                handler.answer(200, b"{}", {**_API_VERSION, "Content-Type": "application/json"})
            else:
                handler.error(404, "NAME_UNKNOWN", f"nothing is served at {path}")
            return
        ref = urllib.parse.unquote(match["ref"])
        if match["kind"] == "blobs":
            self._blob(handler, ref)
        else:
            self._manifest(handler, match["name"], ref)

    def _manifest(self, handler: _HostileHandler, repo: str, ref: str) -> None:
        with self._lock:
            manifest = self._manifests.get((repo, ref)) or self._aliases.get((repo, ref))
        if manifest is None:
            handler.error(404, "MANIFEST_UNKNOWN", f"manifest {repo}:{ref} unknown")
            return
        headers = {**_API_VERSION, "Content-Type": manifest.content_type}
        if manifest.digest_header:
            headers["Docker-Content-Digest"] = manifest.digest_header
        handler.answer(200, manifest.body, headers, chunked=manifest.chunked)

    def _blob(self, handler: _HostileHandler, digest: str) -> None:
        with self._lock:
            redirect = self._redirects.get(digest)
            blob = self._blobs.get(digest)
            cut: int | None = None
            brk = self._breaks.get(digest)
            if brk is not None and brk.left > 0 and handler.command == "GET" and blob:
                brk.left -= 1
                cut = brk.after
        if redirect is not None:
            status, location = redirect
            handler.answer(status, b"", {**_API_VERSION, "Location": location})
            return
        if blob is None:
            handler.error(404, "BLOB_UNKNOWN", f"blob {digest} unknown")
            return
        data = blob.serve
        status = 200
        headers = {
            **_API_VERSION,
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": digest,
            "Accept-Ranges": "bytes" if self.honour_range else "none",
        }
        wanted = handler.record.headers.get("Range") if handler.record else None
        if wanted and self.honour_range:
            match = _RANGE.match(wanted.strip())
            start = int(match["start"]) if match else len(data)
            end = int(match["end"]) if match and match["end"] else len(data) - 1
            if match is None or start >= len(data) or end < start:
                handler.error(
                    416,
                    "RANGE_INVALID",
                    f"cannot serve {wanted}",
                    {"Content-Range": f"bytes */{len(data)}"},
                )
                return
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data = data[start : end + 1]
            status = 206
        if cut is None:
            handler.answer(status, data, headers, chunked=blob.chunked)
            return
        # Promise everything, send `cut` bytes, hang up: a broken download mid-blob.
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[:cut])
        handler.wfile.flush()
        handler.close_connection = True


def _media(media: str) -> bool:
    """True for "docker", False for "oci"."""
    if media not in ("oci", "docker"):
        raise ValueError(f"media must be 'oci' or 'docker', not {media!r}")
    return media == "docker"


def _gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _layer_type(layer: bytes, *, docker: bool) -> str:
    gz = layer[:2] == b"\x1f\x8b"
    if docker:
        return DOCKER_LAYER_GZIP if gz else DOCKER_LAYER
    return OCI_LAYER_GZIP if gz else OCI_LAYER


__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "Headers",
    "HostileRegistry",
    "OtherHost",
    "Recorded",
    "TokenRequest",
    "all_requests",
    "current_platform",
    "platform_dict",
    "sha256",
]
