"""A value that redacts itself, and the process-wide list of values no output may show."""

from __future__ import annotations

import base64
import json
import re
import threading
from urllib.parse import quote, quote_plus

# What a secret is replaced by in every output (SPEC §6.2).
REDACTED = "***"
# Shorter values are never masked: a one-to-three character "secret" would turn up in
# ordinary words, numbers and paths, and hiding those would garble every log line.
MIN_LENGTH = 4

_lock = threading.Lock()
_known: set[str] = set()
_version = 0
_compiled: tuple[int, tuple[bytes, ...]] = (-1, ())


def _forms(value: str) -> set[str]:
    """The spellings a secret takes in files and protocols, each of which must be hidden."""
    if len(value) < MIN_LENGTH:
        return set()
    raw = value.encode("utf-8", "surrogateescape")
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value, safe="")}
    # As a JSON string holds it (tools print JSON): quotes, backslashes, controls and, by
    # default, every non-ASCII character escaped.
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        # Unpadded too (JWTs, URLs drop the '='); the padded form contains it.
        forms.add(encoded.decode("ascii").rstrip("="))
    # A multi-line value (a key, a certificate) is hidden line by line as well as whole:
    # a tool may print one line of it, or break the whole across lines of its own.
    if "\n" in value or "\r" in value:
        for line in re.split(r"\r\n|\r|\n", value):
            if len(line) >= MIN_LENGTH:
                forms.add(line)
    return {f for f in forms if len(f) >= MIN_LENGTH}


def register(value: str) -> None:
    """Add a value (and its encoded forms) to what `redact` removes from every output.

    Values shorter than MIN_LENGTH characters are ignored (see MIN_LENGTH).
    """
    global _version
    forms = _forms(value) if value else set()
    if forms:
        with _lock:
            if not forms <= _known:
                _known.update(forms)
                _version += 1


def register_pair(username: str, password: str) -> None:
    """Register a password and the `user:password` forms that appear in `auth` fields."""
    register(password)
    if password:
        register(f"{username}:{password}")


def forms() -> list[str]:
    """Every registered form, longest first (the order in which they are replaced)."""
    with _lock:
        return sorted(_known, key=lambda f: (-len(f), f))


def redact(text: str) -> str:
    """Replace every registered secret form in text; longest first so no fragment survives."""
    for form in forms():
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def byte_forms() -> tuple[bytes, ...]:
    """The registered forms as UTF-8 bytes, longest first (stepkit._mask matches with them)."""
    global _compiled
    with _lock:
        version, encoded = _compiled
        if version != _version:
            raw = (f.encode("utf-8", "surrogateescape") for f in _known)
            encoded = tuple(sorted(raw, key=lambda f: (-len(f), f)))
            _compiled = (_version, encoded)
        return encoded


def snapshot() -> frozenset[str]:
    """The registry as it is now, for `restore` (the test kit runs builders in process)."""
    with _lock:
        return frozenset(_known)


def restore(saved: frozenset[str]) -> None:
    """Put the registry back as `snapshot` found it."""
    global _version
    with _lock:
        _known.clear()
        _known.update(saved)
        _version += 1


def forget_all() -> None:
    """Clear the registry (tests and long-lived SDK processes between builds)."""
    restore(frozenset())


class Secret:
    """A secret string: `str()` and `repr()` are redacted; `reveal()` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return REDACTED

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")
