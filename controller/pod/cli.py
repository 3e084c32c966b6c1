"""`stepkit pod`: read Build, template, ServiceAccount and Secret YAML; print the Pods Knative's controller made."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from stepkit import __version__
from stepkit.clickutil import CONTEXT_SETTINGS, GoCommand, common_options
from stepkit.errors import InputError

DEFAULT_IMAGE_REPO = "localhost/stepkit"
_SUFFIXES = (".yaml", ".yml", ".json")


def image_default(repo: str, helper: str) -> str:
    """images/build.sh names each image <IMAGE_REPO>-<helper>:<version>."""
    return f"{repo}-{helper}:{__version__}"


def _read(path: str) -> list[tuple[Any, str]]:
    from controller.pod.yamlio import MAX_INPUT_BYTES, load_documents

    if path == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        return [(doc, "<stdin>") for doc in load_documents(data, "<stdin>")]
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in _SUFFIXES and f.is_file())
        if not files:
            raise InputError(f"-f: {path}: no *.yaml, *.yml or *.json file in this directory")
        return [doc for f in files for doc in _read(str(f))]
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_INPUT_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"-f: {path}: no such file or directory") from None
    except OSError as exc:
        raise InputError(f"-f: {path}: {exc.strerror}") from None
    return [(doc, path) for doc in load_documents(data, path)]


@click.command(
    "pod",
    cls=GoCommand,
    context_settings=CONTEXT_SETTINGS,
    help=f"""Print the Pod that Knative Build v0.7's controller made for each Build.

Reads YAML (or JSON) documents: Builds, BuildTemplates and ClusterBuildTemplates
(build.knative.dev/v1alpha1), and the ServiceAccounts and Secrets the Builds use (a Secret's
type and annotations are enough; its data is never printed). `-f -` reads stdin, a directory
its *.yaml, *.yml and *.json files; `kind: List` counts as its items; other kinds are ignored.
The Pod has the containers, args, env, mounts, volumes, labels and annotations the controller
gave it, so that

  stepkit pod -f build.yaml | kubectl apply -f -

runs the Build on any cluster, with no controller. spec.timeout becomes the Pod's
activeDeadlineSeconds; its name is <build>-pod-<hash of the Pod>, so applying the same input
again changes nothing.

The helper images default to stepkit's as `make images` builds them
({image_default(DEFAULT_IMAGE_REPO, "<helper>")}). For images pushed to a registry
(`make images IMAGE_REPO=registry.example.com/stepkit/stepkit`), give
--image-repo registry.example.com/stepkit/stepkit, or name each image.

Exit codes: 0 printed, 2 invalid input (one line naming the file, line, document and
field; nothing printed).""",
)
@click.option(
    "-f",
    "--filename",
    "filenames",
    multiple=True,
    required=True,
    envvar="STEPKIT_POD_FILENAME",
    show_envvar=True,
    metavar="FILE",
    help="A YAML or JSON file, a directory of them, or - for stdin; repeatable "
    "(the variable: separated by spaces).",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    envvar="STEPKIT_POD_OUTPUT",
    show_envvar=True,
    help="yaml: one document per Build; json: the Pod, or a List of several.",
)
@click.option(
    "--build",
    "build_name",
    default=None,
    envvar="STEPKIT_POD_BUILD",
    show_envvar=True,
    metavar="NAME",
    help="Print only the Pod of the Build of this name. [default: every Build]",
)
@click.option(
    "-n",
    "--namespace",
    default=None,
    envvar="STEPKIT_POD_NAMESPACE",
    show_envvar=True,
    metavar="NS",
    help="Namespace of the documents that name none, as kubectl -n (a document naming another "
    "is an error). [default: the documents' own, else 'default' for finding ServiceAccounts, "
    "Secrets and BuildTemplates, and none on the Pod]",
)
@click.option(
    "--image-repo",
    default=DEFAULT_IMAGE_REPO,
    show_default=True,
    envvar="STEPKIT_POD_IMAGE_REPO",
    show_envvar=True,
    metavar="REPO",
    help="Where the helper images are: each defaults to REPO-<helper>:<version>, as `make "
    "images IMAGE_REPO=REPO` names them.",
)
@click.option(
    "--creds-image",
    default=None,
    envvar="STEPKIT_POD_CREDS_IMAGE",
    show_envvar=True,
    metavar="IMG",
    help="The credential initializer's image (the controller's -creds-image). "
    "[default: REPO-creds-init:VERSION]",
)
@click.option(
    "--git-image",
    default=None,
    envvar="STEPKIT_POD_GIT_IMAGE",
    show_envvar=True,
    metavar="IMG",
    help="The git source's image (-git-image). [default: REPO-git-init:VERSION]",
)
@click.option(
    "--gcs-fetcher-image",
    default=None,
    envvar="STEPKIT_POD_GCS_FETCHER_IMAGE",
    show_envvar=True,
    metavar="IMG",
    help="The GCS source's image (-gcs-fetcher-image). [default: REPO-gcs-fetcher:VERSION]",
)
@click.option(
    "--nop-image",
    default=None,
    envvar="STEPKIT_POD_NOP_IMAGE",
    show_envvar=True,
    metavar="IMG",
    help="The last container's image (-nop-image). [default: REPO-nop:VERSION]",
)
@common_options
def command(
    filenames: tuple[str, ...],
    output: str,
    build_name: str | None,
    namespace: str | None,
    image_repo: str,
    creds_image: str | None,
    git_image: str | None,
    gcs_fetcher_image: str | None,
    nop_image: str | None,
) -> int:
    from controller.pod.makepod import Images
    from controller.pod.render import Options, read_inputs, render
    from controller.pod.yamlio import dump_json, dump_yaml

    if filenames.count("-") > 1:
        raise InputError("-f: - (stdin) may be given once")
    images = Images(
        creds=creds_image or image_default(image_repo, "creds-init"),
        git=git_image or image_default(image_repo, "git-init"),
        gcs_fetcher=gcs_fetcher_image or image_default(image_repo, "gcs-fetcher"),
        nop=nop_image or image_default(image_repo, "nop"),
    )
    for flag, value in (
        ("--creds-image", images.creds),
        ("--git-image", images.git),
        ("--gcs-fetcher-image", images.gcs_fetcher),
        ("--nop-image", images.nop),
    ):
        if not value.strip() or any(ch.isspace() for ch in value):
            raise InputError(f"{flag}: an image reference has no spaces and is not empty")
    documents = [doc for name in filenames for doc in _read(name)]
    inputs = read_inputs(documents, namespace or None)
    pods = render(inputs, Options(images=images, namespace=namespace or None, build=build_name))
    if output == "json":
        text = dump_json(
            pods[0] if len(pods) == 1 else {"apiVersion": "v1", "kind": "List", "items": pods}
        )
    else:
        text = dump_yaml(pods)
    # Everything is made before the first byte is written: an invalid Build prints nothing.
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0
