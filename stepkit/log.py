"""Logging to stderr for every helper: human lines or JSON lines, secrets and control bytes removed."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from stepkit.secret import redact

FORMATS = ("text", "json")
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}
_CONTROL.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})


def printable(text: str) -> str:
    """Escape control characters so a value can't rewrite the terminal or forge a log line."""
    out = text.translate(_CONTROL)
    # isascii() is one C pass; the C1 check below walks the text in Python, char by char.
    if not out.isascii() and any(0x80 <= ord(ch) <= 0x9F for ch in out):
        out = "".join(f"\\x{ord(ch):02x}" if 0x80 <= ord(ch) <= 0x9F else ch for ch in out)
    return out


def clean(text: str) -> str:
    """What any line of output must go through: secrets removed, control characters escaped."""
    return printable(redact(text))


class _TextFormatter(logging.Formatter):
    def __init__(self, command: str, prefix: str | None = None) -> None:
        super().__init__()
        self.command = command
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
            lines = [clean(line) for line in message.splitlines()]
            body = "\n".join(lines)
        else:
            body = clean(message)
        level = record.levelname.lower()
        prefix = self.prefix or (f"stepkit {self.command}" if self.command else "stepkit")
        if record.levelno >= logging.WARNING:
            return f"{prefix}: {level}: {body}"
        return f"{prefix}: {body}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        if record.exc_info:
            message += "\n" + redact(self.formatException(record.exc_info))
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        return json.dumps(entry, ensure_ascii=True)


def setup(
    command: str,
    fmt: str = "text",
    debug: bool = False,
    stream: TextIO | None = None,
    *,
    prefix: str | None = None,
) -> None:
    """Install the one stderr handler; only entry points call this (modules just log).

    Text lines start with `prefix:` (default `stepkit COMMAND:`; a builder's own name).
    """
    if fmt not in FORMATS:
        from stepkit.errors import InputError

        raise InputError(f"--log-format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter(command, prefix))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Third-party libraries log request details at DEBUG; only ours may speak below WARNING.
    for noisy in ("paramiko", "git", "urllib3", "google", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def debug_enabled() -> bool:
    return logging.getLogger().level <= logging.DEBUG and bool(logging.getLogger().handlers)
