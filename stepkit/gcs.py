"""Google Cloud Storage locations as the Knative controller and manifests spell them.

`gs://bucket/object`, `gs://bucket/object#generation`, and
`https://storage.googleapis.com/bucket/object` (percent-encoded, as a browser copies it).
`open_client()` builds the one reader a fetch uses (application default credentials,
anonymous when there are none or when STORAGE_EMULATOR_HOST points at an emulator), and
`GcsClient` gives the JSON API's object reads with stepkit's error mapping (401/403 exit 3 naming
the permission, 404 naming object and generation, 408/429/5xx retryable). JSON answers (object
metadata, listings, errors) are read through `read_metadata_body`, which stops at
MAX_METADATA_BYTES: only media bodies may be large.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.log import printable
from stepkit.validate import has_control, shown

# Bucket names: 3-63 characters (222 with dots), lower-case letters, digits, '-', '_', '.',
# starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{1,220})[a-z0-9]$")
_GENERATION = re.compile(r"^[1-9][0-9]{0,18}$")
MAX_OBJECT_NAME = 1024  # bytes of UTF-8, GCS's own limit
HTTPS_HOST = "storage.googleapis.com"


@dataclass(frozen=True)
class Location:
    """One object, optionally pinned to a generation."""

    bucket: str
    name: str
    generation: int | None = None

    def url(self) -> str:
        """gs://bucket/name[#generation], the form logs, manifests and results use."""
        suffix = f"#{self.generation}" if self.generation is not None else ""
        return f"gs://{self.bucket}/{self.name}{suffix}"

    def __str__(self) -> str:
        return self.url()


def parse_location(value: str, *, what: str) -> Location:
    """A location from a flag or a manifest entry; InputError naming `what` when it is bad."""
    if has_control(value):
        raise InputError(f"{what}: control characters in {shown(value)}")
    if value.startswith("gs://"):
        rest = value[len("gs://") :]
        bucket, sep, name = rest.partition("/")
        name, hash_sign, generation = name.partition("#")
    elif value.startswith("https://"):
        try:
            parts = urlsplit(value)
            port = parts.port  # raises ValueError for a port that is not a number
        except ValueError:
            port = -1
        if port or parts.hostname != HTTPS_HOST or parts.query or parts.username:
            raise InputError(
                f"{what}: expected gs://BUCKET/OBJECT or https://{HTTPS_HOST}/BUCKET/OBJECT, "
                f"got {shown(value)}"
            )
        bucket, sep, name = parts.path.lstrip("/").partition("/")
        name = unquote(name)
        hash_sign, generation = ("#", parts.fragment) if parts.fragment else ("", "")
    else:
        raise InputError(
            f"{what}: expected gs://BUCKET/OBJECT[#GENERATION] or "
            f"https://{HTTPS_HOST}/BUCKET/OBJECT, got {shown(value)}"
        )
    if not sep or not name:
        raise InputError(f"{what}: no object name in {shown(value)}")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or len(bucket) > 222:
        raise InputError(f"{what}: invalid bucket name {shown(bucket)}")
    if len(name.encode()) > MAX_OBJECT_NAME or has_control(name):
        raise InputError(f"{what}: invalid object name {shown(name)}")
    gen: int | None = None
    if hash_sign:
        if not _GENERATION.fullmatch(generation):
            raise InputError(
                f"{what}: generation must be a positive integer, got {shown(generation)}"
            )
        gen = int(generation)
    return Location(bucket, name, gen)


READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_ROLE_FOR = {
    "storage.objects.get": "roles/storage.objectViewer",
    "storage.objects.create": "roles/storage.objectCreator",
    "storage.objects.list": "roles/storage.objectViewer",
}


class TransientError(StepkitError):
    """A failure worth retrying: 408, 429, 5xx, a reset, a stall, a truncated or corrupted body."""


class NotFoundError(StepkitError):
    """The object, or the generation asked for, does not exist."""


# A JSON answer of GCS (an object's resource, a listing page of at most 1000 items, an error) is
# well under a MiB; the cap stops a broken or hostile endpoint from making us buffer gigabytes.
MAX_METADATA_BYTES = 8 << 20


class BodyTooLargeError(StepkitError):
    """A JSON answer was larger than MAX_METADATA_BYTES (after decompression); not retried."""


def read_metadata_body(chunks: Iterable[bytes], what: str) -> bytes:
    """The decoded body of a JSON answer, read until MAX_METADATA_BYTES and no further.

    `chunks` yields the body already decompressed, in pieces of bounded size; `what` names the
    request (never with its query, which may hold a session credential).
    """
    data = bytearray()
    for chunk in chunks:
        data += chunk
        if len(data) > MAX_METADATA_BYTES:
            raise BodyTooLargeError(
                f"{what}: the answer is larger than {MAX_METADATA_BYTES >> 20} MiB, more than "
                "any GCS metadata; refusing to read it (a broken or hostile endpoint?)"
            )
    return bytes(data)


# GCS's 403 body: "<principal> does not have storage.objects.get access to the Google Cloud
# Storage object." -- the principal and permission are worth showing, nothing else is.
_DENIED_BODY = re.compile(r"([\w.+-]+@[\w.-]+) does not have ([a-z]+\.[a-zA-Z]+\.[a-zA-Z]+) access")


def denied(
    status: int, loc: Location, permission: str = "storage.objects.get", reason: str = ""
) -> DeniedError:
    """The exit-3 error for a 401/403 on `loc`: which permission, and the role that grants it."""
    who = "the pod's service account"
    match = _DENIED_BODY.search(reason)
    if match:
        who = f"the service account {match.group(1)}"
        permission = match.group(2)
    role = _ROLE_FOR.get(permission, "a role granting it")
    if status == 401:
        return DeniedError(
            f"{permission} on {loc}: not authenticated (no usable credentials; give the pod a "
            f"service account with {role}, or make the object public)"
        )
    return DeniedError(f"{permission} on {loc}: permission denied ({who} needs {role})")


def check_status(
    status: int, loc: Location, *, permission: str = "storage.objects.get", reason: str = ""
) -> None:
    """Raise the stepkit error a non-2xx JSON API answer means for `loc`."""
    if 200 <= status < 300:
        return
    if status in (401, 403):
        raise denied(status, loc, permission, reason)
    if status == 404:
        what = f"generation {loc.generation} of " if loc.generation is not None else ""
        raise NotFoundError(f"{what}gs://{loc.bucket}/{loc.name}: no such object")
    detail = f": {reason}" if reason else ""
    if status in (408, 429) or status >= 500:
        raise TransientError(f"{loc}: HTTP {status}{detail}")
    raise StepkitError(f"{loc}: HTTP {status}{detail}")


def parse_goog_hash(header: str) -> dict[str, bytes]:
    """`X-Goog-Hash: crc32c=AAAAAA==,md5=...` as {"crc32c": raw bytes, "md5": raw bytes}."""
    out: dict[str, bytes] = {}
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if sep and name in ("crc32c", "md5"):
            try:
                out[name] = base64.b64decode(value.strip(), validate=True)
            except ValueError:
                continue
    return out


class Response:
    """A streaming answer to one read: status, headers, and the urllib3 response as `raw`."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    @property
    def status_code(self) -> int:
        return int(self.raw.status)

    @property
    def headers(self) -> Any:
        return self.raw.headers  # case-insensitive

    @property
    def text(self) -> str:
        return bytes(self.raw.read(4096, decode_content=True)).decode(errors="replace")

    def close(self) -> None:
        """Return the connection to the pool when the body was read to its end, else drop it."""
        if self.raw.length_remaining != 0:
            self.raw.close()  # unread bytes: the connection cannot carry another request
        self.raw.release_conn()


class GcsClient:
    """Object reads over the JSON API, shared by every worker thread.

    Not google-cloud-storage: its client, requests and their per-request work cost a fetch
    of many small objects twice the CPU of urllib3 used directly (bench/gcs_fetch.py), and
    its import alone is 150 ms of every fetch. Credentials are google-auth's (refreshed under
    a lock when they expire), proxies come from the environment as with requests, and the
    connection pool holds one connection per worker.
    """

    def __init__(self, credentials: Any, *, base_url: str, pool_size: int) -> None:
        import urllib3

        from stepkit import __version__

        self.credentials = credentials
        self.base_url = base_url.rstrip("/")
        self._lock = threading.Lock()
        self._user_agent = f"stepkit/{__version__}"
        kwargs: dict[str, Any] = {"maxsize": max(pool_size, 1), "retries": False, "block": False}
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        if ca_bundle:
            kwargs["ca_certs"] = ca_bundle
        elif self.base_url.startswith("https:"):
            import certifi  # what requests (and so google-cloud-storage) trusts by default

            kwargs["ca_certs"] = certifi.where()
        proxy = _proxy_for(self.base_url)
        self.http: Any = (
            urllib3.ProxyManager(proxy, **kwargs) if proxy else urllib3.PoolManager(**kwargs)
        )
        # Without a proxy every request goes to the one host: its pool is asked directly,
        # which spares each of thousands of small reads the manager's URL parsing and lookup.
        self._pool: Any = None if proxy else self.http.connection_from_url(self.base_url)
        self._path_prefix = urlsplit(self.base_url).path

    def _get(self, url: str, path: str, **kwargs: Any) -> Any:
        """GET url (base_url + path) through the host's pool, or the proxy manager's."""
        if self._pool is None:
            return self.http.request("GET", url, **kwargs)
        headers = kwargs.pop("headers")
        return self._pool.urlopen(
            "GET", self._path_prefix + path, headers=headers, retries=False, **kwargs
        )

    def _headers(self, url: str, extra: dict[str, str]) -> dict[str, str]:
        headers = {"User-Agent": self._user_agent, **extra}
        if self.credentials is not None:
            with self._lock:  # one refresh at a time; the token is shared by every worker
                import importlib

                transport: Any = importlib.import_module("google.auth.transport.urllib3")
                auth_errors: Any = importlib.import_module("google.auth.exceptions")
                try:
                    self.credentials.before_request(
                        transport.Request(self.http), "GET", url, headers
                    )
                except (auth_errors.RefreshError, auth_errors.TransportError) as exc:
                    # Raised bare these would be "internal error", exit 1, and never retried.
                    why = printable(" ".join(str(exc.args[0] if exc.args else exc).split()))[:200]
                    if isinstance(exc, auth_errors.RefreshError) and not getattr(
                        exc, "retryable", False
                    ):
                        raise DeniedError(f"cannot get an access token: {why}") from None
                    raise TransientError(f"cannot get an access token: {why}") from None
        return headers

    def _object_path(self, loc: Location) -> str:
        return f"b/{quote(loc.bucket, safe='')}/o/{quote(loc.name, safe='')}"

    def media(
        self,
        loc: Location,
        *,
        start: int | None = None,
        end: int | None = None,
        connect_timeout: float,
        read_timeout: float,
    ) -> Response:
        """An open streaming response for the object's bytes (end inclusive); the caller closes it.

        Raises the mapped error for a non-2xx answer (the response is closed then).
        """
        import urllib3

        query = "alt=media" if loc.generation is None else f"alt=media&generation={loc.generation}"
        path = f"/download/storage/v1/{self._object_path(loc)}?{query}"
        url = self.base_url + path
        # The stored bytes, not a server-side decompressed copy: X-Goog-Hash is of those.
        extra = {"Accept-Encoding": "gzip"}
        if start is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"
        resp = Response(
            self._get(
                url,
                path,
                headers=self._headers(url, extra),
                preload_content=False,
                decode_content=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            )
        )
        if not 200 <= resp.status_code < 300:
            reason = _reason(resp)
            resp.close()
            check_status(resp.status_code, loc, reason=reason)
        return resp

    def metadata(self, loc: Location, *, timeout: float) -> dict[str, Any]:
        """The object's JSON resource (size, generation, crc32c, md5Hash, ...)."""
        import urllib3

        query = "" if loc.generation is None else f"?generation={loc.generation}"
        path = f"/storage/v1/{self._object_path(loc)}{query}"
        url = self.base_url + path
        resp = Response(
            self._get(
                url,
                path,
                headers=self._headers(url, {}),
                preload_content=False,
                redirect=False,
                timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout),
            )
        )
        if not 200 <= resp.status_code < 300:
            reason = _reason(resp)
            resp.close()
            check_status(resp.status_code, loc, reason=reason)
        try:
            body = read_metadata_body(
                resp.raw.stream(_METADATA_CHUNK, decode_content=True), f"{loc}: metadata"
            )
        finally:
            resp.close()
        try:
            data = json.loads(body)
        except ValueError:
            raise TransientError(f"{loc}: metadata is not JSON") from None
        if not isinstance(data, dict):
            raise TransientError(f"{loc}: metadata is not a JSON object")
        return data


_METADATA_CHUNK = 64 << 10


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for url (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as requests does."""
    import urllib.request

    parts = urlsplit(url)
    bypass: Any = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if bypass(parts.netloc):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _reason(resp: Any) -> str:
    try:
        text = str(resp.text)[:200]
    except Exception:  # a body that cannot be read adds nothing to the message
        return ""
    return printable(" ".join(text.split()))


def open_client(*, pool_size: int = 10) -> GcsClient:
    """The one client a command uses: the emulator's when STORAGE_EMULATOR_HOST is set
    (anonymous), else application default credentials, else anonymous (public buckets)."""
    emulator = os.environ.get(EMULATOR_ENV, "").strip()
    if emulator:
        base = emulator if "://" in emulator else f"http://{emulator}"
        return GcsClient(None, base_url=base, pool_size=pool_size)
    import google.auth
    import google.auth.exceptions

    try:
        credentials, _project = google.auth.default(scopes=[READ_ONLY_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError:
        credentials = None
    return GcsClient(credentials, base_url=f"https://{HTTPS_HOST}", pool_size=pool_size)
