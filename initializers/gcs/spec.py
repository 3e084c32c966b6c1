"""The inputs of gcs-fetcher, validated once before anything is fetched or written."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stepkit.errors import InputError
from stepkit.gcs import Location, parse_location
from stepkit.validate import has_control, parse_duration, resolve_dest_dir, shown

Kind = Literal["zip", "tar", "manifest"]
# The reference's -type values; "Archive" is its deprecated name for a zip.
TYPES: dict[str, Kind] = {
    "Archive": "zip",
    "ZipArchive": "zip",
    "TarGzArchive": "tar",
    "Manifest": "manifest",
}
DEFAULT_STAGING = ".download"
_BUCKET_LIST_ITEM = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


@dataclass(frozen=True)
class FetchSpec:
    type_name: str
    kind: Kind
    location: Location
    dest: Path
    staging: Path
    workers: int
    retries: int
    backoff: float
    timeout: float
    keep_source: bool
    verbose: bool
    allowed_buckets: frozenset[str] | None
    allow_git: bool
    termination_path: str | None = None
    results_dir: str | None = None


def parse_type(value: str, *, flag: str = "--type") -> tuple[str, Kind]:
    if value not in TYPES:
        raise InputError(
            f"{flag}: {shown(value)} is not one of Archive, ZipArchive, TarGzArchive, Manifest"
        )
    return value, TYPES[value]


def parse_buckets(value: str, *, flag: str = "--allowed-buckets") -> frozenset[str] | None:
    """A comma-separated bucket allowlist; empty means any bucket."""
    if not value.strip():
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    for name in names:
        if not _BUCKET_LIST_ITEM.fullmatch(name) or ".." in name:
            raise InputError(f"{flag}: {shown(name)} is not a bucket name")
    return frozenset(names)


def check_bucket(loc: Location, allowed: frozenset[str] | None, *, what: str) -> None:
    if allowed is not None and loc.bucket not in allowed:
        raise InputError(
            f"{what}: bucket {shown(loc.bucket)} is not in --allowed-buckets "
            f"({', '.join(sorted(allowed))})"
        )


def resolve_staging(value: str | None, dest: Path) -> Path:
    """The staging folder: relative paths are under the destination, as the reference has it."""
    raw = value if value else DEFAULT_STAGING
    if has_control(raw):
        raise InputError(f"--staging_folder: control characters in {shown(raw)}")
    staging = Path(os.path.abspath(dest / raw))
    if staging == dest:
        raise InputError("--staging_folder: must not be the destination directory itself")
    if staging.is_symlink():
        raise InputError(
            f"--staging_folder: {shown(str(staging))} is a symlink; remove it or give another folder"
        )
    if staging.exists() and not staging.is_dir():
        raise InputError(f"--staging_folder: {shown(str(staging))} exists and is not a directory")
    return staging


def build(
    *,
    type_value: str,
    location: str,
    dest_dir: str | None,
    workers: int,
    retries: int,
    backoff: str,
    timeout: str,
    keep_source: bool,
    staging_folder: str | None,
    verbose: bool,
    allowed_buckets: str,
    allow_git: bool,
    termination_path: str | None = None,
    results_dir: str | None = None,
) -> FetchSpec:
    type_name, kind = parse_type(type_value)
    loc = parse_location(location, what="--location")
    allowed = parse_buckets(allowed_buckets)
    check_bucket(loc, allowed, what="--location")
    backoff_s = parse_duration(backoff, flag="--backoff")
    timeout_s = parse_duration(timeout, flag="--timeout")
    if timeout_s <= 0:
        raise InputError(f"--timeout: {shown(timeout)} must be more than zero")
    dest = resolve_dest_dir(dest_dir)
    return FetchSpec(
        type_name=type_name,
        kind=kind,
        location=loc,
        dest=dest,
        staging=resolve_staging(staging_folder, dest),
        workers=workers,
        retries=retries,
        backoff=backoff_s,
        timeout=timeout_s,
        keep_source=keep_source,
        verbose=verbose,
        allowed_buckets=allowed,
        allow_git=allow_git,
        termination_path=termination_path,
        results_dir=results_dir,
    )
