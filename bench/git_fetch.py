"""git-init against plain git on a local server with a repository of real size: median ratios, bytes received."""

from __future__ import annotations

import argparse
import contextlib
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

from tests.gitrepos import make_big_repo, set_server_caps  # noqa: E402
from tests.peers import LOOPBACK, FlakyProxy, GitDaemon  # noqa: E402

STEPKIT = str(Path(sys.executable).with_name("stepkit"))


class CountingProxy(FlakyProxy):
    """The test suite's loopback proxy, counting the bytes each connection sends the client."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.received = 0
        self._count_lock = threading.Lock()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        # The server's side of a connection is the socket whose peer is the target port.
        from_server = src.getpeername()[1] == self.target_port
        try:
            while data := src.recv(65536):
                if from_server:
                    with self._count_lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@dataclass
class Row:
    name: str
    target: float | None
    base: list[float] = field(default_factory=list)
    cand: list[float] = field(default_factory=list)
    base_bytes: list[int] = field(default_factory=list)
    cand_bytes: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(c / b for b, c in zip(self.base, self.cand, strict=True))


def timed(steps: list[list[str]], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    for argv in steps:
        subprocess.run(argv, env=env, cwd=cwd, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def measure(
    row: Row,
    proxy: CountingProxy,
    work: Path,
    env: dict[str, str],
    baseline: Callable[[Path], list[list[str]]],
    candidate: Callable[[Path], list[list[str]]],
    runs: int,
) -> None:
    for i in range(runs + 1):  # the first pair warms the page cache and is not counted
        for side, make, times, sizes in (
            ("base", baseline, row.base, row.base_bytes),
            ("cand", candidate, row.cand, row.cand_bytes),
        ):
            dest = work / f"{side}-{i}"
            proxy.received = 0
            seconds = timed(make(dest), env, work)
            if i:
                times.append(seconds)
                sizes.append(proxy.received)
            shutil.rmtree(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--mib", type=int, default=40)
    # 40 files rewritten in turn: the tip holds 40 of 300 versions, ~5 MiB of 40, as a real
    # repository's tip is a fraction of its history.
    parser.add_argument("--files", type=int, default=40)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="stepkit-bench-git-"))
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
        rows: list[Row] = []
        with GitDaemon(srv) as daemon, CountingProxy(LOOPBACK, daemon.port) as proxy:
            url = f"git://{LOOPBACK}:{proxy.port}/big.git"

            def stepkit(rev: str) -> Callable[[Path], list[list[str]]]:
                return lambda d: [
                    [STEPKIT, "git-init", f"-url={url}", f"-revision={rev}", f"-path={d.name}"]
                ]

            tip = Row("branch tip: git-init vs init+fetch --depth=1+checkout", 1.10)
            measure(
                tip,
                proxy,
                work,
                env,
                lambda d: [
                    ["git", "init", "-q", str(d)],
                    ["git", "-C", str(d), "fetch", "-q", "--depth=1", url, "main"],
                    ["git", "-C", str(d), "checkout", "-q", "FETCH_HEAD"],
                ],
                stepkit("main"),
                args.runs,
            )
            rows.append(tip)
            full = [
                lambda d: [
                    ["git", "clone", "-q", url, str(d)],
                    ["git", "-C", str(d), "checkout", "-q", shas["old"]],
                ]
            ][0]
            # The server has SHA-in-want off and filters on. git's default protocol (v2)
            # serves any object regardless, so git-init fetches the one commit it needs.
            old_v2 = Row("old commit, no SHA-in-want: git-init vs clone+checkout", 0.5)
            measure(old_v2, proxy, work, env, full, stepkit(shas["old"]), args.runs)
            rows.append(old_v2)
            # Both sides speaking v0: the server refuses the commit by id, and would refuse a
            # partial clone's blobs by id as well, so git-init fetches all history too.
            old_v0 = Row("  the same, both sides speaking protocol v0", None)
            measure(old_v0, proxy, work, env_v0, full, stepkit(shas["old"]), args.runs)
            rows.append(old_v0)
        print()
        header = f"{'benchmark':<62} {'base s':>7} {'cand s':>7} {'ratio':>6} {'target':>7}  {'MiB recv base/cand':>19}"
        print(header)
        print("-" * len(header))
        for r in rows:
            target = f"<={r.target}" if r.target else "-"
            verdict = "" if r.target is None else ("ok" if r.ratio <= r.target else "OVER TARGET")
            mib = f"{statistics.median(r.base_bytes) / 2**20:8.1f} / {statistics.median(r.cand_bytes) / 2**20:<8.1f}"
            print(
                f"{r.name:<62} {statistics.median(r.base):7.2f} {statistics.median(r.cand):7.2f} "
                f"{r.ratio:6.2f} {target:>7}  {mib}  {verdict}"
            )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
