"""A read-only registry API v2 / OCI distribution client: manifests resolved and verified, blobs streamed and verified.

Trust rules (ADVERSARIAL 45-53): every digest is validated before it reaches a URL or a
path; a manifest is checked against its digest, a size cap, its Content-Type and the
descriptor that pointed to it, and refused when it is both an index and a manifest; an
index is followed to one platform, at most MAX_INDEX_DEPTH deep. Redirects are followed
here, not by urllib3, so `Authorization` only ever goes to the registry's own origin and
never over plain HTTP unless the registry itself is named insecure; Basic credentials go to
a token realm only over HTTPS on the registry's own host, a parent domain of it, or a host
the user named (token_realm_hosts), and never on after a redirect. A blob is hashed while it is
written; a body longer than its descriptor is cut off, a short one resumed with Range, and
the file is removed on any failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.log import clean
from stepkit.oci.auth import Challenge, Credentials, DockerConfig, parse_challenges
from stepkit.oci.reference import (
    DIGEST_ALGORITHMS,
    DOCKER_HUB_API,
    Platform,
    Reference,
    parse_reference,
    validate_digest,
)
from stepkit.validate import shown

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

MAX_MANIFEST_BYTES = 4 << 20
MAX_INDEX_DEPTH = 4
MAX_REDIRECTS = 5
CHUNK = 1 << 20
CONNECT_TIMEOUT = 30.0
_ERROR_BODY = 4096
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Docker Hub's token service lives beside its registry, not on it.
_KNOWN_REALM_HOSTS = {DOCKER_HUB_API: frozenset({"auth.docker.io"})}


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor from a manifest or index; `digest` is always validated."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None


@dataclass(frozen=True)
class Image:
    """One platform's image manifest, verified, with the descriptors it names."""

    reference: Reference
    digest: str
    index_digest: str | None
    manifest: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


class _Transient(StepkitError):
    """A failure worth retrying: 408, 429, 5xx, a reset, a time-out, a short body."""


class _RangeRefused(_Transient):
    """A resumed download the server would not resume (416, or a wrong Content-Range): start over."""


@dataclass
class _Origin:
    """What the client learned about one registry host: its scheme and how it wants auth."""

    scheme: str
    challenge: Challenge | None = None


def is_foreign(desc: Descriptor) -> bool:
    """A layer the image says must not be distributed by registries (Windows base layers)."""
    mt = desc.media_type
    return bool(desc.urls) or ".foreign." in mt or "nondistributable" in mt


class RegistryClient:
    """Pulls manifests and blobs from registries with docker's credentials; safe to share between threads."""

    def __init__(
        self,
        *,
        docker_config: Path | None = None,
        insecure: Collection[str] = (),
        token_realm_hosts: Collection[str] = (),
        ca_file: Path | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 300.0,
    ) -> None:
        import urllib3

        from stepkit import __version__

        if docker_config is None:
            docker_config = Path(os.environ.get("HOME") or Path.home()) / ".docker" / "config.json"
        self._config = DockerConfig(docker_config)
        self._insecure = frozenset(_plain_netloc(h) for h in insecure)
        # host (any port) or host:port; 443 left out as a realm URL leaves it out.
        self._realm_hosts = frozenset(
            _netloc(urlsplit(f"https://{h.strip()}")) for h in token_realm_hosts
        )
        self._retries = max(0, retries)
        self._backoff = max(0.0, backoff)
        self._timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout)
        self._user_agent = f"stepkit/{__version__}"
        self._ssl = _ssl_context(ca_file)
        self._lock = threading.Lock()
        self._managers: dict[str | None, Any] = {}
        self._origins: dict[str, _Origin] = {}
        self._creds: dict[str, Credentials | None] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        # api host -> scheme://host[:port] of the realm the credentials were kept from
        self._withheld: dict[str, str] = {}

    # ---------------------------------------------------------------- public API

    def resolve(self, ref: Reference, platform: Platform) -> Image:
        """The image `ref` names for `platform`, every manifest on the way verified."""
        _check_reference(ref)
        ident = ref.digest if ref.digest is not None else ref.tag
        if ident is None:
            raise InputError(f"{ref}: neither a tag nor a digest")
        expected: Descriptor | None = None
        seen: list[str] = []
        index_digest: str | None = None
        for depth in range(MAX_INDEX_DEPTH + 1):
            data, media_type, digest = self._retrying(
                f"{ref}: manifest {ident}", partial(self._manifest, ref, ident, expected)
            )
            if digest in seen:
                raise StepkitError(
                    f"{ref}: index {digest} refers back to itself (a cycle); refused"
                )
            seen.append(digest)
            doc = _json_object(data, f"{ref}: manifest {digest}")
            if media_type in MANIFEST_TYPES:
                return self._image(ref, digest, index_digest, data, media_type, doc)
            if depth == MAX_INDEX_DEPTH:
                break
            if index_digest is None:
                index_digest = digest
            expected = self._choose(ref, digest, doc, platform)
            ident = expected.digest
        raise StepkitError(
            f"{ref}: indexes nest deeper than {MAX_INDEX_DEPTH} levels ({' -> '.join(seen)}); refused"
        )

    def fetch_blob(
        self,
        ref: Reference,
        desc: Descriptor,
        dest: Path,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Stream blob `desc` into `dest`, verified; `dest` does not exist afterwards unless it verified.

        `progress` gets each chunk's size as it is written, and a negative count when a
        download has to start again from the beginning.
        """
        _check_reference(ref)
        validate_digest(desc.digest, what=f"{ref}: blob")
        what = f"{ref}: blob {desc.digest}"
        if is_foreign(desc):
            raise StepkitError(
                f"{what} is a foreign (non-distributable) layer ({shown(desc.media_type)}"
                f"{', with urls' if desc.urls else ''}); such layers are not fetched"
            )
        if desc.size < 0:
            raise StepkitError(f"{what}: negative size in its descriptor")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(dest, flags, 0o600)
        except OSError as exc:
            raise StepkitError(f"{what}: cannot create {dest}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                self._download(ref, desc, out, what, progress)
        except BaseException as exc:
            with suppress(FileNotFoundError):
                os.unlink(dest)
            if isinstance(exc, OSError):  # the disk, not the network (that is mapped already)
                raise StepkitError(f"{what}: writing {dest}: {exc.strerror or exc}") from None
            raise

    def close(self) -> None:
        with self._lock:
            managers = list(self._managers.values())
            self._managers.clear()
        for manager in managers:
            manager.clear()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- manifests

    def _manifest(
        self, ref: Reference, ident: str, expected: Descriptor | None
    ) -> tuple[bytes, str, str]:
        """One manifest by tag or digest: its bytes, media type and (verified) digest."""
        what = f"{ref}: manifest {ident}"
        with self._get(ref, f"/v2/{ref.repository}/manifests/{ident}", what, accept=ACCEPT) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
                raise StepkitError(
                    f"{what}: {length} bytes, more than the {_mib(MAX_MANIFEST_BYTES)} a manifest may have"
                )
            data = _read_capped(resp, MAX_MANIFEST_BYTES, what)
            header_digest = resp.headers.get("Docker-Content-Digest")
            content_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ident.partition(":")[1]:
            digest = ident
        elif header_digest:
            try:
                digest = validate_digest(
                    header_digest.strip(), what=f"{what}: Docker-Content-Digest"
                )
            except InputError as exc:
                raise StepkitError(exc.message) from None
        else:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
        algorithm, _, want = digest.partition(":")
        got = hashlib.new(algorithm, data).hexdigest()
        if got != want:
            raise StepkitError(
                f"{what}: the manifest's bytes hash to {algorithm}:{got}, not {digest}; refused"
            )
        if expected is not None and len(data) != expected.size:
            raise StepkitError(
                f"{what}: {len(data)} bytes, but the index that named it says {expected.size}"
            )
        media_type = self._manifest_type(what, data, content_type, expected)
        return data, media_type, digest

    def _manifest_type(
        self, what: str, data: bytes, content_type: str, expected: Descriptor | None
    ) -> str:
        doc = _json_object(data, what)
        declared = doc.get("mediaType")
        if (
            doc.get("schemaVersion") == 1
            or content_type in SCHEMA1_TYPES
            or declared in SCHEMA1_TYPES
        ):
            raise StepkitError(
                f"{what}: a Docker schema 1 manifest (deprecated since 2017, unsupported); "
                "push the image again with a current docker, buildah or skopeo"
            )
        if declared is not None and not isinstance(declared, str):
            raise StepkitError(f"{what}: mediaType is not a string")
        media_type = declared or content_type
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            raise StepkitError(
                f"{what}: media type {_short(media_type or '(none)')} is not an image manifest or index"
            )
        if declared is not None and content_type != declared:
            raise StepkitError(
                f"{what}: served as {_short(content_type or '(no Content-Type)')} but declares "
                f"mediaType {_short(declared)}; refused"
            )
        if expected is not None and expected.media_type != media_type:
            raise StepkitError(
                f"{what}: is {_short(media_type)} but the index that named it says "
                f"{_short(expected.media_type)}; refused"
            )
        has_index = "manifests" in doc
        has_image = "layers" in doc or "config" in doc
        if has_index and has_image:
            raise StepkitError(
                f"{what}: holds both 'manifests' and 'layers'/'config', so it could be read as an "
                "index or as an image (CVE-2021-41190); refused"
            )
        if media_type in INDEX_TYPES and not has_index:
            raise StepkitError(f"{what}: an index without 'manifests'")
        if media_type in MANIFEST_TYPES and not ("config" in doc and "layers" in doc):
            raise StepkitError(f"{what}: an image manifest without 'config' and 'layers'")
        return media_type

    def _choose(
        self, ref: Reference, digest: str, doc: dict[str, Any], want: Platform
    ) -> Descriptor:
        entries = doc.get("manifests")
        what = f"{ref}: index {digest}"
        if not isinstance(entries, list):
            raise StepkitError(f"{what}: 'manifests' is not a list")
        available: list[str] = []
        best: tuple[int, Descriptor] | None = None
        for n, raw in enumerate(entries):
            desc = _descriptor(raw, f"{what}: manifests[{n}]", with_platform=True)
            if desc.platform is None:
                continue  # docker skips entries without a platform, so do we
            if desc.media_type not in MANIFEST_TYPES | INDEX_TYPES:
                continue  # e.g. an artifact beside the images
            available.append(str(desc.platform))
            rank = want.rank(desc.platform)
            # As containerd: the best compatible platform, the first of equals in index order.
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, desc)
        if best is not None:
            if best[0]:
                log.info(
                    "%s has no image for %s; taking the %s image, which runs on it",
                    what,
                    want,
                    _short(str(best[1].platform)),
                )
            return best[1]
        listed = ", ".join(dict.fromkeys(available)) or "none"
        raise StepkitError(
            f"{what} has no image for platform {want} (available: {_short(listed, 400)}); "
            "choose one with --platform"
        )

    def _image(
        self,
        ref: Reference,
        digest: str,
        index_digest: str | None,
        data: bytes,
        media_type: str,
        doc: dict[str, Any],
    ) -> Image:
        what = f"{ref}: manifest {digest}"
        config = _descriptor(doc.get("config"), f"{what}: config")
        raw_layers = doc.get("layers")
        if not isinstance(raw_layers, list):
            raise StepkitError(f"{what}: 'layers' is not a list")
        layers = tuple(_descriptor(raw, f"{what}: layers[{n}]") for n, raw in enumerate(raw_layers))
        return Image(ref, digest, index_digest, data, media_type, config, layers)

    # ---------------------------------------------------------------- blobs

    def _download(
        self,
        ref: Reference,
        desc: Descriptor,
        out: Any,
        what: str,
        progress: Callable[[int], None] | None,
    ) -> None:
        algorithm, _, want = desc.digest.partition(":")
        hasher = hashlib.new(algorithm)
        written = 0
        resumed = False
        failures = 0
        restarted_after_mismatch = False
        path = f"/v2/{ref.repository}/blobs/{desc.digest}"

        def restart() -> None:
            nonlocal hasher, written, resumed
            out.seek(0)
            out.truncate()
            if progress is not None and written:
                progress(-written)
            hasher = hashlib.new(algorithm)
            written = 0
            resumed = False

        while True:
            try:
                start = written if 0 < written < desc.size else None
                with self._get(ref, path, what, start=start) as resp:
                    if start is not None and resp.status == 206:
                        if not _content_range_ok(resp, start, desc.size):
                            raise _RangeRefused(
                                f"{what}: resumed at byte {start} but the answer's Content-Range is "
                                f"{_short(resp.headers.get('Content-Range') or '(none)')}"
                            )
                        resumed = True
                    elif resp.status == 206:
                        raise StepkitError(
                            f"{what}: a partial answer (206) to a request for the whole blob"
                        )
                    elif written:
                        restart()  # the server ignored Range: take the whole body again
                    length = resp.headers.get("Content-Length")
                    if (
                        length is not None
                        and length.isdigit()
                        and resp.status == 200
                        and int(length) > desc.size
                    ):
                        raise StepkitError(
                            f"{what}: the registry sends {length} bytes, more than the "
                            f"{desc.size} its descriptor gives; refused"
                        )
                    for chunk in _stream(resp, what):
                        if written + len(chunk) > desc.size:
                            raise StepkitError(
                                f"{what}: longer than the {desc.size} bytes its descriptor gives; refused"
                            )
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
                if written < desc.size:
                    raise _Transient(f"{what}: the body ended after {written} of {desc.size} bytes")
                got = hasher.hexdigest()
                if got != want:
                    if resumed and not restarted_after_mismatch:
                        # A resumed body may not continue the first one: try once, whole.
                        log.warning(
                            "%s: digest mismatch after a resumed download; fetching it whole", what
                        )
                        restarted_after_mismatch = True
                        restart()
                        continue
                    raise StepkitError(f"{what}: the bytes hash to {algorithm}:{got}; refused")
                out.flush()
                return
            except _Transient as exc:
                failures += 1
                if isinstance(exc, _RangeRefused) and failures <= self._retries:
                    restart()
                self._wait_to_retry(exc, failures)

    # ---------------------------------------------------------------- HTTP

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        failures = 0
        while True:
            try:
                return call()
            except _Transient as exc:
                failures += 1
                self._wait_to_retry(exc, failures)

    def _wait_to_retry(self, exc: _Transient, failures: int) -> None:
        """Back off before attempt failures + 1; give up when the retries are spent."""
        if failures > self._retries:
            raise StepkitError(f"{exc.message} (gave up after {failures} attempts)") from None
        delay = self._backoff * (2 ** (failures - 1))
        log.warning("%s; retrying in %.1f s", exc.message, delay)
        time.sleep(delay)

    def _origin(self, host: str) -> _Origin:
        with self._lock:
            origin = self._origins.get(host)
            if origin is None:
                origin = _Origin("http" if self._is_insecure(host) else "https")
                self._origins[host] = origin
            return origin

    @contextmanager
    def _get(
        self,
        ref: Reference,
        path: str,
        what: str,
        *,
        accept: str | None = None,
        start: int | None = None,
    ) -> Iterator[Any]:
        """An open 200/206 answer from the registry, after auth and redirects; errors mapped."""
        host = ref.api_host
        origin = self._origin(host)
        url = f"{origin.scheme}://{host}{path}"
        scope = f"repository:{ref.repository}:pull"
        headers = {"User-Agent": self._user_agent, "Accept-Encoding": "identity"}
        if accept:
            headers["Accept"] = accept
        if start is not None:
            headers["Range"] = f"bytes={start}-"
        learned = False
        for _ in range(3):
            authorization, fresh = self._authorization(ref, origin, scope)
            resp, final_url = self._follow(url, headers, authorization, ref, what)
            status = resp.status
            if status == 401 and _same_origin(final_url, origin.scheme, host):
                challenges = parse_challenges(resp.headers.getlist("WWW-Authenticate"))
                _discard(resp)
                if learned or fresh:
                    raise self._denied(ref, challenges)
                # Anonymous first; a 401 says how to authenticate (or that a cached token expired).
                self._learn(ref, origin, scope, challenges, authorization)
                learned = True
                continue
            if 200 <= status < 300:
                try:
                    yield resp
                finally:
                    _discard(resp)
                return
            reason = _error_reason(resp)
            _discard(resp)
            raise self._status_error(ref, what, status, reason, final_url)
        raise self._denied(ref, [])

    def _follow(
        self,
        url: str,
        headers: dict[str, str],
        authorization: str | None,
        ref: Reference,
        what: str,
    ) -> tuple[Any, str]:
        """GET url, following redirects ourselves; Authorization only to the registry's origin."""
        origin = self._origin(ref.api_host)
        for _hop in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if authorization is not None and _same_origin(url, origin.scheme, ref.api_host):
                sent["Authorization"] = authorization
            resp = self._send(url, sent, what)
            if resp.status not in _REDIRECTS:
                return resp, url
            location = resp.headers.get("Location")
            _discard(resp)
            if not location:
                raise StepkitError(f"{what}: a redirect ({resp.status}) without a Location")
            url = self._redirect_target(url, location, what)
        raise StepkitError(f"{what}: more than {MAX_REDIRECTS} redirects; refused")

    def _redirect_target(self, current: str, location: str, what: str) -> str:
        try:
            target = urljoin(current, location.strip())
            parts = urlsplit(target)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise StepkitError(
                f"{what}: the registry redirected to a malformed URL {_short(location)}; refused"
            ) from None
        scheme = parts.scheme.lower()
        where = _short(f"{scheme}://{parts.netloc}" if parts.netloc else scheme + ":")
        if scheme not in ("https", "http") or not parts.hostname:
            raise StepkitError(
                f"{what}: the registry redirected to {where}, which is not HTTP(S); refused"
            )
        if parts.username is not None or parts.password is not None:
            raise StepkitError(f"{what}: the registry redirected to a URL with user info; refused")
        if scheme == "http" and not self._is_insecure(_netloc(parts)):
            raise StepkitError(
                f"{what}: the registry redirected to plain HTTP ({where}), which is not named "
                "insecure; refused"
            )
        return target

    def _send(
        self,
        url: str,
        headers: dict[str, str],
        what: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
    ) -> Any:
        import urllib3

        manager = self._manager(url)
        try:
            return manager.request(
                method,
                url,
                headers=headers,
                body=body,
                preload_content=False,
                decode_content=False,
                redirect=False,
                retries=False,
                timeout=self._timeout,
            )
        except urllib3.exceptions.SSLError as exc:
            raise StepkitError(
                f"{what}: TLS with {_short(urlsplit(url).netloc)} failed: {_ssl_reason(exc)} "
                "(an extra CA can be given with --ca-file)"
            ) from None
        except (urllib3.exceptions.LocationParseError, ValueError, UnicodeError):
            raise StepkitError(f"{what}: bad URL {_short(url)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Transient(
                f"{what}: {_short(urlsplit(url).netloc)}: {_net_reason(exc)}"
            ) from None

    def _manager(self, url: str) -> Any:
        import urllib3

        proxy = _proxy_for(url)
        with self._lock:
            manager = self._managers.get(proxy)
            if manager is None:
                kwargs: dict[str, Any] = {"retries": False, "ssl_context": self._ssl, "maxsize": 8}
                manager = (
                    urllib3.ProxyManager(proxy, proxy_headers=_proxy_auth(proxy), **kwargs)
                    if proxy
                    else urllib3.PoolManager(**kwargs)
                )
                self._managers[proxy] = manager
            return manager

    # ---------------------------------------------------------------- auth

    def _credentials(self, ref: Reference) -> Credentials | None:
        with self._lock:
            if ref.registry in self._creds:
                return self._creds[ref.registry]
        found = self._config.credentials(ref.registry)
        with self._lock:
            self._creds[ref.registry] = found
        return found

    def _authorization(
        self, ref: Reference, origin: _Origin, scope: str
    ) -> tuple[str | None, bool]:
        """The Authorization for a request to the registry, and whether it was made just now."""
        challenge = origin.challenge
        if challenge is None:
            return None, False
        if challenge.scheme == "basic":
            creds = self._credentials(ref)
            if creds is None or not creds.has_basic:
                return None, False
            return creds.basic_header(), False
        with self._lock:
            token = self._tokens.get((ref.api_host, scope))
        if token is not None:
            return f"Bearer {token}", False
        token = self._token(ref, challenge, scope)
        with self._lock:
            self._tokens[(ref.api_host, scope)] = token
        return f"Bearer {token}", True

    def _learn(
        self,
        ref: Reference,
        origin: _Origin,
        scope: str,
        challenges: list[Challenge],
        sent: str | None,
    ) -> None:
        """Take in a 401's challenges so the next attempt authenticates (or is refused)."""
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        chosen = bearer or basic
        if chosen is None:
            shown_schemes = ", ".join(sorted({c.scheme for c in challenges})) or "none"
            raise StepkitError(
                f"{ref}: {ref.registry} asks for authentication this client does not support "
                f"(schemes: {_short(shown_schemes)})"
            )
        with self._lock:
            origin.challenge = chosen
            if sent is not None and sent.startswith("Bearer "):
                self._tokens.pop((ref.api_host, scope), None)  # expired: fetch a new one
        if chosen.scheme == "basic":
            creds = self._credentials(ref)
            if creds is None or not creds.has_basic:
                raise DeniedError(
                    f"{ref}: {ref.registry} requires a login and {self._config.path} has no "
                    f"user and password for it"
                )
            if origin.scheme != "https" and not self._is_insecure(ref.api_host):
                raise DeniedError(f"{ref}: Basic credentials are not sent over plain HTTP")

    def _token(self, ref: Reference, challenge: Challenge, scope: str) -> str:
        realm = challenge.realm or ""
        try:
            parts = urlsplit(realm)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise StepkitError(
                f"{ref}: {ref.registry} names a malformed token realm {_short(realm)}; refused"
            ) from None
        scheme = parts.scheme.lower()
        what = f"{ref}: token from {_short(parts.netloc or realm)}"
        if scheme not in ("https", "http") or not parts.hostname:
            raise StepkitError(
                f"{ref}: {ref.registry} names a token realm {_short(realm)} that is not an HTTP(S) URL; refused"
            )
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise StepkitError(
                f"{ref}: the token realm of {ref.registry} holds user info or a fragment; refused"
            )
        if scheme == "http" and not (
            self._is_insecure(_netloc(parts)) or self._is_insecure(ref.api_host)
        ):
            raise StepkitError(
                f"{ref}: {ref.registry} names a plain-HTTP token realm ({_short(parts.netloc)}); refused"
            )
        creds = self._credentials(ref)
        if creds is not None and creds.registry_token:
            return creds.registry_token.reveal()
        trusted = self._realm_trusted(parts, ref.api_host)
        if creds is not None and not trusted:
            with self._lock:
                self._withheld[ref.api_host] = f"{scheme}://{parts.netloc}"
            log.warning(
                "%s: the token realm %s is not on %s (or not HTTPS): asking for a token without "
                "credentials%s",
                ref,
                _short(parts.netloc),
                ref.registry,
                f" ({_realm_hint(parts)[2:]})" if _realm_hint(parts) else "",
            )
        use = creds if trusted else None
        params = {"scope": scope}
        service = challenge.params.get("service")
        if service:
            params["service"] = service
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        body: bytes | None = None
        method = "GET"
        url = realm + ("&" if parts.query else "?") + urlencode(params)
        if use is not None and use.identity_token:
            method = "POST"
            url = realm
            form = {
                **params,
                "grant_type": "refresh_token",
                "refresh_token": use.identity_token.reveal(),
                "client_id": "stepkit",
            }
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif use is not None and use.has_basic:
            headers["Authorization"] = use.basic_header()
        resp = self._send(url, headers, what, method=method, body=body)
        try:
            status = resp.status
            if status in _REDIRECTS:
                raise StepkitError(f"{what}: the token service answered with a redirect; refused")
            if status in (401, 403):
                if use is not None:
                    raise DeniedError(
                        f"{ref}: the token service {_short(parts.netloc)} refused the credentials "
                        f"for {ref.registry} from {use.source}"
                    )
                why = (
                    " (credentials are only sent to a token service on the registry's own host "
                    f"or one named with --token-realm-host, over HTTPS{_realm_hint(parts)})"
                    if creds is not None
                    else ""
                )
                raise DeniedError(
                    f"{ref}: the token service {_short(parts.netloc)} refused an anonymous token for "
                    f"{ref.repository}{why}"
                )
            if status in (408, 429) or status >= 500:
                raise _Transient(f"{what}: HTTP {status}")
            if status != 200:
                raise StepkitError(f"{what}: HTTP {status}{_error_reason(resp)}")
            data = _read_capped(resp, 1 << 20, what)
        finally:
            _discard(resp)
        doc = _json_object(data, what)
        token = doc.get("token") or doc.get("access_token")
        if (
            not isinstance(token, str)
            or not token
            or any(c.isspace() or not c.isprintable() for c in token)
        ):
            raise StepkitError(f"{what}: the answer holds no usable token")
        from stepkit import secret as secretreg

        secretreg.register(token)
        return token

    def _realm_trusted(self, realm: Any, api_host: str) -> bool:
        """Whether Basic credentials may go to this realm: HTTPS on the registry's own host,
        or on a parent domain of it (registry.gitlab.com's realm is gitlab.com: whoever holds
        a domain holds its subdomains), or Docker Hub's known token host, or a host the user
        named (a self-hosted GitLab's token service on its own host beside the registry's).

        The port does not matter (the host already gets the credentials) unless the user named
        one; a registry named insecure may also take them over HTTP at its own host:port.
        """
        host = (realm.hostname or "").lower()
        registry_host = _hostname(api_host)
        if realm.scheme.lower() == "http":
            return self._is_insecure(api_host) and _netloc(realm) == _plain_netloc(api_host)
        parent = "." in host and registry_host.endswith("." + host) and not _is_ip(registry_host)
        named = _netloc(realm) in self._realm_hosts or _netloc_host(host) in self._realm_hosts
        return (
            host == registry_host
            or parent
            or named
            or host in _KNOWN_REALM_HOSTS.get(api_host, frozenset())
        )

    def _is_insecure(self, netloc: str) -> bool:
        return _plain_netloc(netloc) in self._insecure

    def _denied(self, ref: Reference, challenges: list[Challenge]) -> DeniedError:
        creds = self._credentials(ref)
        with self._lock:
            withheld = self._withheld.get(ref.api_host)
        if creds is not None and withheld is not None:
            realm = urlsplit(withheld)
            how = (
                f"anonymously (the credentials from {creds.source} were not sent to the token "
                f"service {_short(realm.netloc)}: not the registry's host, or not HTTPS"
                f"{_realm_hint(realm)})"
            )
        elif creds is not None:
            how = f"with the credentials from {creds.source}"
        else:
            how = f"anonymously ({self._config.path} has no credentials for {ref.registry})"
        error = next((c.params.get("error") for c in challenges if c.params.get("error")), None)
        detail = f", {_short(error, 60)}" if error else ""
        return DeniedError(
            f"{ref}: {ref.registry} denied access to repository {ref.repository} {how}{detail}"
        )

    def _status_error(
        self, ref: Reference, what: str, status: int, reason: str, url: str
    ) -> StepkitError:
        host = urlsplit(url).netloc
        elsewhere = (
            "" if host == ref.api_host else f" (at {_short(host)}, where the registry redirected)"
        )
        if status == 416:
            return _RangeRefused(f"{what}: the registry refused to resume (HTTP 416)")
        if status in (401, 403):
            return DeniedError(f"{what}: access denied (HTTP {status}){elsewhere}{reason}")
        if status == 404:
            return StepkitError(f"{what}: not found{elsewhere}{reason}")
        if status in (408, 429) or status >= 500:
            return _Transient(f"{what}: HTTP {status}{elsewhere}{reason}")
        return StepkitError(f"{what}: HTTP {status}{elsewhere}{reason}")


# -------------------------------------------------------------------- helpers


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not context.get_ca_certs() and not context.cert_store_stats().get("x509_ca"):
        try:
            import certifi

            context.load_verify_locations(certifi.where())
        except ImportError:
            pass
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            reason = (
                exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM CA file"
            )
            raise InputError(f"--ca-file {shown(str(ca_file))}: {reason}") from None
    return context


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for url (HTTPS_PROXY, HTTP_PROXY, NO_PROXY)."""
    import urllib.request

    parts = urlsplit(url)
    bypass: Any = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(parts.netloc):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _proxy_auth(proxy: str) -> dict[str, str] | None:
    """Proxy-Authorization from a proxy URL's user info: urllib3 does not read it from there."""
    from urllib.parse import unquote

    from stepkit import secret as secretreg

    parts = urlsplit(proxy)
    if parts.username is None:
        return None
    user, password = unquote(parts.username), unquote(parts.password or "")
    secretreg.register_pair(user, password)
    raw = f"{user}:{password}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def _hostname(netloc: str) -> str:
    parsed = urlsplit(f"//{netloc}")
    return (parsed.hostname or netloc).lower()


def _netloc(parts: Any) -> str:
    """host[:port] of a split URL, lower-cased, the default port left out as registries are named."""
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return "\0invalid"
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return host if port is None or port == default else f"{host}:{port}"


def _netloc_host(host: str) -> str:
    """A bare host name or address as _netloc spells it (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def _realm_hint(parts: Any) -> str:
    """How to let a realm have the credentials; nothing for a plain-HTTP one (none may)."""
    if parts.scheme and parts.scheme.lower() != "https":
        return ""
    return f"; --token-realm-host {_short(_netloc_host((parts.hostname or '').lower()))} sends them"


def _plain_netloc(value: str) -> str:
    """host[:port] as an insecure registry is named, normalised like a URL's (port 80 dropped)."""
    return _netloc(urlsplit(f"http://{value.strip()}"))


def _check_reference(ref: Reference) -> None:
    """A Reference built by hand is held to what parse_reference lets through: it goes into URLs."""
    if parse_reference(str(ref), what="image reference") != ref:
        raise InputError(f"image reference {shown(str(ref))} is not in canonical form")


def _same_origin(url: str, scheme: str, api_host: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme.lower() == scheme and _netloc(parts) == _netloc(
        urlsplit(f"{scheme}://{api_host}")
    )


def _discard(resp: Any) -> None:
    """Give the connection back when little is left to read, else drop it.

    The rest must really be read, even when it is 0 bytes: http.client refuses a new request
    on a connection whose last response was not read to its end.
    """
    try:
        remaining = resp.length_remaining
        if remaining is not None and remaining <= 65536:
            resp.drain_conn()
        else:
            resp.close()
        resp.release_conn()
    except Exception:  # a connection already broken has nothing to give back
        resp.close()


def _stream(resp: Any, what: str) -> Iterator[bytes]:
    import urllib3

    try:
        yield from resp.stream(CHUNK, decode_content=False)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise _Transient(f"{what}: {_net_reason(exc)}") from None


def _read_capped(resp: Any, cap: int, what: str) -> bytes:
    buf = bytearray()
    for chunk in _stream(resp, what):
        buf += chunk
        if len(buf) > cap:
            raise StepkitError(f"{what}: more than {_mib(cap)}; refused")
    return bytes(buf)


def _content_range_ok(resp: Any, start: int, size: int) -> bool:
    value = (resp.headers.get("Content-Range") or "").strip()
    unit, _, spec = value.partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    ok = (
        unit == "bytes"
        and first.isdigit()
        and int(first) == start
        and last.isdigit()
        and int(last) == size - 1
        and (total == "*" or (total.isdigit() and int(total) == size))
    )
    return ok


def _descriptor(raw: Any, what: str, *, with_platform: bool = False) -> Descriptor:
    if not isinstance(raw, dict):
        raise StepkitError(f"{what}: not a JSON object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise StepkitError(f"{what}: no mediaType")
    if not isinstance(digest, str):
        raise StepkitError(f"{what}: no digest")
    try:
        validate_digest(digest, what=what)
    except InputError as exc:
        raise StepkitError(exc.message) from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise StepkitError(f"{what}: size is not a non-negative integer")
    urls = raw.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise StepkitError(f"{what}: 'urls' is not a list of strings")
    platform: Platform | None = None
    if with_platform and isinstance(raw.get("platform"), dict):
        spec = raw["platform"]
        os_name, arch, variant = spec.get("os"), spec.get("architecture"), spec.get("variant")
        if isinstance(os_name, str) and isinstance(arch, str) and os_name and arch:
            platform = Platform(
                os_name, arch, variant if isinstance(variant, str) and variant else None
            )
    return Descriptor(media_type, digest, size, tuple(urls), platform)


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise StepkitError(f"{what}: not valid JSON") from None
    if not isinstance(doc, dict):
        raise StepkitError(f"{what}: not a JSON object")
    return doc


def _error_reason(resp: Any) -> str:
    """`: CODE message` from a registry's error body, if it has one (distribution's JSON errors)."""
    try:
        data = resp.read(_ERROR_BODY, decode_content=False)
        doc = json.loads(data)
        first = doc["errors"][0]
        text = f"{first.get('code', '')} {first.get('message', '')}".strip()
    except Exception:  # any body that is not the usual JSON error tells the user nothing
        return ""
    return f": {_short(text)}" if text else ""


def _short(text: str, limit: int = 200) -> str:
    """Server-given text fit for a message: secrets and control characters out, bounded."""
    text = clean(text)
    return text if len(text) <= limit else text[:limit] + "…"


def _mib(n: int) -> str:
    return f"{n >> 20} MiB"


def _net_reason(exc: BaseException) -> str:
    import urllib3

    if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "cannot connect"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return "connection broken"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


def _ssl_reason(exc: BaseException) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl.c")[0].strip(" )")
        return (
            f"certificate verify failed ({_short(detail, 100)})"
            if detail
            else "certificate verify failed"
        )
    if "WRONG_VERSION_NUMBER" in text:
        return "the server does not speak TLS (is it plain HTTP? then name it insecure)"
    return "handshake failed"


__all__ = [
    "ACCEPT",
    "DIGEST_ALGORITHMS",
    "Descriptor",
    "Image",
    "RegistryClient",
    "is_foreign",
]


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
