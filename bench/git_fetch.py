"""git-init against plain git on a local server with a repository of real size: median ratios, bytes received.

Every row runs twice: on plain loopback (0 ms) and behind a proxy that delays every chunk
20 ms each way (tests.peers.FlakyProxy(latency=0.02)), as a real server is that far away.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from startup import peak_rss_kib, plain_venv  # noqa: E402

from tests.gitrepos import make_big_repo, set_server_caps  # noqa: E402
from tests.peers import LOOPBACK, FlakyProxy, GitDaemon  # noqa: E402

# A step list: each argv, and whether it may fail (Knative's path runs commands that do).
Steps = list[tuple[list[str], bool]]
LATENCIES = (0.0, 0.02)
RSS_RUNS = 2


class _Counted:
    """A socket's recv, counting what it returns into the proxy's total."""

    def __init__(self, sock: socket.socket, proxy: CountingProxy) -> None:
        self._sock = sock
        self._proxy = proxy

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        with self._proxy.count_lock:
            self._proxy.received += len(data)
        return data


class CountingProxy(FlakyProxy):
    """The test suite's proxy (with its latency), counting the bytes the server sends the client."""

    def __init__(self, host: str, port: int, latency: float) -> None:
        super().__init__(host, port, latency=latency)
        self.received = 0
        self.count_lock = threading.Lock()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        # The server's side of a connection is the socket whose peer is the target port.
        if src.getpeername()[1] == self.target_port:
            src = _Counted(src, self)  # type: ignore[assignment]
        super()._pump(src, dst)


@dataclass
class Row:
    name: str
    latency: float
    target: float | None
    bytes_target: float | None = None
    base: list[float] = field(default_factory=list)
    cand: list[float] = field(default_factory=list)
    base_bytes: list[int] = field(default_factory=list)
    cand_bytes: list[int] = field(default_factory=list)
    base_cpu: list[float] = field(default_factory=list)
    cand_cpu: list[float] = field(default_factory=list)
    base_rss_kib: int = 0
    cand_rss_kib: int = 0

    @property
    def ratios(self) -> list[float]:
        return [c / b for b, c in zip(self.base, self.cand, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds (user + system, the whole process tree): steadier than wall time when
        other work shares the machine."""
        return statistics.median(c / b for b, c in zip(self.base_cpu, self.cand_cpu, strict=True))

    @property
    def iqr(self) -> tuple[float, float]:
        r = self.ratios
        if len(r) < 2:
            return (r[0], r[0])
        q = statistics.quantiles(r, n=4)
        return (q[0], q[2])

    @property
    def bytes_ratio(self) -> float:
        return statistics.median(self.cand_bytes) / max(1, statistics.median(self.base_bytes))

    @property
    def over(self) -> bool:
        return (self.target is not None and self.ratio > self.target) or (
            self.bytes_target is not None and self.bytes_ratio > self.bytes_target
        )


def timed(steps: Steps, env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system of every process, reaped) of the steps."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for argv, may_fail in steps:
        subprocess.run(argv, env=env, cwd=cwd, check=not may_fail, capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def peak_rss(steps: Steps, env: dict[str, str], cwd: Path) -> int:
    """The largest peak RSS of any step (GNU time), over untimed runs of their own."""
    peak = 0
    for argv, _ in steps:
        old = Path.cwd()
        os.chdir(cwd)
        try:
            peak = max(peak, peak_rss_kib(argv, env))
        finally:
            os.chdir(old)
    return peak


def measure(
    row: Row,
    proxy: CountingProxy,
    work: Path,
    env: dict[str, str],
    baseline: Callable[[Path], Steps],
    candidate: Callable[[Path], Steps],
    runs: int,
) -> None:
    print(f"  {row.name} @ {row.latency * 1000:.0f} ms ...", flush=True)
    for i in range(runs + 1):  # the first pair warms the page cache and is not counted
        for side, make, times, cpus, sizes in (
            ("base", baseline, row.base, row.base_cpu, row.base_bytes),
            ("cand", candidate, row.cand, row.cand_cpu, row.cand_bytes),
        ):
            dest = work / f"{side}-{i}"
            proxy.received = 0
            seconds, cpu = timed(make(dest), env, work)
            if i:
                times.append(seconds)
                cpus.append(cpu)
                sizes.append(proxy.received)
            shutil.rmtree(dest, ignore_errors=True)
    for side, make in (("base", baseline), ("cand", candidate)):
        peaks = []
        for j in range(RSS_RUNS):
            dest = work / f"rss-{side}-{j}"
            peaks.append(peak_rss(make(dest), env, work))
            shutil.rmtree(dest, ignore_errors=True)
        setattr(row, f"{side}_rss_kib", max(peaks))


def render(rows: list[Row]) -> str:
    header = (
        f"{'benchmark':<58} {'ms':>3} {'base s':>7} {'cand s':>7} {'ratio':>6} {'IQR':>11} "
        f"{'target':>7} {'cpu':>5} {'MiB recv base/cand':>19} {'bytes':>6} {'RSS MiB b/c':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        target = f"<={r.target}" if r.target else "-"
        if r.bytes_target:
            target += f" B<={r.bytes_target}"
        verdict = "OVER TARGET" if r.over else ("ok" if r.target or r.bytes_target else "")
        lo, hi = r.iqr
        mib = (
            f"{statistics.median(r.base_bytes) / 2**20:8.2f} / "
            f"{statistics.median(r.cand_bytes) / 2**20:<8.2f}"
        )
        rss = f"{r.base_rss_kib / 1024:5.0f}/{r.cand_rss_kib / 1024:<5.0f}"
        lines.append(
            f"{r.name:<58} {r.latency * 1000:3.0f} {statistics.median(r.base):7.3f} "
            f"{statistics.median(r.cand):7.3f} {r.ratio:6.2f} {lo:5.2f}-{hi:<5.2f} {target:>7} "
            f"{r.cpu_ratio:5.2f} {mib} {r.bytes_ratio:6.3f} {rss:>12}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9, help="measured pairs per row")
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--mib", type=int, default=40)
    # 40 files rewritten in turn: the tip holds 40 of 300 versions, ~5 MiB of 40, as a real
    # repository's tip is a fraction of its history.
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument(
        "--venv",
        type=Path,
        default=None,
        help="measure the stepkit in this venv (default: a `pip install .` venv made in .bench/)",
    )
    parser.add_argument(
        "--only", default="", help="run only the rows whose name holds this text (tip, short, old)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every sample here")
    args = parser.parse_args(argv)
    if args.venv is None:
        print("installing this checkout (pip install ., not editable) into .bench/ ...", flush=True)
        bindir = plain_venv(ROOT / ".bench" / "venv-pip-current", None)
    else:
        bindir = args.venv.resolve() / "bin"
    stepkit_bin = str(bindir / "stepkit")
    work = Path(tempfile.mkdtemp(prefix="stepkit-bench-git-"))
    rows: list[Row] = []
    try:
        srv = work / "srv"
        print(
            f"building a repository: {args.commits} commits, ~{args.mib} MiB of history ...",
            flush=True,
        )
        shas = make_big_repo(srv / "big.git", commits=args.commits, mib=args.mib, files=args.files)
        set_server_caps(srv / "big.git", sha_in_want=False, filters=True)
        home = work / "home"
        home.mkdir()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "LC_ALL": "C",
        }
        v0 = work / "home-v0"
        v0.mkdir()
        # A v0 client is what meets "no SHA-in-want": protocol v2 servers hand out any object.
        (v0 / ".gitconfig").write_text("[protocol]\n\tversion = 0\n")
        env_v0 = {**env, "HOME": str(v0)}
        short = shas["old"][:7]
        with GitDaemon(srv) as daemon:
            for latency in LATENCIES:
                with CountingProxy(LOOPBACK, daemon.port, latency) as proxy:
                    url = f"git://{LOOPBACK}:{proxy.port}/big.git"

                    def stepkit(rev: str, url: str = url) -> Callable[[Path], Steps]:
                        return lambda d: [
                            (
                                [
                                    stepkit_bin,
                                    "git-init",
                                    f"-url={url}",
                                    f"-revision={rev}",
                                    f"-path={d.name}",
                                ],
                                False,
                            )
                        ]

                    def tip_base(d: Path, url: str = url) -> Steps:
                        return [
                            (["git", "init", "-q", str(d)], False),
                            (["git", "-C", str(d), "fetch", "-q", "--depth=1", url, "main"], False),
                            (["git", "-C", str(d), "checkout", "-q", "FETCH_HEAD"], False),
                        ]

                    def knative(d: Path, url: str = url) -> Steps:
                        # Knative's git-init for a revision that is no ref: the shallow fetch
                        # fails, so it pulls everything and checks the revision out.
                        git = ["git", "-C", str(d)]
                        return [
                            (["git", "init", "-q", str(d)], False),
                            ([*git, "remote", "add", "origin", url], False),
                            ([*git, "fetch", "-q", "--depth=1", "origin", short], True),
                            ([*git, "pull", "-q", "origin"], True),
                            ([*git, "checkout", "-q", short], False),
                        ]

                    def full(d: Path, url: str = url) -> Steps:
                        return [
                            (["git", "clone", "-q", url, str(d)], False),
                            (["git", "-C", str(d), "checkout", "-q", shas["old"]], False),
                        ]

                    plan: list[
                        tuple[Row, dict[str, str], Callable[[Path], Steps], Callable[[Path], Steps]]
                    ] = [
                        (
                            Row(
                                "branch tip: git-init vs init+fetch --depth=1+checkout",
                                latency,
                                1.10,
                            ),
                            env,
                            tip_base,
                            stepkit("main"),
                        ),
                        (
                            Row(
                                "short SHA (old commit): git-init vs Knative's path",
                                latency,
                                None,
                                0.2,
                            ),
                            env,
                            knative,
                            stepkit(short),
                        ),
                        # The server has SHA-in-want off and filters on. git's default
                        # protocol (v2) serves any object regardless, so git-init fetches the
                        # one commit it needs.
                        (
                            Row(
                                "old commit, no SHA-in-want: git-init vs clone+checkout",
                                latency,
                                0.5,
                            ),
                            env,
                            full,
                            stepkit(shas["old"]),
                        ),
                        # Both sides speaking v0: the server refuses the commit by id, and
                        # would refuse a partial clone's blobs by id as well, so git-init
                        # fetches all history too.
                        (
                            Row("  the same, both sides speaking protocol v0", latency, None),
                            env_v0,
                            full,
                            stepkit(shas["old"]),
                        ),
                    ]
                    for row, row_env, base, cand in plan:
                        if args.only and args.only not in row.name:
                            continue
                        measure(row, proxy, work, row_env, base, cand, args.runs)
                        rows.append(row)
        print()
        print(f"stepkit: {stepkit_bin}; {args.runs} pairs per row after one warm-up pair")
        print(render(rows))
        if args.json:
            args.json.write_text(
                json.dumps(
                    [
                        {
                            **r.__dict__,
                            "ratio": r.ratio,
                            "iqr": r.iqr,
                            "cpu_ratio": r.cpu_ratio,
                            "bytes_ratio": r.bytes_ratio,
                        }
                        for r in rows
                    ],
                    indent=2,
                )
            )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
