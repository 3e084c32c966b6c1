"""image-fetcher against skopeo + umoci on a local registry: median time ratio and peak memory.

A 3-layer image of about 100 MB (a source-like tree split over three layers, the top one
overriding and whiting out files of the lower ones) is pushed to docker-registry (TLS and
htpasswd) on loopback. Each pair, after one warm-up pair, runs in fresh directories:
- baseline: `skopeo copy docker://REGISTRY/bench/app:v1 oci:DIR:v1` then
  `umoci unpack --rootless --image DIR:v1 BUNDLE` (umoci's rootfs is BUNDLE/rootfs);
- candidate: `stepkit image-fetcher --image REGISTRY/bench/app:v1 --dest_dir DIR`.
Both authenticate with the same credentials from a docker config file and trust the test
CA. Reported: the median of per-pair time ratios (target <= 1.0) and the median peak RSS
of each side (the larger of skopeo's and umoci's for the baseline), from GNU time.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ocipeers import LayerFile, layer_tar, push, write_layout  # noqa: E402
from tests.peers import Registry  # noqa: E402

STEPKIT = str(Path(sys.executable).with_name("stepkit"))
USER, PASSWORD = "bench", "bench-password"
TARGET = 1.0


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
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *argv], env=env, capture_output=True, text=True, timeout=900
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:2]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, int(proc.stderr.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured pairs")
    parser.add_argument("--mib", type=int, default=100, help="uncompressed image size")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="stepkit-bench-image-"))
    base_t: list[float] = []
    cand_t: list[float] = []
    base_rss: list[int] = []
    cand_rss: list[int] = []
    try:
        with Registry(work / "registry", {USER: PASSWORD}) as registry:
            print(f"building and pushing a 3-layer image of ~{args.mib} MiB ...", flush=True)
            blobs = layers(args.mib)
            layout = work / "layout"
            write_layout(layout, "v1", blobs)
            push(layout, "v1", registry, "bench/app", username=USER, password=PASSWORD)
            size_mb = sum(len(b) for b in blobs) / 1e6
            home = work / "home"
            (home / ".docker").mkdir(parents=True)
            auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            authfile = home / ".docker" / "config.json"
            authfile.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
            env = {**os.environ, "HOME": str(home)}
            ref = f"{registry.host}/bench/app:v1"
            for i in range(args.runs + 1):
                out = work / f"run-{i}"
                out.mkdir()
                oci, bundle = out / "oci", out / "bundle"
                copy = ["skopeo", "copy", "--quiet", "--src-authfile", str(authfile)]
                copy += [
                    "--src-cert-dir",
                    str(registry.cert_dir),
                    f"docker://{ref}",
                    f"oci:{oci}:v1",
                ]
                t1, m1 = timed(copy, env)
                t2, m2 = timed(
                    ["umoci", "unpack", "--rootless", "--image", f"{oci}:v1", str(bundle)], env
                )
                dest = out / "dest"
                fetch = [STEPKIT, "image-fetcher", f"--image={ref}", f"--dest_dir={dest}"]
                t3, m3 = timed([*fetch, f"--ca-file={registry.ca_pem}"], env)
                if i:  # the first pair warms caches
                    base_t.append(t1 + t2)
                    cand_t.append(t3)
                    base_rss.append(max(m1, m2))
                    cand_rss.append(m3)
                else:
                    theirs = sorted(p.name for p in (bundle / "rootfs" / "src").rglob("*"))
                    ours = sorted(p.name for p in (dest / "src").rglob("*"))
                    if theirs != ours:
                        raise RuntimeError("image-fetcher and umoci disagree on the tree")
                shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = statistics.median(c / b for b, c in zip(base_t, cand_t, strict=True))
    verdict = "ok" if ratio <= TARGET else "OVER TARGET"
    print()
    print(f"3-layer image, {size_mb:.0f} MB of gzip layers, {args.runs} pairs:")
    print(
        f"  skopeo copy + umoci unpack: {statistics.median(base_t):6.2f} s, "
        f"peak RSS {statistics.median(base_rss) / 1024:6.1f} MiB"
    )
    print(
        f"  stepkit image-fetcher:      {statistics.median(cand_t):6.2f} s, "
        f"peak RSS {statistics.median(cand_rss) / 1024:6.1f} MiB"
    )
    print(f"  ratio {ratio:.2f} (target <= {TARGET:g}): {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "ratio": ratio,
                    "base_s": base_t,
                    "cand_s": cand_t,
                    "base_rss_kib": base_rss,
                    "cand_rss_kib": cand_rss,
                    "layers_mb": size_mb,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
