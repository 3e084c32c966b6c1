"""OCI test material: deterministic layers and image layouts, skopeo pushes, and a token-auth registry."""

from __future__ import annotations

import base64
import contextlib
import gzip as gzip_module
import hashlib
import hmac
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Self

import trustme
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.peers import (
    DEFAULT_START_TIMEOUT,
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
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Registry,
    _HttpPeer,
    _LoopbackHttpd,
    _PeerHandler,
    _tail,
    _wait_until_listening,
)

# A fixed epoch for every mtime and the config's "created", so equal inputs give equal digests.
EPOCH = 1_700_000_000
_CREATED = "2023-11-14T22:13:20Z"  # EPOCH in RFC 3339

OCI_LAYOUT_VERSION = "1.0.0"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE = b"\x50\x2a\x4d\x18"  # the frame pzstd puts first


def _is_zstd(layer: bytes) -> bool:
    return layer.startswith((_ZSTD_MAGIC, _ZSTD_SKIPPABLE))


_ENTRY_TYPES = ("file", "dir", "symlink", "hardlink", "whiteout", "opaque")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFile:
    """One entry of a layer.

    `name` is the path in the image, written verbatim (no normalisation, so hostile names
    can be built too). For "whiteout" it names what is deleted (`a/b` becomes `a/.wh.b`); for
    "opaque" it names the directory (`a` becomes `a/.wh..wh..opq`). A literal `.wh.` name can
    also be written as a plain "file". `mode` defaults to 0o755 for a dir, 0o777 for a
    symlink and 0o644 otherwise.
    """

    name: str
    data: bytes = b""
    mode: int | None = None
    type: str = "file"  # "file" | "dir" | "symlink" | "hardlink" | "whiteout" | "opaque"
    target: str = ""  # symlink/hardlink target


def _split_parent(name: str) -> tuple[str, str]:
    stripped = name.rstrip("/")
    parent, _, base = stripped.rpartition("/")
    return (parent + "/" if parent else ""), base


def _tarinfo(entry: LayerFile) -> tarfile.TarInfo:
    if entry.type not in _ENTRY_TYPES:
        raise ValueError(f"LayerFile {entry.name!r}: unknown type {entry.type!r}")
    name = entry.name
    if entry.type == "whiteout":
        parent, base = _split_parent(entry.name)
        name = f"{parent}.wh.{base}"
    elif entry.type == "opaque":
        name = entry.name.rstrip("/") + "/.wh..wh..opq" if entry.name.strip("/") else ".wh..wh..opq"
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    default_mode = 0o644
    if entry.type == "dir":
        info.type, default_mode = tarfile.DIRTYPE, 0o755
    elif entry.type == "symlink":
        info.type, info.linkname, default_mode = tarfile.SYMTYPE, entry.target, 0o777
    elif entry.type == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, entry.target
    else:
        info.type = tarfile.REGTYPE
        info.size = len(entry.data)
    info.mode = default_mode if entry.mode is None else entry.mode
    return info


def gzip_bytes(data: bytes) -> bytes:
    """gzip with a zero mtime and no file name, so the same input always gives the same bytes."""
    buf = io.BytesIO()
    with gzip_module.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def layer_tar(entries: Sequence[LayerFile], *, gzip: bool = True) -> bytes:
    """A layer tarball of `entries` in the given order, byte-for-byte reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = _tarinfo(entry)
            payload = io.BytesIO(entry.data) if info.isreg() else None
            tar.addfile(info, payload)
    raw = buf.getvalue()
    return gzip_bytes(raw) if gzip else raw


def uncompressed(layer: bytes) -> bytes:
    """The tar inside a layer blob (gzip and zstd are recognised by their magic bytes)."""
    if _is_zstd(layer):
        from backports import zstd

        return zstd.decompress(layer)
    return gzip_module.decompress(layer) if layer.startswith(_GZIP_MAGIC) else layer


# --------------------------------------------------------------------------------------------
# Image layouts
# --------------------------------------------------------------------------------------------


def _platform(value: str) -> dict[str, str]:
    parts = value.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"platform {value!r}: expected os/arch[/variant]")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        out["variant"] = parts[2]
    return out


def _check_media(media: str) -> None:
    if media not in ("oci", "docker"):
        raise ValueError(f"media {media!r}: expected 'oci' or 'docker'")


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _put_blob(layout: Path, data: bytes) -> dict[str, Any]:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    return {"digest": sha256_digest(data), "size": len(data)}


def _write_image(
    layout: Path, layers: Sequence[bytes], platform: str, media: str
) -> tuple[bytes, str]:
    """Store one image's layers, config and manifest as blobs; return the manifest and its type."""
    _check_media(media)
    plat = _platform(platform)
    layer_descs = []
    for layer in layers:
        gz = layer.startswith(_GZIP_MAGIC)
        if media == "oci" and _is_zstd(layer):
            media_type = OCI_LAYER_ZSTD  # Docker's schema 2 has no zstd type
        elif media == "oci":
            media_type = OCI_LAYER_GZIP if gz else OCI_LAYER
        else:
            media_type = DOCKER_LAYER_GZIP if gz else DOCKER_LAYER
        layer_descs.append({"mediaType": media_type, **_put_blob(layout, layer)})
    config = _json(
        {
            **plat,
            "created": _CREATED,
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": [sha256_digest(uncompressed(layer)) for layer in layers],
            },
            "history": [{"created": _CREATED, "created_by": "stepkit tests"} for _ in layers],
        }
    )
    manifest_type = OCI_MANIFEST if media == "oci" else DOCKER_MANIFEST
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {
                "mediaType": OCI_CONFIG if media == "oci" else DOCKER_CONFIG,
                **_put_blob(layout, config),
            },
            "layers": layer_descs,
        }
    )
    _put_blob(layout, manifest)
    return manifest, manifest_type


def _tag(layout: Path, tag: str, descriptor: dict[str, Any]) -> None:
    """Point `tag` in the layout's index.json at descriptor, keeping every other tag."""
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
    index_path = layout / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    index["manifests"] = [
        m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
    ] + [{**descriptor, "annotations": {REF_NAME: tag}}]
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True))


def write_layout(
    layout: Path,
    tag: str,
    layers: Sequence[bytes],
    *,
    platform: str = "linux/amd64",
    media: str = "oci",
) -> str:
    """Write one image into the OCI layout `layout` as `tag`; return its manifest digest.

    Layers are stored as given; each one's media type says gzip, zstd (OCI only) or plain
    tar by its magic bytes. `media="docker"` writes Docker schema 2 media types instead of OCI ones.
    """
    manifest, media_type = _write_image(layout, layers, platform, media)
    _tag(layout, tag, {"mediaType": media_type, **_put_blob(layout, manifest)})
    return sha256_digest(manifest)


def write_index_layout(
    layout: Path,
    tag: str,
    images: Mapping[str, Sequence[bytes]],
    *,
    media: str = "oci",
) -> str:
    """Write a multi-platform image ({platform: layers}) as `tag`; return the index digest.

    media="oci" writes an OCI index of OCI manifests, "docker" a Docker manifest list of
    schema 2 manifests.
    """
    _check_media(media)
    children = []
    for platform, layers in images.items():
        manifest, media_type = _write_image(layout, layers, platform, media)
        children.append(
            {
                "mediaType": media_type,
                **_put_blob(layout, manifest),
                "platform": _platform(platform),
            }
        )
    index_type = OCI_INDEX if media == "oci" else DOCKER_LIST
    index = _json({"schemaVersion": 2, "mediaType": index_type, "manifests": children})
    _tag(layout, tag, {"mediaType": index_type, **_put_blob(layout, index)})
    return sha256_digest(index)


def layout_digest(layout: Path, tag: str) -> str:
    """The digest `tag` names in the layout's index.json."""
    return str(_layout_entry(layout, tag)["digest"])


def _layout_entry(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_NAME) == tag:
            return dict(entry)
    raise KeyError(f"no tag {tag!r} in {layout}/index.json")


def _layout_media_type(layout: Path, tag: str) -> str:
    return str(_layout_entry(layout, tag).get("mediaType", ""))


def _dir_copy(layout: Path, tag: str, dest: Path) -> Path:
    """The image `tag` names as skopeo's `dir:` transport lays it out, blobs hard-linked.

    skopeo 1.9's `oci:` transport only finds index.json entries of OCI media types, so a
    Docker schema 2 manifest or manifest list is pushed from a `dir:` copy instead.
    """
    dest.mkdir(parents=True)
    (dest / "version").write_text("Directory Transport Version: 1.1\n")
    top = _layout_entry(layout, tag)["digest"]

    def link(digest: str, name: str) -> None:
        src = layout / "blobs" / Path(*digest.split(":", 1))
        try:
            os.link(src, dest / name)
        except OSError:
            shutil.copyfile(src, dest / name)

    def add_image(manifest: dict[str, Any]) -> None:
        for desc in [manifest["config"], *manifest["layers"]]:
            if not (dest / desc["digest"].split(":", 1)[1]).exists():
                link(desc["digest"], desc["digest"].split(":", 1)[1])

    body = json.loads(read_blob(layout, top))
    link(top, "manifest.json")
    if "manifests" in body:
        for child in body["manifests"]:
            link(child["digest"], child["digest"].split(":", 1)[1] + ".manifest.json")
            add_image(json.loads(read_blob(layout, child["digest"])))
    else:
        add_image(body)
    return dest


def read_blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


# --------------------------------------------------------------------------------------------
# A registry client of the tests' own (Basic or the bearer-token flow done by hand)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().strip(",").strip().lower()
        i = eq + 1
        if rest[i : i + 1] == '"':
            end = rest.find('"', i + 1)
            end = len(rest) if end < 0 else end
            params[key] = rest[i + 1 : end]
            i = end + 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            params[key] = rest[i:end].strip()
            i = end
        while i < len(rest) and rest[i] in ", ":
            i += 1
    return scheme.lower(), params


def _reply(resp: urllib3.BaseHTTPResponse) -> HttpReply:
    return HttpReply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.data)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class TokenError(RuntimeError):
    """The token issuer refused (status kept for assertions)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"token issuer answered {status}: {body[:200]!r}")
        self.status = status


def registry_request(
    registry: Registry,
    path: str,
    *,
    username: str | None = None,
    password: str | None = None,
    method: str = "GET",
    accept: Sequence[str] = MANIFEST_TYPES,
) -> HttpReply:
    """One request to registry.url + path as a docker client makes it.

    Anonymous first; on a 401 it answers the challenge: Basic with the credentials, or the
    bearer flow (GET realm?service=&scope= with Basic credentials when given) and a retry
    with the token. A refusing token issuer raises TokenError.
    """
    http = urllib3.PoolManager(ssl_context=registry.ssl_context(), retries=False, timeout=30.0)
    try:
        headers = {"Accept": ", ".join(accept)}
        resp = http.request(method, registry.url + path, headers=headers, redirect=False)
        if resp.status != 401:
            return _reply(resp)
        scheme, params = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if username is None or password is None:
                return _reply(resp)
            headers["Authorization"] = _basic(username, password)
        elif scheme == "bearer":
            query = {"service": params.get("service", "")}
            if params.get("scope"):
                query["scope"] = params["scope"]
            token_headers = {}
            if username is not None and password is not None:
                token_headers["Authorization"] = _basic(username, password)
            token_resp = http.request(
                "GET",
                params["realm"] + "?" + urllib.parse.urlencode(query),
                headers=token_headers,
                redirect=False,
            )
            if token_resp.status != 200:
                raise TokenError(token_resp.status, token_resp.data)
            answer = json.loads(token_resp.data)
            headers["Authorization"] = "Bearer " + (answer.get("token") or answer["access_token"])
        else:
            raise RuntimeError(f"unexpected challenge {resp.headers.get('WWW-Authenticate')!r}")
        return _reply(http.request(method, registry.url + path, headers=headers, redirect=False))
    finally:
        http.clear()


# --------------------------------------------------------------------------------------------
# Pushing with skopeo
# --------------------------------------------------------------------------------------------


def _write_private(path: Path, data: str) -> None:
    # Created with its final mode: the credentials are never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(data)


def _skopeo_env(work: Path) -> dict[str, str]:
    # A clean env with our own (empty) registries.conf and policy, so neither the machine's
    # /etc/containers nor a developer's settings can change what is pushed or where.
    registries_conf = work / "registries.conf"
    registries_conf.write_text("")
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(work),
        "LC_ALL": "C",
        "TZ": "UTC",
        "TMPDIR": str(tmp),
        "XDG_RUNTIME_DIR": str(work),
        "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
    }


def skopeo(
    registry: Registry, *args: str, username: str | None = None, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run skopeo against `registry` (its CA trusted; credentials from an auth file, not argv).

    The arguments follow `skopeo --policy P`; the caller adds the command and its flags, and
    may use "{authfile}" and "{certdir}" placeholders in them.
    """
    work = Path(tempfile.mkdtemp(prefix="skopeo-", dir=registry.workdir))
    authfile = work / "auth.json"
    auths = {}
    if username is not None and password is not None:
        auths[registry.host] = {
            "auth": base64.b64encode(f"{username}:{password}".encode()).decode()
        }
    _write_private(authfile, json.dumps({"auths": auths}))
    policy = work / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    argv = [
        "skopeo",
        "--policy",
        str(policy),
        *(a.format(authfile=authfile, certdir=registry.cert_dir) for a in args),
    ]
    try:
        return subprocess.run(
            argv, env=_skopeo_env(work), capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def push(
    layout: Path,
    tag: str,
    registry: Registry | TokenRegistry,
    repo: str,
    *,
    username: str,
    password: str,
    all_platforms: bool = True,
) -> str:
    """`skopeo copy oci:LAYOUT:TAG docker://HOST/REPO:TAG`, bytes unchanged; return the digest.

    --preserve-digests makes skopeo fail rather than change a manifest, index or layer; a
    Docker-typed image goes through a `dir:` copy (skopeo's `oci:` cannot read it). The
    digest returned is the one the registry reports for the tag, checked against the body,
    skopeo's and, for a whole push (all_platforms), the layout's. With all_platforms=False
    an index pushes only the running platform's manifest, whose digest is returned.
    """
    digest_dir = Path(tempfile.mkdtemp(prefix="digest-", dir=registry.workdir))
    digest_file = digest_dir / "digest"
    source = f"oci:{layout}:{tag}"
    if _layout_media_type(layout, tag) in (DOCKER_MANIFEST, DOCKER_LIST):
        source = "dir:" + str(_dir_copy(layout, tag, digest_dir / "dir"))
    proc = skopeo(
        registry,
        "copy",
        "--quiet",
        "--preserve-digests",
        *(["--all"] if all_platforms else []),
        "--dest-authfile",
        "{authfile}",
        "--dest-cert-dir",
        "{certdir}",
        "--dest-tls-verify=true",
        "--digestfile",
        str(digest_file),
        source,
        f"docker://{registry.host}/{repo}:{tag}",
        username=username,
        password=password,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"skopeo copy to {registry.host}/{repo}:{tag} failed ({proc.returncode}):\n"
            f"{proc.stderr.strip()}\nregistry log tail:\n{_tail(registry.log_path)}"
        )
    pushed = digest_file.read_text().strip()
    shutil.rmtree(digest_dir, ignore_errors=True)
    reply = registry_request(
        registry, f"/v2/{repo}/manifests/{tag}", username=username, password=password
    )
    if reply.status != 200:
        raise RuntimeError(f"GET {repo}:{tag} after the push answered {reply.status}")
    reported = reply.header("Docker-Content-Digest")
    if reported != pushed or sha256_digest(reply.body) != pushed:
        raise RuntimeError(
            f"{repo}:{tag}: registry reports {reported}, body hashes to "
            f"{sha256_digest(reply.body)}, skopeo pushed {pushed}"
        )
    if all_platforms and pushed != layout_digest(layout, tag):
        raise RuntimeError(
            f"{repo}:{tag}: pushed {pushed}, layout has {layout_digest(layout, tag)}"
        )
    return reported


# --------------------------------------------------------------------------------------------
# A registry with token auth and a token issuer of the tests' own
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One request the token issuer answered."""

    scopes: tuple[str, ...]  # as asked, e.g. ("repository:team/app:pull,push",)
    service: str
    user: str | None  # the authenticated user; None when anonymous or refused
    basic: bool  # whether Basic credentials were presented (right or wrong)
    status: int
    granted: tuple[str, ...] = ()  # "repository:NAME:ACTIONS" actually put in the token

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(public_key_der: bytes) -> str:
    """docker/libtrust's key ID, which distribution 2.8 takes a JWT `kid` to be.

    SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32, in 4-character groups.
    """
    b32 = base64.b32encode(hashlib.sha256(public_key_der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


class _TlsHttpd(_LoopbackHttpd):
    def __init__(
        self, peer: _HttpPeer, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext
    ) -> None:
        self.tls = context
        super().__init__(peer, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # The handshake happens on the handler thread's first read, not in the accept loop,
        # so one stuck client cannot block the others.
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client refusing our certificate or hanging up is its business; no traceback spam.
        self.peer._log(f"error serving {client_address}")


class _TokenHandler(_PeerHandler):
    @property
    def issuer(self) -> _TokenIssuer:
        assert isinstance(self.peer, _TokenIssuer)
        return self.peer

    def _json_reply(
        self, status: int, value: object, headers: Mapping[str, str] | None = None
    ) -> None:
        body = json.dumps(value).encode()
        self.send_response(status)
        for name, val in (headers or {}).items():
            self.send_header(name, val)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        # The OAuth2 POST form is optional in the token spec; 404 makes clients fall back to GET.
        self._plain(404, "use GET")

    def do_GET(self) -> None:
        issuer = self.issuer
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._plain(404, "not found")
            return
        query = urllib.parse.parse_qs(url.query)
        service = query.get("service", [""])[0]
        scopes = tuple(s for value in query.get("scope", []) for s in value.split(" ") if s)
        header = self.headers.get("Authorization", "")
        presented = bool(header)
        user: str | None = None
        if presented:
            user = issuer.authenticate(header)
            if user is None:
                issuer.record(TokenRequest(scopes, service, None, True, 401))
                self._json_reply(
                    401,
                    {"details": "incorrect username or password"},
                    {"WWW-Authenticate": f'Basic realm="{issuer.registry.realm}"'},
                )
                return
        if service != issuer.registry.service:
            issuer.record(TokenRequest(scopes, service, user, presented, 400))
            self._json_reply(400, {"details": f"unknown service {service!r}"})
            return
        access, granted = issuer.grant(user, scopes)
        token = issuer.sign(user, access)
        issuer.record(TokenRequest(scopes, service, user, presented, 200, granted))
        self._json_reply(
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": issuer.registry.token_ttl,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )


class _TokenIssuer(_HttpPeer):
    """The docker token spec's authorization server, over TLS on loopback."""

    _handler = _TokenHandler

    def __init__(self, registry: TokenRegistry) -> None:
        super().__init__(timeout=registry.timeout)
        self.registry = registry
        self.context: ssl.SSLContext | None = None
        self.key: rsa.RSAPrivateKey | None = None
        self.header: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def authenticate(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        expected = self.registry.users.get(username)
        if not sep or expected is None:
            return None
        return username if hmac.compare_digest(password.encode(), expected.encode()) else None

    def grant(
        self, user: str | None, scopes: Sequence[str]
    ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        access: list[dict[str, Any]] = []
        granted: list[str] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            if user is not None:
                allowed = {"pull", "push"}
            elif name in self.registry.public:
                allowed = {"pull"}
            else:
                allowed = set()
            given = [a for a in actions.split(",") if a in allowed]
            if given:
                access.append({"type": "repository", "name": name, "actions": given})
                granted.append(f"repository:{name}:{','.join(given)}")
        return access, tuple(granted)

    def sign(self, user: str | None, access: list[dict[str, Any]]) -> str:
        assert self.key is not None
        now = int(time.time())
        claims = {
            "iss": self.registry.issuer,
            "sub": user or "",
            "aud": self.registry.service,
            "exp": now + self.registry.token_ttl,
            "nbf": now - 1,
            "iat": now,
            "jti": base64.b32encode(os.urandom(10)).decode(),
            "access": access,
        }
        signing_input = f"{_b64url(_json(self.header))}.{_b64url(_json(claims))}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.registry.token_requests.append(request)

    def __enter__(self) -> Self:
        # As _HttpPeer.__enter__, with a TLS server in place of the plain one.
        assert self.context is not None
        self._stop.clear()
        self._httpd = _TlsHttpd(self, self._handler, self.context)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"token-issuer-{self.port}",
        )
        self._thread.start()
        try:
            _wait_until_listening(self.port, what="token issuer", timeout=self.timeout)
        except RuntimeError as exc:
            self.__exit__(None, None, None)
            raise RuntimeError(f"{exc}\n" + "\n".join(self.log_lines[-30:])) from None
        return self


class TokenRegistry(Registry):
    """Debian docker-registry with `auth: token`, TLS, and a token issuer of the test's own.

    The issuer (at `realm`, HTTPS on another loopback port, same CA as the registry) checks
    Basic credentials against `users`: a user gets pull and push on every repository, an
    anonymous caller a token with pull on the `public` repositories only (and no access
    elsewhere, which the registry answers with 401). Tokens are RS256 JWTs whose header
    carries the signing certificate (`x5c`) or, with signing="kid", libtrust's key ID.
    realm_host="localhost" names the realm by another host name than the registry's
    127.0.0.1 (same machine, same certificate), for clients that treat the two differently.
    """

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        *,
        public: Collection[str] = (),
        service: str = "stepkit-test-registry",
        issuer: str = "stepkit-test-issuer",
        token_ttl: int = 300,
        signing: str = "x5c",
        realm_host: str = LOOPBACK,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        if signing not in ("x5c", "kid"):
            raise ValueError(f"signing {signing!r}: expected 'x5c' or 'kid'")
        super().__init__(workdir, users, timeout=timeout)
        self.public = frozenset(public)
        self.service = service
        self.issuer = issuer
        self.token_ttl = token_ttl
        self.signing = signing
        self.realm_host = realm_host
        self.ca_file = self.ca_pem
        self.rootcertbundle = workdir / "token-signing-ca.pem"
        self.token_requests: list[TokenRequest] = []
        self._issuer = _TokenIssuer(self)

    @property
    def realm(self) -> str:
        return f"https://{self.realm_host}:{self._issuer.port}/token"

    def _write_files(self) -> Path:
        htpasswd = super()._write_files()  # TLS material; the htpasswd file goes unused
        # The issuer serves the registry's own certificate (valid for 127.0.0.1, any port),
        # so a client trusting the registry's CA trusts the realm too.
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self.workdir / "server.pem", self.workdir / "server-key.pem")
        self._issuer.context = tls

        signing_ca = trustme.CA(key_type=trustme.KeyType.RSA)
        signing_ca.cert_pem.write_to_path(str(self.rootcertbundle))
        leaf = signing_ca.issue_cert("token-signer.invalid", key_type=trustme.KeyType.RSA)
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self._issuer.key = key
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        if self.signing == "x5c":
            der = cert.public_bytes(serialization.Encoding.DER)
            self._issuer.header = {
                "typ": "JWT",
                "alg": "RS256",
                "x5c": [base64.b64encode(der).decode()],
            }
        else:
            # A kid is looked up among the keys of rootcertbundle's certificates, so the
            # signing certificate itself must be in the bundle.
            with self.rootcertbundle.open("ab") as bundle:
                bundle.write(leaf.cert_chain_pems[0].bytes())
            spki = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            self._issuer.header = {"typ": "JWT", "alg": "RS256", "kid": libtrust_key_id(spki)}
        self._issuer.__enter__()
        return htpasswd

    def _write_config(self, htpasswd: Path) -> Path:
        path = super()._write_config(htpasswd)
        config = json.loads(path.read_text())
        config["auth"] = {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.rootcertbundle),
            }
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    def check_auth(self, username: str, password: str) -> int:
        """GET /v2/ through the token flow with these credentials; the status (401 if refused)."""
        try:
            return registry_request(self, "/v2/", username=username, password=password).status
        except TokenError as exc:
            return exc.status

    def manifest_digest(self, repo: str, tag: str, username: str, password: str) -> str:
        reply = registry_request(
            self, f"/v2/{repo}/manifests/{tag}", username=username, password=password
        )
        if reply.status != 200:
            raise RuntimeError(f"GET manifest {repo}:{tag} answered {reply.status}")
        return reply.header("Docker-Content-Digest")

    def __enter__(self) -> Self:
        try:
            return super().__enter__()
        except BaseException:
            self._issuer.__exit__(None, None, None)
            raise

    def __exit__(self, *exc_info: Any) -> None:
        try:
            super().__exit__(*exc_info)
        finally:
            with contextlib.suppress(Exception):
                self._issuer.__exit__(None, None, None)


__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "EPOCH",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYOUT_VERSION",
    "OCI_MANIFEST",
    "REF_NAME",
    "HttpReply",
    "LayerFile",
    "TokenError",
    "TokenRegistry",
    "TokenRequest",
    "gzip_bytes",
    "layer_tar",
    "layout_digest",
    "libtrust_key_id",
    "parse_challenge",
    "push",
    "read_blob",
    "registry_request",
    "sha256_digest",
    "skopeo",
    "uncompressed",
    "write_index_layout",
    "write_layout",
]
