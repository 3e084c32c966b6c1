"""The `stepkit` command: dispatches to helpers, loading only the one that runs, and maps errors to exit codes."""

from __future__ import annotations

import sys

from stepkit import __version__

# Not `from typing import ...`: on 3.11 typing imports re, which would cost nop a quarter
# of its start-up. mypy reads this constant as typing.TYPE_CHECKING.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import click

# name -> (module, attribute or "" for a plain `run(argv) -> int`, one-line help).
# Strings, not imports: the core must not import the helpers, and a helper's
# dependencies load only when that helper runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "nop": (
        "initializers.nop",
        "",
        "Print 'Build successful' and exit 0 (the pod's last container).",
    ),
    "creds-init": (
        "initializers.creds.cli",
        "command",
        "Write git, ssh and docker credentials from mounted secrets into $HOME.",
    ),
    "git-init": (
        "initializers.gitsrc.cli",
        "command",
        "Fetch one revision of a git repository into the workspace.",
    ),
    "gcs-fetcher": (
        "initializers.gcs.cli",
        "command",
        "Fetch an archive or a manifest of objects from Google Cloud Storage into the workspace.",
    ),
    "image-fetcher": (
        "initializers.imagesrc.cli",
        "command",
        "Extract files from a container image in a registry into the workspace.",
    ),
    "pod": (
        "controller.pod.cli",
        "command",
        "Print the Pod Knative Build's controller made for a Build (kubectl apply runs it).",
    ),
    "gcs-uploader": (
        "builders.gcsupload.cli",
        "command",
        "Upload a directory to Google Cloud Storage as objects named by content, and a manifest.",
    ),
    "ssh": (
        "builders.ssh.cli",
        "command",
        "Run commands on a remote host over ssh and upload files to it, with creds-init's key.",
    ),
    "git-push": (
        "builders.gitpush.push",
        "git_push",
        "Commit what changed in a git checkout, optionally tag it, and push it.",
    ),
    "docker": (
        "builders.dockerbuild.builder",
        "docker_build",
        "Build an image with a Docker daemon, tag it and push it; report the registry's digest.",
    ),
    "run": (
        "controller.run.cli",
        "command",
        "Run a Build on this machine through the Docker Engine API (Docker or podman), as a kubelet would.",
    ),
}

# The plain commands that run without click at all, for start-up time.
_FAST = {"nop"}


def _is_builder(obj: object) -> bool:
    """A builder of the SDK (stepkit.builder.Builder), which parses and reports on its own.

    Looked up in sys.modules: a helper that is one has imported stepkit.builder already,
    and the others should not pay for importing it.
    """
    module = sys.modules.get("stepkit.builder")
    return module is not None and isinstance(obj, module.Builder)


def _load(name: str) -> Any:
    import importlib

    module, attr, _ = COMMANDS[name]
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


def _group() -> click.Group:
    import click

    from stepkit.clickutil import CONTEXT_SETTINGS, common_options

    class LazyGroup(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted(COMMANDS)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            if cmd_name not in COMMANDS:
                return None
            _module, attr, short = COMMANDS[cmd_name]
            if attr:
                cmd = _load(cmd_name)
                if _is_builder(cmd):
                    return _builder_command(cmd_name, cmd, short)
                assert isinstance(cmd, click.Command)
                return cmd
            plain = _load(cmd_name)

            @click.command(
                cmd_name,
                help=short,
                context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                add_help_option=False,
            )
            @click.pass_context
            def wrapper(inner: click.Context) -> int:
                return int(plain.run(list(inner.args)))

            return wrapper

        def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    @click.group(
        cls=LazyGroup,
        context_settings=CONTEXT_SETTINGS,
        help="In-pod helpers for Kubernetes build systems (Knative Build, Tekton).",
    )
    @click.version_option(
        __version__, "--version", prog_name="stepkit", message="%(prog)s %(version)s"
    )
    @common_options
    def group() -> None:
        pass

    return group


def _builder_command(name: str, builder: Any, short: str) -> click.Command:
    """A builder as a subcommand of the group: its arguments go to it untouched, with the
    group's --log-format and --debug in front of them."""
    import click

    @click.command(
        name,
        help=short,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    @click.pass_context
    def wrapper(inner: click.Context) -> int:
        meta = inner.find_root().meta
        front = ["--log-format", str(meta.get("stepkit.log_format") or "text")]
        if meta.get("stepkit.debug"):
            front.append("--debug")
        return int(builder.main([*front, *inner.args], prog_name=f"stepkit {name}"))

    return wrapper


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in _FAST:
        return int(_load(args[0]).run(args[1:]))
    if args == ["--version"]:
        sys.stdout.write(f"stepkit {__version__}\n")
        return 0
    if args and args[0] in COMMANDS and COMMANDS[args[0]][1]:
        # Straight to the helper's command: building the group costs click's gettext
        # look-ups for its own option texts (~3 ms of a helper's start-up).
        loaded = _load(args[0])
        if _is_builder(loaded):
            return int(loaded.main(args[1:], prog_name=f"stepkit {args[0]}"))
        return run_click(loaded, args[1:], prog_name=f"stepkit {args[0]}", name=args[0])
    return run_click(_group(), args, prog_name="stepkit")


def run_click(cmd: click.Command, args: list[str], *, prog_name: str, name: str = "") -> int:
    """Run a click command with stepkit's error contract: one line, exit 1/2/3/130."""
    import click

    from stepkit import log
    from stepkit.errors import EXIT_INTERRUPTED, EXIT_USAGE, StepkitError

    name = name or next((a for a in args if a in COMMANDS), "")
    _terminate_as_interrupt()
    try:
        result = cmd.main(args=args, prog_name=prog_name, standalone_mode=False)
    except StepkitError as exc:
        _fail(log, name, exc.message, exc)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see 'stepkit {name} --help')" if name else " (see 'stepkit --help')"
        _fail(log, name, exc.format_message() + hint, None)
        return EXIT_USAGE
    except click.ClickException as exc:
        _fail(log, name, exc.format_message(), None)
        return EXIT_USAGE
    except (KeyboardInterrupt, click.exceptions.Abort):
        _fail(log, name, "interrupted", None)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # An unexpected failure is still one redacted line; the traceback only with --debug.
        _fail(log, name, f"internal error: {type(exc).__name__}: {exc}", exc)
        return 1
    return int(result) if isinstance(result, int) else 0


def _terminate_as_interrupt() -> None:
    """SIGTERM (a pod being deleted) unwinds like Ctrl-C, so children and half-made files are cleaned up."""
    import signal

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _fail(log: Any, name: str, message: str, exc: BaseException | None) -> None:
    import logging

    if not logging.getLogger().handlers:
        log.setup(name)
    logger = logging.getLogger("stepkit")
    if exc is not None and log.debug_enabled():
        logger.error("%s", message, exc_info=exc)
    else:
        logger.error("%s", message)
