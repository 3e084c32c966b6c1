"""The one way stepkit runs another program: argument lists, bounded time, redacted errors."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from stepkit.errors import CommandError
from stepkit.log import clean
from stepkit.secret import redact

log = logging.getLogger(__name__)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float | None = None,
    stdin: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell); on failure raise CommandError with redacted output.

    The child leads a process group of its own and has no controlling terminal: on a time-out
    the whole group is killed (git's transport helpers and ssh included, whose open pipes
    would otherwise keep us waiting), and no child can prompt on a terminal.
    """
    args = list(argv)
    shown = clean(" ".join(args))
    log.debug("running %s", shown)
    try:
        proc = subprocess.Popen(
            args,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CommandError(
            f"{args[0]} is not installed or not on PATH", argv=[shown], returncode=127, output=""
        ) from None
    data = stdin.encode() if stdin is not None else None
    try:
        raw_out, raw_err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _, raw_err = proc.communicate()
        raise CommandError(
            f"{args[0]} did not finish within {timeout:g} s",
            argv=[shown],
            returncode=-1,
            output=redact(_tail(_decode(raw_err))),
        ) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    out, err = _decode(raw_out), _decode(raw_err)
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        # Redacted, with its real line breaks (and carriage returns) kept for callers to
        # parse; escaping control characters is for whoever prints it.
        output = redact(_tail(err or out))
        last = _error_line(output)
        raise CommandError(
            f"{args[0]} exited {proc.returncode}: {clean(last)}",
            argv=[shown],
            returncode=proc.returncode,
            output=output,
        )
    return result


def _error_line(output: str) -> str:
    """The line that says what went wrong: the last `fatal:`/`error:` line (git and most
    tools print advice after it), else the last line."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.lstrip().lower().startswith(("fatal:", "error:"))]
    return (errors or lines or [""])[-1]


def _decode(data: bytes) -> str:
    """Bytes to text without newline translation: a '\\r' in git's -z output is data."""
    return data.decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
