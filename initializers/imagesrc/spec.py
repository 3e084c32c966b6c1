"""The inputs of image-fetcher, validated once before any registry is asked or anything is written."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from stepkit import validate
from stepkit.errors import InputError
from stepkit.oci.reference import Platform, Reference, parse_reference
from stepkit.validate import has_control, parse_duration, resolve_dest_dir, shown

MAX_PATH_BYTES = 4096


@dataclass(frozen=True)
class ImageSpec:
    reference: Reference
    path: str  # absolute inside the image, normalised: "/" or "/a/b"
    dest: Path
    platform: Platform
    insecure: frozenset[str]  # host[:port] as the reference spells registries
    ca_file: Path | None
    retries: int
    timeout: float
    allow_git: bool = False
    termination_path: str | None = None
    results_dir: str | None = None
    token_realm_hosts: frozenset[str] = frozenset()  # host[:port], as parse_hosts gives them


def parse_image_path(value: str, *, flag: str = "--path") -> str:
    """A path inside the image: "/", "/etc/ssl" ("etc/ssl" is read from the root too).

    `..` is refused rather than normalised: inside an image with symlinks, `a/../b` is not
    what the lexical form says, and nobody needs it to name a directory.
    """
    if not value:
        return "/"
    if has_control(value):
        raise InputError(f"{flag}: control characters in {shown(value)}")
    if len(value.encode()) > MAX_PATH_BYTES:
        raise InputError(f"{flag}: {shown(value[:64])}… is longer than {MAX_PATH_BYTES} bytes")
    if "\\" in value:
        raise InputError(f"{flag}: {shown(value)} holds a backslash; paths in an image use '/'")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(f"{flag}: {shown(value)} must not contain '..'")
    return str(PurePosixPath("/", *parts))


def parse_insecure(values: tuple[str, ...], *, flag: str = "--insecure-registry") -> frozenset[str]:
    """Registries allowed over plain HTTP: repeated flags, each possibly comma-separated (the env var)."""
    return parse_hosts(values, flag=flag)


def parse_hosts(values: tuple[str, ...], *, flag: str) -> frozenset[str]:
    """HOST[:PORT] values of repeated flags, each possibly comma-separated (the env var)."""
    hosts: set[str] = set()
    for raw in values:
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            if "://" in item or "/" in item:
                raise InputError(f"{flag}: {shown(item)} is not HOST[:PORT] (no scheme, no path)")
            if item.startswith("["):
                end = item.find("]")
                host_part, rest = item[: end + 1], item[end + 1 :]
                if end < 0 or (rest and not rest.startswith(":")):
                    raise InputError(f"{flag}: {shown(item)} is not HOST[:PORT]")
                port_part = rest[1:] if rest else None
            else:
                host_part, sep, port_text = item.partition(":")
                port_part = port_text if sep else None
            name = validate.host(host_part, flag)
            shown_host = validate.host_for_url(name)
            if port_part is not None:
                shown_host += f":{validate.port(port_part, flag)}"
            hosts.add(shown_host)
    return frozenset(hosts)


def parse_ca_file(value: str | None, *, flag: str = "--ca-file") -> Path | None:
    if not value:
        return None
    if has_control(value):
        raise InputError(f"{flag}: control characters in {shown(value)}")
    path = Path(os.path.abspath(value))
    if not path.is_file():
        raise InputError(f"{flag}: {shown(value)} is not a file")
    try:
        # Loaded once here so a wrong file is a flag error, not a TLS failure later; into a
        # bare context, as the system's CAs (the registry client loads them) prove nothing.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except PermissionError:
        raise InputError(f"{flag}: {shown(value)} is not readable") from None
    except (ssl.SSLError, OSError, ValueError):
        raise InputError(f"{flag}: {shown(value)} holds no PEM certificate") from None
    return path


def build(
    *,
    image: str,
    path: str,
    dest_dir: str | None,
    platform: str | None,
    insecure_registry: tuple[str, ...],
    ca_file: str | None,
    retries: int,
    timeout: str,
    allow_git: bool = False,
    termination_path: str | None = None,
    results_dir: str | None = None,
    token_realm_host: tuple[str, ...] = (),
) -> ImageSpec:
    reference = parse_reference(image, what="--image")
    timeout_s = parse_duration(timeout, flag="--timeout")
    if timeout_s <= 0:
        raise InputError(f"--timeout: {shown(timeout)} must be more than zero")
    return ImageSpec(
        reference=reference,
        path=parse_image_path(path),
        dest=resolve_dest_dir(dest_dir),
        platform=(Platform.parse(platform, what="--platform") if platform else Platform.current()),
        insecure=parse_insecure(insecure_registry),
        ca_file=parse_ca_file(ca_file),
        retries=retries,
        timeout=timeout_s,
        allow_git=allow_git,
        termination_path=termination_path,
        results_dir=results_dir,
        token_realm_hosts=parse_hosts(token_realm_host, flag="--token-realm-host"),
    )
