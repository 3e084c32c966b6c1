"""Google Cloud Storage locations as the Knative controller and manifests spell them.

`gs://bucket/object`, `gs://bucket/object#generation`, and
`https://storage.googleapis.com/bucket/object` (percent-encoded, as a browser copies it).
google-cloud-storage itself is imported only by the commands that talk to GCS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from stepkit.errors import InputError
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
