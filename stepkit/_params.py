"""Declared builder params and results, and how a param's value is found: args, then env, then default.

Part of the builder SDK (stepkit.builder re-exports Param and Result); kept apart so the
parsing rules can be read and tested on their own.
"""

from __future__ import annotations

import builtins
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepkit import secret
from stepkit.errors import InputError
from stepkit.validate import has_control, shown


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""The default of a Param that has none."""

TYPES: tuple[builtins.type[Any], ...] = (str, int, float, bool, list, dict, Path)
_TYPE_NAMES: dict[builtins.type[Any], str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "bool",
    list: "list",
    dict: "K=V list",
    Path: "path",
}
_METAVARS: dict[builtins.type[Any], str] = {
    str: "TEXT",
    int: "INT",
    float: "NUMBER",
    bool: "BOOL",
    list: "VALUE",
    dict: "KEY=VALUE",
    Path: "PATH",
}
# Go's strconv.ParseBool, which is what a BuildTemplate author expects a bool flag to take.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# Tekton's rule for result names, which is also safe as a file name in a results directory.
_RESULT_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
# Flags every builder has; a param may not take their names.
RESERVED = frozenset(
    {
        "h",
        "help",
        "debug",
        "log-format",
        "workspace",
        "results-dir",
        "termination-message-path",
        "terminationMessagePath",
    }
)
MAX_SECRET_FILE = 1 << 20


def env_suffix(name: str) -> str:
    """A param name as it appears in environment variable names: upper case, `-` `.` and spaces as `_`."""
    return re.sub(r"[-. ]", "_", name).upper()


@dataclass(frozen=True)
class Param:
    """One input of a builder, read from its flag, else its environment variables, else the default.

    name: the flag (`-name=v`, `-name v`, `--name=v`, `--name v`) and, with `-` and `.` as
        `_`, the attribute of `ctx.params`.
    type: str, int, float, bool (Go's ParseBool words; `-name` alone is true), list (the flag
        repeated, or one value per line; never split on commas), dict (`K=V`, repeated or one
        per line), or pathlib.Path (relative to the workspace; outside it is refused unless
        `outside_workspace=True`).
    default: the value when none is given; a string default is converted like a given value.
        A param without a default is required unless `required=False` (then it is None, or
        empty for list and dict).
    secret: the value is masked in every output; `@FILE` reads it from a file (one trailing
        newline dropped), `@@...` is a literal value starting with `@`.
    env: the environment variables to read, in order, instead of the defaults
        `STEPKIT_<NAME>` and `PARAM_<NAME>`; an empty sequence reads none.
    minimum, maximum: bounds of an int or float.
    """

    name: str
    type: builtins.type[Any] = str
    default: Any = MISSING
    help: str = ""
    required: bool | None = None
    secret: bool = False
    env: str | Sequence[str] | None = None
    outside_workspace: bool = False
    minimum: float | None = None
    maximum: float | None = None
    metavar: str | None = None
    env_names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.name in RESERVED:
            raise ValueError(
                f"Param name {self.name!r}: letters, digits, '-', '_' and '.', starting with a "
                f"letter, and none of {', '.join(sorted(RESERVED))}"
            )
        if self.attr == "as_dict":  # ctx.params.as_dict() is taken
            raise ValueError(f"Param name {self.name!r} is taken by ctx.params.as_dict()")
        if self.type not in TYPES:
            raise TypeError(
                f"Param {self.name!r}: type must be one of str, int, float, bool, "
                "list, dict, pathlib.Path"
            )
        if self.secret and self.type is not str:
            raise TypeError(f"Param {self.name!r}: a secret is a str")
        if self.outside_workspace and self.type is not Path:
            raise TypeError(f"Param {self.name!r}: outside_workspace is for Path params")
        if (self.minimum is not None or self.maximum is not None) and self.type not in (
            int,
            float,
        ):
            raise TypeError(f"Param {self.name!r}: minimum and maximum are for int and float")
        if self.env is None:
            names: tuple[str, ...] = (
                f"STEPKIT_{env_suffix(self.name)}",
                f"PARAM_{env_suffix(self.name)}",
            )
        elif isinstance(self.env, str):
            names = (self.env,)
        else:
            names = tuple(self.env)
        object.__setattr__(self, "env_names", names)

    @property
    def attr(self) -> str:
        """The attribute of ctx.params that holds the value."""
        return re.sub(r"[-.]", "_", self.name)

    @property
    def flag(self) -> str:
        """The flag as errors name it."""
        return f"--{self.name}"

    @property
    def is_required(self) -> bool:
        if self.required is not None:
            return self.required
        return self.default is MISSING

    @property
    def repeatable(self) -> bool:
        return self.type in (list, dict)

    def describe(self) -> str:
        """The help line: the author's text, then env names, type and default."""
        facts = []
        if self.env_names:
            facts.append("env: " + ", ".join(self.env_names))
        kind = _TYPE_NAMES[self.type]
        if self.secret:
            kind = "secret: the value, or @FILE"
        if self.repeatable:
            kind += ", repeatable"
        facts.append(kind)
        if self.minimum is not None or self.maximum is not None:
            low = "" if self.minimum is None else f"{self.minimum:g} <= "
            high = "" if self.maximum is None else f" <= {self.maximum:g}"
            facts.append(f"{low}x{high}")
        if self.is_required:
            facts.append("required")
        elif self.default is not MISSING and not self.secret:
            facts.append(f"default: {_show_default(self.default)}")
        text = self.help.strip()
        return f"{text} [{'; '.join(facts)}]" if text else f"[{'; '.join(facts)}]"

    @property
    def shown_metavar(self) -> str:
        if self.metavar:
            return self.metavar
        return "VALUE|@FILE" if self.secret else _METAVARS[self.type]


def _show_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


@dataclass(frozen=True)
class Result:
    """One result a builder may set with `ctx.set_result(name, value)`."""

    name: str
    help: str = ""
    optional: bool = False
    """True: a result set only in some runs (say, when a flag asks for it); no warning when unset."""

    def __post_init__(self) -> None:
        if not _RESULT_NAME.fullmatch(self.name) or len(self.name) > 253:
            raise ValueError(
                f"Result name {self.name!r}: letters, digits, '-', '_' and '.', starting and "
                "ending with a letter or digit"
            )


def check_declarations(params: Sequence[Param], results: Sequence[Result]) -> None:
    """Names must be unique, as flags, as attributes and as environment variables."""
    seen: dict[str, str] = {}
    for param in params:
        for key in (param.name, param.attr):
            if seen.get(key, param.name) != param.name:
                raise ValueError(f"Params {seen[key]!r} and {param.name!r} collide as {key!r}")
            seen[key] = param.name
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError("Result names must be unique")


@dataclass(frozen=True)
class Source:
    """Where a value came from, as an error names it (never the value itself for secrets)."""

    param: Param
    env: str | None = None

    def __str__(self) -> str:
        return f"{self.param.flag} (from {self.env})" if self.env else self.param.flag


def resolve(param: Param, given: Sequence[str], environ: Mapping[str, str], workspace: Path) -> Any:
    """The param's value: from the flag values given, else its env names, else its default."""
    if given:
        if len(given) > 1 and not param.repeatable:
            raise InputError(f"{param.flag} is given {len(given)} times; it takes one value")
        return convert(param, list(given), Source(param), workspace)
    for name in param.env_names:
        # An empty variable counts as unset, as for every stepkit option: a Tekton step gets
        # every param as an env var, those left empty included.
        value = environ.get(name)
        if value:
            return convert(param, [value], Source(param, name), workspace)
    if param.is_required and param.default is MISSING:
        where = f" (or set {' or '.join(param.env_names)})" if param.env_names else ""
        raise InputError(f"{param.flag} is required{where}")
    if param.default is MISSING:
        return [] if param.type is list else {} if param.type is dict else None
    default = param.default
    if isinstance(default, str) and param.type is not str:
        return convert(param, [default], Source(param), workspace)
    if param.secret and isinstance(default, str):
        secret.register(default)
    if param.type is list:
        return list(default)
    if param.type is dict:
        return dict(default)
    return default


def _lines(value: str) -> list[str]:
    """One value per line; a final newline ends the last line rather than adding an empty one."""
    if value.endswith("\n"):
        value = value[:-1]
    return [line[:-1] if line.endswith("\r") else line for line in value.split("\n")]


def convert(param: Param, values: list[str], source: Source, workspace: Path) -> Any:
    """Flag or env values (strings) to the param's type; InputError naming the source."""
    kind = param.type
    if kind is list:
        return [item for value in values for item in _lines(value)]
    if kind is dict:
        out: dict[str, str] = {}
        for value in values:
            for line in _lines(value):
                key, eq, item = line.partition("=")
                if not eq or not key:
                    raise InputError(f"{source}: {shown(line)} is not KEY=VALUE")
                if key in out:
                    raise InputError(f"{source}: key {shown(key)} is given twice")
                out[key] = item
        return out
    [value] = values
    if param.secret:
        return _secret_value(value, source)
    if kind is str:
        return value
    if kind is bool:
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise InputError(f"{source}: {shown(value)} is not a bool (true or false, 1 or 0)")
    if kind is int:
        if not _INT.fullmatch(value):
            raise InputError(f"{source}: {shown(value)} is not an integer")
        return _bounded(int(value), param, source)
    if kind is float:
        if not _FLOAT.fullmatch(value) or not math.isfinite(float(value)):
            raise InputError(f"{source}: {shown(value)} is not a number")
        return _bounded(float(value), param, source)
    return _path(value, param, source, workspace)


def _bounded(number: float, param: Param, source: Source) -> Any:
    if param.minimum is not None and number < param.minimum:
        raise InputError(f"{source}: {number:g} is less than {param.minimum:g}")
    if param.maximum is not None and number > param.maximum:
        raise InputError(f"{source}: {number:g} is more than {param.maximum:g}")
    return number


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _path(value: str, param: Param, source: Source, workspace: Path) -> Path:
    if not value:
        raise InputError(f"{source} is empty")
    if has_control(value):
        raise InputError(f"{source}: control characters in {shown(value)}")
    path = Path(os.path.normpath(workspace / value))
    if not param.outside_workspace:
        # Lexically inside, and still inside once symbolic links are followed.
        root = os.path.normpath(workspace)
        if not _within(str(path), root) or not _within(
            os.path.realpath(path), os.path.realpath(root)
        ):
            raise InputError(f"{source}: {shown(value)} is outside the workspace {root}")
    return path


def _secret_value(value: str, source: Source) -> str:
    if value.startswith("@@"):
        value = value[1:]
    elif value.startswith("@"):
        name = value[1:]
        try:
            # O_NONBLOCK: a FIFO or a terminal named here must not hang the builder.
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise InputError(
                        f"{source}: the secret file {shown(name)} is not a regular file"
                    )
                data = handle.read(MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise InputError(
                f"{source}: cannot read the secret file {shown(name)}: {exc.strerror}"
            ) from None
        if len(data) > MAX_SECRET_FILE:
            raise InputError(f"{source}: the secret file {shown(name)} is larger than 1 MiB")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{source}: the secret file {shown(name)} is not UTF-8") from None
        # Files made with `echo` or an editor end in a newline the secret does not have.
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    secret.register(value)
    return value
