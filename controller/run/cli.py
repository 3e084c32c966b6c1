"""`stepkit run`: render a Build's Pod as `stepkit pod` does, then run it through the Docker Engine API."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from controller.pod.cli import DEFAULT_IMAGE_REPO, image_default
from stepkit.clickutil import CONTEXT_SETTINGS, GoCommand, common_options
from stepkit.errors import EXIT_FAILURE, InputError

F = TypeVar("F", bound=Callable[..., Any])


def _option(env: str, *decls: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, envvar=f"STEPKIT_RUN_{env}", show_envvar=True, **kwargs)


@click.command(
    "run",
    cls=GoCommand,
    context_settings=CONTEXT_SETTINGS,
    help=f"""Run a Build on this machine, as a kubelet runs the Pod `stepkit pod` prints for it.

Reads the same documents as `stepkit pod` (Builds, BuildTemplates, ClusterBuildTemplates,
ServiceAccounts, Secrets; here a Secret a volume mounts needs its data or stringData) and runs
the Build's Pod through the Docker Engine API: Docker, or Podman's API service
(`podman system service`). The daemon is found as the docker CLI finds it: DOCKER_HOST,
DOCKER_TLS_VERIFY, DOCKER_CERT_PATH; it must run on this machine (Secrets and termination
messages are bind-mounted from a private directory here).

The init containers run one at a time, in order, then nop; all share one network namespace,
held by a sandbox container, or the host's with --network host. /workspace, /builder/home and
every emptyDir are docker volumes, writable by any user; Secrets are mounted read-only in the
kubelet's layout (each key a file, through the ..data symlink). Logs stream live, each line
prefixed by its step; the first failing step stops the Build; spec.timeout is enforced. At the
end a table shows each step's image, duration, status and results (its termination message).
Ctrl-C or SIGTERM stops the running container and removes everything the run made.

The helper images default to {image_default(DEFAULT_IMAGE_REPO, "<helper>")} (`make images`).

Exit codes: 0 the Build succeeded; the failing step's exit code; 1 the run could not go on (no
daemon, an image missing, a timeout); 2 invalid input (nothing run); 130 interrupted.""",
)
@click.option(
    "-f",
    "--filename",
    "filenames",
    multiple=True,
    required=True,
    envvar="STEPKIT_RUN_FILENAME",
    show_envvar=True,
    metavar="FILE",
    help="A YAML or JSON file, a directory of them, or - for stdin; repeatable "
    "(the variable: separated by spaces).",
)
@_option(
    "BUILD",
    "--build",
    "build_name",
    default=None,
    metavar="NAME",
    help="The Build to run, when the input has several.",
)
@_option(
    "NAMESPACE",
    "-n",
    "--namespace",
    default=None,
    metavar="NS",
    help="Namespace of the documents that name none, as kubectl -n. [default: 'default']",
)
@_option(
    "WORKSPACE",
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep /workspace in this directory (made if missing; it stays afterwards and is "
    "made writable by any user, as an emptyDir is). [default: a docker volume, removed]",
)
@_option(
    "NETWORK",
    "--network",
    type=click.Choice(["pod", "host"]),
    default="pod",
    show_default=True,
    help="pod: one network namespace for the Build's containers, as a Pod's; host: the host's "
    "(a server on this machine's loopback is then reachable).",
)
@_option(
    "PULL",
    "--pull",
    type=click.Choice(["never", "missing", "always"]),
    default="missing",
    show_default=True,
    help="Pull an image: never (a missing one is an error), when missing, or always.",
)
@_option(
    "STATUS_FILE",
    "--status-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Write the Build's status here as JSON, in Knative's BuildStatus shape.",
)
@_option(
    "KEEP",
    "--keep",
    is_flag=True,
    default=False,
    help="Keep the containers and volumes of the run (stopped) for a look; remove them with "
    "`docker rm -v $(docker ps -aq --filter label=stepkit.run)`.",
)
@_option(
    "ENV",
    "--env",
    "extra_env",
    multiple=True,
    metavar="NAME=VALUE",
    help="Add a variable to every container, after its own (as a PodPreset did); repeatable "
    "(the variable: separated by spaces). E.g. STEPKIT_GIT_ALLOW_HTTP=true for a git server "
    "on plain http.",
)
@_option(
    "COLOR",
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour the step prefixes: auto on a terminal.",
)
@_option(
    "IMAGE_REPO",
    "--image-repo",
    default=DEFAULT_IMAGE_REPO,
    show_default=True,
    metavar="REPO",
    help="Where the helper images are: each defaults to REPO-<helper>:<version>.",
)
@_option("CREDS_IMAGE", "--creds-image", default=None, metavar="IMG", help="creds-init's image.")
@_option("GIT_IMAGE", "--git-image", default=None, metavar="IMG", help="git-init's image.")
@_option(
    "GCS_FETCHER_IMAGE", "--gcs-fetcher-image", default=None, metavar="IMG", help="gcs-fetcher's."
)
@_option("NOP_IMAGE", "--nop-image", default=None, metavar="IMG", help="nop's image.")
@common_options
def command(
    filenames: tuple[str, ...],
    build_name: str | None,
    namespace: str | None,
    workspace: Path | None,
    network: str,
    pull: str,
    status_file: Path | None,
    keep: bool,
    extra_env: tuple[str, ...],
    color: str,
    image_repo: str,
    creds_image: str | None,
    git_image: str | None,
    gcs_fetcher_image: str | None,
    nop_image: str | None,
) -> int:
    from controller.pod.cli import _read
    from controller.pod.makepod import Images
    from controller.pod.render import Options, read_inputs, render_build, select
    from controller.run.engine import (
        RunError,
        Runner,
        Settings,
        build_status,
        secret_files,
        table,
        write_status,
    )

    if filenames.count("-") > 1:
        raise InputError("-f: - (stdin) may be given once")
    images = Images(
        creds=creds_image or image_default(image_repo, "creds-init"),
        git=git_image or image_default(image_repo, "git-init"),
        gcs_fetcher=gcs_fetcher_image or image_default(image_repo, "gcs-fetcher"),
        nop=nop_image or image_default(image_repo, "nop"),
    )
    documents = [doc for name in filenames for doc in _read(name)]
    inputs = read_inputs(documents, namespace or None)
    builds = select(inputs, build_name)
    if len(builds) > 1:
        names = ", ".join(b.meta.name for b in builds)
        raise InputError(f"--build: the input has several Builds ({names}); name one")
    build = builds[0]
    pod = render_build(build, inputs, Options(images=images, namespace=namespace or None))
    ns = inputs.namespace_of(build.meta)
    secrets = {
        name: secret_files(secret.origin.raw, name)
        for (secret_ns, name), secret in inputs.secrets.items()
        if secret_ns == ns and secret.keys is not None
    }
    for item in extra_env:
        name, eq, _value = item.partition("=")
        if not eq or not name or any(ch.isspace() for ch in name):
            raise InputError(f"--env: {name!r} is not NAME=VALUE (a name, =, a value)")
    if status_file is not None and not status_file.parent.resolve().is_dir():
        raise InputError(f"--status-file: {status_file.parent}: no such directory")
    if workspace is not None:
        try:
            workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--workspace: {workspace}: {exc.strerror}") from None
        workspace = workspace.resolve()

    import docker
    import docker.errors

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        host = _docker_host()
        raise RunError(
            f"no Docker-compatible daemon answers at {host} ({_first_line(exc)}); start one "
            "(`podman system service`, dockerd) or set DOCKER_HOST"
        ) from None
    colour = color == "always" or (color == "auto" and sys.stdout.isatty())
    settings = Settings(
        workspace=workspace,
        network_host=network == "host",
        pull=pull,
        keep=keep,
        colour=colour,
        extra_env=extra_env,
    )
    runner = Runner(client, pod, secrets, settings)
    try:
        outcome = runner.run()
    finally:
        client.close()
    settings.err("")
    for line in table(outcome.steps):
        settings.err(line)
    if status_file is not None:
        write_status(status_file, build_status(outcome, pod))
    if outcome.exit_code == 0:
        settings.err(f"Build {build.meta.name} succeeded")
        return 0
    settings.err(f"Build {build.meta.name} failed: {outcome.message}")
    return outcome.exit_code if outcome.exit_code > 0 else EXIT_FAILURE


def _docker_host() -> str:
    import os

    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
