"""`stepkit run`'s overhead: a Build of 10 trivial steps against the same containers run one
after another by hand, with the same volumes.

Per run, in turn (so the machine's load falls on all three alike):
  - candidate: `stepkit run -f build.yaml` (creds-init, 10 steps of `true`, nop; its sandbox);
  - podman: the same 12 containers with `podman run --rm`, the workspace and home volumes
    made before and removed after, on the service's storage and configuration;
  - docker API: the same through the docker SDK on the same API service (`docker run`'s calls:
    create, start, wait, remove).
Reported: the median of the per-run ratios candidate/baseline for each baseline (target <=
1.2), and `stepkit run`'s peak RSS. Run: `python bench/run.py [--runs N] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from controller.run.podman import PodmanService  # noqa: E402
from tests.images import IMAGE_REPO, ensure_images  # noqa: E402

STEPS = 10
TARGET = 1.2
STEPKIT = str(Path(sys.executable).with_name("stepkit"))


def build_yaml(base: str) -> str:
    steps = "".join(
        f'  - name: step-{i}\n    image: {base}\n    command: ["true"]\n' for i in range(STEPS)
    )
    return (
        "apiVersion: build.knative.dev/v1alpha1\nkind: Build\nmetadata:\n  name: bench-run\n"
        f"spec:\n  steps:\n{steps}"
    )


def containers(images: dict[str, str]) -> list[tuple[str, list[str]]]:
    """What the Pod runs, as (image, argv): creds-init without flags, the steps, nop."""
    return [
        (images["creds-init"], []),
        *[(images["base"], ["true"]) for _ in range(STEPS)],
        (images["nop"], []),
    ]


def run_candidate(service: PodmanService, build: Path) -> tuple[float, int]:
    env = {**os.environ, "DOCKER_HOST": service.url, "STEPKIT_RUN_IMAGE_REPO": IMAGE_REPO}
    start = time.perf_counter()
    pid = os.posix_spawn(
        STEPKIT,
        [STEPKIT, "run", "-f", str(build), "--pull", "never"],
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        ],
    )
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"stepkit run exited {code}")
    return elapsed, usage.ru_maxrss


def run_podman(service: PodmanService, plan: list[tuple[str, list[str]]]) -> float:
    tag = secrets.token_hex(4)
    ws, home = f"bench-ws-{tag}", f"bench-home-{tag}"
    start = time.perf_counter()
    for volume in (ws, home):
        _check(service.podman("volume", "create", volume))
    for image, argv in plan:
        mounts = ["-v", f"{ws}:/workspace", "-v", f"{home}:/builder/home"]
        entry = ["--entrypoint", argv[0]] if argv else []
        _check(service.podman("run", "--rm", *mounts, *entry, image, *argv[1:]))
    _check(service.podman("volume", "rm", ws, home))
    return time.perf_counter() - start


def run_docker_api(service: PodmanService, plan: list[tuple[str, list[str]]]) -> float:
    import docker
    from docker.types import Mount

    client = docker.DockerClient(base_url=service.url)
    try:
        start = time.perf_counter()
        ws = client.volumes.create()
        home = client.volumes.create()
        mounts = [
            Mount("/workspace", ws.name, type="volume"),
            Mount("/builder/home", home.name, type="volume"),
        ]
        for image, argv in plan:
            kwargs: dict[str, Any] = {"entrypoint": argv} if argv else {}
            made = client.containers.create(image, mounts=mounts, **kwargs)
            made.start()
            code = made.wait()["StatusCode"]
            made.remove()
            if code != 0:
                raise RuntimeError(f"{image} exited {code}")
        ws.remove()
        home.remove()
        return time.perf_counter() - start
    finally:
        client.close()


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"podman: {proc.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    images = ensure_images()
    plan = containers(images)
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="stepkit-bench-run-") as tmp:
        build = Path(tmp) / "build.yaml"
        build.write_text(build_yaml(images["base"]))
        with PodmanService() as service:
            run_candidate(service, build)  # warm: the first container of an image costs more
            for i in range(args.runs):
                cand, rss = run_candidate(service, build)
                pod = run_podman(service, plan)
                api = run_docker_api(service, plan)
                rows.append({"stepkit_run": cand, "podman_run": pod, "docker_api": api, "rss": rss})
                print(
                    f"run {i + 1}: stepkit run {cand:.1f}s, podman run {pod:.1f}s, "
                    f"docker API {api:.1f}s, stepkit run peak RSS {rss / 1024:.1f} MiB",
                    flush=True,
                )
    vs_podman = statistics.median(r["stepkit_run"] / r["podman_run"] for r in rows)
    vs_api = statistics.median(r["stepkit_run"] / r["docker_api"] for r in rows)
    rss_mib = statistics.median(r["rss"] for r in rows) / 1024
    print(
        f"stepkit run, {STEPS} trivial steps: {vs_podman:.2f}x podman run, {vs_api:.2f}x the "
        f"docker API calls (median of {len(rows)} paired runs; target <= {TARGET}); "
        f"peak RSS {rss_mib:.1f} MiB"
    )
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "runs": rows,
                    "vs_podman_run": vs_podman,
                    "vs_docker_api": vs_api,
                    "peak_rss_mib": rss_mib,
                    "target": TARGET,
                },
                indent=2,
            )
        )
    return 0 if max(vs_podman, vs_api) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
