"""Helpers for the `stepkit pod` tests: the parts every Knative Pod shares, written from pod.go, and a renderer."""

from __future__ import annotations

import copy
import logging
import textwrap
from typing import Any

import yaml

from controller.pod.makepod import Images
from controller.pod.render import Options, read_inputs, render
from controller.pod.yamlio import dump_yaml, load_documents

# Kubernetes version whose OpenAPI schemas every Pod is checked against (kubernetes-validate ships it).
K8S_VERSION = "1.37"
IMAGES = Images(
    creds="creds-init:test", git="git-init:test", gcs_fetcher="gcs-fetcher:test", nop="nop:test"
)

# pod.go implicitEnvVars.
HOME = {"name": "HOME", "value": "/builder/home"}
# pod.go implicitVolumeMounts.
WS = {"name": "workspace", "mountPath": "/workspace"}
HM = {"name": "home", "mountPath": "/builder/home"}
# pod.go implicitVolumes.
VOLUMES = [{"name": "workspace", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]


def ws(sub_path: str) -> dict[str, str]:
    """The workspace mount with the source's subPath (MakePod's step loop)."""
    return {"name": "workspace", "mountPath": "/workspace", "subPath": sub_path}


def secret_mount(name: str) -> dict[str, str]:
    """makeCredentialInitializer: secret-volume-<name> at credentials.VolumeName(name)."""
    return {"name": f"secret-volume-{name}", "mountPath": f"/var/build-secrets/{name}"}


def secret_volume(name: str) -> dict[str, Any]:
    return {"name": f"secret-volume-{name}", "secret": {"secretName": name}}


def creds_init(*args: str, secrets: tuple[str, ...] = ()) -> dict[str, Any]:
    """makeCredentialInitializer's container: build-step-credential-initializer, the flags, HOME,
    /workspace, the implicit mounts then one per secret; no args key when there are none."""
    c: dict[str, Any] = {"name": "build-step-credential-initializer", "image": IMAGES.creds}
    if args:
        c["args"] = list(args)
    c["workingDir"] = "/workspace"
    c["env"] = [HOME]
    c["volumeMounts"] = [WS, HM, *(secret_mount(s) for s in secrets)]
    return c


def git(name: str, *args: str) -> dict[str, Any]:
    """gitToContainer: build-step-git-source-<name|index>, git image, args, HOME, implicit mounts."""
    return {
        "name": f"build-step-git-source-{name}",
        "image": IMAGES.git,
        "args": list(args),
        "workingDir": "/workspace",
        "env": [HOME],
        "volumeMounts": [WS, HM],
    }


def gcs(name: str, *args: str) -> dict[str, Any]:
    """gcsToContainer: build-step-gcs-source-<name|index>, as gitToContainer with the gcs image."""
    c = git(name, *args)
    c["name"] = f"build-step-gcs-source-{name}"
    c["image"] = IMAGES.gcs_fetcher
    return c


def step(name: str, image: str, **fields: Any) -> dict[str, Any]:
    """A step after MakePod's loop: HOME before the step's env, the implicit mounts after its own,
    /workspace unless it sets a working directory. `name` is the container's full name."""
    env = fields.pop("env", [])
    mounts = fields.pop("volumeMounts", [WS, HM])
    working_dir = fields.pop("workingDir", "/workspace")
    c: dict[str, Any] = {"name": name, "image": image}
    for key in ("command", "args"):
        if key in fields:
            c[key] = fields.pop(key)
    c["workingDir"] = working_dir
    c["env"] = [HOME, *env]
    c["volumeMounts"] = mounts
    c.update(fields)
    return c


def pod(
    build: str,
    init: list[dict[str, Any]],
    *,
    volumes: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    namespace: str | None = None,
    service_account: str = "default",
    deadline: int = 600,
    node_selector: dict[str, str] | None = None,
    affinity: dict[str, Any] | None = None,
    owner_uid: str | None = None,
) -> dict[str, Any]:
    """MakePod's Pod: labels + build.knative.dev/buildName, annotations + sidecar.istio.io/inject
    "false" (Go marshals both maps with sorted keys), restartPolicy Never, the nop container."""
    metadata: dict[str, Any] = {"name": "<generated>"}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(
        sorted({**(labels or {}), "build.knative.dev/buildName": build}.items())
    )
    metadata["annotations"] = dict(
        sorted({**(annotations or {}), "sidecar.istio.io/inject": "false"}.items())
    )
    if owner_uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "build.knative.dev/v1alpha1",
                "kind": "Build",
                "name": build,
                "uid": owner_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    spec: dict[str, Any] = {
        "volumes": copy.deepcopy(volumes if volumes is not None else VOLUMES),
        "initContainers": init,
        "containers": [{"name": "nop", "image": IMAGES.nop}],
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    spec["serviceAccountName"] = service_account
    if affinity:
        spec["affinity"] = affinity
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def render_text(text: str, **options: Any) -> list[dict[str, Any]]:
    """The Pods for a YAML stream, through the same reader and printer the command uses."""
    docs = [(d, "input.yaml") for d in load_documents(textwrap.dedent(text).encode(), "input.yaml")]
    namespace = options.pop("namespace", None)
    pods = render(
        read_inputs(docs, namespace), Options(images=IMAGES, namespace=namespace, **options)
    )
    # Printed and read back: what kubectl gets is the YAML, not the dicts.
    out: list[dict[str, Any]] = list(yaml.safe_load_all(dump_yaml(pods)))
    return out


def without_name(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(pods)
    for p in out:
        p["metadata"]["name"] = "<generated>"
    return out


def warnings(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
