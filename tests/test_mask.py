"""Masking secrets: the registry's rules (SPEC §6.2) and the streaming masker's promise that no
secret survives, whatever way the output is cut into pieces."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from stepkit import secret


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    saved = secret.snapshot()
    secret.forget_all()
    yield
    secret.restore(saved)


def test_the_mark_is_three_stars() -> None:
    secret.register("tok-123456")
    assert secret.redact("a tok-123456 b") == "a *** b"
    assert str(secret.Secret("another-one")) == "***"


def test_values_shorter_than_four_characters_are_not_masked() -> None:
    for short in ("a", "ab", "abc"):
        secret.register(short)
    assert secret.forms() == []
    assert secret.redact("abc abcd") == "abc abcd"
    secret.register("abcd")
    assert secret.redact("abc abcd") == "abc ***"


def test_encoded_forms_and_each_line_of_a_multi_line_value() -> None:
    value = "-----BEGIN KEY-----\nline-one-of-key\r\nline-two é\n-----END KEY-----"
    secret.register(value)
    raw = value.encode()
    for form in (
        value,
        quote(value, safe=""),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "line-one-of-key",
        "line-two é",
    ):
        assert secret.redact(f"<{form}>") == "<***>", form
    # A line shorter than four characters stays, like any short value.
    secret.register("ab\ncd-long-enough")
    assert secret.redact("ab") == "ab"
