"""`stepkit pod` as a user runs it: files, directories and stdin in; YAML or JSON out; options and their
environment variables; the examples and the README's output, each Pod valid for the Kubernetes API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stepkit import __version__
from tests.conftest import STEPKIT, run_stepkit
from tests.podcases import K8S_VERSION

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "builds"

ONE = """\
apiVersion: build.knative.dev/v1alpha1
kind: Build
metadata: {name: one}
spec:
  source: {git: {url: "https://github.com/a/b", revision: main}}
  steps: [{name: s, image: busybox}]
"""
TWO = ONE.replace("name: one", "name: two")


def pods_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def validate(pod: dict[str, Any]) -> None:
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_default_images_are_stepkits_as_make_images_names_them(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(ONE)
    result = run_stepkit("pod", "-f", str(tmp_path / "b.yaml"))
    assert result.returncode == 0, result.output
    (pod,) = pods_of(result.stdout)
    images = [c["image"] for c in pod["spec"]["initContainers"][:2]] + [
        pod["spec"]["containers"][0]["image"]
    ]
    assert images == [
        f"localhost/stepkit-creds-init:{__version__}",
        f"localhost/stepkit-git-init:{__version__}",
        f"localhost/stepkit-nop:{__version__}",
    ]


def test_images_from_options_and_environment(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(
        ONE.replace(
            'source: {git: {url: "https://github.com/a/b", revision: main}}',
            "sources: [{name: g, git: {url: 'https://h/r', revision: main}, targetPath: g},"
            " {name: c, gcs: {type: Archive, location: 'gs://b/o'}, targetPath: c}]",
        )
    )
    env = {
        "STEPKIT_POD_IMAGE_REPO": "registry.example.com/stepkit/stepkit",
        "STEPKIT_POD_NOP_IMAGE": "nop@sha256:" + "a" * 64,
    }
    # The controller's own single-dash spelling works as well.
    result = run_stepkit("pod", "-f", str(tmp_path / "b.yaml"), "-git-image", "git:mine", env=env)
    assert result.returncode == 0, result.output
    (pod,) = pods_of(result.stdout)
    images = [c["image"] for c in pod["spec"]["initContainers"][:3]] + [
        pod["spec"]["containers"][0]["image"]
    ]
    assert images == [
        f"registry.example.com/stepkit/stepkit-creds-init:{__version__}",
        "git:mine",
        f"registry.example.com/stepkit/stepkit-gcs-fetcher:{__version__}",
        "nop@sha256:" + "a" * 64,
    ]
    bad = run_stepkit("pod", "-f", str(tmp_path / "b.yaml"), "--creds-image", "a b")
    assert bad.returncode == 2 and "--creds-image: an image reference has no spaces" in bad.stderr


def test_stdin_and_several_files_give_several_documents(tmp_path: Path) -> None:
    (tmp_path / "two.yaml").write_text(TWO)
    proc = subprocess.run(
        [STEPKIT, "pod", "-f", "-", "-f", str(tmp_path / "two.yaml")],
        input=ONE,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n---\n") == 1
    names = [p["metadata"]["labels"]["build.knative.dev/buildName"] for p in pods_of(proc.stdout)]
    assert names == ["one", "two"]


def test_a_directory_reads_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b-second.yml").write_text(TWO)
    (tmp_path / "a-first.yaml").write_text(ONE)
    (tmp_path / "notes.txt").write_text("not: [yaml")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("not: [yaml")
    result = run_stepkit("pod", "-f", str(tmp_path))
    assert result.returncode == 0, result.output
    names = [p["metadata"]["labels"]["build.knative.dev/buildName"] for p in pods_of(result.stdout)]
    assert names == ["one", "two"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_stepkit("pod", "-f", str(empty))
    assert result.returncode == 2 and "no *.yaml, *.yml or *.json file" in result.stderr


def test_json_is_the_pod_or_a_list(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text(json.dumps(yaml.safe_load(ONE), indent="\t"))
    (tmp_path / "two.yaml").write_text(TWO)
    single = run_stepkit("pod", "-f", str(tmp_path / "one.json"), "-o", "json")
    assert single.returncode == 0, single.output
    pod = json.loads(single.stdout)
    assert pod["kind"] == "Pod" and list(pod) == ["apiVersion", "kind", "metadata", "spec"]
    validate(pod)
    both = run_stepkit(
        "pod",
        "-f",
        str(tmp_path / "one.json"),
        "-f",
        str(tmp_path / "two.yaml"),
        env={"STEPKIT_POD_OUTPUT": "json"},
    )
    assert both.returncode == 0, both.output
    listed = json.loads(both.stdout)
    assert listed["apiVersion"] == "v1" and listed["kind"] == "List"
    assert [p["metadata"]["labels"]["build.knative.dev/buildName"] for p in listed["items"]] == [
        "one",
        "two",
    ]
    assert listed["items"][0] == pod


def test_build_option_and_namespace_from_environment(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(ONE + "---\n" + TWO)
    result = run_stepkit(
        "pod",
        "-f",
        str(tmp_path / "b.yaml"),
        env={"STEPKIT_POD_BUILD": "two", "STEPKIT_POD_NAMESPACE": "ci"},
    )
    assert result.returncode == 0, result.output
    (pod,) = pods_of(result.stdout)
    assert pod["metadata"]["labels"]["build.knative.dev/buildName"] == "two"
    assert pod["metadata"]["namespace"] == "ci"


def test_the_same_input_prints_the_same_bytes(tmp_path: Path) -> None:
    first = run_stepkit("pod", "-f", str(EXAMPLES / "template"))
    second = run_stepkit("pod", "-f", str(EXAMPLES / "template"))
    assert first.returncode == 0 and first.stdout == second.stdout


def test_help_shows_every_option_with_its_variable() -> None:
    result = run_stepkit("pod", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option, variable in (
        ("--filename", "STEPKIT_POD_FILENAME"),
        ("--output", "STEPKIT_POD_OUTPUT"),
        ("--build", "STEPKIT_POD_BUILD"),
        ("--namespace", "STEPKIT_POD_NAMESPACE"),
        ("--image-repo", "STEPKIT_POD_IMAGE_REPO"),
        ("--creds-image", "STEPKIT_POD_CREDS_IMAGE"),
        ("--git-image", "STEPKIT_POD_GIT_IMAGE"),
        ("--gcs-fetcher-image", "STEPKIT_POD_GCS_FETCHER_IMAGE"),
        ("--nop-image", "STEPKIT_POD_NOP_IMAGE"),
        ("--log-format", "STEPKIT_LOG_FORMAT"),
    ):
        assert option in text and variable in text, option
    assert "kubectl apply -f -" in text
    assert "--image-repo registry.example.com/stepkit/stepkit" in text
    assert "pod" in run_stepkit("--help").stdout


def test_without_pyyaml_the_error_says_what_to_install(tmp_path: Path) -> None:
    """A real process in which `import yaml` fails, as in an install without the kube extra."""
    (tmp_path / "b.yaml").write_text(ONE)
    code = "import sys; sys.modules['yaml'] = None; from stepkit.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "pod", "-f", str(tmp_path / "b.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert (
        proc.stderr.strip()
        == "stepkit pod: error: stepkit pod needs PyYAML: pip install 'stepkit[kube]' (or PyYAML>=6)"
    )


EXAMPLE_INPUTS = ["template", "git-source.yaml", "gcs-source.yaml", "custom-source.yaml"]


@pytest.mark.parametrize("name", EXAMPLE_INPUTS)
def test_examples_give_valid_pods(name: str) -> None:
    """Round trip: YAML -> stepkit pod -> YAML -> Kubernetes' schemas."""
    result = run_stepkit("pod", "-f", str(EXAMPLES / name))
    assert result.returncode == 0, result.output
    assert result.stderr == ""
    (pod,) = pods_of(result.stdout)
    validate(pod)


def test_the_template_example_is_the_seeds_pattern() -> None:
    """A basic-auth Secret annotated for git and docker, its ServiceAccount, a ClusterBuildTemplate with
    parameters, and a Build using it: creds-init gets both flags, the step the arguments."""
    (pod,) = pods_of(run_stepkit("pod", "-f", str(EXAMPLES / "template")).stdout)
    creds, source, build = pod["spec"]["initContainers"]
    assert creds["args"] == [
        "-basic-docker=registry-and-git=https://registry.example.com",
        "-basic-git=registry-and-git=https://github.com",
    ]
    assert source["args"] == ["-url", "https://github.com/example/app.git", "-revision", "v1.0.0"]
    assert build["args"] == [
        "--dockerfile=Dockerfile",
        "--context=/workspace",
        "--destination=registry.example.com/example/app:v1.0.0",
    ]
    assert pod["spec"]["serviceAccountName"] == "builder"
    assert "change-me" not in json.dumps(pod)


def test_the_readme_shows_what_stepkit_pod_prints() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"```console\n\$ (stepkit pod -f examples/builds/template/?)\n(.*?)```", readme, re.S
    )
    assert match, "README has no `stepkit pod` example"
    argv = match.group(1).split()[1:]
    result = run_stepkit(*argv, cwd=ROOT)
    assert result.returncode == 0, result.output
    assert match.group(2) == result.stdout
    assert "stepkit pod -f examples/builds/template/ | kubectl apply -f -" in readme
