"""`dataclass(frozen=True)` for the helpers' start-up path, without importing dataclasses.

`import dataclasses` imports inspect, ast, dis and typing: several ms of every helper's
start-up, for a decorator that only makes small frozen records here. Modules take it as

    TYPE_CHECKING = False
    if TYPE_CHECKING:
        from dataclasses import dataclass
    else:
        from stepkit._record import dataclass

so mypy checks them against the real one. It supports what they use: `frozen=True`, fields
from annotations (with `from __future__ import annotations`, as every module here has) in
order, plain default values, positional or keyword arguments, field-wise `==`, `hash`,
`repr`. tests/test_record.py holds it to dataclasses' behaviour.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class FrozenInstanceError(AttributeError):
    """Assigning to a field of a frozen record (dataclasses raises its own of this name)."""


def dataclass(*, frozen: bool) -> Callable[[type], type]:
    if not frozen:
        raise TypeError("stepkit._record only makes frozen records")

    def make(cls: type) -> type:
        # Not inspect.get_annotations: importing inspect is the cost this module avoids.
        names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        seen_default = False
        for name in names:
            if name in defaults:
                seen_default = True
            elif seen_default:
                raise TypeError(f"non-default argument {name!r} follows default argument")

        def __init__(self: object, *args: object, **kwargs: object) -> None:
            if len(args) > len(names):
                raise TypeError(
                    f"{cls.__name__}.__init__() takes {len(names) + 1} positional arguments "
                    f"but {len(args) + 1} were given"
                )
            values = dict(zip(names, args, strict=False))
            for key, value in kwargs.items():
                if key not in names:
                    raise TypeError(
                        f"{cls.__name__}.__init__() got an unexpected keyword argument {key!r}"
                    )
                if key in values:
                    raise TypeError(
                        f"{cls.__name__}.__init__() got multiple values for argument {key!r}"
                    )
                values[key] = value
            missing = [n for n in names if n not in values and n not in defaults]
            if missing:
                raise TypeError(
                    f"{cls.__name__}.__init__() missing {len(missing)} required argument(s): "
                    + ", ".join(repr(m) for m in missing)
                )
            for name in names:
                object.__setattr__(self, name, values[name] if name in values else defaults[name])

        def __setattr__(self: object, name: str, value: object) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: object, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

        def fields(self: object) -> tuple[object, ...]:
            return tuple(getattr(self, n) for n in names)

        def __eq__(self: object, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return fields(self) == fields(other)

        def __hash__(self: object) -> int:
            return hash(fields(self))

        def __repr__(self: object) -> str:
            inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
            return f"{cls.__qualname__}({inner})"

        for name, value in (
            ("__init__", __init__),
            ("__setattr__", __setattr__),
            ("__delattr__", __delattr__),
            ("__eq__", __eq__),
            ("__hash__", __hash__),
            ("__repr__", __repr__),
        ):
            value.__qualname__ = f"{cls.__qualname__}.{name}"
            setattr(cls, name, value)
        return cls

    return make
