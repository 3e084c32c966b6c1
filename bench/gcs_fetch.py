"""gcs-fetcher against what a user would otherwise run, on fake-gcs-server on loopback: median ratios.

Four rows, each the median of per-pair ratios over ABAB pairs after one warm-up pair:
- a manifest of 2,000 files of 4 KiB: speed-up of `stepkit gcs-fetcher --type Manifest`
  over a sequential loop of google-cloud-storage downloads (target >= 5), and over
  `transfer_manager.download_many_to_path` with its defaults (target >= 1);
- a tar.gz of a source tree (~50 MB): time of stepkit's safe extraction over `tar xzf` of
  the same file (target <= 1.5), and of the whole `--type TarGzArchive` fetch over a
  google-cloud-storage download followed by `tar xzf` (target <= 1.2).
Every side is a fresh process (interpreter and imports included), writing into a fresh
directory that is removed before the next run.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gcspeers import FakeGcs  # noqa: E402

PYTHON = sys.executable
STEPKIT = str(Path(sys.executable).with_name("stepkit"))
BUCKET = "stepkit-bench"

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
    target: float
    faster: bool  # True: the ratio is baseline time / candidate time, to be >= target
    base: list[float] = field(default_factory=list)
    cand: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        pairs = zip(self.base, self.cand, strict=True)
        return statistics.median((b / c) if self.faster else (c / b) for b, c in pairs)

    @property
    def ok(self) -> bool:
        return self.ratio >= self.target if self.faster else self.ratio <= self.target


Steps = Callable[[Path], list[list[str]]]


def timed(steps: list[list[str]], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    for argv in steps:
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def measure(
    row: Row, work: Path, env: dict[str, str], baseline: Steps, candidate: Steps, runs: int
) -> None:
    print(f"  {row.name} ...", flush=True)
    for i in range(runs + 1):  # the first pair warms caches and is not counted
        for make, times in ((baseline, row.base), (candidate, row.cand)):
            dest = work / f"out-{i}"
            dest.mkdir()
            seconds = timed(make(dest), env, work)
            if i:
                times.append(seconds)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured pairs per row")
    parser.add_argument("--files", type=int, default=2000, help="manifest entries")
    parser.add_argument("--file-kib", type=int, default=4)
    parser.add_argument("--tree-mib", type=int, default=90, help="source tree size before gzip")
    parser.add_argument("--json", type=Path, default=None, help="write every sample here")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the destinations go (default: the temp dir; /dev/shm to take the disk out)",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="stepkit-bench-gcs-", dir=args.dir))
    print(
        f"creating 2,000 files of 4 KiB in {work} takes {file_floor(work):.2f} s here (the floor)"
    )
    rows: list[Row] = []
    try:
        with FakeGcs(work / "gcs") as gcs:
            env = {**os.environ, **gcs.env}
            gcs.make_bucket(BUCKET)
            print(f"uploading {args.files} objects of {args.file_kib} KiB and their manifest ...")
            rnd = random.Random(1)
            manifest = {}
            for n in range(args.files):
                data = rnd.randbytes(args.file_kib * 1024)
                path = f"dir{n % 50}/file{n}.dat"
                generation = gcs.put(BUCKET, f"tree/{path}", data)
                digest = hashlib.sha1(data, usedforsecurity=False).hexdigest()
                manifest[path] = {
                    "sourceUrl": f"gs://{BUCKET}/tree/{path}#{generation}",
                    "sha1sum": digest,
                    "mode": 0o644,
                }
            gcs.put(BUCKET, "manifest.json", json.dumps(manifest).encode())
            print(f"building and uploading a tar.gz of a ~{args.tree_mib} MiB source tree ...")
            tree, archive = work / "tree", work / "src.tgz"
            source_tree(tree, args.tree_mib)
            subprocess.run(["tar", "czf", str(archive), "-C", str(tree), "."], check=True)
            shutil.rmtree(tree)
            gcs.put(BUCKET, "src.tgz", archive.read_bytes())
            size_mb = archive.stat().st_size / 1e6

            def fetcher(kind: str, location: str) -> Steps:
                flags = [f"--type={kind}", f"--location={location}"]
                return lambda d: [[STEPKIT, "gcs-fetcher", *flags, f"--dest_dir={d}"]]

            manifest_fetch = fetcher("Manifest", f"gs://{BUCKET}/manifest.json")
            row = Row(f"manifest {args.files} x {args.file_kib} KiB: vs sequential loop", 5, True)
            measure(
                row,
                work,
                env,
                lambda d: [[PYTHON, "-c", SEQUENTIAL, BUCKET, str(d)]],
                manifest_fetch,
                args.runs,
            )
            rows.append(row)
            row = Row("  the same: vs transfer_manager.download_many_to_path", 1, True)
            measure(
                row,
                work,
                env,
                lambda d: [[PYTHON, "-c", TRANSFER_MANAGER, BUCKET, str(d)]],
                manifest_fetch,
                args.runs,
            )
            rows.append(row)
            row = Row(f"tar.gz {size_mb:.0f} MB: extraction vs tar xzf", 1.5, False)
            measure(
                row,
                work,
                env,
                lambda d: [["tar", "xzf", str(archive), "-C", str(d)]],
                lambda d: [[PYTHON, "-c", EXTRACT, str(archive), str(d / "x")]],
                args.runs,
            )
            rows.append(row)
            row = Row("  whole fetch vs download + tar xzf", 1.2, False)
            measure(
                row,
                work,
                env,
                lambda d: [[PYTHON, "-c", DOWNLOAD_THEN_TAR, BUCKET, str(d)]],
                fetcher("TarGzArchive", f"gs://{BUCKET}/src.tgz"),
                args.runs,
            )
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    header = f"{'benchmark':<58} {'base s':>7} {'cand s':>7} {'ratio':>6} {'target':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        target = f">={r.target:g}" if r.faster else f"<={r.target:g}"
        print(
            f"{r.name:<58} {statistics.median(r.base):7.2f} {statistics.median(r.cand):7.2f} "
            f"{r.ratio:6.2f} {target:>7}  {'ok' if r.ok else 'OVER TARGET'}"
        )
    print("(ratio: baseline time / stepkit time for >= rows, stepkit time / baseline for <= rows)")
    if args.json:
        args.json.write_text(
            json.dumps([{**r.__dict__, "ratio": r.ratio, "ok": r.ok} for r in rows], indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
