"""image-fetcher against skopeo + umoci on a local registry, 0 and 20 ms away: median time ratios and peak memory.

A 3-layer image of about 100 MB (a source-like tree split over three layers, the top one
overriding and whiting out files of the lower ones) is pushed to docker-registry (TLS and
htpasswd) on loopback. Two rows: the registry reached directly (0 ms), and through
tests.peers.FlakyProxy(latency=0.02), which delays every chunk 20 ms each way. In each row,
pairs alternate baseline and candidate (ABAB) after one warm-up pair, in fresh directories:
- baseline: `skopeo copy docker://REGISTRY/bench/app:v1 oci:DIR:v1` then
  `umoci unpack --rootless --image DIR:v1 BUNDLE` (umoci's rootfs is BUNDLE/rootfs);
- candidate: `stepkit image-fetcher --image REGISTRY/bench/app:v1 --dest_dir DIR`, from a
  regular (non-editable) `pip install .[oci]` in .bench/venv-image-fetch, as users get it.
Both authenticate with the same credentials from a docker config file and trust the test
CA. Reported per row: the median of per-pair time ratios with its IQR (target <= 0.7) and
the median peak RSS of each side (the larger of skopeo's and umoci's for the baseline),
from GNU time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ocipeers import LayerFile, layer_tar, push, write_layout  # noqa: E402
from tests.peers import FlakyProxy, Registry  # noqa: E402

USER, PASSWORD = "bench", "bench-password"
TARGET = 0.7
LATENCIES = (0.0, 0.02)


def layers(mib: int, seed: int = 11) -> list[bytes]:
    """Three gzip layers: a tree of ~mib MiB spread over the first two, the third overriding
    a tenth of the files and whiting out another tenth."""
    rnd = random.Random(seed)
    words = [f"{w}_{i}" for i, w in enumerate(["def", "return", "self", "value", "import"] * 400)]
    names: list[str] = []
    lower: list[list[LayerFile]] = [[], []]
    budget, written = mib * 2**20, 0
    while written < budget:
        n = len(names)
        name = f"src/pkg{n % 40}/mod{n}.py"
        if n % 7 == 0:
            data = rnd.randbytes(rnd.randint(20_000, 200_000))  # assets: incompressible
        else:
            data = " ".join(rnd.choices(words, k=rnd.randint(200, 4000))).encode()
        lower[n % 2].append(LayerFile(name, data))
        names.append(name)
        written += len(data)
    top = [LayerFile(name, b"overridden\n") for name in names[::10]]
    top += [LayerFile(name, type="whiteout") for name in names[5::10]]
    return [layer_tar(layer) for layer in (*lower, top)]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one command under GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
        )
        seconds = time.perf_counter() - start
        text = rss.read().strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:2]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, int(text[-1])


def plain_stepkit(where: Path) -> str:
    """stepkit from `pip install .[oci]` of this checkout, not editable, in a venv kept in where."""
    python = where / "bin" / "python"

    def quiet(cmd: list[str]) -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)

    if not python.exists():
        quiet([sys.executable, "-m", "venv", str(where)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    quiet([*pip, f"{ROOT}[oci]"])
    quiet([*pip, "--force-reinstall", "--no-deps", str(ROOT)])
    return str(where / "bin" / "stepkit")


@dataclass
class Row:
    latency: float
    base_t: list[float] = field(default_factory=list)
    cand_t: list[float] = field(default_factory=list)
    base_rss: list[int] = field(default_factory=list)
    cand_rss: list[int] = field(default_factory=list)
    error: str = ""

    @property
    def ratios(self) -> list[float]:
        return [c / b for b, c in zip(self.base_t, self.cand_t, strict=True)]

    def summary(self) -> dict[str, Any]:
        if not self.ratios:
            return {"latency_s": self.latency, "error": self.error}
        quart = statistics.quantiles(self.ratios, n=4) if len(self.ratios) > 1 else [0, 0, 0]
        return {
            "latency_s": self.latency,
            "ratio": statistics.median(self.ratios),
            "ratio_iqr": [quart[0], quart[2]],
            "base_median_s": statistics.median(self.base_t),
            "cand_median_s": statistics.median(self.cand_t),
            "base_rss_kib": statistics.median(self.base_rss),
            "cand_rss_kib": statistics.median(self.cand_rss),
            "base_s": self.base_t,
            "cand_s": self.cand_t,
            "base_rss_all_kib": self.base_rss,
            "cand_rss_all_kib": self.cand_rss,
            "error": self.error,
        }


def run_row(row: Row, host: str, registry: Registry, stepkit: str, work: Path, runs: int) -> None:
    """Warm-up pair, then `runs` measured pairs, baseline first in each (ABAB)."""
    home = work / f"home-{row.latency}"
    (home / ".docker").mkdir(parents=True)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile = home / ".docker" / "config.json"
    authfile.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "STEPKIT_"))} | {
        "HOME": str(home)
    }
    ref = f"{host}/bench/app:v1"
    for i in range(runs + 1):
        out = work / f"run-{i}"
        out.mkdir()
        oci, bundle = out / "oci", out / "bundle"
        copy = ["skopeo", "copy", "--quiet", "--src-authfile", str(authfile)]
        copy += ["--src-cert-dir", str(registry.cert_dir), f"docker://{ref}", f"oci:{oci}:v1"]
        t1, m1 = timed(copy, env)
        t2, m2 = timed(["umoci", "unpack", "--rootless", "--image", f"{oci}:v1", str(bundle)], env)
        dest = out / "dest"
        fetch = [stepkit, "image-fetcher", f"--image={ref}", f"--dest_dir={dest}"]
        t3, m3 = timed([*fetch, f"--ca-file={registry.ca_pem}"], env)
        if i:  # the first pair warms caches
            row.base_t.append(t1 + t2)
            row.cand_t.append(t3)
            row.base_rss.append(max(m1, m2))
            row.cand_rss.append(m3)
        else:
            theirs = sorted(p.name for p in (bundle / "rootfs" / "src").rglob("*"))
            ours = sorted(p.name for p in (dest / "src").rglob("*"))
            if theirs != ours:
                raise RuntimeError("image-fetcher and umoci disagree on the tree")
        shutil.rmtree(out)
        print(".", end="", flush=True)
    print()


def render(rows: list[Row], size_mb: float, runs: int) -> str:
    lines = [
        f"3-layer image, {size_mb:.0f} MB of gzip layers, {runs} pairs per row "
        "(skopeo copy + umoci unpack vs stepkit image-fetcher):",
        f"  {'latency':>8}  {'baseline':>9}  {'stepkit':>9}  {'ratio':>5}  {'IQR':>11}  "
        f"{'target':>6}  {'verdict':<11}  {'RSS base':>9}  {'RSS ours':>9}",
    ]
    for row in rows:
        s = row.summary()
        name = f"{row.latency * 1000:.0f} ms"
        if "ratio" not in s:
            lines.append(f"  {name:>8}  FAILED: {row.error}")
            continue
        verdict = "ok" if s["ratio"] <= TARGET else "OVER TARGET"
        iqr = f"{s['ratio_iqr'][0]:.2f}-{s['ratio_iqr'][1]:.2f}"
        lines.append(
            f"  {name:>8}  {s['base_median_s']:8.2f}s  {s['cand_median_s']:8.2f}s  "
            f"{s['ratio']:5.2f}  {iqr:>11}  {'<= ' + format(TARGET, 'g'):>6}  {verdict:<11}  "
            f"{s['base_rss_kib'] / 1024:6.1f}MiB  {s['cand_rss_kib'] / 1024:6.1f}MiB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="measured pairs per row")
    parser.add_argument("--mib", type=int, default=100, help="uncompressed image size")
    parser.add_argument(
        "--latency",
        type=float,
        action="append",
        default=None,
        help="one-way delay in seconds of a row (repeatable; default: 0 and 0.02)",
    )
    parser.add_argument(
        "--stepkit",
        default=None,
        help="the stepkit to measure (default: a plain pip install in .bench/venv-image-fetch)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.stepkit:
        stepkit = args.stepkit
    else:
        print("installing this checkout (pip install .[oci], not editable) into .bench/ ...")
        stepkit = plain_stepkit(ROOT / ".bench" / "venv-image-fetch")
    work = Path(tempfile.mkdtemp(prefix="stepkit-bench-image-"))
    rows = [Row(latency) for latency in (args.latency or LATENCIES)]
    size_mb = 0.0
    try:
        with Registry(work / "registry", {USER: PASSWORD}) as registry:
            print(f"building and pushing a 3-layer image of ~{args.mib} MiB ...", flush=True)
            blobs = layers(args.mib)
            layout = work / "layout"
            write_layout(layout, "v1", blobs)
            push(layout, "v1", registry, "bench/app", username=USER, password=PASSWORD)
            size_mb = sum(len(b) for b in blobs) / 1e6
            port = int(registry.host.rsplit(":", 1)[1])
            for row in rows:
                print(f"{row.latency * 1000:.0f} ms ", end="", flush=True)
                try:
                    if row.latency:
                        with FlakyProxy("127.0.0.1", port, latency=row.latency) as proxy:
                            run_row(row, proxy.host, registry, stepkit, work, args.runs)
                    else:
                        run_row(row, registry.host, registry, stepkit, work, args.runs)
                except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
                    row.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    row.base_t, row.cand_t, row.base_rss, row.cand_rss = [], [], [], []
                    print(f" FAILED: {row.error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(render(rows, size_mb, args.runs))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"target": TARGET, "layers_mb": size_mb, "rows": [r.summary() for r in rows]},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
