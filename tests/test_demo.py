"""`make demo`'s script runs the Build of examples/builds/demo/ end to end (stepkit run, podman's
API service since this machine has no Docker daemon, the git server demanding the Secret)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.images import IMAGE_REPO, ROOT, ensure_images


def test_demo_runs_the_build() -> None:
    ensure_images()
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["IMAGE_REPO"] = IMAGE_REPO
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=2400,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "$ stepkit run -f examples/builds/demo/" in out
    assert "[git-source-0] " in out
    assert "[greet] hello, stepkit run!" in out
    assert "[describe] greeting left by the step before: hello, stepkit run!" in out
    assert "message=hello, stepkit run!" in out  # the SDK builder's result, in the table
    assert "head=" in out
    assert "Build demo succeeded" in out
    assert "demo-password-not-secret" not in out
    assert Path(ROOT / "examples" / "builds" / "demo" / "3-build.yaml").is_file()
