"""The example builder (examples/hello-builder) end to end: its own tests, its image, and the image
run as a Knative and as a Tekton step under the pod contract (SPEC §6.3).

The image is built with buildah FROM the stepkit-base this tree builds (tests/images.py), then
run as tests/test_images.py runs the helpers: read-only root, /workspace and /builder/home
mounted, as UID 65532 and as an arbitrary UID without a passwd entry. The Knative step is the
container `stepkit pod` makes of build.yaml (Knative's controller logic: the template's
parameters substituted, the Secret volume mounted); the Tekton step is task.yaml's, with the
TaskRun's params substituted as Tekton does. stepkit.testing.run_image is run too, through
podman (with the runc shim this machine needs, TESTING.md "Running containers").
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepkit import __version__
from stepkit.testing import assert_no_secret, run_image
from tests.conftest import STEPKIT
from tests.images import IMAGE_REPO, buildah, emptydir, ensure_images, image_config
from tests.images import run_image as run_in_pod

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "hello-builder"
TAG = f"{IMAGE_REPO}-example-hello:{__version__}"
TOKEN = "s3cret-api-token"
USERS = ["65532:65532", "1000630000:0"]


def knative_step() -> dict[str, Any]:
    """The builder's container in the Pod `stepkit pod` makes of build.yaml's Build."""
    proc = subprocess.run(
        [STEPKIT, "pod", "-f", str(EXAMPLE / "build.yaml"), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    pod = json.loads(proc.stdout)
    [step] = [c for c in pod["spec"]["initContainers"] if c["name"] == "build-step-hello"]
    assert {"name": "hello-token", "secret": {"secretName": "hello-token"}} in pod["spec"][
        "volumes"
    ]
    step_: dict[str, Any] = step
    return step_


def tekton_step() -> tuple[dict[str, Any], list[str]]:
    """task.yaml's step and its args with the TaskRun's params put in, as Tekton does."""
    task, run = yaml.safe_load_all((EXAMPLE / "task.yaml").read_text())
    assert (task["kind"], run["kind"]) == ("Task", "TaskRun")
    values = {p["name"]: p.get("default", "") for p in task["spec"]["params"]}
    values.update({p["name"]: p["value"] for p in run["spec"]["params"]})
    [step] = task["spec"]["steps"]
    args = [
        re.sub(r"\$\(params\.([^)]+)\)", lambda m: str(values[m.group(1)]), arg)
        for arg in step["args"]
    ]
    return step, args


def test_the_examples_own_tests_pass() -> None:
    """`pytest test_builder.py` in the example's directory, as the walk-through says."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_builder.py"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout


def test_the_walk_through_shows_the_example_as_it_is() -> None:
    """docs/builders.md's code blocks are the example's files, so what the tests run is what a
    newcomer copies."""
    doc = (ROOT / "docs" / "builders.md").read_text()
    blocks = re.findall(r"```(?:python|dockerfile|yaml)\n(.*?)```", doc, re.S)
    for name in ("builder.py", "test_builder.py", "Containerfile", "build.yaml", "task.yaml"):
        text = (EXAMPLE / name).read_text()
        if name.endswith(".yaml"):
            text = text[text.index("apiVersion") :]  # the files' comments are not shown
        assert text in blocks, f"docs/builders.md does not show {name} as it is"
    assert "docs/builders.md" in (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def hello_image() -> str:
    """The example's image, built FROM the stepkit-base of this tree."""
    images = ensure_images()
    # By ID: the tag names the newest build, which a later build here would move.
    base = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", images["base"])
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--layers=false",
        "--quiet",
        "--build-arg",
        f"STEPKIT_BASE={base.strip()}",
        "--tag",
        TAG,
        "--file",
        str(EXAMPLE / "Containerfile"),
        str(EXAMPLE),
        timeout=900,
    )
    return TAG


def test_the_image_runs_the_builder(hello_image: str) -> None:
    config = image_config(hello_image)
    assert config["Entrypoint"] == ["/opt/stepkit/bin/python", "/opt/hello/builder.py"]
    assert config["User"] == "65532:65532" and config["WorkingDir"] == "/workspace"


@pytest.mark.parametrize("user", USERS, ids=["uid-65532", "arbitrary-uid"])
def test_as_a_knative_step(hello_image: str, tmp_path: Path, user: str) -> None:
    """build.yaml's step: params from the template's arguments, the token from a mounted Secret
    (-token=@FILE), the result in the termination message.

    buildah's chroot isolation puts its own /dev over the container's, hiding a file mounted at
    /dev/termination-log; the file is mounted beside it and named with the variable the
    --termination-message-path flag reads. (test_run_image_from_the_test_kit runs the image
    with the file at /dev/termination-log, found without being named.)
    """
    workspace, home = emptydir(tmp_path / "ws"), emptydir(tmp_path / "home")
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "token").write_text(TOKEN)
    termination = tmp_path / "termination-log"
    termination.touch()
    termination.chmod(0o666)
    step = knative_step()
    assert step["image"] == "registry.example.com/team/hello-builder:0.1.0"
    assert {"name": "HOME", "value": "/builder/home"} in step["env"]
    assert step["workingDir"] == "/workspace"
    host = {"hello-token": secret_dir, "workspace": workspace, "home": home}
    mounts = [
        (host[m["name"]], m["mountPath"], bool(m.get("readOnly")))
        for m in step["volumeMounts"]
        if m["name"] not in ("workspace", "home")  # run_in_pod mounts those two itself
    ]
    assert [m[1] for m in mounts] == ["/etc/hello-token"]
    res = run_in_pod(
        hello_image,
        step["args"],
        workspace=workspace,
        home=home,
        secrets=None,
        user=user,
        mounts=[*mounts, (termination, "/termination-log", False)],
        env={"STEPKIT_TERMINATION_MESSAGE_PATH": "/termination-log"},
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello, Knative!\nhello, Knative!\ncalling the API with ***\n"
    assert_no_secret(res.stdout + res.stderr, TOKEN)
    assert json.loads(termination.read_text()) == [{"key": "message", "value": "hello, Knative!"}]
    written = workspace / "greeting.txt"
    assert written.read_text() == "hello, Knative!\n"
    assert written.stat().st_uid == int(user.split(":")[0])
    # Bad input in the image: exit 2, one line naming the param, nothing written.
    termination.write_text("")
    res = run_in_pod(
        hello_image,
        ["-count=zero"],
        workspace=workspace,
        home=home,
        secrets=None,
        user=user,
        mounts=[(termination, "/termination-log", False)],
        env={"STEPKIT_TERMINATION_MESSAGE_PATH": "/termination-log"},
    )
    assert res.returncode == 2
    assert res.stderr.splitlines() == ["hello: error: --count: 'zero' is not an integer"]
    assert termination.read_text() == ""


@pytest.mark.parametrize("user", USERS, ids=["uid-65532", "arbitrary-uid"])
def test_as_a_tekton_step(hello_image: str, tmp_path: Path, user: str) -> None:
    """task.yaml's step: params substituted, the token in STEPKIT_TOKEN (secretKeyRef), and
    /tekton/results/message and /tekton/termination written, as a TaskRun's pod has them."""
    workspace, home = emptydir(tmp_path / "ws"), emptydir(tmp_path / "home")
    tekton = tmp_path / "tekton"
    tekton.mkdir()
    tekton.chmod(0o755)
    results = emptydir(tekton / "results")
    (tekton / "termination").touch()
    (tekton / "termination").chmod(0o666)
    step, args = tekton_step()
    assert args == ["-name=Tekton", "-count=2"]
    env = {}
    for item in step["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("hello-token", "token")
        env[item["name"]] = TOKEN  # the Secret's value, as the kubelet puts it in
    res = run_in_pod(
        hello_image,
        args,
        workspace=workspace,
        home=home,
        secrets=None,
        user=user,
        env=env,
        mounts=[(tekton, "/tekton", False)],
    )
    assert res.returncode == 0, res.stderr
    assert "calling the API with ***" in res.stdout
    assert_no_secret(res.stdout + res.stderr, TOKEN)
    assert (results / "message").read_bytes() == b"hello, Tekton!"
    assert json.loads((tekton / "termination").read_text()) == [
        {"key": "message", "value": "hello, Tekton!"}
    ]


# podman cannot run containers on this machine as it comes: crun rejects the cgroup layout and
# runc fails on setrlimit. This shim drops process.rlimits from the bundle and runs runc (see
# /work/shared/TESTING.md); the product never needs it.
RUNC_SHIM = """#!/usr/bin/python3
import json, os, sys
args = sys.argv[1:]
if "create" in args or "run" in args:
    bundle = "."
    for i, arg in enumerate(args):
        if arg in ("--bundle", "-b") and i + 1 < len(args):
            bundle = args[i + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.get("process", {}).pop("rlimits", None)
    with open(path, "w") as f:
        json.dump(config, f)
os.execv("/usr/sbin/runc", ["/usr/sbin/runc", *args])
"""


@pytest.fixture
def podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    shim = tmp_path / "runc-shim"
    shim.write_text(RUNC_SHIM)
    shim.chmod(0o755)
    conf = tmp_path / "containers.conf"
    conf.write_text(f'[engine]\nruntime = "runc"\n\n[engine.runtimes]\nrunc = ["{shim}"]\n')
    monkeypatch.setenv("CONTAINERS_CONF", str(conf))
    driver = os.environ.get("STORAGE_DRIVER", "vfs")
    return f"podman --storage-driver {driver}"


def test_run_image_from_the_test_kit(hello_image: str, podman: str) -> None:
    """What an author runs on their machine: stepkit.testing.run_image, here through podman."""
    res = run_image(
        hello_image,
        ["-name=podman"],
        secrets={"token": TOKEN},
        secret_env={"STEPKIT_TOKEN": "token"},
        user="1000630000:0",
        engine=podman,
        network="none",
    )
    assert res.exit_code == 0, res.output
    assert res.results == {"message": "hello, podman!"}
    assert "calling the API with ***" in res.stdout
    assert_no_secret(res.output, TOKEN)
    assert (res.paths.workspace / "greeting.txt").read_text() == "hello, podman!\n"
    res = run_image(hello_image, ["-name=tekton"], tekton=True, engine=podman, network="none")
    assert res.exit_code == 0, res.output
    assert res.tekton_results == {"message": "hello, tekton!"}
