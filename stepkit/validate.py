"""Checks for values that reach config files, command lines or paths; each error names its source, never a secret."""

from __future__ import annotations

import os
import re
from pathlib import Path

from stepkit.errors import InputError
from stepkit.log import printable

# Used with fullmatch: `$` alone also lets a value ending in "\n" through.
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control(value: str) -> bool:
    return bool(_CONTROL.search(value))


def shown(value: str) -> str:
    """A non-secret value as it may appear in an error: quoted, control characters escaped."""
    return "'" + printable(value) + "'"


def secret_name(name: str, where: str) -> str:
    """A Kubernetes secret name (DNS subdomain): it becomes part of file names, so nothing else passes."""
    if not _SECRET_NAME.fullmatch(name) or ".." in name:
        raise InputError(
            f"{where}: secret name {shown(name)} is not a Kubernetes secret name "
            "(lower-case letters, digits, '-' and '.')"
        )
    return name


def port(value: str, where: str) -> int:
    if not value.isascii() or not value.isdigit() or value.startswith("0") or len(value) > 5:
        raise InputError(f"{where}: port {shown(value)} is not a number from 1 to 65535")
    number = int(value)
    if not 1 <= number <= 65535:
        raise InputError(f"{where}: port {shown(value)} is not a number from 1 to 65535")
    return number


def _idna_form(value: str) -> str:
    """The name to give instead of an internationalised one: ssh and git compare hosts byte for byte."""
    try:
        return f"its IDNA form {shown(value.encode('idna').decode('ascii'))}"
    except UnicodeError:
        return "the IDNA (xn--) form of the name"


def host(value: str, where: str) -> str:
    """A DNS name, IPv4 address, or bracketed IPv6 address; returned lower-cased, IPv6 without brackets.

    No wildcard, pattern, quoting or space character passes: ssh_config and git's urlmatch
    would read them as patterns, and a newline would start a new directive.
    """
    if not value:
        raise InputError(f"{where}: host is empty")
    if not value.isascii():
        raise InputError(f"{where}: host {shown(value)} is not ASCII; give {_idna_form(value)}")
    if value.startswith("["):
        if not value.endswith("]"):
            raise InputError(f"{where}: host {shown(value)} is not a valid IPv6 address")
        import ipaddress  # only for the rare IPv6 host: it costs start-up time

        try:
            return str(ipaddress.IPv6Address(value[1:-1]))
        except ValueError:
            raise InputError(f"{where}: host {shown(value)} is not a valid IPv6 address") from None
    name = value.lower().rstrip(".") if value.endswith(".") and value != "." else value.lower()
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InputError(f"{where}: host {shown(value)} is not a valid host name")
    if labels[0].startswith("-"):
        raise InputError(f"{where}: host {shown(value)} must not start with '-'")
    return name


def resolve_dest_dir(value: str | None, *, flag: str = "--dest_dir") -> Path:
    """The destination directory, absolute; it may not exist yet, but may not be a symlink."""
    raw = value if value else os.getcwd()
    if has_control(raw):
        raise InputError(f"{flag}: control characters in {shown(raw)}")
    dest = Path(os.path.abspath(raw))
    if dest.is_symlink():
        raise InputError(f"{flag}: {shown(str(dest))} is a symlink; give the real directory")
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{flag}: {shown(str(dest))} exists and is not a directory")
    return dest


def host_for_url(name: str) -> str:
    """The host as written inside a URL: IPv6 addresses go back into brackets."""
    return f"[{name}]" if ":" in name else name


# Go's time.ParseDuration units, for flags the reference tools take as Go durations.
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str, *, flag: str) -> float:
    """Seconds from a Go duration ("100ms", "1.5s", "1m30s"); a bare number is seconds."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds >= 0 and seconds == seconds and seconds != float("inf"):
            return seconds
        raise InputError(f"{flag}: {shown(value)} is not a duration such as 100ms, 1s or 2m")
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        number = match.group(1)
        if match.start() != pos or number in ("", "."):
            break
        total += float(number) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise InputError(f"{flag}: {shown(value)} is not a duration such as 100ms, 1s or 2m")
    return total
