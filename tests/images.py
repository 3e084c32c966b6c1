"""Run the built images as a pod would: pod-like mounts, any UID, a read-only root filesystem.

    images = ensure_images()              # make images-local, once per session; fails, never skips
    res = run_image(images["nop"], [], workspace=ws, home=home, secrets=None)
    res = run_image(images["creds-init"], ["-basic-git=a=https://h"], workspace=ws, home=home,
                    secrets=secrets_dir, user="1000630000:0")

run_image runs `buildah run --isolation chroot` with /workspace, /builder/home and (read-only)
/var/build-secrets mounted, under `user`, with the image's ENTRYPOINT followed by `args` (or
its CMD when args is empty) -- `buildah run` ignores the ENTRYPOINT, so it is read from the
image and prepended; the test runs exactly what a kubelet would.

The root filesystem is read-only (read_only=True, the default), as with a pod's
`readOnlyRootFilesystem: true`. `buildah run` has no option for that, so the container's root
directory is bind-mounted read-only onto itself inside a private mount namespace (`unshare
--mount`) that `buildah run` then runs in; nothing changes outside that namespace, and nothing
needs undoing if the test dies. Two details differ from a kubelet: /run is an empty tmpfs,
root-owned and mode 0755 (buildah must create and remove /run/.containerenv there, and fails on
a read-only /run), which a non-root user cannot write either; and mount points for the volumes
are created in the container's root beforehand, as a container runtime does.

Because such a run can change nothing in the container, one container per image serves the
whole session (`buildah from` copies the image's whole root with the vfs driver, ~8 s). With
read_only=False every run gets a fresh container, removed afterwards.

Network: chroot isolation shares the host's network namespace, so a server the test starts
on 127.0.0.1 is reachable from inside the container at the same address.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stepkit import __version__

ROOT = Path(__file__).resolve().parent.parent
STORAGE_DRIVER = os.environ.get("STORAGE_DRIVER", "vfs")
# Where the test images are tagged: `make images-local`'s default, or another repository when
# several checkouts share one machine's containers storage (each its own, so no checkout's
# tests run another's images).
IMAGE_REPO = os.environ.get("STEPKIT_TEST_IMAGE_REPO", "localhost/stepkit")
HELPERS = (
    "nop",
    "creds-init",
    "git-init",
    "gcs-fetcher",
    "image-fetcher",
    "ssh",
    "git-push",
    "docker",
)
POD_WORKSPACE = "/workspace"
POD_HOME = "/builder/home"
POD_SECRETS = "/var/build-secrets"
DEFAULT_USER = "65532:65532"
BUILD_TIMEOUT = 1800.0
_CONTAINER_PREFIX = "stepkit-test-"
# What buildah itself appends to stderr when the command exits non-zero.
_BUILDAH_TRAILER = re.compile(
    r"(?:^subprocess exited with status \d+\n|^Error: exit status \d+\n"
    r"|^Error: while running runtime: exit status \d+\n)+\Z",
    re.M,
)
# Runs inside the private mount namespace: root read-only, /run a fresh root-only tmpfs,
# then exec buildah. The paths arrive as arguments, never as part of the script.
_READ_ONLY_ROOT = (
    'set -e; root=$1; shift; mount --bind "$root" "$root"; '
    'mount -o remount,bind,ro "$root"; '
    'mount -t tmpfs -o mode=0755,size=1m,nosuid,nodev,noexec stepkit-run "$root/run"; '
    'exec "$@"'
)


def buildah(*args: str, timeout: float = 300) -> str:
    """A buildah command on the images' storage; its stdout. Raises with stderr on failure."""
    proc = subprocess.run(
        ["buildah", "--storage-driver", STORAGE_DRIVER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc.stdout


@functools.cache
def ensure_images() -> dict[str, str]:
    """Build the images (make images-local) once per session; name -> image reference.

    A build failure raises, so every test that needs an image fails rather than skips. An
    image already built from the same inputs costs a fraction of a second.
    """
    lock_path = ROOT / ".images" / ".build-lock"
    lock_path.parent.mkdir(exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build one at a time
        proc = subprocess.run(
            [
                "make",
                "-s",
                "--no-print-directory",
                "images-local",
                f"STORAGE_DRIVER={STORAGE_DRIVER}",
                f"IMAGE_REPO={IMAGE_REPO}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"make images-local failed (exit {proc.returncode}):\n{tail}")
    return {name: f"{IMAGE_REPO}-{name}:{__version__}" for name in ("base", *HELPERS)}


@functools.cache
def image_config(image: str) -> dict[str, Any]:
    """The image's OCI config (Entrypoint, Cmd, Env, User, WorkingDir, Labels)."""
    data = json.loads(buildah("inspect", "--type", "image", image))
    config: dict[str, Any] = data["OCIv1"].get("config", {})
    return config


def command_for(
    image: str, args: Sequence[str], entrypoint: Sequence[str] | None = None
) -> list[str]:
    """What a container runtime runs: ENTRYPOINT + args, or ENTRYPOINT + CMD without args.

    entrypoint replaces the image's ENTRYPOINT and CMD, as a pod's `command:` does.
    """
    if entrypoint is not None:
        return [*entrypoint, *args]
    config = image_config(image)
    entrypoint = list(config.get("Entrypoint") or [])
    command = list(args) if args else list(config.get("Cmd") or [])
    argv = entrypoint + command
    if not argv:
        raise ValueError(f"{image} has neither ENTRYPOINT nor CMD, and no args were given")
    return argv


class _Container:
    """A working container of one image and its root directory on the host."""

    def __init__(self, image: str, name: str) -> None:
        self.image = image
        self.name = name
        self.id = buildah("from", "--pull=never", "--quiet", "--name", name, image).strip()
        self.root = Path(buildah("mount", self.id).strip())

    def ensure_mount_point(self, target: str, source: Path) -> None:
        """Create a volume's mount point (dir, or file for a file), as runtimes do; no symlinks."""
        current = self.root
        parts = [p for p in target.split("/") if p]
        for i, part in enumerate(parts):
            current = current / part
            if current.is_symlink():
                raise ValueError(f"mount point {target} passes through a symlink in the image")
            last = i == len(parts) - 1
            if last and source.is_file():
                if not current.exists():
                    current.touch(mode=0o644)
            elif not current.exists():
                current.mkdir(mode=0o755)

    def remove(self) -> None:
        subprocess.run(
            ["buildah", "--storage-driver", STORAGE_DRIVER, "rm", self.id],
            capture_output=True,
            check=False,
        )


_shared: dict[str, _Container] = {}
_shared_lock = threading.Lock()


def _container_name(image: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", image.rsplit("/", 1)[-1].lower()).strip("-")
    return f"{_CONTAINER_PREFIX}{os.getpid()}-{slug}"


def _remove_stale() -> None:
    """Containers a crashed session left behind (the pid in the name is gone)."""
    listing = json.loads(buildah("containers", "--json") or "null") or []
    for entry in listing:
        name = str(entry.get("containername", ""))
        match = re.match(re.escape(_CONTAINER_PREFIX) + r"(\d+)-", name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            subprocess.run(
                ["buildah", "--storage-driver", STORAGE_DRIVER, "rm", str(entry["id"])],
                capture_output=True,
                check=False,
            )
        except PermissionError:
            pass


def _cleanup() -> None:
    with _shared_lock:
        for container in _shared.values():
            container.remove()
        _shared.clear()


def _shared_container(image: str) -> _Container:
    with _shared_lock:
        if image not in _shared:
            if not _shared:
                _remove_stale()
                atexit.register(_cleanup)
            _shared[image] = _Container(image, _container_name(image))
        return _shared[image]


_fresh_count = 0


def _fresh_container(image: str) -> _Container:
    global _fresh_count
    with _shared_lock:
        _fresh_count += 1
        name = f"{_container_name(image)}-{_fresh_count}"
    return _Container(image, name)


def emptydir(path: Path) -> Path:
    """A directory like a kubelet's emptyDir volume: mode 0777, so any UID can write it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


def run_image(
    image: str,
    args: Sequence[str],
    *,
    workspace: Path,
    home: Path,
    secrets: Path | None,
    user: str = DEFAULT_USER,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    read_only: bool = True,
    mounts: Sequence[tuple[Path, str, bool]] = (),
    workdir: str | None = None,
    entrypoint: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run image's entrypoint with args in a pod-like container; its exit code and output.

    workspace -> /workspace and home -> /builder/home (read-write; make them writable by
    `user`, e.g. with emptydir()), secrets -> /var/build-secrets (read-only) when given,
    mounts: more (host path, container path, read_only) volumes. HOME=/builder/home as in a pod
    (the image sets it too); env adds variables; entrypoint replaces the image's ENTRYPOINT
    (and CMD), as a pod's `command:` does. stderr has buildah's own trailing "exit
    status" lines removed. On timeout the whole run is killed and TimeoutExpired raised.
    """
    argv = command_for(image, args, entrypoint)
    volumes: list[tuple[Path, str, bool]] = [
        (workspace, POD_WORKSPACE, False),
        (home, POD_HOME, False),
    ]
    if secrets is not None:
        volumes.append((secrets, POD_SECRETS, True))
    volumes += list(mounts)
    for source, target, _ro in volumes:
        if not source.exists():
            raise FileNotFoundError(f"volume source {source} does not exist")
        if any(c in f"{source.resolve()}{target}" for c in ":,"):
            raise ValueError(f"buildah --volume cannot take ':' or ',' in {source} or {target}")

    container = _shared_container(image) if read_only else _fresh_container(image)
    try:
        for source, target, _ro in volumes:
            container.ensure_mount_point(target, source)
        command = ["buildah", "--storage-driver", STORAGE_DRIVER, "run", "--isolation", "chroot"]
        command += ["--network", "host"]  # chroot shares it anyway; say so
        for source, target, ro in volumes:
            command += ["--volume", f"{source.resolve()}:{target}:{'ro' if ro else 'rw'}"]
        command += ["--user", user, "--env", f"HOME={POD_HOME}"]
        for key, value in (env or {}).items():
            command += ["--env", f"{key}={value}"]
        if workdir is not None:
            command += ["--workingdir", workdir]
        command += [container.id, "--", *argv]
        if read_only:
            command = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                _READ_ONLY_ROOT,
                "sh",
                str(container.root),
                *command,
            ]
        return _run(command, timeout)
    finally:
        if not read_only:
            container.remove()


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run in a process group of its own, so a timeout kills buildah and the container's processes."""
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
    if proc.returncode != 0:
        stderr = _BUILDAH_TRAILER.sub("", stderr)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
