"""The HTTP transport under gcs-uploader's storage client: JSON answers capped, upload sessions kept secret.

A resumable upload session is a URL whose `upload_id` query parameter is a credential: whoever
holds it can write the object, without any other token. Every session the client uses was
announced in the `Location` header of an answer that came through this adapter, so that is
where each one is registered with stepkit.secret: from then on the log formatter removes it
from every line, error and --debug traceback, whatever library message carries it.
`scrub()` removes session parameters from a text as well, for messages built before output.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import requests.adapters

from stepkit import gcs, secret

# Query parameters that identify an upload session (GCS's JSON and XML APIs).
_SESSION_PARAMS = ("upload_id",)
_SESSION_VALUE = re.compile(r"(?P<name>\bupload_id=)[^&#\s'\"<>()\[\]]*", re.IGNORECASE)
_CHUNK = 64 << 10


def scrub(text: str) -> str:
    """text with the value of every upload-session parameter replaced by the redaction mark."""
    return _SESSION_VALUE.sub(lambda m: m.group("name") + secret.REDACTED, text)


def register_session(location: str) -> None:
    """Treat a resumable session URL as the secret it is: it and its upload_id never reach output."""
    query = urlsplit(location).query
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name.lower() in _SESSION_PARAMS:
            secret.register(value)
    # A session URL of another shape (not GCS's) is still a credential as a whole.
    secret.register(location)


def _where(request: requests.PreparedRequest) -> str:
    """The request as an error may name it: method, host and path, never the query."""
    parts = urlsplit(request.url or "")
    return f"{request.method} {parts.netloc}{parts.path}"


def _scrubbed(exc: requests.RequestException) -> requests.RequestException:
    """The same kind of error (callers and retry predicates test the type), its text scrubbed."""
    return type(exc)(scrub(str(exc)), request=exc.request, response=exc.response)


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, plus: non-streamed answers read up to gcs.MAX_METADATA_BYTES, and every
    upload session URL registered as a secret the moment it arrives."""

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        try:
            response = super().send(
                request, stream=True, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
        except requests.RequestException as exc:
            # Library messages carry the request's URL ("Max retries exceeded with url: ...").
            raise _scrubbed(exc) from None
        location = response.headers.get("Location")
        if location and request.method in ("POST", "PUT") and "upload" in (request.url or ""):
            register_session(location)
        if stream:
            return response  # a download the caller reads itself (the uploader makes none)
        try:
            body = gcs.read_metadata_body(response.iter_content(_CHUNK), _where(request))
        except requests.RequestException as exc:
            response.close()
            raise _scrubbed(exc) from None
        except BaseException:
            response.close()
            raise
        # What Session.send's own `response.content` would have read, under a cap: requests
        # keeps a read body in `_content` and returns it from then on.
        response._content = body
        response._content_consumed = True
        return response
