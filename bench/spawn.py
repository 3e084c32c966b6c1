"""Timing child processes from spawn to reap, ABAB against a baseline: stdlib only.

bench/startup.py imports it on the host. bench/images.py mounts bench/ into an image and runs
this file there with the image's own python, so that the timing happens inside one container
run (a `buildah run` alone costs hundreds of ms):

    python spawn.py --homes DIR --runs 30 --warmup 3 \\
        --baseline '["/opt/stepkit/bin/python", "-c", "pass"]' \\
        --candidate '["/opt/stepkit/bin/stepkit", "nop"]'

It prints one JSON object on stdout: both argvs, every sample, the per-pair ratios, the peak
RSS of separate untimed runs, and `error` ("" when the candidate ran and exited 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

DEVNULL_ACTIONS = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
]

# Untimed runs of each command for its peak memory.
RSS_RUNS = 5


@dataclass(frozen=True)
class Sample:
    """One child process: wall time from spawn to reaped, exit code, peak RSS in KiB."""

    seconds: float
    exit_code: int
    maxrss_kib: int


def spawn(argv: Sequence[str], env: dict[str, str], *, quiet: bool = True) -> Sample:
    """Run one child exactly as an entrypoint would (the kernel reads the shebang), timed to the reap."""
    actions = DEVNULL_ACTIONS if quiet else []
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - start
    return Sample(elapsed, os.waitstatus_to_exitcode(status), usage.ru_maxrss)


class Homes:
    """Fresh empty HOME directories, made before the clock starts and removed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def new(self) -> Path:
        self.count += 1
        home = self.root / f"home{self.count}"
        home.mkdir(mode=0o700)
        return home


def alternate(
    baseline: Sequence[str],
    candidate: Sequence[str],
    env: dict[str, str],
    homes: Homes,
    *,
    runs: int,
    warmup: int,
) -> tuple[list[Sample], list[Sample]]:
    """`warmup` unmeasured pairs, then `runs` measured ones; each child gets a fresh HOME."""
    base_samples: list[Sample] = []
    cand_samples: list[Sample] = []
    # Alternate baseline and candidate (ABAB...) so drift on a shared machine hits both alike.
    for i in range(warmup + runs):
        base = spawn(baseline, {**env, "HOME": str(homes.new())})
        cand = spawn(candidate, {**env, "HOME": str(homes.new())})
        if i >= warmup:
            base_samples.append(base)
            cand_samples.append(cand)
    return base_samples, cand_samples


def check_run(argv: Sequence[str], env: dict[str, str]) -> str:
    """Run once with the output kept: "" when it exits 0, else its exit code and last lines."""
    proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return ""
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return f"exit {proc.returncode}: {' | '.join(tail)}"


# Run by a bare interpreter (-I -S): fork the command, reap it, print its ru_maxrss and exit code.
_FORK_AND_REPORT = """\
import os, sys
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def forked_peak_rss_kib(argv: Sequence[str], env: dict[str, str]) -> int:
    """Peak memory of one untimed run, in KiB; 0 when it fails.

    The kernel carries the old address space's high-water mark into ru_maxrss across exec.
    A child that posix_spawn (vfork) starts shares this interpreter's address space, so it
    would report at least this process's peak. Here a bare interpreter of its own forks the
    command: the child's mark starts at what fork copied of that small process (a few MiB,
    forked_floor_kib measures it with /bin/true), and a command that peaks above that floor
    reports its own peak. GNU time does the same, but an image need not have it.
    """
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _FORK_AND_REPORT, *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) != 2 or fields[1] != "0":
        return 0
    return int(fields[0])


def forked_floor_kib(env: dict[str, str]) -> int:
    """The least forked_peak_rss_kib can report here: what it reports for /bin/true."""
    return max(forked_peak_rss_kib(["/bin/true"], env) for _ in range(RSS_RUNS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One ABAB series, as JSON on stdout.")
    parser.add_argument("--baseline", type=json.loads, required=True, help="argv as JSON")
    parser.add_argument("--candidate", type=json.loads, required=True, help="argv as JSON")
    parser.add_argument("--homes", type=Path, required=True, help="writable dir for HOMEs")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    baseline: list[str] = args.baseline
    candidate: list[str] = args.candidate
    # The container's environment as the image declares it: what the entrypoint gets in a pod.
    env = dict(os.environ)
    homes = Homes(args.homes)

    report: dict[str, object] = {
        "baseline": baseline,
        "candidate": candidate,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "uid": os.getuid(),
        "gid": os.getgid(),
    }
    error = check_run(baseline, {**env, "HOME": str(homes.new())})
    error = error and f"baseline: {error}"
    error = error or check_run(candidate, {**env, "HOME": str(homes.new())})
    if not error:
        base, cand = alternate(baseline, candidate, env, homes, runs=args.runs, warmup=args.warmup)
        failures = sum(1 for s in cand if s.exit_code != 0)
        if failures:
            error = f"{failures} of {args.runs} runs exited non-zero"
        report.update(
            baseline_samples=[asdict(s) for s in base],
            candidate_samples=[asdict(s) for s in cand],
            ratios=[c.seconds / b.seconds for b, c in zip(base, cand, strict=True)],
            baseline_rss_kib=[
                forked_peak_rss_kib(baseline, {**env, "HOME": str(homes.new())})
                for _ in range(RSS_RUNS)
            ],
            candidate_rss_kib=[
                forked_peak_rss_kib(candidate, {**env, "HOME": str(homes.new())})
                for _ in range(RSS_RUNS)
            ],
            rss_floor_kib=forked_floor_kib(env),
        )
    report["error"] = error
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
