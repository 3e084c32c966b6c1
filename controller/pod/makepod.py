"""MakePod (knative/build v0.7.0 pkg/reconciler/build/resources/pod.go): the Pod the controller
created for a Build whose template is applied, with the checks the API server would make."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any

from controller.pod.credentials import Credentials
from controller.pod.model import (
    CONTAINER_FIELDS,
    ENV_FIELDS,
    VOLUME_MOUNT_FIELDS,
    Build,
    Origin,
    Path,
    Placed,
    Source,
    shown,
)
from controller.pod.validate import DNS_LABEL, GCS_TYPES, timeout_seconds

WORKSPACE_DIR = "/workspace"
HOME_DIR = "/builder/home"
# implicitEnvVars, implicitVolumeMounts, implicitVolumes.
IMPLICIT_ENV = ({"name": "HOME", "value": HOME_DIR},)
IMPLICIT_MOUNTS = (
    {"name": "workspace", "mountPath": WORKSPACE_DIR},
    {"name": "home", "mountPath": HOME_DIR},
)
IMPLICIT_VOLUMES = ({"name": "workspace", "emptyDir": {}}, {"name": "home", "emptyDir": {}})
# initContainerPrefix, unnamedInitContainerPrefix and the container names of pod.go.
INIT_PREFIX = "build-step-"
UNNAMED_PREFIX = "build-step-unnamed-"
CREDS_INIT = "credential-initializer"
GIT_SOURCE = "git-source"
GCS_SOURCE = "gcs-source"
CUSTOM_SOURCE = "custom-source"
NOP = "nop"
BUILD_NAME_LABEL = "build.knative.dev/buildName"
ISTIO_INJECT = "sidecar.istio.io/inject"
OWNER_API_VERSION = "build.knative.dev/v1alpha1"


@dataclass(frozen=True)
class Images:
    """The controller's -creds-image, -git-image, -gcs-fetcher-image and -nop-image."""

    creds: str
    git: str
    gcs_fetcher: str
    nop: str


@dataclass(frozen=True)
class _Container:
    """A container of the Pod and the field of the input it came from, for errors."""

    value: dict[str, Any]
    origin: Origin
    path: Path


def ordered(container: dict[str, Any]) -> dict[str, Any]:
    """A container's fields in Go's order (core/v1 Container), as the controller's JSON had them."""
    out = {k: container[k] for k in CONTAINER_FIELDS if k in container}
    if "env" in out:
        out["env"] = [{k: e[k] for k in ENV_FIELDS if k in e} for e in out["env"]]
    if "volumeMounts" in out:
        out["volumeMounts"] = [
            {k: m[k] for k in VOLUME_MOUNT_FIELDS if k in m} for m in out["volumeMounts"]
        ]
    return out


def _check_fetch_value(origin: Origin, path: Path, value: str) -> None:
    """A value the controller puts after a helper's flag: the helper checks it in full; here only
    what would make it another flag or another line."""
    if value.startswith("-"):
        raise origin.error(path, f"{shown(value)} must not start with '-'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise origin.error(path, f"{shown(value)} holds a control character")


def _source_name(source: Source, index: int) -> str:
    return source.name if source.name else str(index)


def git_to_container(build: Build, source: Source, index: int, images: Images) -> _Container:
    """gitToContainer: git-init with -url, -revision and, given a targetPath, -path."""
    git = source.git
    assert git is not None
    origin = build.origin
    if not git.url:
        raise origin.error((*source.path, "git", "url"), "is required (Knative: missing field)")
    if not git.revision:
        raise origin.error(
            (*source.path, "git", "revision"), "is required (Knative: missing field)"
        )
    _check_fetch_value(origin, (*source.path, "git", "url"), git.url)
    _check_fetch_value(origin, (*source.path, "git", "revision"), git.revision)
    args = ["-url", git.url, "-revision", git.revision]
    if source.target_path:
        args += ["-path", source.target_path]
    return _Container(
        {
            "name": f"{INIT_PREFIX}{GIT_SOURCE}-{_source_name(source, index)}",
            "image": images.git,
            "args": args,
            "workingDir": WORKSPACE_DIR,
            "env": copy.deepcopy(list(IMPLICIT_ENV)),
            "volumeMounts": copy.deepcopy(list(IMPLICIT_MOUNTS)),
        },
        origin,
        (*source.path, "name") if source.name else source.path,
    )


def gcs_to_container(build: Build, source: Source, index: int, images: Images) -> _Container:
    """gcsToContainer: gcs-fetcher with --type, --location and, given a targetPath,
    --dest_dir /workspace/<targetPath> (filepath.Join, so cleaned)."""
    gcs = source.gcs
    assert gcs is not None
    origin = build.origin
    if not gcs.location:
        raise origin.error(
            (*source.path, "gcs", "location"), "is required (Knative: missing field)"
        )
    _check_fetch_value(origin, (*source.path, "gcs", "location"), gcs.location)
    if gcs.type not in GCS_TYPES:
        # Knative passed any type on, and gcs-fetcher failed in the pod.
        raise origin.error(
            (*source.path, "gcs", "type"),
            f"{shown(gcs.type)} is not one of {', '.join(GCS_TYPES)}",
        )
    args = ["--type", gcs.type, "--location", gcs.location]
    if source.target_path:
        args += [
            "--dest_dir",
            posixpath.normpath(posixpath.join(WORKSPACE_DIR, source.target_path)),
        ]
    return _Container(
        {
            "name": f"{INIT_PREFIX}{GCS_SOURCE}-{_source_name(source, index)}",
            "image": images.gcs_fetcher,
            "args": args,
            "workingDir": WORKSPACE_DIR,
            "env": copy.deepcopy(list(IMPLICIT_ENV)),
            "volumeMounts": copy.deepcopy(list(IMPLICIT_MOUNTS)),
        },
        origin,
        (*source.path, "name") if source.name else source.path,
    )


def custom_to_step(build: Build, source: Source) -> Placed:
    """customToContainer: the Build's container, named custom-source[-<source name>], run as the
    first step (so it gets the steps' env, mounts and working directory)."""
    custom = source.custom
    assert custom is not None
    if custom.get("name"):
        raise build.origin.error(
            (*source.path, "custom", "name"),
            "must be empty: the container is named custom-source[-<source name>] "
            "(Knative: missing field b.spec.source.name)",
        )
    if not custom.get("image"):
        raise build.origin.error((*source.path, "custom", "image"), "is required")
    container = copy.deepcopy(custom)
    container["name"] = f"{CUSTOM_SOURCE}-{source.name}" if source.name else CUSTOM_SOURCE
    return Placed(container, build.origin, (*source.path, "custom"))


def _step_container(step: Placed, index: int, sub_path: str) -> _Container:
    """The step loop of MakePod: HOME first in env; the workspace and home mounts unless the step
    mounts something at that path itself (the workspace with the source's subPath); working
    directory /workspace unless set; build-step-<name> or build-step-unnamed-<index>."""
    c = copy.deepcopy(step.value)
    c["env"] = [*copy.deepcopy(list(IMPLICIT_ENV)), *c.get("env", [])]
    mounts = list(c.get("volumeMounts", []))
    requested = {posixpath.normpath(m["mountPath"]) for m in mounts}
    for implicit in IMPLICIT_MOUNTS:
        if posixpath.normpath(implicit["mountPath"]) in requested:
            continue
        mount = dict(implicit)
        if sub_path and mount["name"] == "workspace":
            mount["subPath"] = sub_path
        mounts.append(mount)
    c["volumeMounts"] = mounts
    if not c.get("workingDir"):
        c["workingDir"] = WORKSPACE_DIR
    name = c.get("name", "")
    c["name"] = f"{INIT_PREFIX}{name}" if name else f"{UNNAMED_PREFIX}{index}"
    return _Container(c, step.origin, step.path)


def _check_containers(build: Build, containers: list[_Container], volumes: list[Placed]) -> None:
    """What the API server refuses in a Pod (and Knative left to it): container names that are
    not DNS labels or not unique, containers without an image, mounts of undeclared volumes."""
    names: dict[str, _Container] = {}
    declared = {v.value["name"] for v in volumes}
    who = build.meta.name
    for item in containers:
        c = item.value
        name = c["name"]
        if len(name) > 63 or not DNS_LABEL.fullmatch(name):
            raise item.origin.error(
                (*item.path, "name") if item.path[-1:] != ("name",) else item.path,
                f"makes the container name {shown(name)}, which is not a DNS label of at most "
                "63 characters (lower-case letters, digits and '-')",
                build=who,
            )
        if name in names:
            raise item.origin.error(
                item.path,
                f"makes a second container named {shown(name)}",
                build=who,
            )
        names[name] = item
        if not c.get("image"):
            raise item.origin.error(
                (*item.path, "image"),
                "is empty after the template's parameters are replaced",
                build=who,
            )
        paths: set[str] = set()
        for j, mount in enumerate(c.get("volumeMounts", [])):
            if mount["name"] not in declared:
                raise item.origin.error(
                    (*item.path, "volumeMounts", j, "name"),
                    f"mounts volume {shown(mount['name'])}, which no volume declares",
                    build=who,
                )
            path = posixpath.normpath(mount["mountPath"])
            if path in paths:
                raise item.origin.error(
                    (*item.path, "volumeMounts", j, "mountPath"),
                    f"{shown(mount['mountPath'])} is mounted twice in one container",
                    build=who,
                )
            paths.add(path)


def _check_volumes(build: Build, volumes: list[Placed]) -> None:
    """ValidateVolumes as MakePod runs it on the Pod's volumes (the Build's, the template's, the
    implicit workspace and home, the secrets'), and the API server's rule for their names."""
    seen: dict[str, Placed] = {}
    who = build.meta.name
    for volume in volumes:
        name = volume.value["name"]
        if name in seen:
            raise volume.origin.error(
                (*volume.path, "name"),
                f"volume {shown(name)} is declared twice: the pod's own volumes are workspace, home "
                f"and secret-volume-<secret> (Knative: expected exactly one, got both)",
                build=who,
            )
        seen[name] = volume
        if len(name) > 63 or not DNS_LABEL.fullmatch(name):
            raise volume.origin.error(
                (*volume.path, "name"),
                f"{shown(name)} is not a volume name Kubernetes takes (a DNS label of at most 63 "
                "characters)",
                build=who,
            )


def make_pod(
    build: Build, creds: Credentials, images: Images, namespace: str | None
) -> dict[str, Any]:
    """MakePod: creds-init, one container per git or gcs source, the steps (custom sources
    first), nop; the workspace, home and secret volumes; labels, annotations, owner."""
    origin = build.origin
    meta = build.meta
    spec = build.spec
    annotations = dict(meta.annotations)
    annotations[ISTIO_INJECT] = "false"
    labels = dict(meta.labels)
    labels[BUILD_NAME_LABEL] = meta.name

    creds_init: dict[str, Any] = {
        "name": f"{INIT_PREFIX}{CREDS_INIT}",
        "image": images.creds,
        "args": list(creds.args),
        "workingDir": WORKSPACE_DIR,
        "env": copy.deepcopy(list(IMPLICIT_ENV)),
        "volumeMounts": [
            *copy.deepcopy(list(IMPLICIT_MOUNTS)),
            *({"name": m.volume, "mountPath": m.mount_path} for m in creds.mounts),
        ],
    }
    if not creds_init["args"]:
        del creds_init["args"]  # Go's omitempty drops the empty list
    containers = [_Container(creds_init, origin, ("spec", "serviceAccountName"))]

    sources = (spec.source,) if spec.source is not None else spec.sources
    customs: list[Placed] = []
    sub_path = ""
    for index, source in enumerate(sources):
        if source.git is not None:
            containers.append(git_to_container(build, source, index, images))
        elif source.gcs is not None:
            containers.append(gcs_to_container(build, source, index, images))
        elif source.custom is not None:
            # Knative prepended each custom source to the steps in turn, which ran two of them
            # in the reverse of their order in the Build; here they run in the Build's order.
            customs.append(custom_to_step(build, source))
        # Knative assigned each source's subPath in turn, so a subPath on any but the last
        # source was lost; validate_sources allows only one, and it is the one used.
        if source.sub_path:
            sub_path = source.sub_path

    for index, step in enumerate((*customs, *spec.steps)):
        containers.append(_step_container(step, index, sub_path))

    volumes: list[Placed] = [
        *spec.volumes,
        *(Placed(copy.deepcopy(v), origin, ("spec", "volumes")) for v in IMPLICIT_VOLUMES),
        *(
            Placed(
                {"name": m.volume, "secret": {"secretName": m.secret}},
                origin,
                ("spec", "serviceAccountName"),
            )
            for m in creds.mounts
        ),
    ]
    # The pod's own volumes first, so that a clash is reported at the Build's or template's.
    implicit = len(spec.volumes)
    _check_volumes(build, [*volumes[implicit:], *volumes[:implicit]])
    _check_containers(build, containers, volumes)

    metadata: dict[str, Any] = {"name": ""}
    pod_namespace = meta.namespace or namespace
    if pod_namespace:
        metadata["namespace"] = pod_namespace
    metadata["labels"] = dict(sorted(labels.items()))
    metadata["annotations"] = dict(sorted(annotations.items()))
    if meta.uid:
        # metav1.NewControllerRef: the Pod goes when its Build goes. Only a Build read back from
        # a cluster has a uid; a reference to one that does not exist would have the garbage
        # collector delete the Pod at once, so without a uid there is no owner.
        metadata["ownerReferences"] = [
            {
                "apiVersion": OWNER_API_VERSION,
                "kind": "Build",
                "name": meta.name,
                "uid": meta.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    pod_spec: dict[str, Any] = {
        "volumes": [v.value for v in volumes],
        "initContainers": [ordered(c.value) for c in containers],
        "containers": [{"name": NOP, "image": images.nop}],
        "restartPolicy": "Never",
        # The controller deleted the Pod when spec.timeout had passed; with no controller the
        # kubelet enforces it.
        "activeDeadlineSeconds": max(1, math.ceil(timeout_seconds(build))),
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(spec.node_selector.items()))
    pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.affinity:
        pod_spec["affinity"] = copy.deepcopy(spec.affinity)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": pod_spec,
    }
    metadata["name"] = pod_name(meta.name, pod)
    return pod


def pod_name(build_name: str, pod: dict[str, Any]) -> str:
    """GetUniquePodName's `<build>-pod-<6 hex>`, the hex from the Pod itself instead of chance:
    the same input gives the same Pod (kubectl apply leaves it be), a changed one a new Pod."""
    from controller.pod.yamlio import plain

    text = json.dumps(plain(pod), sort_keys=True, separators=(",", ":"))
    return f"{build_name}-pod-{hashlib.sha256(text.encode()).hexdigest()[:6]}"
