"""stepkit._record's frozen records behave as dataclasses' for everything the helpers use."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from stepkit import _record


def make(decorator: Any) -> Any:
    @decorator(frozen=True)
    class Point:
        x: int
        y: str
        z: float | None = None
        w: tuple[int, ...] = ()

    return Point


REAL = make(dataclasses.dataclass)
OURS = make(_record.dataclass)

CALLS: list[tuple[tuple[object, ...], dict[str, object]]] = [
    ((1, "a"), {}),
    ((1,), {"y": "a", "w": (3,)}),
    ((), {"x": 1, "y": "a", "z": 2.5}),
    ((1, "a", None, (1, 2)), {}),
    # errors, each a TypeError in both
    ((), {}),
    ((1,), {}),
    ((1, "a", 1.0, (), 9), {}),
    ((1, "a"), {"x": 2}),
    ((1, "a"), {"nope": 2}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_construction_and_errors_match(args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    try:
        real = REAL(*args, **kwargs)
    except TypeError:
        with pytest.raises(TypeError):
            OURS(*args, **kwargs)
        return
    ours = OURS(*args, **kwargs)
    names = ("x", "y", "z", "w")
    assert [getattr(ours, n) for n in names] == [getattr(real, n) for n in names]
    assert repr(ours) == repr(real).replace(REAL.__qualname__, OURS.__qualname__)
    assert hash(ours) == hash(OURS(*args, **kwargs))
    assert ours == OURS(*args, **kwargs)
    assert ours != OURS(2, "other")
    assert ours != real  # another class, as two dataclasses compare
    with pytest.raises(AttributeError):
        ours.x = 5
    with pytest.raises(AttributeError):
        del ours.y


def test_a_default_before_a_required_field_is_refused_as_dataclasses_does() -> None:
    for decorator in (dataclasses.dataclass, _record.dataclass):
        with pytest.raises(TypeError):

            @decorator(frozen=True)
            class Bad:
                a: int = 1
                b: int


def test_git_init_start_up_imports_neither_dataclasses_nor_typing_nor_click() -> None:
    code = (
        "import sys\n"
        "import stepkit.cli, initializers.gitsrc.entry, initializers.gitsrc.fetch\n"
        "print(sorted(m for m in ('dataclasses', 'typing', 'click', 'inspect') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"
