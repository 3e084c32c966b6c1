"""Click pieces shared by the helpers: Go-style flags, env-var defaults, logging options."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from stepkit import contract, log

F = TypeVar("F", bound=Callable[..., Any])

# Go's flag package prints usage on -h and -help; keep those working beside --help.
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help", "-help"]}


class GoCommand(click.Command):
    """A command whose flags parse as Go's flag package does: `-long-name` is one flag, never a cluster.

    click would read `-no-such-flag` as `-n -o ...` and report `-n`; Go has no short-option
    clusters, so an unknown single-dash word is reported by its whole name instead.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value: set[str] = set()
        known: set[str] = set()
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                names = [*param.opts, *param.secondary_opts]
                known.update(names)
                # An option whose value is optional (a Go bool: -submodules or
                # -submodules=false) never takes the next word as its value.
                if (
                    not param.is_flag
                    and not param.count
                    and not getattr(param, "_flag_needs_value", False)
                ):
                    takes_value.update(names)
        out: list[str] = []
        expect_value = False
        for index, arg in enumerate(args):
            if expect_value:
                out.append(arg)
                expect_value = False
                continue
            if arg == "--":
                out.extend(args[index:])
                break
            name = arg.split("=", 1)[0]
            if (
                arg.startswith("-")
                and not arg.startswith("--")
                and len(name) > 2
                and name not in known
            ):
                arg = "-" + arg
            expect_value = "=" not in arg and name in takes_value
            out.append(arg)
        return super().parse_args(ctx, out)


def go_option(name: str, *, envvar: str, help: str, **kwargs: Any) -> Callable[[F], F]:
    """An option spelled `-name` and `--name`, each with `=value` or a separate value, as Go's flag package accepts."""
    decorator = click.option(
        f"-{name}", f"--{name}", envvar=envvar, show_envvar=True, help=help, **kwargs
    )
    return decorator


def workers_option(*, envvar: str, help: str) -> Callable[[F], F]:
    """-workers: how many objects move at once, 1 to 1000, 200 unless set."""
    return go_option(
        "workers",
        envvar=envvar,
        type=click.IntRange(min=1, max=1000),
        default=200,
        show_default=True,
        help=help,
    )


def retries_option(*, envvar: str, maximum: int, help: str) -> Callable[[F], F]:
    """-retries: how often a transient failure is tried again, 0 to maximum, 3 unless set."""
    return go_option(
        "retries",
        envvar=envvar,
        type=click.IntRange(min=0, max=maximum),
        default=3,
        show_default=True,
        help=help,
    )


def seconds_option(
    name: str, *, envvar: str, default: float, minimum: float, help: str
) -> Callable[[F], F]:
    """A time in seconds, as a float no smaller than minimum."""
    return go_option(
        name,
        envvar=envvar,
        type=click.FloatRange(min=minimum),
        default=default,
        show_default=True,
        help=help,
    )


def duration_option(name: str, *, envvar: str, default: str, help: str) -> Callable[[F], F]:
    """A time as a Go duration ("100ms", "5m"), parsed where the spec is built."""
    return go_option(
        name, envvar=envvar, default=default, show_default=True, metavar="DURATION", help=help
    )


def _termination_default(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    return value if value is not None else contract.default_termination_path()


def result_options(what: str = "results") -> Callable[[F], F]:
    """--termination-message-path (SPEC §0) or Tekton's -terminationMessagePath, and
    --results-dir, as every helper that has results takes them.

    The command gets `terminationmessagepath` already resolved (the pod's termination log
    when the flag is not given and one is writable, else None) and `results_dir`.
    """

    def decorate(f: F) -> F:
        f = go_option(
            "results-dir",
            envvar="STEPKIT_RESULTS_DIR",
            default=None,
            metavar="DIR",
            help="Also write each result to DIR/<key> (Tekton: /tekton/results).",
        )(f)
        return click.option(
            "-termination-message-path",
            "--termination-message-path",
            "-terminationMessagePath",
            "--terminationMessagePath",
            "terminationmessagepath",
            envvar="STEPKIT_TERMINATION_MESSAGE_PATH",
            show_envvar=True,
            default=None,
            metavar="FILE",
            callback=_termination_default,
            help=(
                f"Where to write {what} as a termination message. [default: "
                f"{contract.TEKTON_TERMINATION}, else {contract.TERMINATION_LOG}, the first that "
                "exists and is writable]"
            ),
        )(f)

    return decorate


class GoBool(click.ParamType[bool]):
    """A boolean as Go's strconv.ParseBool reads it: 1 t T TRUE true True, 0 f F FALSE false False."""

    name = "bool"
    _TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
    _FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, bool):
            return value
        if value in self._TRUE:
            return True
        if value in self._FALSE:
            return False
        self.fail(f"{value!r} is not a boolean (true or false)", param, ctx)


class FlagBool(GoBool):
    """GoBool that also reads the words a click flag took from its environment variable (yes, on, ...)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bool:
        if isinstance(value, str) and value not in self._TRUE | self._FALSE:
            return bool(click.BOOL.convert(value, param, ctx))
        return super().convert(value, param, ctx)


def go_bool_option(
    name: str, *, envvar: str, default: bool, help: str, type: GoBool | None = None
) -> Callable[[F], F]:
    """A Go bool flag: `-name` alone is true, `-name=false` is false, as Go's flag package reads them."""
    return click.option(
        f"-{name}",
        f"--{name}",
        envvar=envvar,
        show_envvar=True,
        type=type or GoBool(),
        is_flag=False,
        flag_value="true",
        default=default,
        show_default=True,
        help=help,
    )


def go_flag_option(name: str, *, envvar: str, help: str) -> Callable[[F], F]:
    """A switch, false unless given: `-name`, or as Go reads a bool, `-name=true`/`-name=false`."""
    return go_bool_option(name, envvar=envvar, default=False, help=help, type=FlagBool())


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    meta = ctx.find_root().meta
    # A value given on the subcommand wins over the group's; an env default never
    # overrides an explicit flag given earlier.
    source = ctx.get_parameter_source(param.name or "")
    explicit = source not in (click.core.ParameterSource.DEFAULT, None)
    key = f"stepkit.{param.name}"
    if explicit or key not in meta:
        meta[key] = value
    _apply(ctx)
    return value


def _apply(ctx: click.Context) -> None:
    meta = ctx.find_root().meta
    fmt = meta.get("stepkit.log_format") or "text"
    debug = bool(meta.get("stepkit.debug"))
    name = "" if isinstance(ctx.command, click.Group) else (ctx.command.name or "")
    log.setup(name or "", fmt, debug)


def common_options(f: F) -> F:
    """--log-format and --debug, on the group and on every helper (images fix the entrypoint)."""
    f = click.option(
        "--log-format",
        "-log-format",
        type=click.Choice(log.FORMATS),
        envvar="STEPKIT_LOG_FORMAT",
        show_envvar=True,
        default="text",
        expose_value=False,
        is_eager=True,
        callback=_remember,
        help="Log lines as plain text or as JSON objects (level, time, logger, message).",
    )(f)
    f = click.option(
        "--debug",
        "-debug",
        is_flag=True,
        envvar="STEPKIT_DEBUG",
        show_envvar=True,
        expose_value=False,
        is_eager=True,
        callback=_remember,
        help="Log debug lines and show tracebacks of unexpected errors.",
    )(f)
    return f


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
