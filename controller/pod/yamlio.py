"""Kubernetes YAML in, with the line and column of every key and item kept for errors; Pods out as YAML or JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepkit.errors import InputError, StepkitError
from stepkit.log import printable

if TYPE_CHECKING:
    import yaml

# A YAML document whose aliases expand past this many nodes is refused: the "billion laughs"
# trick makes a few hundred bytes into more objects than memory holds once copied.
MAX_NODES = 1_000_000
MAX_INPUT_BYTES = 32 * 1024 * 1024

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class Mark:
    """A position in an input file, 1-based as editors show it."""

    line: int
    column: int


class MarkedMap(dict[str, Any]):
    """A mapping that remembers where it and each of its keys were written."""

    def __init__(self, mark: Mark | None = None) -> None:
        super().__init__()
        self.mark = mark
        self.key_marks: dict[str, Mark] = {}


class MarkedList(list[Any]):
    """A sequence that remembers where it and each of its items were written."""

    def __init__(self, mark: Mark | None = None) -> None:
        super().__init__()
        self.mark = mark
        self.item_marks: list[Mark] = []


def locate(root: Any, path: Sequence[str | int]) -> Mark | None:
    """The position of the deepest part of path that exists in root (the whole document at worst)."""
    mark: Mark | None = getattr(root, "mark", None)
    node = root
    for step in path:
        if isinstance(step, str) and isinstance(node, MarkedMap) and step in node:
            mark = node.key_marks.get(step, mark)
            node = node[step]
        elif isinstance(step, int) and isinstance(node, MarkedList) and 0 <= step < len(node):
            if step < len(node.item_marks):
                mark = node.item_marks[step]
            node = node[step]
        else:
            break
    return mark


def format_path(path: Sequence[str | int]) -> str:
    """spec.steps[1].name, as Kubernetes names a field."""
    out = ""
    for step in path:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else step
    return out


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise StepkitError(
            "stepkit pod needs PyYAML: pip install 'stepkit[kube]' (or PyYAML>=6)"
        ) from None
    return yaml


def _mark(mark: yaml.Mark) -> Mark:
    return Mark(mark.line + 1, mark.column + 1)


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Iterator[MarkedMap]:
    yaml = _yaml()
    data = MarkedMap(_mark(node.start_mark))
    yield data
    # Duplicates are looked for before merge keys are expanded: overriding a merged key is
    # what `<<` is for, but one mapping giving a key twice leaves it unclear which counts
    # (go-yaml refuses it; PyYAML silently keeps the last).
    seen: dict[str, Mark] = {}
    for key_node, _value in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a string", key_node.start_mark
            )
        key = str(key_node.value)
        if key in seen:
            first = seen[key]
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first.line}, column {first.column})",
                key_node.start_mark,
            )
        seen[key] = _mark(key_node.start_mark)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        # A key is the text written (`8080:` or `yes:` unquoted is the key "8080" or "yes"),
        # as Kubernetes' YAML-to-JSON conversion makes every key a string.
        key = str(key_node.value)
        data[key] = loader.construct_object(value_node, deep=False)
        data.key_marks[key] = _mark(key_node.start_mark)


def _construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> Iterator[MarkedList]:
    data = MarkedList(_mark(node.start_mark))
    yield data
    data.item_marks = [_mark(child.start_mark) for child in node.value]
    data.extend(loader.construct_object(child, deep=False) for child in node.value)


def _refuse(loader: yaml.SafeLoader, node: yaml.Node) -> None:
    yaml = _yaml()
    raise yaml.constructor.ConstructorError(
        None, None, f"the tag {node.tag} is not a JSON value Kubernetes reads", node.start_mark
    )


_LOADER: Any = None


def _loader_class() -> Any:
    global _LOADER
    if _LOADER is None:
        yaml = _yaml()

        class Loader(yaml.SafeLoader):  # type: ignore[misc,name-defined]
            """SafeLoader keeping marks, refusing duplicate keys, and reading dates as the strings they are."""

        # Kubernetes reads `2024-01-01` as a string (its YAML becomes JSON); PyYAML would
        # make it a date, which is no JSON value.
        Loader.yaml_implicit_resolvers = {
            first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }
        Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
        Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
        for tag in ("binary", "set", "omap", "pairs", "timestamp"):
            Loader.add_constructor(f"tag:yaml.org,2002:{tag}", _refuse)
        _LOADER = Loader
    return _LOADER


def _check_size(node: Any, source: str) -> None:
    """Refuse alias bombs and self-containing aliases before anything is constructed."""
    yaml = _yaml()
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: Any) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InputError(
                f"{source}:{n.start_mark.line + 1}:{n.start_mark.column + 1}: invalid YAML: "
                "an alias refers to a node that contains it"
            )
        active.add(key)
        total = 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
        elif isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
        active.discard(key)
        if total > MAX_NODES:
            raise InputError(
                f"{source}: YAML document expands to more than {MAX_NODES} nodes "
                "(aliases repeating aliases)"
            )
        sizes[key] = total
        return total

    size(node)


def _yaml_message(source: str, text: str, exc: Exception) -> str:
    """The parser's complaint with its position, never the line's text (it may be a secret's)."""
    yaml = _yaml()
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = _mark(exc.problem_mark)
        message = f"{source}:{mark.line}:{mark.column}: invalid YAML: {exc.problem or 'error'}"
        if exc.context and exc.context_mark is not None:
            message += f" ({exc.context} at line {exc.context_mark.line + 1})"
        return printable(message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return (
            f"{source}:{line}: invalid YAML: character #x{exc.character:04x} is not allowed "
            "(control characters must be escaped in a double-quoted string)"
        )
    return printable(f"{source}: invalid YAML: {type(exc).__name__}")


def _json_pairs(pairs: list[tuple[str, Any]]) -> MarkedMap:
    out = MarkedMap()
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        out = MarkedList()
        out.extend(_from_json(v) for v in value)
        return out
    if isinstance(value, MarkedMap):
        for key in list(value):
            value[key] = _from_json(value[key])
    return value


def _load_json(source: str, text: str) -> list[Any]:
    try:
        return [_from_json(json.loads(text, object_pairs_hook=_json_pairs))]
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise InputError(printable(f"{source}: invalid JSON: {exc}")) from None


def load_documents(data: bytes, source: str) -> list[Any]:
    """Every non-empty document of a YAML (or JSON) stream, as MarkedMap/MarkedList trees."""
    if len(data) > MAX_INPUT_BYTES:
        raise InputError(f"{source}: larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    yaml = _yaml()
    loader: Any = None
    docs: list[Any] = []
    try:
        # The reader checks every character when it is made: inside the try.
        loader = _loader_class()(text)
        while loader.check_node():
            node = loader.get_node()
            _check_size(node, source)
            doc = loader.construct_document(node)
            if doc is not None:
                docs.append(doc)
    except yaml.YAMLError as exc:
        # JSON is YAML, except that YAML refuses tabs where JSON allows them.
        if text.lstrip().startswith(("{", "[")):
            return _load_json(source, text)
        raise InputError(_yaml_message(source, text, exc)) from None
    except RecursionError:
        raise InputError(f"{source}: YAML nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    return docs


def plain(value: Any, where: str = "") -> Any:
    """A copy made of plain dicts, lists and JSON scalars, as the printers and schemas take them."""
    if isinstance(value, dict):
        return {str(k): plain(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v, where) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{where or 'a value'}: {value} is not a number JSON can hold")
    return value


def dump_yaml(objects: Sequence[Any]) -> str:
    """One YAML document per object, keys in the order given (as kubectl's JSON)."""
    yaml = _yaml()
    text: str = yaml.dump_all(
        [plain(o) for o in objects],
        Dumper=yaml.SafeDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 20,
    )
    return text


def dump_json(value: Any) -> str:
    return json.dumps(plain(value), indent=2, ensure_ascii=False) + "\n"
