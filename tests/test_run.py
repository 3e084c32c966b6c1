"""`stepkit run` (SPEC §8) against a real Docker Engine API: podman's service (tests/podman.py),
our images (tests/images.py), a git http-backend demanding Basic auth (tests/peers.py).

The git server listens on the host's loopback, so the Builds that fetch from it run with
`--network host`; the others run in a network namespace of their own, held by the sandbox.
The server speaks plain http, which git-init refuses unless told: `--env
STEPKIT_GIT_ALLOW_HTTP=true` adds that to every container, as a PodPreset would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from tests.images import IMAGE_REPO, ensure_images
from tests.peers import GitHttpServer, make_bare, make_repo
from tests.podman import PodmanService

STEPKIT = str(Path(sys.executable).with_name("stepkit"))
TOKEN = "run-s3cret-token-771"


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    return ensure_images()


@pytest.fixture(scope="module")
def service(images: dict[str, str]) -> Iterator[PodmanService]:
    with PodmanService() as svc:
        yield svc


def _env(service: PodmanService) -> dict[str, str]:
    return {**os.environ, "DOCKER_HOST": service.url, "STEPKIT_RUN_IMAGE_REPO": IMAGE_REPO}


def stepkit_run(
    service: PodmanService, *args: str, timeout: float = 1500
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STEPKIT, "run", *args],
        env=_env(service),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def build(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "build.knative.dev/v1alpha1",
        "kind": "Build",
        "metadata": {"name": name},
        "spec": {**spec, "steps": steps},
    }


def left_behind(service: PodmanService, build_name: str) -> tuple[list[str], list[str]]:
    """Containers and volumes of this Build's runs that are still there."""
    client = docker.DockerClient(base_url=service.url)
    try:
        label = f"stepkit.build={build_name}"
        containers = [c.name for c in client.containers.list(all=True, filters={"label": label})]
        volumes = [v.name for v in client.volumes.list(filters={"label": label})]
        return containers, volumes
    finally:
        client.close()


def test_git_source_with_basic_auth_secret_and_a_result(
    service: PodmanService, images: dict[str, str], tmp_path: Path
) -> None:
    shas = make_repo(tmp_path / "src", commits=2)
    make_bare(tmp_path / "src", tmp_path / "srv" / "org" / "app.git")
    with GitHttpServer(tmp_path / "srv", {"": ("octocat", TOKEN)}) as server:
        files = write(
            tmp_path / "build.yaml",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": "git-token",
                    "annotations": {"build.knative.dev/git-0": server.url},
                },
                "type": "kubernetes.io/basic-auth",
                "stringData": {"username": "octocat", "password": TOKEN},
            },
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "builder"},
                "secrets": [{"name": "git-token"}],
            },
            build(
                "fetch-and-count",
                [
                    {
                        "name": "count",
                        "image": images["base"],
                        "workingDir": "/workspace/src",
                        "command": ["sh", "-c"],
                        "args": [
                            'n=$(git rev-list --count HEAD); echo "commits: $n"; '
                            'printf \'[{"key":"commits","value":"%s"}]\' "$n" '
                            "> /dev/termination-log"
                        ],
                    }
                ],
                serviceAccountName="builder",
                source={
                    "git": {"url": server.url_for("org/app.git"), "revision": "main"},
                    "targetPath": "src",
                },
            ),
        )
        status = tmp_path / "status.json"
        proc = stepkit_run(
            service,
            "-f",
            str(files),
            "--network",
            "host",
            "--env",
            "STEPKIT_GIT_ALLOW_HTTP=true",
            "--status-file",
            str(status),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert any(user == "octocat" for _repo, user in server.granted)
    out = proc.stdout + proc.stderr
    assert "[count] commits: 2" in proc.stdout
    assert "[nop] Build successful" in proc.stdout
    assert "step 1 of 4: credential-initializer" in proc.stderr
    assert "step 4 of 4: nop" in proc.stderr
    assert "commits=2" in proc.stderr  # the closing table's results
    assert TOKEN not in out
    state = json.loads(status.read_text())
    assert state["conditions"][0]["type"] == "Succeeded"
    assert state["conditions"][0]["status"] == "True"
    names = [s["name"] for s in state["stepStates"]]
    assert names == [
        "build-step-credential-initializer",
        "build-step-git-source-0",
        "build-step-count",
        "nop",
    ]
    git_message = json.loads(state["stepStates"][1]["terminated"]["message"])
    assert {"key": "commit", "value": shas["refs/heads/main"]} in git_message
    assert state["stepStates"][2]["terminated"]["message"] == '[{"key":"commits","value":"2"}]'
    assert TOKEN not in status.read_text()
    assert left_behind(service, "fetch-and-count") == ([], [])


def test_template_with_parameters_secret_layout_and_user(
    service: PodmanService, images: dict[str, str], tmp_path: Path
) -> None:
    """A ClusterBuildTemplate's parameters reach the step; a Secret volume is laid out as the
    kubelet does; runAsUser and env are the container's."""
    files = write(
        tmp_path / "build.yaml",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "settings"},
            "type": "Opaque",
            "stringData": {"greeting": "bonjour"},
        },
        {
            "apiVersion": "build.knative.dev/v1alpha1",
            "kind": "ClusterBuildTemplate",
            "metadata": {"name": "greet"},
            "spec": {
                "parameters": [
                    {"name": "WHO", "description": "whom"},
                    {"name": "TIMES", "default": "1"},
                ],
                "steps": [
                    {
                        "name": "greet-${WHO}",
                        "image": images["base"],
                        "command": ["sh", "-c"],
                        "args": [
                            'echo "$(cat /etc/settings/greeting) ${WHO} x${TIMES} as $(id -u)"; '
                            "readlink /etc/settings/..data; readlink /etc/settings/greeting; "
                            'echo "mode=$MODE"'
                        ],
                        "env": [{"name": "MODE", "value": "templated"}],
                        "securityContext": {"runAsUser": 4242},
                        "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings"}],
                    }
                ],
                "volumes": [{"name": "settings", "secret": {"secretName": "settings"}}],
            },
        },
        {
            "apiVersion": "build.knative.dev/v1alpha1",
            "kind": "Build",
            "metadata": {"name": "templated"},
            "spec": {
                "template": {
                    "name": "greet",
                    "kind": "ClusterBuildTemplate",
                    "arguments": [{"name": "WHO", "value": "world"}],
                }
            },
        },
    )
    proc = stepkit_run(service, "-f", str(files))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[greet-world]")]
    assert lines[0] == "[greet-world] bonjour world x1 as 4242"
    assert lines[1].startswith("[greet-world] ..20")  # ..data -> ..<timestamp>
    assert lines[2] == "[greet-world] ..data/greeting"
    assert lines[3] == "[greet-world] mode=templated"
    assert left_behind(service, "templated") == ([], [])


def test_failing_middle_step_stops_the_build(
    service: PodmanService, images: dict[str, str], tmp_path: Path
) -> None:
    files = write(
        tmp_path / "build.yaml",
        build(
            "fails-in-the-middle",
            [
                {"name": "first", "image": images["base"], "command": ["sh", "-c", "echo one"]},
                {
                    "name": "breaks",
                    "image": images["base"],
                    "command": ["sh", "-c", "echo about to fail; echo 'the reason' >&2; exit 7"],
                },
                {"name": "never", "image": images["base"], "command": ["sh", "-c", "echo NEVER"]},
            ],
        ),
    )
    status = tmp_path / "status.json"
    proc = stepkit_run(service, "-f", str(files), "--status-file", str(status))
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert "[first] one" in proc.stdout
    assert "NEVER" not in proc.stdout
    assert "step breaks failed with exit code 7" in proc.stderr
    assert "  | the reason" in proc.stderr  # its last lines
    assert "Build fails-in-the-middle failed" in proc.stderr
    state = json.loads(status.read_text())
    condition = state["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "BuildFailed")
    assert [s["name"] for s in state["stepStates"] if "terminated" in s] == [
        "build-step-credential-initializer",
        "build-step-first",
        "build-step-breaks",
    ]
    assert left_behind(service, "fails-in-the-middle") == ([], [])


def test_timeout_stops_the_running_step(
    service: PodmanService, images: dict[str, str], tmp_path: Path
) -> None:
    files = write(
        tmp_path / "build.yaml",
        build(
            "too-slow",
            [
                {
                    "name": "sleeper",
                    "image": images["base"],
                    "command": ["sh", "-c", "echo sleeping; sleep 3000"],
                },
                {"name": "after", "image": images["base"], "command": ["sh", "-c", "echo AFTER"]},
            ],
            timeout="90s",
        ),
    )
    status = tmp_path / "status.json"
    proc = stepkit_run(service, "-f", str(files), "--status-file", str(status), timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "AFTER" not in proc.stdout
    assert "timed out after 90s (spec.timeout)" in proc.stderr
    condition = json.loads(status.read_text())["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("False", "BuildTimeout")
    assert left_behind(service, "too-slow") == ([], [])


def test_ctrl_c_stops_and_removes_everything(
    service: PodmanService, images: dict[str, str], tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    files = write(
        tmp_path / "build.yaml",
        build(
            "interrupted",
            [
                {
                    "name": "sleeper",
                    "image": images["base"],
                    "command": [
                        "sh",
                        "-c",
                        "echo kept > /workspace/mark; echo started; sleep 3000",
                    ],
                }
            ],
        ),
    )
    proc = subprocess.Popen(
        [STEPKIT, "run", "-f", str(files), "--workspace", str(workspace)],
        env=_env(service),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("[sleeper] started"):
                break
        else:
            pytest.fail(f"the step never started: {proc.stderr.read() if proc.stderr else ''}")
        proc.send_signal(signal.SIGINT)
        _rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert left_behind(service, "interrupted") == ([], [])
    assert (workspace / "mark").read_text() == "kept\n"  # --workspace stays


def test_two_builds_at_once_have_their_own_workspace(
    service: PodmanService, images: dict[str, str], tmp_path: Path
) -> None:
    def one(name: str) -> subprocess.Popen[str]:
        script = (
            f"echo {name} > /workspace/{name}; sleep 5; echo seen: $(ls /workspace | sort | xargs)"
        )
        files = write(
            tmp_path / f"{name}.yaml",
            build(
                name, [{"name": "mark", "image": images["base"], "command": ["sh", "-c", script]}]
            ),
        )
        return subprocess.Popen(
            [STEPKIT, "run", "-f", str(files)],
            env=_env(service),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    started = time.monotonic()
    first, second = one("alpha"), one("beta")
    out_a, err_a = first.communicate(timeout=1500)
    out_b, err_b = second.communicate(timeout=max(60.0, 1500 - (time.monotonic() - started)))
    assert first.returncode == 0, err_a
    assert second.returncode == 0, err_b
    assert "[mark] seen: alpha" in out_a.splitlines()
    assert "[mark] seen: beta" in out_b.splitlines()


SECRET_VALUE = "do-not-show-9931"


def _secret(name: str, data: dict[str, str], **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "annotations": annotations},
        "type": "kubernetes.io/basic-auth",
        "stringData": data,
    }


def _account(*secret_names: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "builder"},
        "secrets": [{"name": n} for n in secret_names],
    }


@pytest.mark.parametrize(
    ("docs", "expected"),
    [
        # A Secret key that would be a path outside the secret's directory.
        (
            [
                _secret(
                    "evil",
                    {"username": "u", "password": SECRET_VALUE, "../../PWNED": SECRET_VALUE},
                    **{"build.knative.dev/git-0": "https://git.example.com"},
                ),
                _account("evil"),
            ],
            "Secret 'evil': key '../../PWNED' is not a valid key",
        ),
        # A basic-auth Secret without the password creds-init reads.
        (
            [
                _secret(
                    "half",
                    {"username": SECRET_VALUE},
                    **{"build.knative.dev/git-0": "https://git.example.com"},
                ),
                _account("half"),
            ],
            "password",
        ),
    ],
)
def test_bad_secret_is_one_line_and_nothing_runs(
    tmp_path: Path, docs: list[dict[str, Any]], expected: str
) -> None:
    files = write(
        tmp_path / "build.yaml",
        *docs,
        build(
            "bad-secret",
            [{"name": "s", "image": "localhost/never-used:0", "command": ["true"]}],
            serviceAccountName="builder",
        ),
    )
    # No daemon at all: an invalid Build is refused before one is asked for.
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    proc = subprocess.run(
        [STEPKIT, "run", "-f", str(files)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert SECRET_VALUE not in proc.stdout + proc.stderr
    assert not list(tmp_path.parent.glob("PWNED")) and not (tmp_path / "PWNED").exists()


def test_no_daemon_is_one_line(tmp_path: Path) -> None:
    files = write(tmp_path / "b.yaml", build("x", [{"name": "s", "image": "img", "args": ["a"]}]))
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    proc = subprocess.run(
        [STEPKIT, "run", "-f", str(files)], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert "no Docker-compatible daemon answers at unix://" in line


def test_missing_image_with_pull_never(
    service: PodmanService, images: dict[str, str], tmp_path: Path
) -> None:
    files = write(
        tmp_path / "b.yaml",
        build(
            "no-image",
            [{"name": "s", "image": f"{IMAGE_REPO}-not-built:0.0.0", "command": ["true"]}],
        ),
    )
    proc = stepkit_run(service, "-f", str(files), "--pull", "never")
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"image {IMAGE_REPO}-not-built:0.0.0 is not on the daemon and --pull is never" in line
    assert left_behind(service, "no-image") == ([], [])
