"""`stepkit docker`: build an image with a Docker daemon, tag it, push it, report the registry's digest."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from builders.dockerbuild import creds, daemon
from builders.dockerbuild.reference import Reference, parse
from stepkit.builder import Context, Param, Result, builder, group
from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.validate import has_control, shown

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_STATUS_DIGEST = re.compile(r"^(?P<tag>\S+): digest: (?P<digest>\S+) size: \d+")
# How daemons say a RUN failed: Docker's classic builder, BuildKit, Podman/Buildah.
_EXIT_CODE = re.compile(
    r"returned a non-zero code: (\d+)|exit code: (\d+)|exit status (\d+)", re.IGNORECASE
)
_DENIED = re.compile(
    r"unauthorized|denied|authentication required|forbidden|\b401\b|\b403\b", re.IGNORECASE
)

HELP = f"""Build an image with a Docker daemon (the Docker Engine API), tag it and push it.

The daemon is found as the docker CLI finds it: DOCKER_HOST (with DOCKER_TLS_VERIFY and
DOCKER_CERT_PATH), else /var/run/docker.sock; it is pinged for up to {daemon.WAIT_ENV}
seconds (default {daemon.DEFAULT_WAIT:g}). Push credentials come only from the config.json
creds-init wrote ($DOCKER_CONFIG, else $HOME/.docker): credHelpers, credsStore and auths.
Exit 1 when the build or the push fails, 3 when the registry refuses the credentials."""


@builder(
    name="docker",
    help=HELP,
    params=[
        Param(
            "image",
            type=list,
            help="Image to build and push, [registry/]name[:tag]; repeat it for more tags "
            "(the first is the one the results report).",
        ),
        Param("context", type=Path, default=".", help="The build context directory."),
        Param(
            "dockerfile",
            type=Path,
            required=False,
            help="The Dockerfile. [default: <context>/Dockerfile]",
        ),
        Param(
            "build-arg",
            type=dict,
            required=False,
            help="A build argument K=V; repeat it for more (a value is never split on commas).",
        ),
        Param("target", required=False, help="The Dockerfile stage to build."),
        Param("label", type=dict, required=False, help="A label K=V for the image; repeatable."),
        Param("no-cache", type=bool, default=False, help="Build without the daemon's cache."),
        Param("pull", type=bool, default=False, help="Always pull the FROM images."),
        Param(
            "push",
            type=bool,
            default=True,
            help="Push every image; false keeps them in the daemon (IMAGE_DIGEST is then "
            "the local image ID).",
        ),
    ],
    results=[
        Result("IMAGE_DIGEST", help="The digest the registry reports for the first image."),
        Result("IMAGE_URL", help="The first image, as given."),
    ],
)
def docker_build(ctx: Context) -> None:
    params = ctx.params
    refs = [parse(text) for text in params.image]
    if not refs:
        raise InputError("--image: give at least one image to build")
    if len({r.name for r in refs}) != len(refs):
        raise InputError("--image: an image is given twice")
    context: Path = params.context
    if not context.is_dir():
        raise InputError(f"--context: {shown(str(context))} is not a directory")
    dockerfile: Path = params.dockerfile or context / "Dockerfile"
    if not dockerfile.is_file():
        raise InputError(f"--dockerfile: {shown(str(dockerfile))} is not a file")
    build_args: dict[str, str] = params.build_arg
    labels: dict[str, str] = params.label
    for flag, values in (("--build-arg", build_args), ("--label", labels)):
        for key, value in values.items():
            if has_control(key) or has_control(value) or key != key.strip():
                raise InputError(f"{flag}: {shown(key)} holds a control character or spaces")
    target: str | None = params.target or None
    if target is not None and (has_control(target) or target.startswith("-")):
        raise InputError(f"--target: {shown(target)} is not a stage name")

    auth: dict[str, dict[str, str] | None] = {}
    if params.push:
        config = creds.load_config(ctx.docker_config)
        for ref in refs:
            if ref.domain in auth:
                continue
            found = creds.find(config, ref, ctx.docker_config / "config.json")
            if found is None:
                ctx.log.warning(
                    "no credentials for %s in %s: pushing anonymously",
                    ref.domain,
                    ctx.docker_config,
                )
                auth[ref.domain] = None
            else:
                ctx.log.info("credentials for %s from %s", ref.domain, found.source)
                auth[ref.domain] = found.auth_config(ref.registry_key)
    ctx.set_result("IMAGE_URL", refs[0].text)

    client = daemon.connect(ctx.log)
    with group(f"build {refs[0].name}"):
        image_id = _build(
            client,
            context=context,
            dockerfile=dockerfile,
            tag=refs[0].name,
            build_args=build_args,
            labels=labels,
            target=target,
            no_cache=params.no_cache,
            pull=params.pull,
        )
    for ref in refs[1:]:
        _api(lambda r=ref: client.tag(image_id, r.repository, r.tag), f"tagging {ref.name}")
    ctx.log.info("built %s as %s", image_id, ", ".join(r.name for r in refs))
    if not params.push:
        ctx.set_result("IMAGE_DIGEST", image_id)
        return
    digests = []
    for ref in refs:
        with group(f"push {ref.name}"):
            digests.append(_push(client, ref, auth[ref.domain]))
        ctx.log.info("pushed %s@%s", ref.repository, digests[-1])
    ctx.set_result("IMAGE_DIGEST", digests[0])


def _api(call: Any, what: str) -> Any:
    from docker.errors import APIError, DockerException

    try:
        return call()
    except APIError as exc:
        explanation = exc.explanation or str(exc)
        if exc.status_code in (401, 403):
            raise DeniedError(f"{what}: {explanation}") from None
        raise StepkitError(f"{what}: {explanation}") from None
    except (DockerException, OSError) as exc:
        raise StepkitError(f"{what}: {exc}") from None


def _build(
    client: Any,
    *,
    context: Path,
    dockerfile: Path,
    tag: str,
    build_args: Mapping[str, str],
    labels: Mapping[str, str],
    target: str | None,
    no_cache: bool,
    pull: bool,
) -> str:
    """Run the build, streaming its output; the image ID."""
    try:
        relative = str(dockerfile.relative_to(context))
    except ValueError:
        relative = str(dockerfile)  # the docker SDK adds a Dockerfile from outside the context
    events = _api(
        lambda: client.build(
            path=str(context),
            dockerfile=relative,
            tag=tag,
            buildargs=dict(build_args),
            labels=dict(labels),
            target=target,
            nocache=no_cache,
            pull=pull,
            rm=True,
            forcerm=True,
            decode=True,
        ),
        "the build",
    )
    image_id = ""
    for event in _events(events, "the build"):
        if "error" in event or "errorDetail" in event:
            raise StepkitError(_build_error(event))
        if "stream" in event:
            _write(str(event["stream"]))
        elif "status" in event:
            _status(event)
        aux = event.get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
            image_id = aux["ID"]
    if not image_id:
        image_id = str(_api(lambda: client.inspect_image(tag), f"inspecting {tag}")["Id"])
    if not _DIGEST.fullmatch(image_id):
        raise StepkitError(f"the build reported {shown(image_id)}, which is not an image ID")
    return image_id


def _events(events: Iterable[Any], what: str) -> Iterable[dict[str, Any]]:
    """The stream's JSON objects; a broken connection is a failure, not an end."""
    from docker.errors import DockerException

    iterator = iter(events)
    while True:
        try:
            event = next(iterator)
        except StopIteration:
            return
        except (DockerException, OSError, ValueError) as exc:
            raise StepkitError(f"{what}: the daemon's stream broke off: {exc}") from None
        if isinstance(event, dict):
            yield event


def _build_error(event: dict[str, Any]) -> str:
    raw = event.get("errorDetail")
    detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
    message = str(event.get("error") or detail.get("message") or "unknown error").strip()
    code = detail.get("code")
    if not isinstance(code, int):
        match = _EXIT_CODE.search(message)
        code = int(next(g for g in match.groups() if g)) if match else None
    if code is not None:
        return f"the build failed: a step exited with code {code}: {message}"
    return f"the build failed: {message}"


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _status(event: dict[str, Any]) -> None:
    """A pull or push status line; progress updates (a bar per layer) are left out."""
    progress = event.get("progressDetail")
    if isinstance(progress, dict) and progress.get("total"):
        return
    status = str(event.get("status", "")).rstrip("\n")
    layer = event.get("id")
    _write(f"{layer}: {status}\n" if layer else f"{status}\n")


def _push(client: Any, ref: Reference, auth_config: dict[str, str] | None) -> str:
    """Push ref; the digest the registry reported, checked; DeniedError when it refused the credentials."""
    events = _api(
        lambda: client.push(
            ref.repository, tag=ref.tag, auth_config=auth_config, stream=True, decode=True
        ),
        f"pushing {ref.name}",
    )
    from_aux = from_status = ""
    for event in _events(events, f"pushing {ref.name}"):
        if "error" in event or "errorDetail" in event:
            raw = event.get("errorDetail")
            detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
            message = str(event.get("error") or detail.get("message") or "unknown error").strip()
            if _DENIED.search(message):
                raise DeniedError(f"pushing {ref.name}: the registry refused: {message}")
            raise StepkitError(f"pushing {ref.name}: {message}")
        aux = event.get("aux")
        if isinstance(aux, dict) and "Digest" in aux:
            from_aux = str(aux["Digest"])
        if "status" in event:
            _status(event)
            match = _STATUS_DIGEST.match(str(event["status"]))
            if match and match["tag"] == ref.tag:
                from_status = match["digest"]
    digest = from_aux or from_status
    if not digest:
        raise StepkitError(f"pushing {ref.name}: the push ended without the registry's digest")
    if from_aux and from_status and from_aux != from_status:
        raise StepkitError(
            f"pushing {ref.name}: the daemon reported two digests, {from_aux} and {from_status}"
        )
    if not _DIGEST.fullmatch(digest):
        raise StepkitError(f"pushing {ref.name}: {shown(digest)} is not a sha256 digest")
    _verify(client, ref, auth_config, digest)
    return digest


def _verify(client: Any, ref: Reference, auth_config: dict[str, str] | None, digest: str) -> None:
    """Ask the registry (through the daemon's /distribution) what ref names now, where the daemon can."""
    from docker.errors import APIError, DockerException

    try:
        answer = client.inspect_distribution(ref.name, auth_config=auth_config)
    except APIError as exc:
        if exc.status_code in (404, 501):  # Podman's service has no /distribution
            return
        raise StepkitError(f"checking {ref.name} in the registry: {exc.explanation}") from None
    except DockerException as exc:
        raise StepkitError(f"checking {ref.name} in the registry: {exc}") from None
    descriptor = answer.get("Descriptor") if isinstance(answer, dict) else None
    actual = descriptor.get("digest") if isinstance(descriptor, dict) else None
    if actual and actual != digest:
        raise StepkitError(
            f"pushing {ref.name}: the push reported {digest} but the registry now serves {actual}"
        )
