"""nop (SPEC §5): the pod's last container; its start-up is its whole cost, so it imports nothing."""

from __future__ import annotations

import sys

USAGE = """\
Usage: stepkit nop [tekton_run_indefinitely]

  Print 'Build successful' and exit 0. With tekton_run_indefinitely, keep
  running until SIGTERM or SIGINT, then exit 0.
"""


def _wait_for_signal() -> None:
    import signal

    received: list[int] = []

    def _stop(signum: int, _frame: object) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not received:
        signal.pause()


def run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "-help"):
        sys.stdout.write(USAGE)
        return 0
    sys.stdout.write("Build successful\n")
    sys.stdout.flush()
    if argv and argv[0] == "tekton_run_indefinitely":
        _wait_for_signal()
    return 0
