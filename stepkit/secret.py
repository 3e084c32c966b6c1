"""A value that redacts itself, and the process-wide list of values no output may show."""

from __future__ import annotations

import base64
import threading
from urllib.parse import quote

REDACTED = "****"

_lock = threading.Lock()
_known: set[str] = set()


def _forms(value: str) -> set[str]:
    """The spellings a secret takes in files and protocols, each of which must be hidden."""
    raw = value.encode("utf-8", "surrogateescape")
    forms = {
        value,
        quote(value, safe=""),
        quote(value),
        base64.b64encode(raw).decode("ascii"),
        base64.urlsafe_b64encode(raw).decode("ascii"),
    }
    # Short values would redact ordinary words; a one- or two-character secret is no secret.
    return {f for f in forms if len(f) >= 3}


def register(value: str) -> None:
    """Add a value (and its encoded forms) to what `redact` removes from every output."""
    if value:
        forms = _forms(value)
        with _lock:
            _known.update(forms)


def register_pair(username: str, password: str) -> None:
    """Register a password and the `user:password` forms that appear in `auth` fields."""
    register(password)
    if password:
        register(f"{username}:{password}")


def redact(text: str) -> str:
    """Replace every registered secret form in text; longest first so no fragment survives."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for form in known:
        if form in text:
            text = text.replace(form, REDACTED)
    return text


def forget_all() -> None:
    """Clear the registry (tests and long-lived SDK processes between builds)."""
    with _lock:
        _known.clear()


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
