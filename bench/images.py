"""Image benchmarks: the start-up of `stepkit nop` and `stepkit creds-init` inside their images
against `python -c pass` in the same image, and the size the helper images add on top of the
Python base."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import startup
from spawn import Sample

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from tests.images import (  # noqa: E402
    DEFAULT_USER,
    POD_HOME,
    POD_SECRETS,
    buildah,
    command_for,
    emptydir,
    ensure_images,
    run_image,
)

# The Makefile's LOCAL_BASE, for when stepkit-base does not name its base in a label.
LOCAL_BASE = "localhost/stepkit-python-base:bookworm"
BASE_LABEL = "org.opencontainers.image.base.name"
IMAGE_PYTHON = "/opt/stepkit/bin/python"
BENCH_MOUNT = "/opt/stepkit-bench"
STARTUP_TARGET = 1.25
CREDS_TARGET = 2.5
SIZE_TARGET_MB = 30.0
MB = 1_000_000
SIZED_IMAGES = ("base", "nop", "creds-init", "git-init", "gcs-fetcher", "image-fetcher")
# The size target is for these (issue 4); gcs-fetcher's own layer (google-cloud-storage and
# its dependencies, which the others do without) is reported beside it.
TARGET_IMAGES = ("base", "nop", "creds-init", "git-init")


# --- start-up inside the image -----------------------------------------------------------


def startup_in_image(
    image: str,
    name: str,
    target: float,
    *,
    runs: int,
    warmup: int,
    user: str,
    args: list[str] | None = None,
    secrets: Path | None = None,
) -> tuple[startup.Result, dict[str, Any]]:
    """Run bench/spawn.py in one container of image: ABAB pairs, timed inside the container.

    The candidate is the image's entrypoint with args; secrets (a host directory) is mounted
    read-only where the controller mounts them.
    """
    baseline = [IMAGE_PYTHON, "-c", "pass"]
    candidate = command_for(image, args or [])
    result = startup.Result(name, target)
    args = ["--homes", POD_HOME, "--runs", str(runs), "--warmup", str(warmup)]
    args += ["--baseline", json.dumps(baseline), "--candidate", json.dumps(candidate)]
    report: dict[str, Any] = {"baseline": baseline, "candidate": candidate}
    with tempfile.TemporaryDirectory(prefix="stepkit-bench-") as tmp:
        try:
            proc = run_image(
                image,
                [f"{BENCH_MOUNT}/spawn.py", *args],
                workspace=emptydir(Path(tmp) / "workspace"),
                home=emptydir(Path(tmp) / "home"),
                secrets=secrets,
                user=user,
                mounts=[(BENCH_DIR, BENCH_MOUNT, True)],
                entrypoint=[IMAGE_PYTHON],
                timeout=300 + 2 * (runs + warmup),
            )
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            result.error = f"buildah run: {exc}".splitlines()[0]
            return result, report
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        result.error = f"buildah run exited {proc.returncode}: {tail}"
        return result, report
    try:
        report = json.loads(lines[-1])
    except ValueError:
        result.error = f"no JSON from bench/spawn.py in the image: {lines[-1][:200]}"
        return result, report
    result.error = report["error"]
    result.baseline = [Sample(**s) for s in report.get("baseline_samples", [])]
    result.candidate = [Sample(**s) for s in report.get("candidate_samples", [])]
    result.baseline_rss_kib = list(report.get("baseline_rss_kib", []))
    result.candidate_rss_kib = list(report.get("candidate_rss_kib", []))
    if result.candidate:
        result.note = rss_note(result, int(report["rss_floor_kib"]))
        result.note += (
            f"; timed inside one container run as {report['uid']}:{report['gid']}, read-only "
            f"root, Python {report['python']}"
        )
    return result, report


def rss_note(result: startup.Result, floor_kib: int) -> str:
    """Where the RSS column comes from, and whether a value sits on its method's floor."""
    note = (
        "peak RSS from untimed runs forked by a bare interpreter (bench/spawn.py), whose floor "
        f"here, /bin/true's, is {floor_kib / 1024:.1f} MiB"
    )
    summary = result.summary()
    low = [
        name
        for name, mib in (
            ("baseline", summary.baseline_maxrss_mib),
            ("candidate", summary.candidate_maxrss_mib),
        )
        if mib * 1024 <= floor_kib * 1.02
    ]
    if low:
        note += f", which the {' and '.join(low)} did not exceed: an upper bound only"
    return note


# --- sizes over the Python base ----------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    diff_id: str  # digest of the uncompressed tar
    size: int  # bytes of the uncompressed tar
    gzip_size: int | None  # bytes of the gzip blob `buildah push` writes


@dataclass
class ImageSize:
    name: str
    ref: str
    layers: list[Layer] = field(default_factory=list)  # those not in the Python base
    on_base: bool = True  # the image's layers start with the Python base's

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def gzip_size(self) -> int | None:
        sizes = [layer.gzip_size for layer in self.layers]
        return None if None in sizes else sum(s or 0 for s in sizes)


def inspect(ref: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(buildah("inspect", "--type", "image", ref))
    return data


def diff_ids(data: dict[str, Any]) -> list[str]:
    return list(data["OCIv1"]["rootfs"]["diff_ids"])


def manifest_layers(manifest: str | dict[str, Any]) -> list[dict[str, Any]]:
    parsed = json.loads(manifest) if isinstance(manifest, str) else manifest
    return list(parsed["layers"])


def python_base(images: dict[str, str]) -> str:
    """The image stepkit-base was built FROM, as its label names it."""
    labels = inspect(images["base"])["OCIv1"].get("config", {}).get("Labels") or {}
    return str(labels.get(BASE_LABEL) or LOCAL_BASE)


def gzip_sizes(ref: str, layout: Path, name: str) -> list[int]:
    """Push ref, gzip-compressed, into an OCI layout; the size of each layer blob, in order."""
    buildah("push", "--quiet", "--compression-format", "gzip", ref, f"oci:{layout}:{name}")
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name
    ]
    blob = layout / "blobs" / entry["digest"].replace(":", "/", 1)
    return [int(layer["size"]) for layer in manifest_layers(blob.read_text())]


def image_sizes(images: dict[str, str], base_ref: str, *, compressed: bool) -> list[ImageSize]:
    base_ids = diff_ids(inspect(base_ref))
    out = []
    with tempfile.TemporaryDirectory(prefix="stepkit-bench-oci-") as tmp:
        for name in SIZED_IMAGES:
            ref = images[name]
            data = inspect(ref)
            ids = diff_ids(data)
            layers = manifest_layers(data["Manifest"])
            # Built here, the image's manifest lists its layers uncompressed, digest = diff id.
            if [layer["digest"] for layer in layers] != ids or any(
                not str(layer["mediaType"]).endswith(".tar") for layer in layers
            ):
                raise RuntimeError(f"{ref}: the manifest's layers are not its uncompressed tars")
            gz: list[int | None] = [None] * len(ids)
            if compressed:
                gz = list(gzip_sizes(ref, Path(tmp), name))
            entry = ImageSize(name, ref, on_base=ids[: len(base_ids)] == base_ids)
            for diff_id, layer, gzip_size in zip(ids, layers, gz, strict=True):
                if diff_id not in base_ids:
                    entry.layers.append(Layer(diff_id, int(layer["size"]), gzip_size))
            out.append(entry)
    return out


def all_together(sizes: list[ImageSize]) -> ImageSize:
    """All the images pulled onto one node: each layer counted once."""
    unique: dict[str, Layer] = {}
    for entry in sizes:
        for layer in entry.layers:
            unique.setdefault(layer.diff_id, layer)
    names = ", ".join(entry.name for entry in sizes)
    return ImageSize(f"all: {names}", "", list(unique.values()))


def render_sizes(sizes: list[ImageSize], base_ref: str) -> str:
    def mb(value: int | None) -> str:
        return "-" if value is None else f"{value / MB:.2f}"

    total = all_together([e for e in sizes if e.name in TARGET_IMAGES])
    everything = all_together(sizes)
    header = f"{'image':<44} {'layers':>6} {'uncompressed MB':>16} {'gzip MB':>8}"
    lines = [
        f"size over the Python base {base_ref}: the layers it does not have",
        "(MB = 10^6 bytes; uncompressed = the layer tars as stored, gzip = as `buildah push` sends them)",
        header,
        "-" * len(header),
    ]
    for entry in [*sizes, total, *([everything] if everything.size != total.size else [])]:
        name = entry.ref.rsplit("/", 1)[-1] if entry.ref else entry.name
        flag = "" if entry.on_base else "  (not FROM the Python base)"
        lines.append(
            f"{name:<44} {len(entry.layers):>6} {mb(entry.size):>16} {mb(entry.gzip_size):>8}{flag}"
        )
    ratio = total.size / (SIZE_TARGET_MB * MB)
    verdict = "OVER TARGET" if ratio > 1 else "ok"
    lines += [
        "",
        f"{', '.join(TARGET_IMAGES)} together: {total.size / MB:.2f} MB uncompressed over the "
        f"Python base, {ratio:.2f} of the {SIZE_TARGET_MB:g} MB target: {verdict}",
        f"with every image: {everything.size / MB:.2f} MB (gcs-fetcher's own layer: "
        f"{(everything.size - total.size) / MB:.2f} MB, no target)",
    ]
    return "\n".join(lines)


def sizes_report(sizes: list[ImageSize], base_ref: str) -> dict[str, Any]:
    total = all_together([e for e in sizes if e.name in TARGET_IMAGES])
    return {
        "python_base": base_ref,
        "unit": "bytes; size = uncompressed layer tars, gzip_size = gzip blobs as pushed",
        "images": {
            e.name: {"ref": e.ref, "size": e.size, "gzip_size": e.gzip_size, "on_base": e.on_base}
            | {"layers": [asdict(layer) for layer in e.layers]}
            for e in sizes
        },
        "target_images": list(TARGET_IMAGES),
        "all_images_size": all_together(sizes).size,
        "total_size": total.size,
        "total_gzip_size": total.gzip_size,
        "total_layers": [asdict(layer) for layer in total.layers],
        "target_bytes": int(SIZE_TARGET_MB * MB),
        "ratio_to_target": total.size / (SIZE_TARGET_MB * MB),
        "over_target": total.size > SIZE_TARGET_MB * MB,
    }


# --- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = startup.arg_parser(__doc__)
    parser.add_argument("--user", default=DEFAULT_USER, help="UID:GID to run the container as")
    parser.add_argument(
        "--no-compressed", action="store_true", help="skip the gzip sizes (a push per image)"
    )
    args = startup.parse_args(argv, parser)
    report: dict[str, Any] = {
        "runs": args.runs,
        "warmup": args.warmup,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print("building the images if needed (make images-local) ...", flush=True)
    try:
        images = ensure_images()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"FAILED: the images: {exc}")
        return 0
    report["images"] = images

    results: list[startup.Result] = []
    report["startup"] = []
    with tempfile.TemporaryDirectory(prefix="stepkit-bench-secrets-") as tmp:
        # The same ten secrets as bench/startup.py, in the kubelet's layout, mounted where the
        # Knative controller mounts them: readable by the container's user.
        (Path(tmp) / "keys").mkdir()
        creds_args, _ = startup.make_secrets(Path(tmp) / "secrets", Path(tmp) / "keys")
        creds_args = [POD_SECRETS if a == str(Path(tmp) / "secrets") else a for a in creds_args]
        for path in [Path(tmp), *Path(tmp).rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        runs = [
            ("nop", "stepkit nop, in its image", STARTUP_TARGET, [], None),
            (
                "creds-init",
                "creds-init (10 secrets), in image",
                CREDS_TARGET,
                creds_args,
                Path(tmp) / "secrets",
            ),
        ]
        for image, name, target, image_args, secrets in runs:
            print(
                f"  measuring {name} ({images[image]}): {args.runs} pairs after "
                f"{args.warmup} warm-up pairs ...",
                flush=True,
            )
            result, inside = startup_in_image(
                images[image],
                name,
                target,
                runs=args.runs,
                warmup=args.warmup,
                user=args.user,
                args=image_args,
                secrets=secrets,
            )
            results.append(result)
            report["startup"].append(
                {
                    **(asdict(result.summary()) if result.candidate else {"name": result.name}),
                    "note": result.note,
                    "error": result.error,
                    **inside,
                }
            )
    print()
    print(startup.render(results, f"{IMAGE_PYTHON} -c pass (in the same image)"))

    print(flush=True)
    try:
        base_ref = python_base(images)
        sizes = image_sizes(images, base_ref, compressed=not args.no_compressed)
    except (OSError, RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        print(f"sizes: FAILED: {exc}")
        report["sizes"] = {"error": str(exc)}
    else:
        print(render_sizes(sizes, base_ref))
        report["sizes"] = sizes_report(sizes, base_ref)

    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    # A benchmark reports; it does not gate.
    return 0


if __name__ == "__main__":
    sys.exit(main())
