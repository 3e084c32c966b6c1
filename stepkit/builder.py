"""The builder SDK: write a builder image's tool as one Python function and get the pod contract for free.

    from stepkit.builder import Context, Param, Result, builder, group, run

    @builder(
        name="hello",
        help="Say hello and record it.",
        params=[Param("greeting", default="hello"), Param("token", secret=True, required=False)],
        results=[Result("message")],
    )
    def hello(ctx: Context) -> None:
        with group("say"):
            run(["echo", ctx.params.greeting])
        ctx.set_result("message", ctx.params.greeting)

    if __name__ == "__main__":
        hello()

What the function gets (SPEC §6.2):

- Params from args in every Go-flag spelling (`-name=v`, `-name v`, `--name=v`, `--name v`),
  then `STEPKIT_<NAME>`, then `PARAM_<NAME>` (upper case, `-` `.` and spaces as `_`), then the
  default; a param given twice that is not a list, an unknown flag, a value that is not of
  the param's type, a `Path` outside the workspace or an unreadable secret `@FILE` exits 2
  with one line naming the param, before the function runs.
- Results, written when the builder ends, on failure too: to the termination message
  (merged with what is there, at most 4096 bytes), to `--results-dir` (`STEPKIT_RESULTS_DIR`)
  and to Tekton's `/tekton/results` when it exists; exact bytes, no newline added.
- Masking: every secret param and every value given to `mask()` -- and their base64,
  percent-encoded and JSON forms, and each line of a multi-line value -- is replaced by `***` in
  what the builder prints, in its log lines (text or JSON), in error messages and
  `--debug` tracebacks, and in the output of the programs `run()` starts, even when a pipe
  cuts a secret in two. Values shorter than 4 characters are not masked: they would hide
  ordinary words and numbers.
- `run()` starts a program (never a shell), echoes its masked command line, relays its
  output masked, line by line, and forwards SIGTERM and SIGINT to it; the builder then
  exits 128+signal. A failing program's exit code becomes the builder's; a program that is
  not there exits 127; one killed by signal N gives 128+N.
- Exit codes: 0 success; `fail(message, code)` that code; 2 bad input; 3 denied; 1 any other
  error (one line; the traceback only with `--debug`); 128+N on signal N.
- Every builder also takes `--log-format text|json`, `--debug`, `--workspace DIR`,
  `--results-dir DIR`, `--termination-message-path FILE` (Tekton: `-terminationMessagePath`)
  and `-h`/`--help`, which lists every param with its env names, type and default, and the
  results.

Test a builder with `stepkit.testing.run_builder` (in process) or `run_image` (its image).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn, TextIO

from stepkit import contract, log, secret
from stepkit._mask import Masker
from stepkit._params import MISSING, Param, Result, check_declarations, resolve
from stepkit.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    InputError,
    StepkitError,
)
from stepkit.results import MAX_TERMINATION_BYTES, write_results

__all__ = [
    "MISSING",
    "Builder",
    "CommandError",
    "CommandResult",
    "Context",
    "Param",
    "Params",
    "Result",
    "builder",
    "exec_tool",
    "fail",
    "group",
    "mask",
    "run",
]

EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
# A child's incomplete line is released after this long without output from it.
IDLE_FLUSH = 0.1
# After the child exits, how long to keep relaying what its own children still write.
LINGER = 2.0
_READ = 64 * 1024
_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Sink = Callable[[bytes], None]
BuilderFunction = Callable[["Context"], "int | None"]


class _Interrupted(BaseException):
    """A signal stopped the builder: unwinds past `except Exception`, exits 128+signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Failure(SystemExit):
    """fail(): stops the builder at once with a message and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message
        self.exit_code = code


def _stream_sink(stream: TextIO) -> Sink:
    """Bytes to an existing text stream: through its binary buffer when it has one."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:

        def write(data: bytes) -> None:
            buffer.write(data)
            buffer.flush()

        return write

    def write_text(data: bytes) -> None:
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()

    return write_text


def _locked(sink: Sink) -> Sink:
    """One write at a time: the builder's prints and each child's relays share the sink."""
    lock = threading.Lock()

    def write(data: bytes) -> None:
        with lock:
            sink(data)

    return write


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


class _MaskedBinary(io.RawIOBase):
    """`sys.stdout.buffer` of a builder: bytes written through the masker."""

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self._masker = masker

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._masker.feed(chunk)
        return len(chunk)

    def flush(self) -> None:
        self._masker.flush()


class _MaskedText(io.TextIOBase):
    """`sys.stdout` / `sys.stderr` of a builder: text written through the masker.

    It has no fileno(): a program handed this stream's descriptor would bypass the masker;
    `run()` relays instead.
    """

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self._masker = masker
        self._buffer = _MaskedBinary(masker)

    @property
    def encoding(self) -> str:  # type: ignore[override]  # io.TextIOBase's is read-only too
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "surrogateescape"

    @property
    def buffer(self) -> _MaskedBinary:
        return self._buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._masker.feed(_encode(text))
        return len(text)

    def flush(self) -> None:
        self._masker.flush()


class Params:
    """The values of a builder's params: `ctx.params.name` (`-` and `.` as `_`) or `ctx.params["name"]`."""

    def __init__(self, values: Mapping[str, Any], params: Sequence[Param]) -> None:
        self._values = dict(values)
        self._secret = {p.attr for p in params if p.secret}
        self._names = {p.name: p.attr for p in params}

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            known = ", ".join(sorted(self.__dict__.get("_values", {}))) or "none"
            raise AttributeError(f"no param {name!r} (params: {known})") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[self._names.get(name, name)]

    def __contains__(self, name: object) -> bool:
        return name in self._values or name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def as_dict(self) -> dict[str, Any]:
        """attribute name -> value."""
        return dict(self._values)

    def __repr__(self) -> str:
        shown = {k: (secret.REDACTED if k in self._secret else v) for k, v in self._values.items()}
        return f"Params({shown!r})"


@dataclass(frozen=True)
class CommandResult:
    """What `run()` returns: the masked command line, its exit status, and its output when captured.

    returncode is as subprocess reports it (-N when killed by signal N); exit_code as a
    shell does (128+N).
    """

    argv: list[str]
    returncode: int
    stdout: str = ""

    @property
    def exit_code(self) -> int:
        return 128 - self.returncode if self.returncode < 0 else self.returncode

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Context:
    """What a builder function is handed: its params, the pod's paths, a logger and the results."""

    def __init__(self, runtime: _Runtime, params: Params) -> None:
        self._runtime = runtime
        self.params = params
        """The params' values, by attribute (`ctx.params.count`) or name (`ctx.params["count"]`)."""
        self.log: logging.Logger = runtime.logger
        """A logger named after the builder; its lines go to stderr, text or JSON, masked."""

    @property
    def name(self) -> str:
        return self._runtime.builder.name

    @property
    def workspace(self) -> Path:
        """`--workspace` / `STEPKIT_WORKSPACE`, else the working directory (/workspace in a pod)."""
        return self._runtime.workspace

    @property
    def home(self) -> Path:
        """$HOME (/builder/home in a pod), where creds-init left git, ssh and docker credentials."""
        return contract.home()

    @property
    def docker_config(self) -> Path:
        """The docker config directory: $DOCKER_CONFIG, else $HOME/.docker."""
        value = os.environ.get("DOCKER_CONFIG")
        return Path(value) if value else self.home / ".docker"

    @property
    def debug(self) -> bool:
        return self._runtime.debug

    @property
    def results(self) -> dict[str, str]:
        """The results set so far."""
        with self._runtime.lock:
            return dict(self._runtime.results)

    def set_result(self, name: str, value: str) -> None:
        """Record a result; written when the builder ends, on failure too.

        The name must be declared with Result(name). A value holding a secret has it masked,
        with a warning: results are shown by `kubectl get pod`.
        """
        self._runtime.set_result(name, value)


class _Runtime:
    """One run of a builder: its streams, children, signals and results."""

    current: _Runtime | None = None

    def __init__(
        self,
        builder: Builder,
        *,
        out: Sink | None,
        err: Sink | None,
        tekton_dir: str | None,
        can_exec: bool,
    ) -> None:
        self.builder = builder
        # Re-entrant: the signal handler runs in the main thread, which may hold it already.
        self.lock = threading.RLock()
        self.results: dict[str, str] = {}
        self.children: set[subprocess.Popen[bytes]] = set()
        self.signalled: int | None = None
        self.starting = 0  # run() calls between starting a program and registering it
        self.finishing = False
        self.debug = False
        self.can_exec = can_exec
        self.tekton_dir = tekton_dir
        self.termination_path: str | None = None
        self.results_dir: str | None = None
        self.workspace = Path.cwd()
        self.logger = logging.getLogger(builder.name)
        self._out_arg, self._err_arg = out, err
        self._saved: dict[str, Any] = {}

    # -- set-up and tear-down -------------------------------------------------------------

    def __enter__(self) -> _Runtime:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        root = logging.getLogger()
        self._saved = {
            "stdout": sys.stdout,
            "stderr": sys.stderr,
            "handlers": list(root.handlers),
            "level": root.level,
            "cwd": os.getcwd(),
            "current": _Runtime.current,
            "signals": {},
        }
        self.out_sink = _locked(self._out_arg or _stream_sink(sys.stdout))
        self.err_sink = _locked(self._err_arg or _stream_sink(sys.stderr))
        self.out = Masker(self.out_sink)
        self.err = Masker(self.err_sink)
        sys.stdout = _MaskedText(self.out)
        sys.stderr = _MaskedText(self.err)
        _Runtime.current = self
        return self

    def install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers live in the main thread only; embedding in a thread works without
        for signum in _SIGNALS:
            self._saved["signals"][signum] = signal.signal(signum, self._on_signal)

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._saved["signals"].items():
            signal.signal(signum, handler)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.out.close()
        self.err.close()
        sys.stdout = self._saved["stdout"]
        sys.stderr = self._saved["stderr"]
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in self._saved["handlers"]:
            root.addHandler(handler)
        root.setLevel(self._saved["level"])
        with contextlib.suppress(OSError):
            os.chdir(self._saved["cwd"])
        _Runtime.current = self._saved["current"]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        with self.lock:
            children = list(self.children)
            again = self.signalled is not None
            if self.signalled is None:
                self.signalled = signum
        if not children:
            if self.finishing or self.starting:
                return  # noted: the results are written, or the program just started gets it
            raise _Interrupted(self.signalled or signum)
        # The first signal is passed on for the program to stop cleanly; a second one means
        # "now": the whole process group is killed.
        for child in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL if again else signum)

    # -- results ----------------------------------------------------------------------------

    def set_result(self, name: str, value: str) -> None:
        declared = {r.name for r in self.builder.results}
        if name not in declared:
            names = ", ".join(sorted(declared)) or "none"
            raise StepkitError(f"result {name!r} is not declared (declared: {names})")
        if not isinstance(value, str):
            raise StepkitError(
                f"result {name!r}: the value must be a str, not {type(value).__name__}"
            )
        masked = secret.redact(value)
        if masked != value:
            self.logger.warning("result %r holds a secret; it is written masked", name)
        with self.lock:
            trial = {**self.results, name: masked}
            size = len(json.dumps([{"key": k, "value": v} for k, v in trial.items()]).encode())
            if size > MAX_TERMINATION_BYTES:
                raise StepkitError(
                    f"result {name!r} makes the results {size} bytes; a termination message "
                    f"holds at most {MAX_TERMINATION_BYTES}"
                )
            self.results[name] = masked

    def write_results(self) -> None:
        with self.lock:
            results = dict(self.results)
        if results and not (self.termination_path or self.results_dir or self.tekton_dir):
            self.logger.debug(
                "results %s not written: no termination message file or results directory",
                ", ".join(results),
            )
        elif results:
            write_results(
                results,
                termination_path=self.termination_path,
                results_dir=self.results_dir,
                tekton_dir=self.tekton_dir,
            )

    def flush_output(self) -> None:
        """Everything printed so far goes out, held-back tails included (before an exec)."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self.out.close()
        self.err.close()


def _current() -> _Runtime | None:
    return _Runtime.current


def _logger() -> logging.Logger:
    runtime = _current()
    return runtime.logger if runtime is not None else logging.getLogger("stepkit.builder")


# -- the public functions ---------------------------------------------------------------------


def mask(value: str) -> str:
    """Hide value (and its encoded forms, and each of its lines) in all output from now on.

    Returns value, so `token = mask(fetch_token())` reads naturally. Values shorter than 4
    characters are not masked.
    """
    secret.register(value)
    return value


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Stop the builder now: `message` as one error line, `code` (1 to 255) as the exit code.

    Results set so far are still written.
    """
    if not 1 <= code <= 255:
        raise ValueError(f"fail(): code must be 1 to 255, not {code}")
    if _current() is None:
        _logger().error("%s", message)
    raise _Failure(message, code)


@contextlib.contextmanager
def group(name: str) -> Iterator[None]:
    """Mark a section of the log: a start line, then an end line with its duration."""
    logger = _logger()
    logger.info("==> %s", name)
    start = time.monotonic()
    try:
        yield
    except BaseException:
        logger.info("<== %s: failed after %.2f s", name, time.monotonic() - start)
        raise
    logger.info("<== %s: done in %.2f s", name, time.monotonic() - start)


def _shown(args: Sequence[str]) -> str:
    # Each word masked before quoting: quoting a secret with a quote in it would cut it into
    # pieces the masker no longer recognises.
    return shlex.join(secret.redact(a) for a in args)


def _child_env(env: Mapping[str, str | None] | None) -> dict[str, str]:
    out = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _not_executable(program: str, reason: str) -> CommandError:
    error = CommandError(
        f"cannot run {program!r}: {reason}",
        argv=[program],
        returncode=EXIT_NOT_EXECUTABLE,
        output="",
    )
    error.exit_code = EXIT_NOT_EXECUTABLE
    return error


def _not_found(program: str) -> CommandError:
    error = CommandError(
        f"cannot run {program!r}: not found", argv=[program], returncode=EXIT_NOT_FOUND, output=""
    )
    error.exit_code = EXIT_NOT_FOUND
    return error


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
    capture: bool = False,
    input: str | bytes | None = None,
    timeout: float | None = None,
) -> CommandResult:
    """Run a program (an argument list, never a shell) with its output relayed, masked, line by line.

    cwd: default the workspace. env: variables added to the builder's environment (None
    removes one). capture: the program's stdout is returned (masked) in `.stdout` instead of
    printed; its stderr is still relayed. input: written to its stdin (otherwise stdin is
    empty: a builder never prompts). timeout: seconds, then the program's process group is
    killed and the builder fails.

    With check (the default) a program that fails stops the builder with the program's exit
    code (128+N when killed by signal N): CommandError, whose `exit_code` is that code.
    A program that is not there: one line naming it, exit 127 (returned as 127 with
    check=False). SIGTERM and SIGINT sent to the builder are passed on to the program's
    process group; when it has ended the builder exits 128+signal.
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("run(): empty argv")
    runtime = _current()
    logger = _logger()
    shown = _shown(args)
    masked = [secret.redact(a) for a in args]
    logger.info("$ %s", shown)
    if runtime is not None:
        # What the builder printed without a newline goes out before the program's output.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    workdir = cwd if cwd is not None else (runtime.workspace if runtime is not None else None)
    out_sink = runtime.out_sink if runtime is not None else _stream_sink(sys.stdout)
    err_sink = runtime.err_sink if runtime is not None else _stream_sink(sys.stderr)
    captured = bytearray()
    if runtime is not None:
        with runtime.lock:
            runtime.starting += 1
    try:
        proc = subprocess.Popen(
            args,
            cwd=workdir,
            env=_child_env(env),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: signals reach its children too
        )
    except BaseException as exc:
        if runtime is not None:
            with runtime.lock:
                runtime.starting -= 1
            if runtime.signalled is not None:
                raise _Interrupted(runtime.signalled) from None
        if isinstance(exc, FileNotFoundError | PermissionError):
            missing = isinstance(exc, FileNotFoundError)
            code = EXIT_NOT_FOUND if missing else EXIT_NOT_EXECUTABLE
            error = (
                _not_found(args[0]) if missing else _not_executable(args[0], "permission denied")
            )
            if check:
                raise error from None
            logger.error("%s", error.message)
            return CommandResult(masked, code)
        raise
    if runtime is not None:
        with runtime.lock:
            runtime.children.add(proc)
            runtime.starting -= 1
            pending = runtime.signalled
        if pending is not None:  # it came while the program was starting: pass it on now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, pending)
    try:
        timed_out = _relay(
            proc,
            out=Masker(captured.extend if capture else out_sink),
            err=Masker(err_sink),
            data=input.encode() if isinstance(input, str) else input,
            timeout=timeout,
        )
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        if runtime is not None:
            with runtime.lock:
                runtime.children.discard(proc)
    if runtime is not None and runtime.signalled is not None:
        raise _Interrupted(runtime.signalled)
    result = CommandResult(masked, proc.returncode, captured.decode("utf-8", "replace"))
    if timed_out:
        raise StepkitError(f"{args[0]} did not finish within {timeout:g} s; it was killed")
    if check and result.returncode != 0:
        if result.returncode < 0:
            name = signal.Signals(-result.returncode).name
            message = f"{args[0]} was killed by {name} (exit {result.exit_code})"
        else:
            message = f"{args[0]} exited {result.returncode}"
        error = CommandError(
            message, argv=[shown], returncode=result.exit_code, output=result.stdout
        )
        error.exit_code = result.exit_code
        raise error
    return result


def _feed_stdin(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.close()


def _relay(
    proc: subprocess.Popen[bytes],
    *,
    out: Masker,
    err: Masker,
    data: bytes | None,
    timeout: float | None,
) -> bool:
    """Relay the child's stdout and stderr through their maskers until both close; True on timeout."""
    assert proc.stdout is not None and proc.stderr is not None
    if data is not None:
        threading.Thread(target=_feed_stdin, args=(proc, data), daemon=True).start()
    maskers = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    last_read = dict.fromkeys(maskers, time.monotonic())
    selector = selectors.DefaultSelector()
    for fd in maskers:
        selector.register(fd, selectors.EVENT_READ)
    deadline = None if timeout is None else time.monotonic() + timeout
    exited_at: float | None = None
    timed_out = False
    try:
        while selector.get_map():
            wait = IDLE_FLUSH
            if deadline is not None and not timed_out:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            for key, _ in selector.select(wait):
                fd = int(key.fd)
                chunk = os.read(fd, _READ)
                if not chunk:
                    selector.unregister(fd)
                    maskers[fd].close()
                    continue
                maskers[fd].feed(chunk)
                last_read[fd] = time.monotonic()
            now = time.monotonic()
            for fd, masker in maskers.items():
                if masker.pending and now - last_read[fd] >= IDLE_FLUSH:
                    masker.flush()  # a prompt or a progress line: show it, minus a secret's start
            if deadline is not None and not timed_out and now >= deadline:
                timed_out = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is not None:
                exited_at = exited_at if exited_at is not None else now
                # Something the program started in the background still holds the pipes.
                if now - exited_at >= LINGER:
                    break
    finally:
        selector.close()
        for masker in maskers.values():
            masker.close()
        proc.stdout.close()
        proc.stderr.close()
    proc.wait()
    return timed_out


def exec_tool(
    argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str | None] | None = None
) -> NoReturn:
    """Replace the builder with the program, for a pure pass-through builder.

    The results set so far are written first and the output flushed; the program's own
    output is then NOT masked (nothing is left to relay it). A program that is not there:
    one line naming it, exit 127. Under stepkit.testing.run_builder the program runs as with
    run(check=False) and the builder exits with its exit code.
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("exec_tool(): empty argv")
    environ = _child_env(env)
    program = args[0] if "/" in args[0] else shutil.which(args[0], path=environ.get("PATH"))
    if program is None or not os.path.exists(program):
        raise _not_found(args[0])
    runtime = _current()
    if runtime is not None and not runtime.can_exec:
        result = run(args, check=False, env=env)
        raise _Failure("", result.exit_code) if result.exit_code else SystemExit(0)
    _logger().info("$ exec %s", _shown(args))
    if runtime is not None:
        runtime.write_results()
        runtime.flush_output()
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        os.execve(program, args, environ)  # noqa: S606 -- the point: the tool takes over
    except OSError as exc:
        raise _not_executable(args[0], exc.strerror or "cannot execute") from None


# -- the builder ----------------------------------------------------------------------------


class Builder:
    """A builder: call it to parse sys.argv and the environment, run, and exit.

    `main(argv)` does the same and returns the exit code instead (for embedding: the
    `stepkit` command runs its own builders that way).
    """

    def __init__(
        self,
        fn: BuilderFunction,
        *,
        name: str,
        help: str,
        params: Sequence[Param],
        results: Sequence[Result],
    ) -> None:
        check_declarations(params, results)
        self.fn = fn
        self.name = name
        self.help = help
        self.params = tuple(params)
        self.results = tuple(results)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self) -> NoReturn:
        sys.exit(self.main())

    def __repr__(self) -> str:
        return f"<builder {self.name}>"

    def command(self, prog_name: str | None = None) -> Any:
        """The click command that parses this builder's flags (help and usage included)."""
        import click

        from stepkit.clickutil import CONTEXT_SETTINGS, GoCommand, go_flag_option, result_options

        def callback(**values: Any) -> dict[str, Any]:
            return values

        epilog = ""
        if self.results:
            width = max(len(r.name) for r in self.results)
            lines = [f"  {r.name.ljust(width)}  {r.help}".rstrip() for r in self.results]
            epilog = "\b\nResults:\n" + "\n".join(lines)
        options: list[click.Parameter] = []
        for param in self.params:
            extra: dict[str, Any] = {}
            if param.type is bool:
                extra = {"is_flag": False, "flag_value": "true"}
            options.append(
                click.Option(
                    [f"-{param.name}", f"--{param.name}", param.attr],
                    multiple=True,
                    type=click.STRING,
                    metavar=param.shown_metavar,
                    help=param.describe(),
                    **extra,
                )
            )

        class BuilderCommand(GoCommand):
            def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
                # click reads `-v=x` of a one-letter option as the value "=x"; Go reads "x".
                short = {f"-{p.name}" for p in params if len(p.name) == 1}
                takes_value = {
                    name
                    for option in self.get_params(ctx)
                    if isinstance(option, click.Option)
                    and not option.is_flag
                    and not getattr(option, "_flag_needs_value", False)
                    for name in option.opts
                }
                out: list[str] = []
                value_next = False
                for arg in args:
                    name = arg.split("=", 1)[0]
                    if not value_next and name in short and "=" in arg:
                        arg = "-" + arg
                    value_next = not value_next and "=" not in arg and name in takes_value
                    out.append(arg)
                return super().parse_args(ctx, out)

        params = self.params
        command = BuilderCommand(
            prog_name or self.name,
            callback=callback,
            params=options,
            help=self.help,
            epilog=epilog,
            context_settings=CONTEXT_SETTINGS,
        )
        command.params.append(
            click.Option(
                ["-workspace", "--workspace", "builder_workspace"],
                envvar="STEPKIT_WORKSPACE",
                show_envvar=True,
                metavar="DIR",
                help="The workspace: Path params are relative to it, programs run in it. "
                "[default: the working directory, /workspace in a pod]",
            )
        )
        command.params.append(
            click.Option(
                ["-log-format", "--log-format", "builder_log_format"],
                type=click.Choice(log.FORMATS),
                envvar="STEPKIT_LOG_FORMAT",
                show_envvar=True,
                default="text",
                show_default=True,
                help="Log lines as plain text or as JSON objects (level, time, logger, message).",
            )
        )

        @go_flag_option(
            "debug",
            envvar="STEPKIT_DEBUG",
            help="Log debug lines and show tracebacks of errors.",
        )
        @result_options("the results")
        def holder() -> None:
            pass

        command.params.extend(getattr(holder, "__click_params__", [])[::-1])
        for option in command.params:
            if option.name == "debug":
                option.name = "builder_debug"
            elif option.name == "terminationmessagepath":
                option.name = "builder_termination"
            elif option.name == "results_dir":
                option.name = "builder_results_dir"
        return command

    def main(self, argv: Sequence[str] | None = None, *, prog_name: str | None = None) -> int:
        """Parse argv (default sys.argv[1:]) and the environment, run the builder, return its exit code."""
        args = list(sys.argv[1:] if argv is None else argv)
        return self._main(
            args,
            prog_name=prog_name or self.name,
            out=None,
            err=None,
            tekton_dir=contract.tekton_results_dir(),
            can_exec=True,
        )

    def _main(
        self,
        args: list[str],
        *,
        prog_name: str,
        out: Sink | None,
        err: Sink | None,
        tekton_dir: str | None,
        can_exec: bool,
    ) -> int:
        with _Runtime(self, out=out, err=err, tekton_dir=tekton_dir, can_exec=can_exec) as rt:
            return self._execute(rt, args, prog_name)

    def _execute(self, rt: _Runtime, args: list[str], prog_name: str) -> int:
        import click

        try:
            values = self.command(prog_name).main(
                args=args, prog_name=prog_name, standalone_mode=False
            )
        except click.exceptions.Exit as exc:
            return int(exc.exit_code)
        except click.ClickException as exc:
            fmt = os.environ.get("STEPKIT_LOG_FORMAT", "text")
            log.setup(
                self.name,
                fmt if fmt in log.FORMATS else "text",
                stream=sys.stderr,
                prefix=prog_name,
            )
            hint = f" (see '{prog_name} --help')" if isinstance(exc, click.UsageError) else ""
            logging.getLogger(self.name).error("%s%s", exc.format_message(), hint)
            return EXIT_USAGE
        except click.exceptions.Abort:
            return EXIT_INTERRUPTED
        if not isinstance(values, dict):
            return 0  # --help and the like
        rt.debug = bool(values.pop("builder_debug"))
        fmt = values.pop("builder_log_format")
        log.setup(self.name, fmt, rt.debug, stream=sys.stderr, prefix=prog_name)
        rt.termination_path = values.pop("builder_termination")
        rt.results_dir = values.pop("builder_results_dir")
        workspace = values.pop("builder_workspace")
        code = 0
        try:
            rt.install_signals()
            if workspace:
                rt.workspace = _workspace(workspace)
                os.chdir(rt.workspace)
            _check_home(rt.logger)
            resolved = {
                p.attr: resolve(p, values[p.attr], os.environ, rt.workspace) for p in self.params
            }
            outcome = self.fn(Context(rt, Params(resolved, self.params)))
            if isinstance(outcome, int) and not isinstance(outcome, bool):
                code = outcome
        except _Interrupted as exc:
            code = 128 + exc.signum
            rt.logger.error("interrupted by %s", signal.Signals(exc.signum).name)
        except _Failure as exc:
            code = exc.exit_code
            if exc.message:
                rt.logger.error("%s", exc.message)
        except StepkitError as exc:
            code = exc.exit_code
            self._error(rt, exc.message, exc)
        except SystemExit as exc:
            code = _system_exit_code(exc, rt.logger)
        except KeyboardInterrupt as exc:
            code = EXIT_INTERRUPTED
            self._error(rt, "interrupted", exc)
        except Exception as exc:
            code = EXIT_FAILURE
            self._error(rt, f"internal error: {type(exc).__name__}: {exc}", exc)
        return self._finish(rt, code)

    def _error(self, rt: _Runtime, message: str, exc: BaseException) -> None:
        if rt.debug:
            rt.logger.error("%s", message, exc_info=exc)
        else:
            rt.logger.error("%s", message)

    def _finish(self, rt: _Runtime, code: int) -> int:
        # From here a signal is only noted: the results must not be cut short.
        rt.finishing = True
        try:
            rt.write_results()
        except StepkitError as exc:
            rt.logger.error("cannot write the results: %s", exc.message)
            code = code or exc.exit_code
        except OSError as exc:
            rt.logger.error("cannot write the results: %s", exc.strerror)
            code = code or EXIT_FAILURE
        if code == 0:
            missing = [r.name for r in self.results if r.name not in rt.results and not r.optional]
            for name in missing:
                rt.logger.warning("result %r was declared but never set", name)
        if code == 0 and rt.signalled is not None:
            rt.logger.error("interrupted by %s", signal.Signals(rt.signalled).name)
            code = 128 + rt.signalled
        return code


def _system_exit_code(exc: SystemExit, logger: logging.Logger) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    logger.error("%s", exc.code)
    return EXIT_FAILURE


def _workspace(value: str) -> Path:
    path = Path(os.path.abspath(value))
    if not path.is_dir():
        raise InputError(f"--workspace: {value!r} is not a directory")
    return path


def _check_home(logger: logging.Logger) -> None:
    """Warn when $HOME can't be written: git, docker and ssh keep their files there."""
    home = os.environ.get("HOME")
    if home and not (os.path.isdir(home) and os.access(home, os.W_OK | os.X_OK)):
        logger.warning(
            "HOME=%s is not writable by UID %d: tools that keep files there will fail",
            home,
            os.getuid(),
        )


def builder(
    *,
    name: str | None = None,
    help: str = "",
    params: Sequence[Param] = (),
    results: Sequence[Result] = (),
) -> Callable[[BuilderFunction], Builder]:
    """Make a function `fn(ctx: Context) -> None` a builder (see the module's documentation).

    name: the builder's name in help, log lines and its logger (default: the function's, with
    `_` as `-`). The function may return an int: the exit code.
    """

    def decorate(fn: BuilderFunction) -> Builder:
        return Builder(
            fn,
            name=name or fn.__name__.replace("_", "-"),
            help=help or (fn.__doc__ or "").strip(),
            params=params,
            results=results,
        )

    return decorate
