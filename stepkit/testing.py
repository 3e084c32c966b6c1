"""The builder test kit: run a builder (in process) or its image (as a pod step) and look at what it did.

    from stepkit.testing import assert_no_secret, run_builder

    def test_hello() -> None:
        run = run_builder(hello, ["-greeting=hi"], secrets={"token": "s3cret-token"})
        assert run.exit_code == 0
        assert run.results == {"message": "hi x1"}
        assert_no_secret(run.output, "s3cret-token")

`run_builder` gives the builder a temporary workspace (its working directory), home, secrets
directory, termination message and results directory, and puts everything back afterwards:
the environment, the working directory, the secret registry, logging, signal handlers and
sys.stdout/sys.stderr. `run_image` runs the builder's image the way a pod runs a step, through
the `docker` or `podman` command.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

from stepkit import secret
from stepkit.builder import Builder

__all__ = [
    "BuilderRun",
    "ImageRun",
    "Paths",
    "assert_no_secret",
    "read_termination",
    "run_builder",
    "run_image",
]

# Where run_image mounts the secrets directory in the container (read-only).
IMAGE_SECRETS = "/var/run/stepkit/secrets"
_ISOLATED_PREFIXES = ("STEPKIT_", "PARAM_")


@dataclass(frozen=True)
class Paths:
    """The directories and files of one run (on the host)."""

    root: Path
    workspace: Path
    home: Path
    secrets: Path
    results: Path
    termination: Path
    tekton_results: Path | None


@dataclass(frozen=True)
class BuilderRun:
    """What a builder did: its exit code, its results (from the termination message), its output
    (stdout and stderr as written, interleaved, masked) and where it ran.

    Unpacks as `exit_code, results, output, paths = run_builder(...)`.
    """

    exit_code: int
    results: dict[str, str]
    output: str
    paths: Paths
    stdout: str
    stderr: str

    def __iter__(self) -> Iterator[object]:
        return iter((self.exit_code, self.results, self.output, self.paths))


_roots: list[Path] = []


def _new_root(prefix: str, parent: Path | None) -> Path:
    """A directory for one run: in parent when given (pytest's tmp_path), else a temporary
    one removed when the interpreter exits (the test may look at it until then)."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if not _roots:
        atexit.register(_remove_roots)
    root = Path(tempfile.mkdtemp(prefix=prefix))
    _roots.append(root)
    return root


def _remove_roots() -> None:
    for root in _roots:
        shutil.rmtree(root, ignore_errors=True)
    _roots.clear()


def read_termination(path: Path) -> dict[str, str]:
    """The results a termination message holds ({} when it is empty or missing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    return {entry["key"]: entry["value"] for entry in json.loads(text)}


def _layout(
    root: Path, workspace: Path | None, home: Path | None, tekton: bool, mode: int
) -> Paths:
    def made(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        return path

    termination = root / "termination-log"
    termination.touch()
    termination.chmod(0o666 if mode == 0o777 else 0o644)
    tekton_results = made(root / "tekton" / "results") if tekton else None
    if tekton_results is not None:
        (root / "tekton").chmod(0o755)
    return Paths(
        root=root,
        workspace=workspace if workspace is not None else made(root / "workspace"),
        home=home if home is not None else made(root / "home"),
        secrets=made(root / "secrets"),
        results=made(root / "results"),
        termination=termination,
        tekton_results=tekton_results,
    )


def _secret_param_env(b: Builder, name: str) -> str:
    for param in b.params:
        if name in (param.name, param.attr):
            if not param.secret:
                raise ValueError(f"param {name!r} of {b.name} is not a secret")
            if not param.env_names:
                raise ValueError(f"param {name!r} of {b.name} reads no environment variable")
            return param.env_names[0]
    raise ValueError(f"{b.name} has no param {name!r}")


def _write_secrets(paths: Paths, secrets: Mapping[str, str], mode: int) -> dict[str, Path]:
    files = {}
    for name, value in secrets.items():
        path = paths.secrets / name
        path.write_bytes(value.encode())
        path.chmod(mode)
        files[name] = path
    return files


def run_builder(
    b: Builder,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    workspace: Path | None = None,
    home: Path | None = None,
    tekton: bool = False,
    root: Path | None = None,
) -> BuilderRun:
    """Run builder b in this process as a pod would run it, and return what it did.

    args: its arguments. env: environment variables on top of this process's (whose
    STEPKIT_* and PARAM_* variables are removed first, so the machine's settings don't
    leak in). secrets: {param name: value} for secret params, written to files in the
    secrets directory and handed over as `@FILE` through the param's first environment
    variable. workspace and home: directories to use instead of new empty ones. tekton:
    also give the builder a Tekton results directory (`paths.tekton_results`). root: where to
    make the run's directories (pytest's tmp_path, say); by default a temporary directory
    removed when the interpreter exits.

    A builder that calls exec_tool() has the program run as with run(check=False) instead
    (this process can't be replaced).
    """
    root = _new_root(f"stepkit-{b.name}-", root)
    paths = _layout(root, workspace, home, tekton, 0o700)
    files = _write_secrets(paths, secrets or {}, 0o600)
    saved_env = dict(os.environ)
    saved_secrets = secret.snapshot()
    chunks: list[tuple[int, bytes]] = []
    try:
        for key in list(os.environ):
            if key.startswith(_ISOLATED_PREFIXES):
                del os.environ[key]
        os.environ.update(
            {
                "HOME": str(paths.home),
                "STEPKIT_WORKSPACE": str(paths.workspace),
                "STEPKIT_TERMINATION_MESSAGE_PATH": str(paths.termination),
                "STEPKIT_RESULTS_DIR": str(paths.results),
            }
        )
        for name, path in files.items():
            os.environ[_secret_param_env(b, name)] = f"@{path}"
        os.environ.update(env or {})
        code = b._main(
            list(args),
            prog_name=b.name,
            out=lambda data: chunks.append((1, data)),
            err=lambda data: chunks.append((2, data)),
            tekton_dir=str(paths.tekton_results) if paths.tekton_results else None,
            can_exec=False,
        )
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        secret.restore(saved_secrets)

    def text(which: set[int]) -> str:
        return b"".join(d for n, d in chunks if n in which).decode("utf-8", "replace")

    return BuilderRun(
        exit_code=code,
        results=read_termination(paths.termination),
        output=text({1, 2}),
        paths=paths,
        stdout=text({1}),
        stderr=text({2}),
    )


def assert_no_secret(text: str, *values: str) -> None:
    """Fail when any value, or its base64 or percent-encoded form, appears in text."""
    for value in values:
        raw = value.encode()
        forms = {value, quote(value, safe=""), quote_plus(value, safe="")}
        forms |= {base64.b64encode(raw).decode().rstrip("=")}
        forms |= {base64.urlsafe_b64encode(raw).decode().rstrip("=")}
        for form in forms:
            if len(form) >= secret.MIN_LENGTH and form in text:
                raise AssertionError(
                    f"a secret ({len(value)} characters) or an encoded form of it is in the output"
                )


# -- images ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRun:
    """What a builder image did as a step: exit code, results, output and the host paths."""

    exit_code: int
    results: dict[str, str]
    output: str
    paths: Paths
    stdout: str
    stderr: str
    tekton_results: dict[str, str] | None

    def __iter__(self) -> Iterator[object]:
        return iter((self.exit_code, self.results, self.output, self.paths))


def engine_command(engine: str | None = None) -> list[str]:
    """The container engine's command: engine, else $ENGINE, else docker or podman (the first
    installed). It may hold options: ENGINE="podman --storage-driver vfs"."""
    chosen = engine or os.environ.get("ENGINE", "")
    if chosen:
        return shlex.split(chosen)
    for candidate in ("docker", "podman"):
        if shutil.which(candidate):
            return [candidate]
    raise FileNotFoundError("neither docker nor podman is installed (or set ENGINE)")


def run_image(
    image: str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    secret_env: Mapping[str, str] | None = None,
    workspace: Path | None = None,
    home: Path | None = None,
    user: str | None = None,
    tekton: bool = False,
    engine: str | None = None,
    network: str | None = None,
    entrypoint: Sequence[str] | None = None,
    read_only: bool = True,
    timeout: float = 600,
    root: Path | None = None,
) -> ImageRun:
    """Run image as a Knative or Tekton step: the entrypoint with args, in /workspace, HOME=/builder/home.

    The workspace and home are host directories (new, mode 0777 as an emptyDir, unless
    given) mounted at /workspace and /builder/home; the termination message is a file at
    /dev/termination-log, or with tekton=True /tekton/termination beside /tekton/results.
    secrets {name: value} are files in a directory mounted read-only at
    /var/run/stepkit/secrets; secret_env {ENV_NAME: secret name} hands one to the builder as
    `ENV_NAME=@/var/run/stepkit/secrets/<name>`. user: `UID[:GID]` (default: the image's).
    The root filesystem is read-only unless read_only=False, as with
    `readOnlyRootFilesystem: true`. entrypoint replaces the image's, as a pod's `command:`.
    root: where to make the run's directories, as for run_builder.
    """
    command = engine_command(engine)
    root = _new_root("stepkit-image-", root)
    root.chmod(0o755)
    paths = _layout(root, workspace, home, tekton, 0o777)
    paths.secrets.chmod(0o755)
    _write_secrets(paths, secrets or {}, 0o644)
    argv = [*command, "run", "--rm", "--workdir", "/workspace", "--env", "HOME=/builder/home"]
    argv += ["--volume", f"{paths.workspace}:/workspace"]
    argv += ["--volume", f"{paths.home}:/builder/home"]
    argv += ["--volume", f"{paths.secrets}:{IMAGE_SECRETS}:ro"]
    if tekton:
        argv += ["--volume", f"{root / 'tekton'}:/tekton"]
        (root / "tekton" / "termination").touch(mode=0o666)
        (root / "tekton" / "termination").chmod(0o666)
    else:
        argv += ["--volume", f"{paths.termination}:/dev/termination-log"]
    if read_only:
        argv += ["--read-only"]
        if Path(command[0]).name == "podman":
            argv += [
                "--read-only-tmpfs=false"
            ]  # podman would add writable /tmp, /run: a pod has none
    if user:
        argv += ["--user", user]
    if network:
        argv += ["--network", network]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    for key, name in (secret_env or {}).items():
        argv += ["--env", f"{key}=@{IMAGE_SECRETS}/{name}"]
    if entrypoint is not None:
        argv += ["--entrypoint", entrypoint[0]]
        args = [*entrypoint[1:], *args]
    argv += [image, *args]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    termination = root / "tekton" / "termination" if tekton else paths.termination
    tekton_results = None
    if paths.tekton_results is not None:
        tekton_results = {p.name: p.read_text() for p in paths.tekton_results.iterdir()}
    return ImageRun(
        exit_code=proc.returncode,
        results=read_termination(termination),
        output=proc.stdout + proc.stderr,
        paths=paths,
        stdout=proc.stdout,
        stderr=proc.stderr,
        tekton_results=tekton_results,
    )
