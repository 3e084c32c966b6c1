"""Google Cloud Storage locations as the Knative controller and manifests spell them.

`gs://bucket/object`, `gs://bucket/object#generation`, and
`https://storage.googleapis.com/bucket/object` (percent-encoded, as a browser copies it).
google-cloud-storage itself is imported only by the commands that talk to GCS:
`open_client()` builds one client (application default credentials, anonymous when
there are none or when STORAGE_EMULATOR_HOST points at an emulator) and `GcsClient`
gives the JSON API's object reads with stepkit's error mapping (401/403 exit 3 naming
the permission, 404 naming object and generation, 408/429/5xx retryable).
"""

from __future__ import annotations

import base64
import os
import re
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
        parts = urlsplit(value)
        if parts.hostname != HTTPS_HOST or parts.query or parts.username or parts.port:
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


class GcsClient:
    """One google-cloud-storage client and its HTTP session, shared by every worker thread.

    Object reads go through the client's own authorised session (credentials refresh,
    emulator host, user agent) but are streamed by the caller, so a caller can enforce a
    deadline per attempt and verify bytes as they arrive.
    """

    def __init__(self, client: Any, *, pool_size: int) -> None:
        import requests.adapters

        self.client = client
        self.session: Any = client._http
        # requests keeps 10 connections per host by default; with more workers than that
        # every extra request would open and drop a connection.
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=max(pool_size, 10), max_retries=0
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.base_url: str = str(client._connection.API_BASE_URL).rstrip("/")

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
    ) -> Any:
        """An open streaming response for the object's bytes (end inclusive); the caller closes it.

        Raises the mapped error for a non-2xx answer (the response is closed then).
        """
        # The query is written out, not passed as params=: requests' encoding of it is a
        # quarter of the cost of a small download.
        query = "alt=media" if loc.generation is None else f"alt=media&generation={loc.generation}"
        # The stored bytes, not a server-side decompressed copy: X-Goog-Hash is of those.
        headers = {"Accept-Encoding": "gzip"}
        if start is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        resp = self.session.request(
            "GET",
            f"{self.base_url}/download/storage/v1/{self._object_path(loc)}?{query}",
            headers=headers,
            stream=True,
            timeout=(connect_timeout, read_timeout),
        )
        if not 200 <= resp.status_code < 300:
            reason = _reason(resp)
            resp.close()
            check_status(resp.status_code, loc, reason=reason)
        return resp

    def metadata(self, loc: Location, *, timeout: float) -> dict[str, Any]:
        """The object's JSON resource (size, generation, crc32c, md5Hash, ...)."""
        params: dict[str, str] = {}
        if loc.generation is not None:
            params["generation"] = str(loc.generation)
        resp = self.session.request(
            "GET",
            f"{self.base_url}/storage/v1/{self._object_path(loc)}",
            params=params,
            timeout=(min(timeout, 30.0), timeout),
        )
        try:
            check_status(resp.status_code, loc, reason=_reason(resp))
            data = resp.json()
        except ValueError:
            raise TransientError(f"{loc}: metadata is not JSON") from None
        finally:
            resp.close()
        if not isinstance(data, dict):
            raise TransientError(f"{loc}: metadata is not a JSON object")
        return data


def _reason(resp: Any) -> str:
    try:
        text = str(resp.text)[:200]
    except Exception:  # a body that cannot be read adds nothing to the message
        return ""
    return printable(" ".join(text.split()))


def open_client(*, pool_size: int = 10) -> GcsClient:
    """The one client a command uses: ADC when there are any, else anonymous (public buckets)."""
    import importlib

    import google.auth
    import google.auth.exceptions

    # Through importlib: google-cloud-storage ships no type information, and every use
    # here is a documented call.
    storage: Any = importlib.import_module("google.cloud.storage")
    anonymous: Any = importlib.import_module("google.auth.credentials").AnonymousCredentials

    if os.environ.get(EMULATOR_ENV):
        client = storage.Client(project="<none>", credentials=anonymous())
    else:
        try:
            credentials, project = google.auth.default(scopes=[READ_ONLY_SCOPE])
        except google.auth.exceptions.DefaultCredentialsError:
            client = storage.Client.create_anonymous_client()
        else:
            client = storage.Client(project=project or "<none>", credentials=credentials)
    return GcsClient(client, pool_size=pool_size)
