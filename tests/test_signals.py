"""A pod being deleted sends SIGTERM: a helper then stops its children and leaves nothing half-made."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import STEPKIT
from tests.peers import LOOPBACK, FlakyProxy, free_port, git_processes_for


def test_sigterm_during_git_init_exits_130_and_cleans_up(tmp_path: Path) -> None:
    with FlakyProxy(LOOPBACK, free_port(), stall=True) as proxy:
        workspace = tmp_path / "ws"
        workspace.mkdir()
        proc = subprocess.Popen(
            [
                STEPKIT,
                "git-init",
                f"-url=http://{LOOPBACK}:{proxy.port}/repo.git",
                "-path=src",
                "--allow-http",
            ],
            cwd=workspace,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not git_processes_for(proxy.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert git_processes_for(proxy.port), "git never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert err.strip().splitlines()[-1].endswith("interrupted")
        time.sleep(0.2)
        assert git_processes_for(proxy.port) == []
        assert not (workspace / "src").exists()
