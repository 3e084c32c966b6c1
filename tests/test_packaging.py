"""What `pip install .` gives a user: a wheel built without warnings, with the metadata it declares."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_builds_without_warnings(tmp_path: Path) -> None:
    """A user's `pip install .` shows no build-backend warning (the license once raised one)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-cache-dir",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    # Lines from this machine's pip configuration (an index location it lacks) are not ours.
    ours = [
        line
        for line in output.splitlines()
        if ("warning" in line.lower() or "deprecat" in line.lower()) and "Location '" not in line
    ]
    assert not ours, "\n".join(ours)
    (wheel,) = tmp_path.glob("stepkit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        text = zf.read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text.splitlines()
    # stepkit pod's package, with its type marker, and the extra that brings PyYAML.
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"controller/py.typed", "controller/pod/cli.py"} <= names
    assert "Provides-Extra: kube" in text.splitlines()
