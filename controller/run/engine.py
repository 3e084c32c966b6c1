"""Run a rendered Pod through the Docker Engine API, the way a kubelet runs it.

One run owns everything it makes: a sandbox container holding the network namespace (and
making the emptyDir volumes writable by any user, as a kubelet's are), one docker volume per
emptyDir, a private host directory with the Secrets in the kubelet's layout and one
termination-message file per container, then the containers, one at a time. All of it carries
the label `stepkit.run=<run id>` and is removed at the end, on failure and on Ctrl-C alike
(`--keep` keeps the containers and volumes of a finished run for a look).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import json
import os
import re
import secrets as pyrandom
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stepkit.errors import InputError, StepkitError

RUN_LABEL = "stepkit.run"
TERMINATION_DEFAULT = "/dev/termination-log"
SANDBOX_ROOT = "/stepkit-volumes"
LAST_LINES = 10
MAX_TERMINATION_BYTES = 4096
PULL_POLICIES = ("never", "missing", "always")
# Runs in the sandbox, as root: the emptyDirs become mode 0777, as a kubelet makes them, then
# the process holds the network namespace until it is stopped (nop's tekton_run_indefinitely).
_SANDBOX_SCRIPT = (
    "import os, sys\n"
    "for p in sys.argv[1:]:\n"
    "    os.chmod(p, 0o777)\n"
    "os.execvp('stepkit', ['stepkit', 'nop', 'tekton_run_indefinitely'])\n"
)
_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_COLOURS = ("36", "35", "33", "32", "34", "96", "95", "93", "92", "94")


class RunError(StepkitError):
    """The run could not go on (no daemon, an image missing): one line, exit 1."""


@dataclass
class StepState:
    """One container of the Pod and what became of it."""

    name: str
    image: str
    status: str = "waiting"  # waiting, running, succeeded, failed, skipped, timed out, interrupted
    exit_code: int | None = None
    started: datetime | None = None
    finished: datetime | None = None
    message: str = ""
    results: list[dict[str, str]] = field(default_factory=list)
    container_id: str = ""

    @property
    def short(self) -> str:
        return self.name.removeprefix("build-step-")

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()


@dataclass
class Outcome:
    steps: list[StepState]
    started: datetime
    finished: datetime
    exit_code: int
    reason: str  # "" on success
    message: str


@dataclass(frozen=True)
class Settings:
    workspace: Path | None = None
    network_host: bool = False
    pull: str = "missing"
    keep: bool = False
    colour: bool = False
    extra_env: tuple[str, ...] = ()  # --env NAME=VALUE, after each container's own
    out: Callable[[str], None] = field(default=lambda text: _write(sys.stdout, text))
    err: Callable[[str], None] = field(default=lambda text: _write(sys.stderr, text))


def _write(stream: Any, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def _now() -> datetime:
    return datetime.now(UTC)


def _check_key(secret: str, key: str) -> str:
    """A key Kubernetes takes (IsConfigMapKey): it becomes a file name, so no `/`, no `..`."""
    if not _KEY.fullmatch(key) or key in (".", "..") or key.startswith("..") or len(key) > 253:
        shown = key.encode("unicode_escape").decode("ascii")[:80]
        raise InputError(
            f"Secret {secret!r}: key {shown!r} is not a valid key (letters, digits, '-', '_', "
            "'.'; not '.' or starting with '..')"
        )
    return key


def secret_files(raw: Any, name: str) -> dict[str, bytes]:
    """The keys and values of a Secret document (data base64, stringData as is)."""
    files: dict[str, bytes] = {}
    data = raw.get("data") if hasattr(raw, "get") else None
    if isinstance(data, dict):
        for key, value in data.items():
            try:
                files[_check_key(name, str(key))] = base64.b64decode(
                    str(value or ""), validate=True
                )
            except ValueError:
                raise InputError(
                    f"Secret {name!r}: data.{key} is not base64 (stringData takes plain text)"
                ) from None
    string_data = raw.get("stringData") if hasattr(raw, "get") else None
    if isinstance(string_data, dict):
        for key, value in string_data.items():
            files[_check_key(name, str(key))] = str(value if value is not None else "").encode()
    return files


def lay_out_secret(root: Path, files: dict[str, bytes]) -> None:
    """The kubelet's layout: `<key> -> ..data/<key>`, `..data -> ..<timestamp>/`, files 0644."""
    root.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.mkdir(mode=0o755)
    stamp = "..{}".format(_now().strftime("%Y_%m_%d_%H_%M_%S.%f"))
    (root / stamp).mkdir(mode=0o755)
    for key, value in files.items():
        target = root / stamp / key
        target.write_bytes(value)
        target.chmod(0o644)
        (root / key).symlink_to(Path("..data") / key)
    (root / "..data").symlink_to(stamp)


def argv_for(container: dict[str, Any], config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Entrypoint and cmd as Kubernetes picks them: `command` replaces the image's ENTRYPOINT
    (and drops its CMD), `args` replace its CMD."""
    command = container.get("command")
    args = container.get("args")
    entrypoint = list(command) if command else list(config.get("Entrypoint") or [])
    if args:
        cmd = list(args)
    elif command:
        cmd = []
    else:
        cmd = list(config.get("Cmd") or [])
    return entrypoint, cmd


class Runner:
    """Runs one Pod; `run()` returns its Outcome; everything it made is gone when it returns."""

    def __init__(
        self,
        client: Any,
        pod: dict[str, Any],
        secrets: dict[str, dict[str, bytes]],
        settings: Settings,
    ) -> None:
        self.client = client
        self.pod = pod
        self.secrets = secrets
        self.settings = settings
        self.run_id = pyrandom.token_hex(4)
        build = pod["metadata"].get("labels", {}).get("build.knative.dev/buildName", "build")
        self.prefix = f"stepkit-{build[:40]}-{self.run_id}"
        self.labels = {RUN_LABEL: self.run_id, "stepkit.build": build}
        spec = pod["spec"]
        self.containers: list[dict[str, Any]] = [
            *spec.get("initContainers", []),
            *spec["containers"],
        ]
        self.steps = [StepState(c["name"], c["image"]) for c in self.containers]
        self.deadline_seconds: int | None = spec.get("activeDeadlineSeconds")
        self._made_containers: list[Any] = []
        self._made_volumes: list[Any] = []
        self._host_dir: Path | None = None
        self._current: Any = None
        self._timed_out = threading.Event()
        self._lock = threading.Lock()
        self._image_config: dict[str, dict[str, Any]] = {}

    # ---- images -----------------------------------------------------------------------------

    def ensure_images(self) -> None:
        import docker.errors

        images = list(dict.fromkeys(c["image"] for c in self.containers))
        for image in images:
            present = None
            if self.settings.pull != "always":
                with contextlib.suppress(docker.errors.ImageNotFound):
                    present = self.client.images.get(image)
            if present is None:
                if self.settings.pull == "never":
                    raise RunError(f"image {image} is not on the daemon and --pull is never")
                self.settings.err(f"pulling {image}")
                try:
                    present = self.client.images.pull(image)
                except docker.errors.APIError as exc:
                    raise RunError(f"image {image}: pull failed: {_explain(exc)}") from None
            self._image_config[image] = dict(present.attrs.get("Config") or {})

    # ---- what the run makes -----------------------------------------------------------------

    def _volume_sources(self) -> dict[str, tuple[str, str]]:
        """Pod volume name -> (kind, source): ("volume", docker volume name) or ("bind", host path)."""
        assert self._host_dir is not None
        sources: dict[str, tuple[str, str]] = {}
        for volume in self.pod["spec"].get("volumes", []):
            name = volume["name"]
            if name == "workspace" and self.settings.workspace is not None:
                sources[name] = ("bind", str(self.settings.workspace))
            elif "emptyDir" in volume:
                made = self.client.volumes.create(
                    name=f"{self.prefix}-{name}"[:200], labels=self.labels
                )
                self._made_volumes.append(made)
                sources[name] = ("volume", made.name)
            elif "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                files = self.secrets[secret_name]
                items = volume["secret"].get("items")
                if items:
                    files = {i["path"]: files[i["key"]] for i in items if i["key"] in files}
                path = self._host_dir / "secrets" / name
                lay_out_secret(path, files)
                sources[name] = ("bind", str(path))
            elif "hostPath" in volume:
                sources[name] = ("bind", volume["hostPath"]["path"])
            else:
                kind = next((k for k in volume if k != "name"), "?")
                raise InputError(
                    f"volume {name!r}: a {kind} volume needs a cluster; stepkit run takes "
                    "emptyDir, secret and hostPath volumes"
                )
        return sources

    def _check_volumes(self) -> None:
        """Before anything is made: every volume is one stepkit run can provide."""
        for volume in self.pod["spec"].get("volumes", []):
            name = volume["name"]
            if "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                if secret_name not in self.secrets:
                    raise InputError(
                        f"volume {name!r}: Secret {secret_name!r} has no data in the input "
                        "(stepkit run mounts its keys: give data or stringData)"
                    )
                for item in volume["secret"].get("items") or []:
                    parts = str(item.get("path", "")).split("/")
                    if not item.get("path") or item["path"].startswith("/") or ".." in parts:
                        raise InputError(
                            f"volume {name!r}: items path {item.get('path')!r} must be relative, "
                            "without '..'"
                        )
                    if item["key"] not in self.secrets[secret_name]:
                        raise InputError(
                            f"volume {name!r}: Secret {secret_name!r} has no key {item['key']!r}"
                        )
            elif not any(k in volume for k in ("emptyDir", "hostPath")):
                kind = next((k for k in volume if k != "name"), "?")
                raise InputError(
                    f"volume {name!r}: a {kind} volume needs a cluster; stepkit run takes "
                    "emptyDir, secret and hostPath volumes"
                )
        for container in self.containers:
            for env in container.get("env", []):
                if "valueFrom" in env:
                    raise InputError(
                        f"container {container['name']!r}: env {env['name']!r}: valueFrom needs "
                        "a cluster; give a value"
                    )

    def _start_sandbox(self, sources: dict[str, tuple[str, str]]) -> str:
        """The pod's sandbox: holds the network namespace; first makes the emptyDirs 0777."""
        nop = self.pod["spec"]["containers"][-1]["image"]
        mounts, paths = [], []
        for i, (name, (kind, source)) in enumerate(sources.items()):
            volume = next(v for v in self.pod["spec"]["volumes"] if v["name"] == name)
            if "emptyDir" in volume or (kind == "bind" and name == "workspace"):
                target = f"{SANDBOX_ROOT}/{i}"
                mounts.append(_mount(kind, source, target, read_only=False))
                paths.append(target)
        sandbox = self.client.containers.create(
            nop,
            entrypoint=["python3", "-c", _SANDBOX_SCRIPT, *paths],
            command=[],
            user="0",
            name=f"{self.prefix}-sandbox",
            labels=self.labels,
            mounts=mounts,
            network_mode="host" if self.settings.network_host else None,
            detach=True,
        )
        self._made_containers.append(sandbox)
        sandbox.start()
        # nop prints its line once the modes are set; then the steps may start.
        deadline = time.monotonic() + 60
        while b"Build successful" not in sandbox.logs():
            sandbox.reload()
            if sandbox.status not in ("created", "running") or time.monotonic() > deadline:
                tail = sandbox.logs().decode(errors="replace").strip().splitlines()[-3:]
                raise RunError(f"the sandbox container did not start: {' / '.join(tail)}")
            time.sleep(0.05)
        return str(sandbox.id)

    def _create(
        self, container: dict[str, Any], sources: dict[str, tuple[str, str]], network: str
    ) -> tuple[Any, Path]:
        assert self._host_dir is not None
        name = container["name"]
        config = self._image_config[container["image"]]
        entrypoint, cmd = argv_for(container, config)
        mounts = []
        for m in container.get("volumeMounts", []):
            kind, source = sources[m["name"]]
            sub = m.get("subPath")
            if sub and kind == "bind":
                source = str(Path(source) / sub)
                Path(source).mkdir(parents=True, exist_ok=True)
            mount = _mount(kind, source, m["mountPath"], read_only=bool(m.get("readOnly")))
            if sub and kind == "volume":
                mount["VolumeOptions"] = {"Subpath": sub}
            mounts.append(mount)
        # The termination message: a file of the run's own, writable by any user, as the kubelet's.
        message = self._host_dir / "termination" / name
        message.parent.mkdir(exist_ok=True)
        message.touch(mode=0o666)
        message.chmod(0o666)
        path = container.get("terminationMessagePath") or TERMINATION_DEFAULT
        mounts.append(_mount("bind", str(message), path, read_only=False))
        env = [f"{e['name']}={e.get('value', '')}" for e in container.get("env", [])]
        env.extend(self.settings.extra_env)
        security = container.get("securityContext") or {}
        pod_security = self.pod["spec"].get("securityContext") or {}
        uid = security.get("runAsUser", pod_security.get("runAsUser"))
        gid = security.get("runAsGroup", pod_security.get("runAsGroup"))
        user = None
        if uid is not None:
            user = f"{uid}:{gid}" if gid is not None else str(uid)
        elif gid is not None:
            image_user = str(config.get("User") or "0").split(":")[0]
            user = f"{image_user}:{gid}"
        kwargs: dict[str, Any] = {}
        if entrypoint:
            kwargs["entrypoint"] = entrypoint
        made = self.client.containers.create(
            container["image"],
            command=cmd,
            environment=env,
            working_dir=container.get("workingDir") or None,
            user=user,
            name=f"{self.prefix}-{name}"[:250],
            labels=self.labels,
            mounts=mounts,
            network_mode=network,
            detach=True,
            **kwargs,
        )
        self._made_containers.append(made)
        return made, message

    # ---- running ----------------------------------------------------------------------------

    def _stream(
        self, state: StepState, made: Any, colour: str, last: collections.deque[str]
    ) -> tuple[str, int]:
        label = f"[{state.short}]"
        if self.settings.colour:
            label = f"\033[{colour}m{label}\033[0m"
        pending = b""
        shown = 0
        for chunk in made.logs(stream=True, follow=True, stdout=True, stderr=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip("\r")
                last.append(text)
                shown += 1
                self.settings.out(f"{label} {text}")
        if pending:
            text = pending.decode(errors="replace")
            last.append(text)
            shown += 1
            self.settings.out(f"{label} {text}")
        return label, shown

    def _rest(self, made: Any, label: str, shown: int, last: collections.deque[str]) -> None:
        """Lines the live stream did not show (podman's follow may end before the log's end)."""
        whole = made.logs(stdout=True, stderr=True).decode(errors="replace").splitlines()
        for text in whole[shown:]:
            last.append(text)
            self.settings.out(f"{label} {text}")

    def _termination(self, made: Any, path: str, host_file: Path) -> str:
        """The termination message as the kubelet reads it: the file in the stopped container."""
        text = b""
        try:
            bits, _stat = made.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
                member = tar.next()
                if member is not None and member.isfile():
                    handle = tar.extractfile(member)
                    text = handle.read(MAX_TERMINATION_BYTES) if handle else b""
        except Exception:  # a daemon that cannot archive a bind mount: the file itself
            with contextlib.suppress(OSError):
                text = host_file.read_bytes()[:MAX_TERMINATION_BYTES]
        return text.decode(errors="replace").strip()

    def _on_deadline(self) -> None:
        self._timed_out.set()
        with self._lock:
            current = self._current
        if current is not None:
            with contextlib.suppress(Exception):
                current.kill()

    def run(self) -> Outcome:
        import docker.errors

        self._check_volumes()
        started = _now()
        self._host_dir = Path(tempfile.mkdtemp(prefix="stepkit-run-"))
        timer: threading.Timer | None = None
        n = len(self.containers)
        exit_code, reason, message = 0, "", ""
        try:
            self.ensure_images()
            sources = self._volume_sources()
            sandbox = self._start_sandbox(sources)
            network = "host" if self.settings.network_host else f"container:{sandbox}"
            if self.deadline_seconds:
                timer = threading.Timer(self.deadline_seconds, self._on_deadline)
                timer.daemon = True
                timer.start()
            for k, (container, state) in enumerate(zip(self.containers, self.steps, strict=True)):
                if self._timed_out.is_set():
                    state.status = "skipped"
                    continue
                self.settings.err(f"step {k + 1} of {n}: {state.short} ({state.image})")
                made, host_file = self._create(container, sources, network)
                last: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
                state.status = "running"
                state.started = _now()
                with self._lock:
                    self._current = made
                try:
                    made.start()
                    if self._timed_out.is_set():  # the deadline passed as it started
                        made.kill()
                    label, shown = self._stream(state, made, _COLOURS[k % len(_COLOURS)], last)
                    code = int(made.wait().get("StatusCode", 1))
                    self._rest(made, label, shown, last)
                finally:
                    with self._lock:
                        self._current = None
                state.finished = _now()
                state.exit_code = code
                state.container_id = str(made.id)
                path = container.get("terminationMessagePath") or TERMINATION_DEFAULT
                state.message = self._termination(made, path, host_file)
                state.results = _results(state.message)
                if self._timed_out.is_set():
                    state.status = "timed out"
                    exit_code, reason = 1, "BuildTimeout"
                    message = f"Build timed out after {self.deadline_seconds}s (spec.timeout)"
                    self.settings.err(f"step {state.short} stopped: {message}")
                    continue
                if code != 0:
                    state.status = "failed"
                    exit_code, reason = code, "BuildFailed"
                    message = f"step {state.short} failed with exit code {code}"
                    self.settings.err(message + "; its last lines:")
                    for line in last:
                        self.settings.err(f"  | {line}")
                    for rest in self.steps[k + 1 :]:
                        rest.status = "skipped"
                    break
                state.status = "succeeded"
        except KeyboardInterrupt:
            for state in self.steps:
                if state.status == "running":
                    state.status = "interrupted"
                    state.finished = _now()
            raise
        except docker.errors.DockerException as exc:
            raise RunError(f"the container engine refused: {_explain(exc)}") from None
        finally:
            if timer is not None:
                timer.cancel()
            self._cleanup()
        return Outcome(self.steps, started, _now(), exit_code, reason, message)

    def _cleanup(self) -> None:
        """Remove what this run made (the --workspace directory stays); never raises."""
        with self._lock:
            current = self._current
        if current is not None:
            with contextlib.suppress(Exception):
                current.kill()
        if not self.settings.keep:
            for made in reversed(self._made_containers):
                with contextlib.suppress(Exception):
                    made.remove(force=True, v=False)
            for volume in self._made_volumes:
                with contextlib.suppress(Exception):
                    volume.remove(force=True)
            # What an interrupted create made before its answer came: found by the run's label.
            label = f"{RUN_LABEL}={self.run_id}"
            with contextlib.suppress(Exception):
                for made in self.client.containers.list(all=True, filters={"label": label}):
                    with contextlib.suppress(Exception):
                        made.remove(force=True)
            with contextlib.suppress(Exception):
                for volume in self.client.volumes.list(filters={"label": label}):
                    with contextlib.suppress(Exception):
                        volume.remove(force=True)
        else:
            for made in self._made_containers:
                with contextlib.suppress(Exception):
                    made.stop(timeout=1)
        if self._host_dir is not None:
            shutil.rmtree(self._host_dir, ignore_errors=True)


def _mount(kind: str, source: str, target: str, *, read_only: bool) -> dict[str, Any]:
    from docker.types import Mount

    mount: dict[str, Any] = Mount(
        target=target,
        source=source,
        type="volume" if kind == "volume" else "bind",
        read_only=read_only,
    )
    return mount


def _results(message: str) -> list[dict[str, str]]:
    """Termination-message results: JSON [{"key": ..., "value": ...}], else none."""
    if not message.startswith("["):
        return []
    try:
        parsed = json.loads(message)
    except ValueError:
        return []
    if not isinstance(parsed, list):
        return []
    return [
        {"key": str(r.get("key", "")), "value": str(r.get("value", ""))}
        for r in parsed
        if isinstance(r, dict) and "key" in r
    ]


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    text = str(explanation or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def table(steps: list[StepState]) -> Iterator[str]:
    """The closing table: step, image, duration, status, results."""
    rows = [("STEP", "IMAGE", "DURATION", "STATUS", "RESULTS")]
    for s in steps:
        secs = s.seconds
        duration = f"{secs:.1f}s" if secs is not None else "-"
        status = s.status if s.exit_code in (None, 0) else f"{s.status} ({s.exit_code})"
        results = ", ".join(f"{r['key']}={r['value']}" for r in s.results) or "-"
        rows.append((s.short, s.image, duration, status, results))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        yield (
            "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
            + "  "
            + row[4]
        )


def _stamp(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else None


def build_status(outcome: Outcome, pod: dict[str, Any]) -> dict[str, Any]:
    """Knative Build v0.7's BuildStatus: builder, cluster, times, stepStates, stepsCompleted,
    and the Succeeded condition."""
    condition: dict[str, Any] = {
        "type": "Succeeded",
        "status": "True" if outcome.exit_code == 0 and not outcome.reason else "False",
        "lastTransitionTime": _stamp(outcome.finished),
    }
    if outcome.reason:
        condition["reason"] = outcome.reason
        condition["message"] = outcome.message
    states: list[dict[str, Any]] = []
    for s in outcome.steps:
        if s.exit_code is not None:
            terminated: dict[str, Any] = {
                "exitCode": s.exit_code,
                "reason": "Completed" if s.exit_code == 0 else "Error",
                "startedAt": _stamp(s.started),
                "finishedAt": _stamp(s.finished),
                "containerID": f"docker://{s.container_id}",
            }
            if s.message:
                terminated["message"] = s.message
            states.append({"name": s.name, "terminated": terminated})
        else:
            states.append({"name": s.name, "waiting": {"reason": "PodInitializing"}})
    return {
        "builder": "Cluster",
        "cluster": {
            "namespace": pod["metadata"].get("namespace", "default"),
            "podName": pod["metadata"]["name"],
        },
        "startTime": _stamp(outcome.started),
        "completionTime": _stamp(outcome.finished),
        "stepStates": states,
        "stepsCompleted": [s.name for s in outcome.steps if s.exit_code is not None],
        "conditions": [condition],
    }


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Whole or not at all: a temporary file beside it, renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(status, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
