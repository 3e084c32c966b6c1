"""gcs-fetcher against what a user would otherwise run, on fake-gcs-server near and far: median ratios.

Rows, each the median of per-pair ratios over ABAB pairs after one warm-up pair, with the
interquartile range of those ratios and the median peak RSS of each side:
- a manifest of 2,000 files of 4 KiB, at 0 ms (plain loopback) and at 20 ms each way
  (tests.peers.FlakyProxy between every client and the server): speed-up of
  `stepkit gcs-fetcher --type Manifest` over a sequential loop of google-cloud-storage
  downloads (target >= 5 at 20 ms, reported at 0 ms), and over `transfer_manager.download_many_to_path` with its
  defaults (target >= 1.5);
- a tar.gz of a source tree (~50 MB), on loopback: time of stepkit's safe extraction over
  `tar xzf` of the same file (target <= 1.5), and of the whole `--type TarGzArchive` fetch
  over a google-cloud-storage download followed by `tar xzf` (target <= 1.2).
Every side is a fresh process (interpreter and imports included) of a venv with this
checkout installed as a user installs it (`pip install '.[gcs]'`, not editable, made in
.bench/venv-gcs), writing into a fresh directory that is removed before the next run.
Behind the proxy, fake-gcs-server's -public-host is the proxy's address, so every link it
hands out in JSON leads through the proxy too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gcspeers import FakeGcs, client_env  # noqa: E402
from tests.peers import LOOPBACK, FlakyProxy  # noqa: E402

BUCKET = "stepkit-bench"
LATENCIES = (0.0, 0.02)

# The baselines, as a user would write them with google-cloud-storage. The sequential loop
# fetches the generation each entry names, as the fetcher does; transfer_manager takes names
# only.
_CLIENT = (
    "from google.auth.credentials import AnonymousCredentials\n"
    "from google.cloud import storage\n"
    "client = storage.Client(project='stepkit-bench', credentials=AnonymousCredentials())\n"
)
SEQUENTIAL = _CLIENT + (
    "import json, os, sys\n"
    "bucket, dest = client.bucket(sys.argv[1]), sys.argv[2]\n"
    "manifest = json.loads(bucket.blob('manifest.json').download_as_bytes())\n"
    "for path, entry in manifest.items():\n"
    "    name, _, generation = entry['sourceUrl'].split('/', 3)[3].partition('#')\n"
    "    target = os.path.join(dest, path)\n"
    "    os.makedirs(os.path.dirname(target), exist_ok=True)\n"
    "    bucket.blob(name, generation=int(generation)).download_to_filename(target)\n"
)
TRANSFER_MANAGER = _CLIENT + (
    "import sys\n"
    "from google.cloud.storage import transfer_manager\n"
    "bucket = client.bucket(sys.argv[1])\n"
    "names = [b.name for b in client.list_blobs(sys.argv[1], prefix='tree/')]\n"
    "results = transfer_manager.download_many_to_path(\n"
    "    bucket, [n.removeprefix('tree/') for n in names], blob_name_prefix='tree/',\n"
    "    destination_directory=sys.argv[2], create_directories=True, raise_exception=True)\n"
)
DOWNLOAD_THEN_TAR = _CLIENT + (
    "import subprocess, sys\n"
    "archive = sys.argv[2] + '.tgz'\n"
    "client.bucket(sys.argv[1]).blob('src.tgz').download_to_filename(archive)\n"
    "subprocess.run(['tar', 'xzf', archive, '-C', sys.argv[2]], check=True)\n"
)
EXTRACT = (
    "import sys\nfrom pathlib import Path\nfrom stepkit.archive import extract\n"
    "extract(Path(sys.argv[1]), Path(sys.argv[2]))\n"
)


@dataclass
class Row:
    name: str
    target: float | None  # None: reported, no target
    faster: bool  # True: the ratio is baseline time / candidate time, to be >= target
    base: list[float] = field(default_factory=list)
    cand: list[float] = field(default_factory=list)
    base_rss_kib: list[int] = field(default_factory=list)
    cand_rss_kib: list[int] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        pairs = zip(self.base, self.cand, strict=True)
        return [(b / c) if self.faster else (c / b) for b, c in pairs]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def iqr(self) -> tuple[float, float]:
        ratios = self.ratios
        if len(ratios) < 2:
            return ratios[0], ratios[0]
        q = statistics.quantiles(ratios, n=4)
        return q[0], q[2]

    @property
    def ok(self) -> bool:
        if self.target is None:
            return True
        return self.ratio >= self.target if self.faster else self.ratio <= self.target


def child_env() -> dict[str, str]:
    """The parent's environment without anything that would steer Python or stepkit."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "STEPKIT_")) and k != "VIRTUAL_ENV"
    }


Steps = Callable[[Path], list[list[str]]]


def timed(steps: list[list[str]], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Seconds for the steps, and the largest peak RSS (KiB) of any of them.

    Each step runs under GNU time, a small process, so its child's ru_maxrss is the
    command's own (a child of this interpreter would start with our high-water mark).
    """
    start = time.perf_counter()
    peak = 0
    for argv in steps:
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as out:
            proc = subprocess.run(
                ["/usr/bin/time", "-f", "%M", "-o", out.name, *argv],
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=900,
            )
            lines = out.read().strip().splitlines()
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {proc.stderr[-2000:]}")
        if lines and lines[-1].isdigit():
            peak = max(peak, int(lines[-1]))
    return time.perf_counter() - start, peak


def measure(
    row: Row, work: Path, env: dict[str, str], baseline: Steps, candidate: Steps, runs: int
) -> None:
    print(f"  {row.name} ...", flush=True)
    for i in range(runs + 1):  # the first pair warms caches and is not counted
        for make, times, rss in (
            (baseline, row.base, row.base_rss_kib),
            (candidate, row.cand, row.cand_rss_kib),
        ):
            dest = work / f"out-{i}"
            dest.mkdir()
            seconds, peak = timed(make(dest), env, work)
            if i:
                times.append(seconds)
                rss.append(peak)
            shutil.rmtree(dest)


def source_tree(root: Path, mib: int, seed: int = 7) -> None:
    """A source-like tree: many small text files that compress ~4:1, some incompressible assets."""
    rnd = random.Random(seed)
    words = [f"{w}_{i}" for i, w in enumerate(["def", "return", "self", "value", "import"] * 400)]
    text_budget, written, index = mib * 2**20 * 3 // 4, 0, 0
    while written < text_budget:
        path = root / f"pkg{index % 40}" / f"mod{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = " ".join(rnd.choices(words, k=rnd.randint(200, 4000))).encode()
        path.write_bytes(body)
        written, index = written + len(body), index + 1
    assets = root / "assets"
    assets.mkdir()
    for n in range(mib // 4):
        (assets / f"blob{n}.bin").write_bytes(rnd.randbytes(2**20))


def file_floor(work: Path, files: int = 2000) -> float:
    """Seconds to create and write `files` files of 4 KiB: what no fetcher can go below."""
    floor = work / "floor"
    floor.mkdir()
    data = bytes(4096)
    start = time.perf_counter()
    for n in range(files):
        fd = os.open(floor / str(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    seconds = time.perf_counter() - start
    shutil.rmtree(floor)
    return seconds


class _PublicGcs(FakeGcs):
    """fake-gcs-server whose links (-public-host, -external-url) name another address: the proxy's."""

    def __init__(self, workdir: Path, public: str) -> None:
        super().__init__(workdir)
        self.public = public

    def _argv(self, port: int) -> list[str]:
        argv = super()._argv(port)
        argv[argv.index("-public-host") + 1] = self.public
        argv[argv.index("-external-url") + 1] = f"http://{self.public}"
        return argv


@contextlib.contextmanager
def gcs_at(workdir: Path, latency: float) -> Iterator[tuple[FakeGcs, dict[str, str]]]:
    """A fake-gcs-server, and the environment of clients that reach it `latency` s away."""
    if not latency:
        with FakeGcs(workdir) as gcs:
            yield gcs, client_env(gcs.url)
        return
    # The proxy listens first, so the server can be told its address; it learns the
    # server's port (read at each new connection) once the server runs.
    with FlakyProxy(LOOPBACK, 9, latency=latency) as proxy, _PublicGcs(workdir, proxy.host) as gcs:
        proxy.target_port = gcs.port
        yield gcs, client_env(f"http://{proxy.host}")


def upload_tree(gcs: FakeGcs, files: int, kib: int) -> None:
    """`files` objects of `kib` KiB under tree/ and manifest.json naming each at its generation."""
    rnd = random.Random(1)
    manifest = {}
    for n in range(files):
        data = rnd.randbytes(kib * 1024)
        path = f"dir{n % 50}/file{n}.dat"
        generation = gcs.put(BUCKET, f"tree/{path}", data)
        digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        manifest[path] = {
            "sourceUrl": f"gs://{BUCKET}/tree/{path}#{generation}",
            "sha1sum": digest,
            "mode": 0o644,
        }
    gcs.put(BUCKET, "manifest.json", json.dumps(manifest).encode())


def bench_venv(where: Path) -> Path:
    """A venv with `pip install '.[gcs]'` of this checkout, not editable, as a user installs it
    (google-cloud-storage comes with the extra, for the baselines). Kept between runs;
    stepkit is reinstalled each time."""
    python = where / "bin" / "python"

    def quiet(cmd: list[str]) -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)

    if not python.exists():
        quiet([sys.executable, "-m", "venv", str(where)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    quiet([*pip, f"{ROOT}[gcs]"])
    quiet([*pip, "--force-reinstall", "--no-deps", str(ROOT)])
    return where / "bin"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured pairs per row")
    parser.add_argument("--files", type=int, default=2000, help="manifest entries")
    parser.add_argument("--file-kib", type=int, default=4)
    parser.add_argument("--tree-mib", type=int, default=90, help="source tree size before gzip")
    parser.add_argument(
        "--latency",
        type=float,
        action="append",
        default=None,
        help="one-way delay (seconds) of the manifest rows; repeat it (default: 0 and 0.02)",
    )
    parser.add_argument("--no-archive", action="store_true", help="skip the tar.gz rows")
    parser.add_argument(
        "--venv",
        type=Path,
        default=None,
        help="measure the stepkit (and google-cloud-storage) of this venv instead of the "
        "plain install made in .bench/venv-gcs",
    )
    parser.add_argument("--json", type=Path, default=None, help="write every sample here")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the destinations go (default: the temp dir; /dev/shm to take the disk out)",
    )
    args = parser.parse_args(argv)
    if args.venv is not None:
        bindir = args.venv.resolve() / "bin"
    else:
        print("installing this checkout (pip install '.[gcs]', not editable) into .bench/venv-gcs")
        bindir = bench_venv(ROOT / ".bench" / "venv-gcs")
    python, stepkit = str(bindir / "python"), str(bindir / "stepkit")
    latencies = args.latency if args.latency else list(LATENCIES)
    work = Path(tempfile.mkdtemp(prefix="stepkit-bench-gcs-", dir=args.dir))
    print(
        f"creating 2,000 files of 4 KiB in {work} takes {file_floor(work):.2f} s here (the floor)"
    )
    rows: list[Row] = []

    def fetcher(kind: str, location: str) -> Steps:
        flags = [f"--type={kind}", f"--location={location}"]
        return lambda d: [[stepkit, "gcs-fetcher", *flags, f"--dest_dir={d}"]]

    manifest_fetch = fetcher("Manifest", f"gs://{BUCKET}/manifest.json")
    try:
        for latency in latencies:
            ms = f"{latency * 1000:g} ms"
            with gcs_at(work / f"gcs-{ms.replace(' ', '')}", latency) as (gcs, client):
                env = {**child_env(), **client}
                gcs.make_bucket(BUCKET)
                print(f"{ms}: uploading {args.files} objects of {args.file_kib} KiB and a manifest")
                upload_tree(gcs, args.files, args.file_kib)
                row = Row(
                    f"manifest {args.files} x {args.file_kib} KiB, {ms}: vs sequential loop",
                    5 if latency else None,  # the target is for a distant peer
                    True,
                )
                measure(
                    row,
                    work,
                    env,
                    lambda d: [[python, "-c", SEQUENTIAL, BUCKET, str(d)]],
                    manifest_fetch,
                    args.runs,
                )
                rows.append(row)
                row = Row(f"  {ms}: vs transfer_manager.download_many_to_path", 1.5, True)
                measure(
                    row,
                    work,
                    env,
                    lambda d: [[python, "-c", TRANSFER_MANAGER, BUCKET, str(d)]],
                    manifest_fetch,
                    args.runs,
                )
                rows.append(row)
        if not args.no_archive:
            with gcs_at(work / "gcs-archive", 0.0) as (gcs, client):
                env = {**child_env(), **client}
                gcs.make_bucket(BUCKET)
                print(f"building and uploading a tar.gz of a ~{args.tree_mib} MiB source tree ...")
                tree, archive = work / "tree", work / "src.tgz"
                source_tree(tree, args.tree_mib)
                subprocess.run(["tar", "czf", str(archive), "-C", str(tree), "."], check=True)
                shutil.rmtree(tree)
                gcs.put(BUCKET, "src.tgz", archive.read_bytes())
                size_mb = archive.stat().st_size / 1e6
                row = Row(f"tar.gz {size_mb:.0f} MB, 0 ms: extraction vs tar xzf", 1.5, False)
                measure(
                    row,
                    work,
                    env,
                    lambda d: [["tar", "xzf", str(archive), "-C", str(d)]],
                    lambda d: [[python, "-c", EXTRACT, str(archive), str(d / "x")]],
                    args.runs,
                )
                rows.append(row)
                row = Row("  whole fetch vs download + tar xzf", 1.2, False)
                measure(
                    row,
                    work,
                    env,
                    lambda d: [[python, "-c", DOWNLOAD_THEN_TAR, BUCKET, str(d)]],
                    fetcher("TarGzArchive", f"gs://{BUCKET}/src.tgz"),
                    args.runs,
                )
                rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    header = (
        f"{'benchmark':<58} {'base s':>7} {'cand s':>7} {'ratio':>6} {'IQR':>11} "
        f"{'target':>7} {'verdict':<11} {'RSS MiB base/cand':>17}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        target = "none" if r.target is None else f"{'>=' if r.faster else '<='}{r.target:g}"
        low, high = r.iqr
        rss = (
            f"{statistics.median(r.base_rss_kib) / 1024:.0f}/"
            f"{statistics.median(r.cand_rss_kib) / 1024:.0f}"
        )
        print(
            f"{r.name:<58} {statistics.median(r.base):7.2f} {statistics.median(r.cand):7.2f} "
            f"{r.ratio:6.2f} {f'{low:.2f}-{high:.2f}':>11} {target:>7} "
            f"{'reported' if r.target is None else 'ok' if r.ok else 'OVER TARGET':<11} {rss:>17}"
        )
    print("(ratio: baseline time / stepkit time for >= rows, stepkit time / baseline for <= rows)")
    if args.json:
        args.json.write_text(
            json.dumps(
                [{**r.__dict__, "ratio": r.ratio, "iqr": list(r.iqr), "ok": r.ok} for r in rows],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
