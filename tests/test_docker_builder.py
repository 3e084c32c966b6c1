"""The docker builder against real peers: podman's Docker API service and docker-registry.

Builds go through the API service (tests/podman.py) FROM the local stepkit-base, and are
pushed to docker-registry with htpasswd auth over TLS (tests/peers.Registry; the service
treats it as an insecure registry, so it skips verifying the test CA). The credentials come
from the config.json creds-init writes, or from a credential helper of the test's own (a
script: a helper is just a program). What was pushed is read back with `skopeo inspect`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builders.dockerbuild import creds
from builders.dockerbuild.builder import _build_error, docker_build
from builders.dockerbuild.reference import DOCKER_HUB_KEY, parse
from stepkit.testing import BuilderRun, run_builder
from tests.conftest import Secrets, assert_no_leak
from tests.images import ensure_images
from tests.peers import Registry
from tests.podman import PodmanService

USER = "pusher"
PASSWORD = 'p@ss:w/rd %#?+ "é,€'  # characters a credential store must not lose
WRONG = "not-the-password-42"
KEPT = "localhost/stepkit-docker-test/kept:v1"


@dataclass
class Peers:
    registry: Registry
    service: PodmanService
    base: str
    work: Path

    def skopeo_inspect(self, ref: str) -> dict[str, object]:
        """What the registry serves for ref, read with skopeo (its own auth file, the test CA)."""
        auth = self.work / "skopeo-auth.json"
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        auth.write_text(json.dumps({"auths": {self.registry.host: {"auth": token}}}))
        auth.chmod(0o600)
        proc = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--authfile",
                str(auth),
                "--cert-dir",
                str(self.registry.cert_dir),
                f"docker://{self.registry.host}/{ref}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        answer: dict[str, object] = json.loads(proc.stdout)
        return answer


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    base = ensure_images()["base"]
    work = tmp_path_factory.mktemp("docker-peers")
    with (
        Registry(work / "registry", {USER: PASSWORD}) as registry,
        PodmanService(insecure_registries=[registry.host]) as service,
    ):
        try:
            yield Peers(registry, service, base, work)
        finally:
            # The shared storage keeps what the daemon built: remove this module's tags
            # (vfs copies a whole root per layer).
            listed = service.podman("images", "--format", "{{.Repository}}:{{.Tag}}")
            ours = [
                name
                for name in listed.stdout.split()
                if name.startswith((f"{registry.host}/", KEPT.split(":")[0]))
            ]
            if ours:
                service.podman("rmi", "--force", *ours)


def dockerfile(peers: Peers, body: str) -> str:
    return f"FROM {peers.base}\n{body}"


APP = """\
ARG LIST
ARG GREETING
RUN echo "list=$LIST" && echo "greeting=$GREETING" >/tmp/greeting.txt
RUN cat /tmp/greeting.txt
"""


def creds_init(peers: Peers, home: Path, password: str) -> Secrets:
    """Run creds-init as the pod's first container does: -basic-docker with a mounted secret."""
    secrets = Secrets(home.parent / "secrets")
    secrets.root.mkdir()
    secrets.add("regcred", {"username": USER, "password": password})
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from stepkit.cli import main; sys.exit(main())",
            "creds-init",
            f"-basic-docker=regcred={peers.registry.url}",
        ],
        env={**os.environ, "HOME": str(home), "STEPKIT_SECRETS_DIR": str(secrets.root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (home / ".docker" / "config.json").is_file()
    return secrets


def build(
    peers: Peers,
    tmp_path: Path,
    args: list[str],
    *,
    body: str = APP,
    home: Path | None = None,
    env: dict[str, str] | None = None,
) -> BuilderRun:
    workspace = tmp_path / "workspace"
    (workspace / "app").mkdir(parents=True, exist_ok=True)
    (workspace / "app" / "Dockerfile").write_text(dockerfile(peers, body))
    return run_builder(
        docker_build,
        ["-context=app", *args],
        env={"DOCKER_HOST": peers.service.url, **(env or {})},
        workspace=workspace,
        home=home,
        root=tmp_path / "run",
    )


def test_builds_pushes_and_reports_the_registry_digest(peers: Peers, tmp_path: Path) -> None:
    home = tmp_path / "pod-home"
    home.mkdir()
    secrets = creds_init(peers, home, PASSWORD)
    host = peers.registry.host
    run = build(
        peers,
        tmp_path,
        [
            f"-image={host}/team/app:v1",
            f"--image={host}/team/app:extra",
            "-build-arg=LIST=a,b,c",
            "-build-arg",
            "GREETING=hello, world",
            "-label=org.example.team=builders,platform",
        ],
        home=home,
    )
    assert run.exit_code == 0, run.output
    # The RUN steps' output streamed through; the comma-holding args arrived whole.
    assert "list=a,b,c\n" in run.stdout
    assert "greeting=hello, world\n" in run.stdout
    digest = run.results["IMAGE_DIGEST"]
    assert run.results["IMAGE_URL"] == f"{host}/team/app:v1"
    served = peers.skopeo_inspect("team/app:v1")
    assert served["Digest"] == digest
    assert peers.skopeo_inspect("team/app:extra")["Digest"] == digest
    labels = served["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.example.team"] == "builders,platform"
    assert_no_leak(run.output, secrets.values)


def test_credentials_from_a_cred_helper(peers: Peers, tmp_path: Path) -> None:
    """credHelpers names docker-credential-<name>: asked with docker's `get` protocol."""
    host = peers.registry.host
    bindir = tmp_path / "bin"
    bindir.mkdir()
    asked = tmp_path / "asked"
    helper = bindir / "docker-credential-stepkit-test"
    helper.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"assert sys.argv[1:] == ['get'], sys.argv\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(asked)!r}, 'w').write(server)\n"
        f"if server != {host!r}:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        f"json.dump({{'ServerURL': server, 'Username': {USER!r}, 'Secret': {PASSWORD!r}}}, sys.stdout)\n"
    )
    helper.chmod(0o755)
    docker_dir = tmp_path / "docker-config"
    docker_dir.mkdir()
    # An auths entry with a wrong password too: the helper's answer must win.
    wrong = base64.b64encode(f"{USER}:{WRONG}".encode()).decode()
    (docker_dir / "config.json").write_text(
        json.dumps({"auths": {host: {"auth": wrong}}, "credHelpers": {host: "stepkit-test"}})
    )
    run = build(
        peers,
        tmp_path,
        [f"-image={host}/team/helper:v1", "-build-arg=LIST=x", "-build-arg=GREETING=y"],
        env={
            "DOCKER_CONFIG": str(docker_dir),
            "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        },
    )
    assert run.exit_code == 0, run.output
    assert asked.read_text() == host
    assert peers.skopeo_inspect("team/helper:v1")["Digest"] == run.results["IMAGE_DIGEST"]
    assert_no_leak(run.output, [PASSWORD, WRONG])


def test_a_refused_push_exits_3(peers: Peers, tmp_path: Path) -> None:
    home = tmp_path / "pod-home"
    home.mkdir()
    secrets = creds_init(peers, home, WRONG)
    host = peers.registry.host
    run = build(
        peers,
        tmp_path,
        [f"-image={host}/team/refused:v1", "-build-arg=LIST=x", "-build-arg=GREETING=y"],
        home=home,
    )
    assert run.exit_code == 3, run.output
    assert f"pushing {host}/team/refused:v1: the registry refused" in run.stderr
    assert "IMAGE_DIGEST" not in run.results
    assert_no_leak(run.output, [*secrets.values, PASSWORD])


def test_a_failing_run_fails_the_step_with_its_exit_code(peers: Peers, tmp_path: Path) -> None:
    host = peers.registry.host
    run = build(
        peers,
        tmp_path,
        [f"-image={host}/team/broken:v1"],
        body='RUN echo "before the failure"\nRUN exit 7\nRUN echo never\n',
    )
    assert run.exit_code == 1, run.output
    assert "before the failure" in run.stdout
    assert "never\n" not in run.stdout
    assert "exited with code 7" in run.stderr
    assert "IMAGE_DIGEST" not in run.results


def test_push_false_keeps_the_image_in_the_daemon(peers: Peers, tmp_path: Path) -> None:
    run = build(
        peers,
        tmp_path,
        [f"-image={KEPT}", "-push=false"],
        body="RUN true\n",
    )
    assert run.exit_code == 0, run.output
    image_id = run.results["IMAGE_DIGEST"]
    proc = peers.service.podman("image", "inspect", "--format", "{{.Id}}", KEPT)
    assert proc.returncode == 0, proc.stderr
    assert image_id == "sha256:" + proc.stdout.strip()


def test_no_daemon_is_one_clear_line_after_a_bounded_wait(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    missing = tmp_path / "no-daemon.sock"
    run = run_builder(
        docker_build,
        ["-image=registry.example.com/app:v1"],
        env={"DOCKER_HOST": f"unix://{missing}", "STEPKIT_DOCKER_WAIT": "1"},
        workspace=tmp_path,
        root=tmp_path / "run",
    )
    assert run.exit_code == 1, run.output
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, run.stderr
    assert f"no Docker daemon answered at DOCKER_HOST=unix://{missing}" in errors[0]
    assert "in 1 s" in errors[0]
    assert "/var/run/docker.sock" in errors[0] and "dind" in errors[0]


def test_without_docker_host_the_socket_is_tried(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    env = {"STEPKIT_DOCKER_WAIT": "0"}
    saved = os.environ.pop("DOCKER_HOST", None)
    try:
        run = run_builder(
            docker_build, ["-image=app"], env=env, workspace=tmp_path, root=tmp_path / "run"
        )
    finally:
        if saved is not None:
            os.environ["DOCKER_HOST"] = saved
    if Path("/var/run/docker.sock").exists():  # a machine with a daemon: it answers
        return
    assert run.exit_code == 1, run.output
    assert "unix:///var/run/docker.sock (DOCKER_HOST is not set)" in run.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "--image"),
        (["-image=registry.example.com/app@sha256:" + "0" * 64], "--image"),
        (["-image=-oops"], "--image"),
        (["-image=Registry.example.com/UPPER:v1"], "--image"),
        (["-image=app:bad/tag"], "--image"),
        (["-image=app:v1", "-image=app:v1"], "--image"),
        (["-image=app", "-build-arg=NOVALUE"], "--build-arg"),
        (["-image=app", "-label=k=v", "-label=k=w"], "--label"),
        (["-image=app", "-context=missing"], "--context"),
        (["-image=app", "-dockerfile=nope/Dockerfile"], "--dockerfile"),
        (["-image=app", "-context=../.."], "--context"),
        (["-image=app", "-push=maybe"], "--push"),
        (["-image=app", "-target=-x"], "--target"),
    ],
)
def test_bad_params_exit_2_naming_the_param(tmp_path: Path, args: list[str], named: str) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    # No daemon anywhere: bad input is refused before one is looked for.
    run = run_builder(
        docker_build,
        args,
        env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "STEPKIT_DOCKER_WAIT": "60"},
        workspace=tmp_path,
        root=tmp_path / "run",
    )
    assert run.exit_code == 2, run.output
    assert named in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"auths": {"registry.example.com": {"auth": "%%%"}}}), "not base64"),
        (
            json.dumps({"auths": {"registry.example.com": {"auth": "bm9jb2xvbg=="}}}),
            "user:password",
        ),
        (
            json.dumps({"credHelpers": {"registry.example.com": "../../bin/sh"}}),
            "credential helper",
        ),
    ],
)
def test_a_bad_config_json_exits_2_naming_it(tmp_path: Path, config: str, named: str) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    home = tmp_path / "pod-home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(config)
    run = run_builder(
        docker_build,
        ["-image=registry.example.com/app:v1"],
        env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "STEPKIT_DOCKER_WAIT": "60"},
        workspace=tmp_path,
        home=home,
        root=tmp_path / "run",
    )
    assert run.exit_code == 2, run.output
    assert "config.json" in run.stderr and named in run.stderr
    assert "nocolon" not in run.output


@pytest.mark.parametrize(
    ("text", "domain", "repository", "tag", "key"),
    [
        ("app", "docker.io", "app", "latest", "https://index.docker.io/v1/"),
        ("docker.io/library/app:1.0", "docker.io", "docker.io/library/app", "1.0", DOCKER_HUB_KEY),
        (
            "index.docker.io/team/app",
            "docker.io",
            "index.docker.io/team/app",
            "latest",
            DOCKER_HUB_KEY,
        ),
        ("localhost/app:v1", "localhost", "localhost/app", "v1", "localhost"),
        (
            "127.0.0.1:5000/a/b/c:t_1.2-x",
            "127.0.0.1:5000",
            "127.0.0.1:5000/a/b/c",
            "t_1.2-x",
            "127.0.0.1:5000",
        ),
        (
            "registry.example.com:443/team/app",
            "registry.example.com:443",
            "registry.example.com:443/team/app",
            "latest",
            "registry.example.com:443",
        ),
    ],
)
def test_image_references(text: str, domain: str, repository: str, tag: str, key: str) -> None:
    ref = parse(text)
    assert (ref.domain, ref.repository, ref.tag, ref.registry_key) == (domain, repository, tag, key)


@pytest.mark.parametrize(
    "message",
    [
        # What Docker's classic builder, BuildKit and Podman/Buildah say. Only Podman's
        # service runs here, so the other two wordings are given as text.
        "The command '/bin/sh -c exit 7' returned a non-zero code: 7",
        'process "/bin/sh -c exit 7" did not complete successfully: exit code: 7',
        'building at STEP "RUN exit 7": while running runtime: exit status 7\n',
    ],
)
def test_the_exit_code_of_a_failed_run_is_found_in_every_daemons_wording(message: str) -> None:
    assert "exited with code 7" in _build_error({"error": message})


def test_docker_hub_credentials_match_every_spelling(tmp_path: Path) -> None:
    token = base64.b64encode(b"hubuser:hub-password-1").decode()
    config = {"auths": {"https://index.docker.io/v1/": {"auth": token}}}
    for image in ("app", "docker.io/team/app", "registry-1.docker.io/team/app:v1"):
        found = creds.find(config, parse(image), tmp_path / "config.json")
        assert found is not None
        assert (found.username, found.password) == ("hubuser", "hub-password-1")
    # A look-alike host gets nothing.
    assert creds.find(config, parse("docker.io.evil.example/app"), tmp_path / "c") is None


def test_tls_without_its_certificates_exits_2_naming_docker_cert_path(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    run = run_builder(
        docker_build,
        ["-image=registry.example.com/app:v1"],
        env={
            "DOCKER_HOST": "tcp://127.0.0.1:2376",
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(tmp_path / "no-certs"),
        },
        workspace=tmp_path,
        root=tmp_path / "run",
    )
    assert run.exit_code == 2, run.output
    assert "DOCKER_CERT_PATH" in run.stderr
