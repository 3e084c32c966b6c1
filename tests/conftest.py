"""Shared fixtures: an isolated HOME per test, secrets laid out as the kubelet mounts them, and leak checks."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from tests.gcspeers import FakeGcs, GcsFaultProxy

STEPKIT = shutil.which("stepkit", path=str(Path(sys.executable).parent)) or "stepkit"
REAL_HOME = Path(os.environ.get("HOME", "/root"))
_GUARDED = (".gitconfig", ".git-credentials", ".ssh", ".docker")


def _snapshot(home: Path) -> dict[str, float]:
    seen: dict[str, float] = {}
    for name in _GUARDED:
        path = home / name
        if path.is_dir():
            for sub in path.rglob("*"):
                seen[str(sub)] = sub.lstat().st_mtime
        elif path.exists() or path.is_symlink():
            seen[str(path)] = path.lstat().st_mtime
    return seen


@pytest.fixture(autouse=True)
def _guard_real_home() -> Iterator[None]:
    """Fail the test that wrote credentials into the developer's real HOME (checked per test,
    so the failure names the culprit)."""
    before = _snapshot(REAL_HOME)
    yield
    after = _snapshot(REAL_HOME)
    assert after == before, f"this test changed credential files in the real HOME {REAL_HOME}"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own HOME and a git/ssh/docker environment with nothing inherited."""
    home = tmp_path / "home"
    home.mkdir()
    for name in list(os.environ):
        if name.startswith(("GIT_", "STEPKIT_", "SSH_", "DOCKER_")) or name in ("XDG_CONFIG_HOME",):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    return home


@dataclass
class Secrets:
    """A secrets directory with the kubelet's layout: `<name>/<key> -> ..data/<key>`, `..data -> ..<ts>`."""

    root: Path
    values: list[str] = field(default_factory=list)

    def add(
        self, name: str, keys: Mapping[str, str | bytes], *, hidden: tuple[str, ...] = ()
    ) -> Path:
        base = self.root / name
        stamp = base / "..2026_11_27_00_00_00.000000001"
        stamp.mkdir(parents=True)
        for key, value in keys.items():
            data = value.encode() if isinstance(value, str) else value
            (stamp / key).write_bytes(data)
            (base / key).symlink_to(Path("..data") / key)
        (base / "..data").symlink_to(stamp.name)
        for key in hidden or tuple(k for k in keys if k in SECRET_KEYS):
            value = keys[key]
            text = value.decode() if isinstance(value, bytes) else value
            self.values.append(text)
            if text.endswith("\n"):
                self.values.append(text[:-1])
        return base


SECRET_KEYS = ("password", "ssh-privatekey", ".dockerconfigjson", ".dockercfg")


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    root = tmp_path / "secrets"
    root.mkdir()
    return Secrets(root)


def leak_forms(value: str) -> set[str]:
    """Every spelling of a secret that must not appear in any output."""
    raw = value.encode()
    forms = {value, quote(value, safe=""), base64.b64encode(raw).decode()}
    for line in value.splitlines():
        if len(line) >= 8:
            forms.add(line)
    return {f for f in forms if len(f) >= 3}


def assert_no_leak(text: str, values: list[str]) -> None:
    for value in values:
        for form in leak_forms(value):
            assert form not in text, "a secret value (or an encoded form) appeared in the output"


# Each path below a root: (st_mode, content or link target).
Snapshot = dict[str, tuple[int, bytes]]


def snapshot(root: Path) -> Snapshot:
    """Every path below root with its mode and content (or link target)."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            else:
                data = b""
            out[str(path.relative_to(root))] = (st.st_mode, data)
    return out


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_stepkit(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> Run:
    """Run the installed console script as a user would, in a real process."""
    full = dict(os.environ)
    if env:
        full.update(env)
    proc = subprocess.run(
        [STEPKIT, *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An empty destination directory below a workspace, as a fetcher's -dest_dir."""
    path = tmp_path / "workspace" / "src"
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    """One fake-gcs-server per test module; each test makes its own bucket on it."""
    from tests.gcspeers import FakeGcs  # only modules that talk to GCS pay for it

    with FakeGcs(tmp_path_factory.mktemp("fake-gcs")) as server:
        yield server


@pytest.fixture
def gcs_proxy(gcs: FakeGcs) -> Iterator[GcsFaultProxy]:
    """A fault-injecting proxy in front of the module's fake-gcs-server."""
    from tests.gcspeers import GcsFaultProxy

    with GcsFaultProxy(gcs) as front:
        yield front
