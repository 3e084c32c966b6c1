"""The one way stepkit runs another program: argument lists, bounded time, redacted errors."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from stepkit.errors import CommandError
from stepkit.log import clean

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
    """Run argv (never through a shell); on failure raise CommandError with redacted output."""
    args = list(argv)
    shown = clean(" ".join(args))
    log.debug("running %s", shown)
    try:
        proc = subprocess.run(
            args,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise CommandError(
            f"{args[0]} is not installed or not on PATH", argv=[shown], returncode=127, output=""
        ) from None
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr if isinstance(exc.stderr, str) else ""
        raise CommandError(
            f"{args[0]} did not finish within {timeout:g} s",
            argv=[shown],
            returncode=-1,
            output=clean(_tail(out)),
        ) from None
    if check and proc.returncode != 0:
        output = clean(_tail(proc.stderr or proc.stdout))
        raise CommandError(
            f"{args[0]} exited {proc.returncode}: {output.splitlines()[-1] if output else ''}",
            argv=[shown],
            returncode=proc.returncode,
            output=output,
        )
    return proc
