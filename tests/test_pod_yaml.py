"""`stepkit pod`'s YAML reader: positions for errors, duplicate keys, alias bombs, and no secret in any message."""

from __future__ import annotations

import pytest

from controller.pod.yamlio import (
    MarkedList,
    MarkedMap,
    dump_json,
    dump_yaml,
    format_path,
    load_documents,
    locate,
)
from stepkit.errors import InputError


def test_every_key_and_item_keeps_its_line_and_column() -> None:
    (doc,) = load_documents(
        b"spec:\n  steps:\n  - name: a\n    image: x\n  - name: b\n    image: y\n", "b.yaml"
    )
    assert isinstance(doc, MarkedMap) and isinstance(doc["spec"]["steps"], MarkedList)
    mark = locate(doc, ("spec", "steps", 1, "image"))
    assert mark is not None and (mark.line, mark.column) == (6, 5)
    # A path that goes past what exists stops at the deepest part that does.
    mark = locate(doc, ("spec", "steps", 1, "args", 0))
    assert mark is not None and (mark.line, mark.column) == (5, 5)
    assert format_path(("spec", "steps", 1, "name")) == "spec.steps[1].name"


def test_empty_documents_are_skipped_and_streams_split() -> None:
    docs = load_documents(b"---\na: 1\n---\n---\nb: 2\n...\n", "s.yaml")
    assert docs == [{"a": 1}, {"b": 2}]


def test_dates_and_numbers_as_keys_stay_strings_as_kubernetes_reads_them() -> None:
    (doc,) = load_documents(b"date: 2024-01-01\n8080: port\n", "d.yaml")
    assert doc == {"date": "2024-01-01", "8080": "port"}


def test_merge_keys_work_and_may_be_overridden() -> None:
    (doc,) = load_documents(b"base: &b {k: 1, j: 2}\nm:\n  <<: *b\n  k: 3\n", "m.yaml")
    assert doc["m"] == {"k": 3, "j": 2}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"a: 1\nb: 2\na: 3\n",
            "m.yaml:3:1: invalid YAML: duplicate key 'a' (first at line 1, column 1)",
        ),
        (b"a: [1\n", "m.yaml:2:1: invalid YAML: expected ',' or ']'"),
        (b"a: !!binary aGVsbG8=\n", "m.yaml:1:4: invalid YAML: the tag tag:yaml.org,2002:binary"),
        (b"a: &x [*x]\n", "m.yaml:1:4: invalid YAML: an alias refers to a node that contains it"),
        (b"? [a, b]\n: c\n", "m.yaml:1:3: invalid YAML: a mapping key must be a string"),
        (b"[" * 5000, "m.yaml: YAML nested too deeply"),
        (b"a: \xff\n", "m.yaml: not UTF-8 text (byte 3)"),
        (b"a: 1\nb: x\x07y\n", "m.yaml:2: invalid YAML: character #x0007 is not allowed"),
        (b'{\n\t"a": 1,\n\t"a": 2}', "m.yaml: invalid JSON: duplicate key 'a'"),
        (b'{\n\t"a": }', "m.yaml:2:7: invalid JSON: Expecting value"),
    ],
)
def test_bad_input_is_one_line_with_its_position(data: bytes, expected: str) -> None:
    with pytest.raises(InputError) as info:
        load_documents(data, "m.yaml")
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_an_alias_bomb_is_refused_before_it_is_expanded() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        refs = ",".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    with pytest.raises(InputError, match="expands to more than 1000000 nodes"):
        load_documents("\n".join(lines).encode(), "bomb.yaml")


def test_a_parse_error_never_shows_the_line_it_is_on() -> None:
    """PyYAML's own message quotes the offending line: in a Secret that line is a password."""
    data = b"kind: Secret\nstringData:\n  password: hunter2-S3CRET: oops\n"
    with pytest.raises(InputError) as info:
        load_documents(data, "s.yaml")
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("s.yaml:3:")


def test_json_with_tabs_reads_as_json() -> None:
    (doc,) = load_documents(b'{\n\t"a": [1, {"b": "c"}]\n}\n', "j.json")
    assert doc == {"a": [1, {"b": "c"}]}
    assert isinstance(doc["a"], MarkedList) and isinstance(doc["a"][1], MarkedMap)


def test_output_keeps_key_order_and_quotes_what_yaml_would_misread() -> None:
    text = dump_yaml([{"b": "false", "a": ["10", "2024-01-01", "yes"]}, {"z": {}}])
    assert text == "b: 'false'\na:\n- '10'\n- '2024-01-01'\n- 'yes'\n---\nz: {}\n"
    assert dump_json({"b": 1, "a": "é"}) == '{\n  "b": 1,\n  "a": "é"\n}\n'


def test_output_refuses_a_number_json_cannot_hold() -> None:
    (doc,) = load_documents(b"cpu: .nan\n", "n.yaml")
    with pytest.raises(InputError, match="not a number JSON can hold"):
        dump_json(doc)
