"""Masking secrets: the registry's rules (SPEC §6.2) and the streaming masker's promise that no
secret survives, whatever way the output is cut into pieces."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepkit import secret
from stepkit._mask import MAX_PENDING, Masker, mask_bytes


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


def test_a_value_as_a_json_string_holds_it() -> None:
    value = 'p\u00e9ss "quoted" \\ word'
    secret.register(value)
    for text in (json.dumps({"password": value}), json.dumps({"p": value}, ensure_ascii=False)):
        assert secret.redact(text).count("***") == 1, text


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


# -- the streaming masker ------------------------------------------------------------------

# Secrets of any characters (non-ASCII, newlines, carriage returns), except the mark's own
# '*': with it a secret could be spelled by the mark itself next to ordinary text.
_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters="*")
SECRETS = st.lists(st.text(_CHARS, min_size=4, max_size=14), min_size=1, max_size=3)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[str], bytes, list[int], list[bool]]:
    """Secrets, a stream made of them (whole, cut short, or encoded) and other text, the
    points where the stream is cut into reads, and whether to flush after each read."""
    secrets = draw(SECRETS)
    filler = st.text(
        st.sampled_from(["a", "b", "\n", "\r", "é", " ", *"".join(secrets)]), max_size=8
    )
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["filler", "secret", "prefix", "b64"]))
        value = draw(st.sampled_from(secrets))
        if kind == "filler":
            parts.append(draw(filler))
        elif kind == "secret":
            parts.append(value)
        elif kind == "prefix":
            parts.append(value[: draw(st.integers(1, len(value) - 1))])
        else:
            parts.append(base64.b64encode(value.encode()).decode())
    data = "".join(parts).encode()
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    flushes = draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return secrets, data, cuts, flushes


def _leaked(out: bytes, secrets: list[str]) -> list[str]:
    return [
        form
        for value in secrets
        for form in secret._forms(value)
        if form.encode("utf-8", "surrogateescape") in out
    ]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_no_secret_survives_any_split_of_the_stream(
    case: tuple[list[str], bytes, list[int], list[bool]],
) -> None:
    secrets, data, cuts, flushes = case
    secret.forget_all()
    for value in secrets:
        secret.register(value)
    out: list[bytes] = []
    masker = Masker(out.append)
    for start, end, flush in zip([0, *cuts], [*cuts, len(data)], flushes, strict=True):
        masker.feed(data[start:end])
        if flush:
            masker.flush()
    masker.close()
    streamed = b"".join(out)
    assert streamed == mask_bytes(data), "the cut points changed the output"
    assert _leaked(streamed, secrets) == []


@settings(max_examples=200, deadline=None)
@given(SECRETS, st.text(_CHARS, max_size=30))
def test_a_flushed_partial_line_holds_back_only_what_could_start_a_secret(
    secrets: list[str], text: str
) -> None:
    secret.forget_all()
    for value in secrets:
        secret.register(value)
    out: list[bytes] = []
    masker = Masker(out.append)
    masker.feed(text.encode())
    masker.flush()
    forms = secret.byte_forms()
    longest = max(len(f) for f in forms)
    assert masker.pending < longest
    held = text.encode()[len(text.encode()) - masker.pending :]
    if held:
        assert any(len(f) > len(held) and f.startswith(held) for f in forms)


def test_lines_go_out_whole_and_at_once() -> None:
    secret.register("hunter2-secret")
    out: list[bytes] = []
    masker = Masker(out.append)
    masker.feed(b"one\ntwo\rthree")  # \r ends a line: a progress bar's update
    assert out == [b"one\ntwo\r"]
    masker.feed(b" and hunter2-se")
    assert out == [b"one\ntwo\r"], "an incomplete line waits for its end or an idle flush"
    masker.flush()
    assert out[-1] == b"three and ", "the flush keeps back what could begin the secret"
    masker.feed(b"cret done\n")
    assert b"".join(out) == b"one\ntwo\rthree and *** done\n"


def test_a_secret_that_spans_lines_is_masked_whole() -> None:
    secret.register("first-line\nsecond-line")
    out: list[bytes] = []
    masker = Masker(out.append)
    for byte in b"x first-line\nsecond-line y\n":
        masker.feed(bytes([byte]))
    masker.close()
    assert b"".join(out) == b"x *** y\n"


def test_a_line_without_end_is_released_at_the_size_bound() -> None:
    secret.register("some-secret-value")
    out: list[bytes] = []
    masker = Masker(out.append)
    masker.feed(b"x" * (MAX_PENDING + 10) + b"some-sec")
    assert out and b"".join(out) == b"x" * (MAX_PENDING + 10)
    assert masker.pending == len(b"some-sec")
    masker.feed(b"ret-value")
    masker.close()
    assert b"".join(out).endswith(b"x***")


def test_non_utf8_bytes_pass_through() -> None:
    secret.register("s3cret-value")
    out: list[bytes] = []
    masker = Masker(out.append)
    masker.feed(b"\xff\xfe s3cret-value \x80\n")
    assert out == [b"\xff\xfe *** \x80\n"]
