"""The images, run as a Knative Build pod runs them: creds-init, git-init, a step, nop.

Every container runs with `buildah run --isolation chroot` (tests/images.py): the workspace
and home are host directories mounted at /workspace and /builder/home, the secrets at
/var/build-secrets/<name>, the root filesystem read-only, under a non-root UID: 65532 (the
images' own user) and an OpenShift-style arbitrary UID with GID 0 and no passwd entry. The
arguments are the ones the Knative Build controller generates (SPEC §0-§2, §5).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from stepkit import __version__
from tests.conftest import Secrets, assert_no_leak
from tests.gcspeers import FakeGcs
from tests.images import (
    POD_HOME,
    POD_SECRETS,
    emptydir,
    ensure_images,
    image_config,
    run_image,
)
from tests.ocipeers import LayerFile, layer_tar, push, write_layout
from tests.peers import (
    AuthorizedKey,
    GitHttpServer,
    Registry,
    SshServer,
    gen_keypair,
    git_env,
    make_bare,
    make_repo,
    run_git,
)

PASSWORD = 'p@ss:w/rd %#?+ "é€'  # characters a credential store must not lose
ARBITRARY_UID = "1000630000:0"  # the first UID of an OpenShift project's range, GID 0
USERS = ["65532:65532", ARBITRARY_UID]


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """The four images, built once (make images-local). A failed build fails every test here."""
    return ensure_images()


@dataclass
class Peers:
    """One bare repository served over HTTP (Basic auth) and over ssh, both allowing push."""

    srv: Path
    http: GitHttpServer
    ssh: SshServer
    shas: dict[str, str]
    private_key: str

    def ref(self, name: str) -> str:
        """The bare repository's ref on the server side, or "" when it does not exist."""
        proc = subprocess.run(
            ["git", "--git-dir", str(self.srv / "repo.git"), "rev-parse", "--verify", "-q", name],
            capture_output=True,
            text=True,
            env=git_env(self.srv.parent / "git-home"),
            check=False,
        )
        return proc.stdout.strip()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    shas = make_repo(tmp_path / "src", commits=3, tags=["v1.0"])
    srv = tmp_path / "srv"
    make_bare(tmp_path / "src", srv / "repo.git")
    private, public = gen_keypair(tmp_path / "keys" / "deploy")
    with (
        GitHttpServer(srv, {"": ("builder", PASSWORD)}, push=True) as http,
        SshServer(tmp_path / "sshd", [AuthorizedKey(public, srv, push=True)]) as ssh,
    ):
        yield Peers(srv, http, ssh, shas, private)


@dataclass
class Pod:
    """The pod's two emptyDir volumes and the secrets creds-init gets mounted."""

    workspace: Path
    home: Path
    secrets: Secrets
    user: str


@pytest.fixture(params=USERS, ids=["uid-65532", "arbitrary-uid"])
def pod(request: pytest.FixtureRequest, tmp_path: Path, peers: Peers) -> Pod:
    secrets = Secrets(tmp_path / "secrets")
    secrets.root.mkdir()
    secrets.add("git-basic", {"username": "builder", "password": PASSWORD})
    secrets.add(
        "git-ssh", {"ssh-privatekey": peers.private_key, "known_hosts": peers.ssh.host_key_line}
    )
    for path in [secrets.root, *secrets.root.rglob("*")]:
        if not path.is_symlink():  # the kubelet's defaults: directories 0755, files 0644
            path.chmod(0o755 if path.is_dir() else 0o644)
    return Pod(
        emptydir(tmp_path / "workspace"), emptydir(tmp_path / "home"), secrets, request.param
    )


def knative_creds_args(peers: Peers) -> list[str]:
    """What the Knative controller passes for a service account with these two secrets
    (annotations build.knative.dev/git-0 on each: the url, and host:port for ssh)."""
    return [
        f"-basic-git=git-basic={peers.http.url}",
        f"-ssh-git=git-ssh=127.0.0.1:{peers.ssh.port}",
    ]


def run(
    images: dict[str, str],
    name: str,
    args: list[str],
    pod: Pod,
    *,
    env: dict[str, str] | None = None,
    secrets: bool = False,
    mounts: Sequence[tuple[Path, str, bool]] = (),
) -> subprocess.CompletedProcess[str]:
    res = run_image(
        images[name],
        args,
        workspace=pod.workspace,
        home=pod.home,
        secrets=pod.secrets.root if secrets else None,
        user=pod.user,
        env=env,
        mounts=mounts,
    )
    assert_no_leak(res.stdout + res.stderr, pod.secrets.values)
    return res


def test_pod_sequence(images: dict[str, str], peers: Peers, pod: Pod) -> None:
    """creds-init, git-init over HTTP and over ssh, a step that logs and pushes, nop."""
    uid = int(pod.user.split(":")[0])

    res = run(images, "creds-init", knative_creds_args(peers), pod, secrets=True)
    assert res.returncode == 0, res.stderr
    for name in (".gitconfig", ".git-credentials", ".ssh/config", ".ssh/id_git-ssh"):
        written = pod.home / name
        assert written.stat().st_uid == uid, name  # written by the pod's user, for its steps
        assert written.stat().st_mode & 0o077 == 0, name
    assert not any(pod.workspace.iterdir()), "creds-init wrote into the workspace"

    # Knative's git source: -url, -revision, -path. Plain http:// needs the opt-in.
    http_url = peers.http.url_for("repo.git")
    res = run(
        images,
        "git-init",
        [f"-url={http_url}", "-revision=main", "-path=over-http"],
        pod,
        env={"STEPKIT_GIT_ALLOW_HTTP": "true"},
    )
    assert res.returncode == 0, res.stderr
    assert ("repo.git", "builder") in peers.http.granted
    ssh_url = peers.ssh.url_for("repo.git")
    res = run(images, "git-init", [f"-url={ssh_url}", "-revision=v1.0", "-path=over-ssh"], pod)
    assert res.returncode == 0, res.stderr
    assert [a.repo for a in peers.ssh.access_log() if a.allowed] == ["repo.git"]
    assert (pod.workspace / "over-http" / "README.md").read_text() == "commit 3\n"
    assert (pod.workspace / "over-ssh" / "README.md").read_text() == "commit 1\n"
    assert sorted(p.name for p in pod.workspace.iterdir()) == ["over-http", "over-ssh"]

    # A user's step in the base image: git log, then a commit pushed over both transports.
    step = (
        "set -e; cd /workspace/over-http; git log --format=%H -1;"
        " git -c user.name=step -c user.email=step@example.com commit -q --allow-empty -m step;"
        " git push -q origin HEAD:refs/heads/from-pod-http;"
        f" git push -q {ssh_url} HEAD:refs/heads/from-pod-ssh;"
        " git rev-parse HEAD"
    )
    res = run(images, "base", ["sh", "-c", step], pod)
    assert res.returncode == 0, res.stderr
    logged, pushed = res.stdout.split()
    assert logged == peers.shas["refs/heads/main"]
    assert peers.ref("refs/heads/from-pod-http") == pushed
    assert peers.ref("refs/heads/from-pod-ssh") == pushed
    assert peers.ref(f"{pushed}^") == logged

    # Step images often run as root: git must not refuse the checkout as someone else's.
    root_step = Pod(pod.workspace, pod.home, pod.secrets, "0:0")
    res = run(images, "base", ["git", "-C", "/workspace/over-ssh", "log", "--format=%H"], root_step)
    assert (res.returncode, res.stdout) == (0, peers.shas["refs/tags/v1.0^{}"] + "\n"), res.stderr

    res = run(images, "nop", [], pod)
    assert (res.returncode, res.stdout) == (0, "Build successful\n"), res.stderr


def test_git_init_into_the_workspace_itself(images: dict[str, str], peers: Peers, pod: Pod) -> None:
    """No -path: the checkout is /workspace; with the root read-only, nothing else lands there."""
    run(images, "creds-init", knative_creds_args(peers), pod, secrets=True)
    res = run(images, "git-init", [f"-url={peers.ssh.url_for('repo.git')}", "-revision="], pod)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in pod.workspace.iterdir()) == [".git", "README.md"]
    # /workspace is the emptyDir's, root-owned: git in a later step must still accept it.
    res = run(images, "base", ["git", "status", "--porcelain", "--branch"], pod)
    assert (res.returncode, res.stdout) == (0, "## HEAD (no branch)\n"), res.stderr
    assert not [p for p in pod.home.iterdir() if p.name.startswith("stepkit-")], "scratch left"


def test_failing_helpers_exit_non_zero_through_the_entrypoint(
    images: dict[str, str], peers: Peers, pod: Pod
) -> None:
    # A secret the service account names but nobody mounted: bad input, nothing written.
    res = run(images, "creds-init", ["-basic-git=missing=https://example.com"], pod, secrets=True)
    assert res.returncode == 2, res.stderr
    assert "missing" in res.stderr
    assert not any(pod.home.iterdir())
    # No credentials (creds-init did not run): the server refuses, git-init says so.
    res = run(
        images,
        "git-init",
        [f"-url={peers.http.url_for('repo.git')}", "-revision=main", "-retries=0"],
        pod,
        env={"STEPKIT_GIT_ALLOW_HTTP": "true"},
    )
    assert res.returncode == 3, res.stderr
    assert not any(pod.workspace.iterdir())
    # A revision the repository lacks.
    run(images, "creds-init", knative_creds_args(peers), pod, secrets=True)
    res = run(
        images,
        "git-init",
        [f"-url={peers.ssh.url_for('repo.git')}", "-revision=no-such-branch", "-path=src"],
        pod,
    )
    assert res.returncode == 1, res.stderr
    assert "no-such-branch" in res.stderr
    assert not (pod.workspace / "src").exists()
    # Flags the helper does not know are usage errors, as with the Go binaries.
    res = run(images, "git-init", ["-no-such-flag=1"], pod)
    assert res.returncode == 2
    assert "no-such-flag" in res.stderr


def test_image_configuration(images: dict[str, str]) -> None:
    """What a pod spec relies on without saying it: user, home, working directory, labels."""
    revision = run_git(["rev-parse", "HEAD"], env=dict(os.environ)).stdout.strip()
    for name, image in images.items():
        config = image_config(image)
        env = dict(item.split("=", 1) for item in config.get("Env", []))
        assert config.get("User") == "65532:65532", name
        assert config.get("WorkingDir") == "/workspace", name
        assert env["HOME"] == POD_HOME, name
        assert env["PATH"].startswith("/opt/stepkit/bin:"), name
        labels = config.get("Labels", {})
        assert labels["org.opencontainers.image.title"] == f"stepkit-{name}"
        assert labels["org.opencontainers.image.version"] == __version__
        assert labels["org.opencontainers.image.revision"].startswith(revision)
        assert labels["org.opencontainers.image.description"]
        assert "org.opencontainers.image.source" in labels
        expected = ["/opt/stepkit/bin/stepkit", name] if name != "base" else None
        assert config.get("Entrypoint") == expected, name


def test_base_image_holds_no_build_leftovers(images: dict[str, str], tmp_path: Path) -> None:
    """No compiler, pip, wheel or package cache; every module precompiled for a read-only root."""
    pod = Pod(emptydir(tmp_path / "ws"), emptydir(tmp_path / "home"), Secrets(tmp_path), "65532")
    script = (
        "for tool in gcc cc c++ make pip pip3; do command -v $tool && echo found $tool; done;"
        " ls /opt/stepkit/bin;"
        # /usr/share/python-wheels belongs to Debian's python3-venv in the local Python base.
        " find / -xdev -path /usr/share/python-wheels -prune -o \\( -name '*.whl'"
        " -o -path '*/.cache/pip' -o -name pip -path '*site-packages*'"
        " -o -path '/var/lib/apt/lists/*.gz' \\) -print 2>/dev/null;"
        " find /opt/stepkit -name '*.py' | while read f; do"
        "  d=$(dirname $f)/__pycache__; b=$(basename $f .py);"
        '  ls $d/$b.cpython-*.pyc >/dev/null 2>&1 || echo "no pyc: $f"; done;'
        " echo done"
    )
    res = run_image(
        images["base"],
        ["sh", "-c", script],
        workspace=pod.workspace,
        home=pod.home,
        secrets=None,
        user="65532:65532",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == "done"
    assert not [line for line in lines if line.startswith(("found ", "no pyc", "/"))], lines
    assert "pip" not in lines and "stepkit" in lines


def test_secrets_are_mounted_read_only_where_the_controller_puts_them(
    images: dict[str, str], pod: Pod
) -> None:
    """The secret volume as creds-init sees it: the kubelet's layout, readable, not writable."""
    script = (
        f"cat {POD_SECRETS}/git-basic/username; echo; touch {POD_SECRETS}/x 2>/dev/null || echo ro"
    )
    res = run(images, "base", ["sh", "-c", script], pod, secrets=True)
    assert res.stdout.split() == ["builder", "ro"], res.stderr


def test_ssh_runs_under_a_uid_without_passwd_entry(images: dict[str, str], tmp_path: Path) -> None:
    """The base image's ssh gives an arbitrary UID a passwd entry; OpenSSH's own refuses."""
    pod = Pod(emptydir(tmp_path / "ws"), emptydir(tmp_path / "home"), Secrets(tmp_path), "")
    script = "/usr/bin/ssh -G example.com; echo plain=$?; ssh -G example.com | grep '^user '"
    res = run_image(
        images["base"],
        ["sh", "-c", script],
        workspace=pod.workspace,
        home=pod.home,
        secrets=None,
        user=ARBITRARY_UID,
    )
    assert res.returncode == 0, res.stderr
    assert "No user exists for uid 1000630000" in res.stderr  # the test is live
    assert res.stdout.splitlines() == ["plain=255", "user builder"]
    assert (
        (pod.home / ".stepkit" / "nss-1000630000-0" / "passwd")
        .read_text()
        .endswith("builder:x:1000630000:0:stepkit build user:/builder/home:/bin/sh\n")
    )


def test_ssh_builder_as_a_step_after_creds_init_and_git_init(
    images: dict[str, str], peers: Peers, pod: Pod, tmp_path: Path
) -> None:
    """A deploy: creds-init with the git key and a deploy host's key, git-init over ssh, the
    stepkit-ssh image uploading the checkout to the host and running a command there, nop."""
    private, public = gen_keypair(tmp_path / "keys" / "target")
    remote = tmp_path / "target-root"
    remote.mkdir()
    with SshServer(tmp_path / "target-sshd", [AuthorizedKey(public, remote, login=True)]) as host:
        pod.secrets.add("deploy", {"ssh-privatekey": private, "known_hosts": host.host_key_line})
        for path in [pod.secrets.root, *pod.secrets.root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        # Two ssh secrets on one address, told apart by port.
        args = [*knative_creds_args(peers), f"-ssh-git=deploy=127.0.0.1:{host.port}"]
        res = run(images, "creds-init", args, pod, secrets=True)
        assert res.returncode == 0, res.stderr
        ssh_url = peers.ssh.url_for("repo.git")
        res = run(images, "git-init", [f"-url={ssh_url}", "-revision=main", "-path=src"], pod)
        assert res.returncode == 0, res.stderr
        (pod.workspace / "src" / "deploy.sh").write_text(
            "#!/bin/sh\necho deployed $(cat README.md)\n"
        )
        (pod.workspace / "src" / "deploy.sh").chmod(0o755)
        results = emptydir(tmp_path / "results")
        res = run(
            images,
            "ssh",
            [
                "-host=127.0.0.1",
                f"-port={host.port}",
                "-user=root",
                f"-upload=src={remote}/app",
                f"-command=cd {remote}/app && ./deploy.sh",
                "-output",
            ],
            pod,
            mounts=[(results, "/tekton/results", False)],
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout == "deployed commit 3\n"
        assert (remote / "app" / "README.md").read_text() == "commit 3\n"
        assert (remote / "app" / "deploy.sh").stat().st_mode & 0o777 == 0o755
        assert (results / "output").read_text() == "deployed commit 3\n"

        # The host's key changes (say, a machine in the middle): the step refuses, exit 3.
        pod.home.joinpath(".ssh", "known_hosts").write_text(
            f"[127.0.0.1]:{host.port} {peers.ssh.host_key_line.split(' ', 1)[1]}\n"
        )
        res = run(
            images,
            "ssh",
            [
                "-host=127.0.0.1",
                f"-port={host.port}",
                "-user=root",
                f"-command=touch {remote}/PWNED",
            ],
            pod,
        )
        assert res.returncode == 3, res.stderr
        assert "has CHANGED" in res.stderr
        assert not (remote / "PWNED").exists()

    res = run(images, "nop", [], pod)
    assert (res.returncode, res.stdout) == (0, "Build successful\n"), res.stderr


def _tar_gz(files: dict[str, tuple[int, bytes]], links: dict[str, str]) -> bytes:
    """A .tar.gz of files {name: (mode, content)} and symlinks {name: target}."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, (mode, content) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            archive.addfile(info, io.BytesIO(content))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize("user", USERS, ids=["uid-65532", "arbitrary-uid"])
def test_gcs_source_in_the_pod(images: dict[str, str], tmp_path: Path, user: str) -> None:
    """Knative's GCS source: the gcs-fetcher image with the controller's args, then a step, then nop.

    An archive pinned to an older generation while a newer one exists, and a manifest.
    """
    pod = Pod(emptydir(tmp_path / "ws"), emptydir(tmp_path / "home"), Secrets(tmp_path), user)
    with FakeGcs(tmp_path / "gcs") as gcs:
        gcs.make_bucket("stepkit-sources", versioning=True)
        files = {"app/run.sh": (0o4755, b"#!/bin/sh\necho run\n"), "app/README": (0o644, b"v1\n")}
        old = gcs.put("stepkit-sources", "src.tgz", _tar_gz(files, {"app/link": "README"}))
        gcs.put("stepkit-sources", "src.tgz", _tar_gz({"app/README": (0o644, b"v2\n")}, {}))
        res = run(
            images,
            "gcs-fetcher",
            [
                "--type",
                "TarGzArchive",
                "--location",
                f"gs://stepkit-sources/src.tgz#{old}",
                "--dest_dir",
                "/workspace/archive",
            ],
            pod,
            env=gcs.env,
        )
        assert res.returncode == 0, res.stderr
        app = pod.workspace / "archive" / "app"
        assert (app / "README").read_bytes() == b"v1\n"  # the generation asked for, not the newest
        assert os.readlink(app / "link") == "README"
        assert (app / "run.sh").stat().st_mode & 0o7777 == 0o755  # setuid stripped
        assert (app / "README").stat().st_uid == int(user.split(":")[0])

        blob = gcs.put("stepkit-sources", "objects/readme", b"from a manifest\n")
        manifest = {
            "docs/README": {
                "sourceUrl": f"gs://stepkit-sources/objects/readme#{blob}",
                "sha1sum": hashlib.sha1(b"from a manifest\n", usedforsecurity=False).hexdigest(),
                "mode": 0o644,
            }
        }
        gcs.put("stepkit-sources", "manifest.json", json.dumps(manifest).encode())
        res = run(
            images,
            "gcs-fetcher",
            ["--type=Manifest", "--location=gs://stepkit-sources/manifest.json"],
            pod,
            env=gcs.env,
        )
        assert res.returncode == 0, res.stderr
        assert (pod.workspace / "docs" / "README").read_bytes() == b"from a manifest\n"

        # A step sees the files; a missing object fails through the entrypoint, nothing added.
        res = run(images, "base", ["sh", "-c", "cat archive/app/link docs/README"], pod)
        assert res.stdout == "v1\nfrom a manifest\n", res.stderr
        before = sorted(p.name for p in pod.workspace.iterdir())
        res = run(
            images,
            "gcs-fetcher",
            ["--type=TarGzArchive", "--location=gs://stepkit-sources/nope.tgz", "--retries=0"],
            pod,
            env=gcs.env,
        )
        assert res.returncode == 1, res.stderr
        assert "gs://stepkit-sources/nope.tgz" in res.stderr
        assert sorted(p.name for p in pod.workspace.iterdir()) == before
    res = run(images, "nop", [], pod)
    assert (res.returncode, res.stdout) == (0, "Build successful\n"), res.stderr


@pytest.mark.parametrize("user", USERS, ids=["uid-65532", "arbitrary-uid"])
def test_image_source_in_the_pod(images: dict[str, str], tmp_path: Path, user: str) -> None:
    """A Knative custom source: creds-init for the registry, the image-fetcher image taking /app
    out of a 2-layer image (a whiteout in the top one), a step reading it, nop."""
    pod = Pod(emptydir(tmp_path / "ws"), emptydir(tmp_path / "home"), Secrets(tmp_path / "s"), user)
    pod.secrets.root.mkdir()
    with Registry(tmp_path / "registry", {"puller": PASSWORD}) as registry:
        lower = layer_tar(
            [
                LayerFile("app/run.sh", b"#!/bin/sh\necho run\n", mode=0o755),
                LayerFile("app/old.txt", b"old\n"),
                LayerFile("app/current", type="symlink", target="run.sh"),
                LayerFile("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            ]
        )
        upper = layer_tar(
            [LayerFile("app/old.txt", type="whiteout"), LayerFile("app/new.txt", b"new\n")]
        )
        layout = tmp_path / "layout"
        write_layout(layout, "v1", [lower, upper])
        digest = push(layout, "v1", registry, "team/tools", username="puller", password=PASSWORD)
        pod.secrets.add("registry", {"username": "puller", "password": PASSWORD})
        for path in [pod.secrets.root, *pod.secrets.root.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        res = run(
            images, "creds-init", [f"-basic-docker=registry={registry.host}"], pod, secrets=True
        )
        assert res.returncode == 0, res.stderr
        ca = "/etc/stepkit-test-ca.pem"
        fetch = [f"--image={registry.host}/team/tools:v1", f"--ca-file={ca}"]
        ca_mount = [(registry.ca_pem, ca, True)]
        res = run(
            images,
            "image-fetcher",
            [*fetch, "--path=/app", "--dest_dir=/workspace/tools", "--results-dir=/builder/home"],
            pod,
            mounts=ca_mount,
        )
        assert res.returncode == 0, res.stderr
        tools = pod.workspace / "tools"
        assert sorted(p.name for p in tools.iterdir()) == ["current", "new.txt", "run.sh"]
        assert os.readlink(tools / "current") == "run.sh"
        assert (tools / "run.sh").stat().st_mode & 0o777 == 0o755
        assert (pod.home / "digest").read_text().strip() == digest  # the manifest skopeo pushed
        res = run(images, "base", ["sh", "-c", "tools/current; cat tools/new.txt"], pod)
        assert (res.returncode, res.stdout) == (0, "run\nnew\n"), res.stderr
        # Without credentials (a fresh home) the registry refuses: exit 3, nothing added.
        bare = Pod(pod.workspace, emptydir(tmp_path / "home2"), pod.secrets, user)
        res = run(
            images, "image-fetcher", [*fetch, "--dest_dir=/workspace/other"], bare, mounts=ca_mount
        )
        assert res.returncode == 3, res.stderr
        assert not (pod.workspace / "other").exists()
    res = run(images, "nop", [], pod)
    assert (res.returncode, res.stdout) == (0, "Build successful\n"), res.stderr


# Tekton's catalog git-clone Task (versions 0.9 and 0.10), as its step runs in the image its
# gitInitImage param names: a script, started through its `#!/usr/bin/env sh` line, as UID 65532
# with HOME=$(params.userHome) (/home/git). It copies the bound basic-auth workspace's
# .gitconfig and .git-credentials, or the ssh-directory workspace, into that home (read-only
# copies), names the output workspace a git safe.directory with `git config --global`, runs
# /ko-app/git-init with every flag spelled `-flag=value` (empty values included, -path
# absolute and ending in "/" when no subdirectory is given), then reads HEAD and the committer
# date with git and writes the three results. The values below are the Task's defaults with
# the params substituted, as Tekton substitutes them before the step starts.
TEKTON_GIT_CLONE_STEP = """#!/usr/bin/env sh
set -eu
set -x
home="$PARAM_USER_HOME"
if [ "$WORKSPACE_BASIC_AUTH_DIRECTORY_BOUND" = true ]; then
  for f in .git-credentials .gitconfig; do
    cp "$WORKSPACE_BASIC_AUTH_DIRECTORY_PATH/$f" "$home/$f"; chmod 400 "$home/$f"
  done
fi
if [ "$WORKSPACE_SSH_DIRECTORY_BOUND" = true ]; then
  cp -R "$WORKSPACE_SSH_DIRECTORY_PATH" "$home/.ssh"; chmod 700 "$home/.ssh"
  chmod -R 400 "$home"/.ssh/*
fi
dir="$WORKSPACE_OUTPUT_PATH/$PARAM_SUBDIRECTORY"
[ -d "$dir" ] && rm -rf "${dir:?}"/* "$dir"/.[!.]* "$dir"/..?*
git config --global --add safe.directory "$WORKSPACE_OUTPUT_PATH"
/ko-app/git-init -url="$PARAM_URL" -revision="$PARAM_REVISION" -refspec="$PARAM_REFSPEC" \\
  -path="$dir" -sslVerify="$PARAM_SSL_VERIFY" -submodules="$PARAM_SUBMODULES" \\
  -depth="$PARAM_DEPTH" -sparseCheckoutDirectories="$PARAM_SPARSE_CHECKOUT_DIRECTORIES"
cd "$dir"
sha="$(git rev-parse HEAD)"
date="$(git log -1 --pretty=%ct)"
printf "%s" "$date" > /tekton/results/committer-date
printf "%s" "$sha" > /tekton/results/commit
printf "%s" "$PARAM_URL" > /tekton/results/url
"""


@pytest.mark.parametrize("transport", ["http-basic-auth", "ssh-directory"])
@pytest.mark.parametrize("task_version", ["0.9", "0.10"])
def test_tekton_catalog_git_clone_task(
    images: dict[str, str], peers: Peers, tmp_path: Path, task_version: str, transport: str
) -> None:
    """The catalog's git-clone Task with gitInitImage = stepkit-git-init, unchanged.

    0.9 writes HOME=/home/git in the image's own root (no readOnlyRootFilesystem); 0.10
    mounts an emptyDir there, and then the root may be read-only.
    """
    workspace = emptydir(tmp_path / "workspace")
    output = emptydir(workspace / "output")
    (output / "stale").write_text("from an earlier run\n")  # deleteExisting=true removes it
    tekton = tmp_path / "tekton"
    results = emptydir(tekton / "results")
    (tekton / "termination").touch()
    (tekton / "termination").chmod(0o666)
    script = tekton / "scripts" / "script-0-clone"
    script.parent.mkdir()
    script.write_text(TEKTON_GIT_CLONE_STEP)
    script.chmod(0o755)
    tekton.chmod(0o755)
    auth = tmp_path / "basic-auth"
    auth.mkdir()
    ssh_dir = tmp_path / "ssh-directory"
    ssh_dir.mkdir()
    if transport == "http-basic-auth":
        url = peers.http.url_for("repo.git")
        (auth / ".gitconfig").write_text("[credential]\n\thelper = store\n")
        (auth / ".git-credentials").write_text(
            peers.http.url.replace("://", f"://builder:{quote(PASSWORD, safe='')}@", 1) + "\n"
        )
    else:
        url = peers.ssh.url_for("repo.git")
        (ssh_dir / "id_ed25519").write_text(peers.private_key)
        (ssh_dir / "known_hosts").write_text(peers.ssh.host_key_line + "\n")
    for path in [auth, ssh_dir, *auth.iterdir(), *ssh_dir.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # a Secret bound to a workspace
    env = {
        "HOME": "/home/git",
        "PARAM_URL": url,
        "PARAM_REVISION": "",
        "PARAM_REFSPEC": "",
        "PARAM_SUBMODULES": "true",
        "PARAM_DEPTH": "1",
        "PARAM_SSL_VERIFY": "true",
        "PARAM_SUBDIRECTORY": "",
        "PARAM_SPARSE_CHECKOUT_DIRECTORIES": "",
        "PARAM_USER_HOME": "/home/git",
        "WORKSPACE_OUTPUT_PATH": "/workspace/output",
        "WORKSPACE_BASIC_AUTH_DIRECTORY_BOUND": str(transport == "http-basic-auth").lower(),
        "WORKSPACE_BASIC_AUTH_DIRECTORY_PATH": "/workspace/basic-auth",
        "WORKSPACE_SSH_DIRECTORY_BOUND": str(transport == "ssh-directory").lower(),
        "WORKSPACE_SSH_DIRECTORY_PATH": "/workspace/ssh-directory",
        # The test's git server speaks plain http; a TaskRun's podTemplate env allows it.
        "STEPKIT_GIT_ALLOW_HTTP": "true",
    }
    mounts = [
        (output, "/workspace/output", False),
        (auth, "/workspace/basic-auth", True),
        (ssh_dir, "/workspace/ssh-directory", True),
        (tekton, "/tekton", False),
    ]
    if task_version == "0.10":
        mounts.append((emptydir(tmp_path / "user-home"), "/home/git", False))
    (workspace / "basic-auth").mkdir()
    (workspace / "ssh-directory").mkdir()
    res = run_image(
        images["git-init"],
        [],
        workspace=workspace,
        home=emptydir(tmp_path / "builder-home"),
        secrets=None,
        user="65532:65532",
        env=env,
        mounts=mounts,
        read_only=task_version == "0.10",
        entrypoint=["/tekton/scripts/script-0-clone"],
    )
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.stdout + res.stderr, [PASSWORD, peers.private_key])
    head = peers.shas["refs/heads/main"]
    assert (results / "commit").read_text() == head
    assert (results / "url").read_text() == url
    assert (results / "committer-date").read_text().isdigit()
    assert sorted(p.name for p in output.iterdir()) == [".git", "README.md"]
    assert (output / "README.md").read_text() == "commit 3\n"
    # git-init wrote its own results into Tekton's termination file, as Tekton's does.
    written = {e["key"]: e["value"] for e in json.loads((tekton / "termination").read_text())}
    assert written["commit"] == head
    if transport == "http-basic-auth":
        assert ("repo.git", "builder") in peers.http.granted
    else:
        assert [a.repo for a in peers.ssh.access_log() if a.allowed] == ["repo.git"]


def test_gitops_git_push_step(
    images: dict[str, str], peers: Peers, pod: Pod, tmp_path: Path
) -> None:
    """creds-init, git-init of a manifests repository, a step bumping the image tag, then the
    git-push image committing, tagging and pushing it over http and ssh while another build
    pushed to the same branch (so it rebases)."""
    res = run(images, "creds-init", knative_creds_args(peers), pod, secrets=True)
    assert res.returncode == 0, res.stderr
    http = {"STEPKIT_GIT_ALLOW_HTTP": "true"}
    res = run(
        images,
        "git-init",
        [f"-url={peers.http.url_for('repo.git')}", "-revision=main", "-path=manifests"],
        pod,
        env=http,
    )
    assert res.returncode == 0, res.stderr
    bump = "printf 'image: registry.example.com/app:v2\\n' >/workspace/manifests/deploy.yaml"
    res = run(images, "base", ["sh", "-c", bump], pod)
    assert res.returncode == 0, res.stderr

    # Another build pushes to main meanwhile.
    env = git_env(tmp_path / "other-home")
    run_git(["clone", "-q", str(peers.srv / "repo.git"), str(tmp_path / "other")], env=env)
    (tmp_path / "other" / "NOTES.md").write_text("another build\n")
    run_git(["add", "NOTES.md"], env=env, cwd=tmp_path / "other")
    run_git(["commit", "-q", "-m", "other"], env=env, cwd=tmp_path / "other")
    run_git(["push", "-q", "origin", "main"], env=env, cwd=tmp_path / "other")
    theirs = peers.ref("refs/heads/main")

    push_args = [
        "-path=manifests",
        "-message=Deploy app:v2",
        "-author=Deploy Bot <deploy@example.com>",
        "-tag=deploy-v2",
        "-allow-http",
        "-retry-backoff=0",
        "--results-dir=/builder/home/push-results",
    ]
    res = run(images, "git-push", push_args, pod)
    assert res.returncode == 0, res.stderr
    commit = (pod.home / "push-results" / "commit").read_text()
    assert (pod.home / "push-results" / "pushed").read_text() == "true"
    assert peers.ref("refs/heads/main") == commit == peers.ref("refs/tags/deploy-v2^{commit}")
    assert peers.ref("refs/heads/main^") == theirs
    assert ("repo.git", "builder") in peers.http.granted

    # The same over ssh, with creds-init's key; nothing changed then means nothing pushed.
    res = run(
        images,
        "git-init",
        [f"-url={peers.ssh.url_for('repo.git')}", "-revision=main", "-path=over-ssh"],
        pod,
    )
    assert res.returncode == 0, res.stderr
    res = run(images, "git-push", ["-path=over-ssh", "--results-dir=/builder/home/r2"], pod)
    assert res.returncode == 0, res.stderr
    assert (pod.home / "r2" / "pushed").read_text() == "false"
    res = run(
        images,
        "base",
        [
            "sh",
            "-c",
            "printf 'image: registry.example.com/app:v3\\n' >/workspace/over-ssh/deploy.yaml",
        ],
        pod,
    )
    assert res.returncode == 0, res.stderr
    res = run(images, "git-push", ["-path=over-ssh", "--results-dir=/builder/home/r3"], pod)
    assert res.returncode == 0, res.stderr
    assert (pod.home / "r3" / "pushed").read_text() == "true"
    assert peers.ref("refs/heads/main") == (pod.home / "r3" / "commit").read_text()
    assert any(a.allowed and "receive-pack" in a.command for a in peers.ssh.access_log())


def test_docker_builder_in_the_pod_sequence(images: dict[str, str], tmp_path: Path) -> None:
    """creds-init (a docker basic-auth secret), git-init, the docker builder, nop.

    The step reaches podman's Docker API service through its socket mounted at
    /var/run/docker.sock (no DOCKER_HOST: the default), builds the checkout's Dockerfile and
    pushes it to an htpasswd registry with the credentials creds-init wrote.
    """
    from tests.podman import PodmanService

    src = tmp_path / "app-src"
    make_repo(src, commits=1)
    (src / "Dockerfile").write_text(
        f'FROM {images["base"]}\nARG NOTE\nCOPY README.md /app/README.md\nRUN echo "note=$NOTE"\n'
    )
    env = git_env(tmp_path / "git-home")
    run_git(["add", "Dockerfile"], env=env, cwd=src)
    run_git(["commit", "-q", "-m", "Dockerfile"], env=env, cwd=src)
    srv = tmp_path / "srv"
    make_bare(src, srv / "app.git")
    secrets = Secrets(tmp_path / "secrets")
    secrets.root.mkdir()
    secrets.add("git-basic", {"username": "builder", "password": PASSWORD})
    secrets.add("regcred", {"username": "pusher", "password": PASSWORD})
    for path in [secrets.root, *secrets.root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    pod = Pod(emptydir(tmp_path / "ws"), emptydir(tmp_path / "home"), secrets, ARBITRARY_UID)
    with (
        GitHttpServer(srv, {"": ("builder", PASSWORD)}) as http,
        Registry(tmp_path / "registry", {"pusher": PASSWORD}) as registry,
        PodmanService(insecure_registries=[registry.host]) as service,
    ):
        service.socket_path.chmod(0o666)  # as a docker group would let the step's UID in
        creds = [f"-basic-git=git-basic={http.url}", f"-basic-docker=regcred={registry.url}"]
        res = run(images, "creds-init", creds, pod, secrets=True)
        assert res.returncode == 0, res.stderr
        res = run(
            images,
            "git-init",
            [f"-url={http.url_for('app.git')}", "-revision=main", "-path=app"],
            pod,
            env={"STEPKIT_GIT_ALLOW_HTTP": "true"},
        )
        assert res.returncode == 0, res.stderr
        image = f"{registry.host}/team/app:pod"
        res = run(
            images,
            "docker",
            [
                f"-image={image}",
                "-context=/workspace/app",
                "-build-arg=NOTE=a,b",
                "--results-dir=/workspace/results",
            ],
            pod,
            # /var/run is a link to /run in the image: the default socket path leads here.
            mounts=[(service.socket_path, "/run/docker.sock", False)],
            env={"STEPKIT_DOCKER_WAIT": "10"},
        )
        assert res.returncode == 0, res.stderr
        assert "note=a,b" in res.stdout
        digest = (pod.workspace / "results" / "IMAGE_DIGEST").read_text()
        assert (pod.workspace / "results" / "IMAGE_URL").read_text() == image
        auth = tmp_path / "skopeo-auth.json"
        token = base64.b64encode(f"pusher:{PASSWORD}".encode()).decode()
        auth.write_text(json.dumps({"auths": {registry.host: {"auth": token}}}))
        proc = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--authfile",
                str(auth),
                "--cert-dir",
                str(registry.cert_dir),
                f"docker://{image}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["Digest"] == digest
        service.podman("rmi", "--force", image)  # the shared storage keeps no test image
    res = run(images, "nop", [], pod)
    assert (res.returncode, res.stdout) == (0, "Build successful\n"), res.stderr
