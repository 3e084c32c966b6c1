"""A Docker Engine API on a machine without a Docker daemon: podman's API service, for `make
demo`, the docker builder's and `stepkit run`'s tests (tests/podman.py), and bench/run.py.

    with PodmanService(insecure_registries=["127.0.0.1:5000"]) as service:
        client = docker.DockerClient(base_url=service.url)   # "unix:///.../docker.sock"
        ...

The service shares the machine's containers storage (vfs, as tests/images.py and buildah
use), so the images `ensure_images()` built are there to run. What this machine needs and
a user's machine seldom does: runc is reached
through a shim that drops `process.rlimits` from the bundle's config.json, because this
sandbox refuses raising RLIMIT_NOFILE/NPROC. The shim, containers.conf and registries.conf
live in a temporary directory of the service's own; nothing global is changed.

A service that does not answer within `timeout` raises with the tail of its log: a test
that needs it fails, it never skips. The module imports nothing outside the standard library.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

STORAGE_DRIVER = os.environ.get("STORAGE_DRIVER", "vfs")
RUNC = "/usr/sbin/runc"

# The runtime shim: for `create` and `run`, remove process.rlimits from the bundle's
# config.json, then exec runc with the same arguments. Only this test machine needs it.
_SHIM = """\
import json, os, sys

args = sys.argv[1:]
verbs = {"create", "run"}
verb = next((a for a in args if not a.startswith("-") and a in verbs), None)
if verb is not None:
    bundle = "."
    for i, arg in enumerate(args):
        if arg in ("--bundle", "-b") and i + 1 < len(args):
            bundle = args[i + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    if config.get("process", {}).pop("rlimits", None) is not None:
        with open(path + ".tmp", "w") as f:
            json.dump(config, f)
        os.replace(path + ".tmp", path)
os.execv(RUNC, [RUNC, *args])
"""


class PodmanService:
    """podman's Docker-compatible API service on a unix socket of its own."""

    def __init__(
        self,
        *,
        insecure_registries: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> None:
        self.insecure_registries = list(insecure_registries)
        self.timeout = timeout
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("PodmanService is not running")
        return self._root

    @property
    def socket_path(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        """The DOCKER_HOST value that reaches the service."""
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.root / "service.log"

    def env(self) -> dict[str, str]:
        """What a `podman` command needs to see the service's configuration (for podman run)."""
        return {
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
        }

    def podman(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A podman command with the service's configuration and storage (not through the API)."""
        return subprocess.run(
            ["podman", "--storage-driver", STORAGE_DRIVER, *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _write_config(self, root: Path) -> None:
        shim = root / "runc-shim"
        shim.write_text(f"#!{sys.executable}\nRUNC = {RUNC!r}\n{_SHIM}")
        shim.chmod(0o755)
        (root / "containers.conf").write_text(
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root / "events.log"}"\n'
            "[engine.runtimes]\n"
            f'runc = ["{shim}"]\n'
        )
        lines = ['unqualified-search-registries = ["docker.io"]\n']
        for registry in self.insecure_registries:
            lines.append(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
        (root / "registries.conf").write_text("".join(lines))

    def _ping(self) -> bool:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            sock.connect(str(self.socket_path))
        except OSError:
            return False
        conn = http.client.HTTPConnection("localhost", timeout=2)
        conn.sock = sock
        try:
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def version(self) -> dict[str, object]:
        """The service's /version answer (what the docker SDK negotiates against)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.socket_path))
        conn = http.client.HTTPConnection("localhost", timeout=10)
        conn.sock = sock
        try:
            conn.request("GET", "/version")
            answer: dict[str, object] = json.loads(conn.getresponse().read())
            return answer
        finally:
            conn.close()

    def __enter__(self) -> Self:
        # A short path: a unix socket's path must stay under ~107 bytes.
        self._root = Path(tempfile.mkdtemp(prefix="stepkit-podman-"))
        self._write_config(self._root)
        log = self.log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                [
                    "podman",
                    "--storage-driver",
                    STORAGE_DRIVER,
                    "system",
                    "service",
                    "--time=0",
                    self.url,
                ],
                env={**os.environ, **self.env()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.timeout
        while not self._ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                code = self._proc.poll()
                self.__exit__(None, None, None)
                state = f"exited {code}" if code is not None else f"no answer in {self.timeout:g}s"
                raise RuntimeError(f"podman system service {state}; its log ends:\n{tail}")
            time.sleep(0.1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
