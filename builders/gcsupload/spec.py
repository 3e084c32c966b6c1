"""The inputs of gcs-uploader, checked before any file is read or any request is made."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stepkit.errors import InputError
from stepkit.gcs import MAX_OBJECT_NAME, Location, parse_location
from stepkit.validate import has_control, shown

SHA1_HEX_LEN = 40


@dataclass(frozen=True)
class UploadSpec:
    """What to upload and where; `prefix` + a SHA-1 names each content object."""

    dir: Path
    manifest: Location
    prefix: str
    workers: int
    retries: int
    backoff: float
    timeout: float
    termination_path: str | None
    results_dir: str | None


def parse_manifest_location(value: str, flag: str = "--location") -> Location:
    """The manifest object: a gs:// or https:// location without a generation (a new one is written)."""
    if not value:
        raise InputError(f"{flag} is required (gs://BUCKET/path/manifest.json)")
    location = parse_location(value, what=flag)
    if location.generation is not None:
        raise InputError(
            f"{flag}: {shown(value)} names a generation; the manifest is written as a new "
            "generation, so give the location without '#'"
        )
    if location.name.endswith("/"):
        raise InputError(f"{flag}: {shown(value)} names a folder, not a manifest object")
    return location


def parse_prefix(value: str, flag: str = "--object-prefix") -> str:
    """The prefix of content object names: empty (the bucket's root, as the reference) or a folder."""
    if has_control(value):
        raise InputError(f"{flag}: control characters in {shown(value)}")
    if value.startswith("/") or "\\" in value or "#" in value:
        raise InputError(f"{flag}: {shown(value)} must not start with '/' or hold '\\' or '#'")
    if any(part in (".", "..") for part in value.split("/")):
        raise InputError(f"{flag}: {shown(value)} has a '.' or '..' component")
    if len(value.encode()) + SHA1_HEX_LEN > MAX_OBJECT_NAME:
        raise InputError(f"{flag}: prefix is too long for a GCS object name")
    return value


def resolve_dir(value: str, flag: str = "--dir") -> Path:
    """The directory to upload; it may itself be a symlink to one, but nothing inside is followed."""
    if not value:
        raise InputError(f"{flag} is empty")
    if has_control(value):
        raise InputError(f"{flag}: control characters in {shown(value)}")
    path = Path(os.path.abspath(value))
    if not path.exists():
        raise InputError(f"{flag}: {shown(value)} does not exist")
    if not path.is_dir():
        raise InputError(f"{flag}: {shown(value)} is not a directory")
    return path
