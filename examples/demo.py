"""`make demo`: a Build run end to end with `stepkit run`.

examples/builds/demo/ holds a basic-auth Secret annotated for a git server, the ServiceAccount
that lists it, a ClusterBuildTemplate with parameters and a Build whose git source is on that
server. This script
  1. builds the hello builder's image (examples/hello-builder, FROM stepkit-base) when missing;
  2. serves a small repository over git http-backend, demanding the Secret's user and password;
  3. finds a Docker-compatible daemon (DOCKER_HOST, else the usual socket), or starts podman's
     API service when none answers;
  4. runs the Build: `stepkit run -f <copy of examples/builds/demo> --network host ...`.
The server's port is chosen when it starts, so the Build runs from a copy of the files with
the placeholder address 127.0.0.1:8089 replaced by the server's. The server listens on the
host's loopback, hence --network host, and speaks plain http, hence
--env STEPKIT_GIT_ALLOW_HTTP=true (git-init refuses http:// otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from controller.run.podman import STORAGE_DRIVER, PodmanService  # noqa: E402
from stepkit import __version__  # noqa: E402

STEPKIT = str(Path(sys.executable).with_name("stepkit"))
BUILD_DIR = ROOT / "examples" / "builds" / "demo"
PLACEHOLDER = "http://127.0.0.1:8089"
USERNAME, PASSWORD = "octocat", "demo-password-not-secret"  # as 0-secret.yaml says


def image_repo() -> str:
    return os.environ.get("IMAGE_REPO", "localhost/stepkit")


def ensure_hello_builder(repo: str) -> str:
    """The hello builder's image, FROM this tree's stepkit-base (made by make images-local)."""
    image = f"{repo}-hello-builder:{__version__}"
    storage = ["--storage-driver", STORAGE_DRIVER]
    found = subprocess.run(
        ["buildah", *storage, "inspect", "--type", "image", image],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        print(f"building {image}", flush=True)
        subprocess.run(
            [
                "buildah",
                *storage,
                "bud",
                "--isolation",
                "chroot",
                "--quiet",
                "--build-arg",
                f"STEPKIT_BASE={repo}-base:{__version__}",
                "--tag",
                image,
                str(ROOT / "examples" / "hello-builder"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return image


@contextlib.contextmanager
def docker_host() -> Iterator[str]:
    """The daemon the docker CLI would use, or podman's API service started for the demo."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    except docker.errors.DockerException:
        pass
    print("no Docker daemon answers: starting podman's API service for the demo", flush=True)
    with PodmanService() as service:
        yield service.url


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    from tests.peers import GitHttpServer, make_bare, make_repo

    repo = image_repo()
    ensure_hello_builder(repo)
    work = Path(tempfile.mkdtemp(prefix="stepkit-demo-"))
    try:
        make_repo(work / "app", commits=3)
        make_bare(work / "app", work / "srv" / "org" / "app.git")
        with GitHttpServer(work / "srv", {"": (USERNAME, PASSWORD)}) as server:
            files = work / "build"
            files.mkdir()
            for path in sorted(BUILD_DIR.glob("*.yaml")):
                text = path.read_text().replace(PLACEHOLDER, server.url)
                text = text.replace("localhost/stepkit-", f"{repo}-")
                (files / path.name).write_text(text)
            with docker_host() as host:
                argv = [
                    "stepkit",
                    "run",
                    "-f",
                    "examples/builds/demo/",
                    "--network",
                    "host",
                    "--env",
                    "STEPKIT_GIT_ALLOW_HTTP=true",
                    "--image-repo",
                    repo,
                ]
                print(f"\n$ {' '.join(argv)}    # the git server is at {server.url}\n", flush=True)
                argv[0], argv[3] = STEPKIT, str(files)
                env = {**os.environ, "DOCKER_HOST": host}
                code = subprocess.run(argv, env=env, check=False).returncode
            if code == 0 and not server.granted:
                print("error: the git server granted no request", file=sys.stderr)
                return 1
            return code
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
