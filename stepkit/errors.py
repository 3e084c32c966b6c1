"""One exception root for every helper, and the exit codes it maps to (SPEC §0)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_INTERRUPTED = 130


class StepkitError(Exception):
    """A failure the user can act on; its message is one line and never holds a secret."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(StepkitError):
    """A flag, environment variable or secret is invalid; raised before anything is written."""

    exit_code = EXIT_USAGE


class DeniedError(StepkitError):
    """Permission or authentication was refused by the filesystem or a server."""

    exit_code = EXIT_DENIED


class CommandError(StepkitError):
    """A subprocess failed; carries its redacted command line, exit code and output."""

    def __init__(self, message: str, *, argv: list[str], returncode: int, output: str) -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.output = output
