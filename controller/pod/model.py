"""Build, BuildTemplate, ClusterBuildTemplate, ServiceAccount and Secret documents read into typed values.

Each field is checked for the type Knative's Go structs decode it into (a number where a
string belongs fails there too), and unknown fields of a Build, a template or a container are
refused: Go's decoder dropped them silently, so a misspelt `comand` built something else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.pod.yamlio import MarkedMap, format_path, locate
from stepkit.errors import InputError
from stepkit.log import printable

KNATIVE_API = "build.knative.dev/v1alpha1"
BUILD = "Build"
BUILD_TEMPLATE = "BuildTemplate"
CLUSTER_BUILD_TEMPLATE = "ClusterBuildTemplate"
TEMPLATE_KINDS = (BUILD_TEMPLATE, CLUSTER_BUILD_TEMPLATE)

Path = tuple[str | int, ...]
Container = dict[str, Any]

# A current Kubernetes core/v1 Container's fields, in the order Go marshals them (k8s.io/api
# core/v1 types.go), which is the order the Pod prints them in.
CONTAINER_FIELDS = (
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "ports",
    "envFrom",
    "env",
    "resources",
    "resizePolicy",
    "restartPolicy",
    "restartPolicyRules",
    "volumeMounts",
    "volumeDevices",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
)
_CONTAINER_STRINGS = frozenset(
    {
        "name",
        "image",
        "workingDir",
        "restartPolicy",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "imagePullPolicy",
    }
)
_CONTAINER_LISTS = frozenset(
    {"ports", "envFrom", "resizePolicy", "restartPolicyRules", "volumeDevices"}
)
_CONTAINER_MAPS = frozenset(
    {"resources", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "securityContext"}
)
_CONTAINER_BOOLS = frozenset({"stdin", "stdinOnce", "tty"})
ENV_FIELDS = ("name", "value", "valueFrom")
VOLUME_MOUNT_FIELDS = (
    "name",
    "readOnly",
    "recursiveReadOnly",
    "mountPath",
    "subPath",
    "mountPropagation",
    "subPathExpr",
)
VOLUME_FIELDS = frozenset(
    {
        "name",
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    }
)


def shown(value: str) -> str:
    return "'" + printable(value) + "'"


@dataclass(frozen=True)
class Origin:
    """Where a document came from, for errors: file, kind, name, and its tree with positions."""

    source: str
    kind: str
    name: str
    raw: MarkedMap = field(repr=False, compare=False)

    def error(self, path: Path, message: str, *, build: str | None = None) -> InputError:
        """One line: file:line:column, the document, the field, what is wrong."""
        mark = locate(self.raw, path)
        where = f"{self.source}:{mark.line}:{mark.column}" if mark else self.source
        what = f"{self.kind} {shown(self.name)}"
        if build is not None and self.kind != BUILD:
            what += f" (for Build {shown(build)})"
        text = f"{where}: {what}"
        if path:
            text += f": {format_path(path)}"
        return InputError(printable(f"{text}: {message}"))


@dataclass(frozen=True)
class Placed:
    """A container or volume, and where it was written (a Build's or a template's)."""

    value: dict[str, Any]
    origin: Origin
    path: Path


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    uid: str | None


@dataclass(frozen=True)
class GitSource:
    url: str
    revision: str


@dataclass(frozen=True)
class GcsSource:
    type: str
    location: str


@dataclass(frozen=True)
class Source:
    """One of spec.source / spec.sources (v1alpha1.SourceSpec)."""

    path: Path
    git: GitSource | None
    gcs: GcsSource | None
    custom: Container | None
    sub_path: str
    name: str
    target_path: str


@dataclass(frozen=True)
class Argument:
    name: str
    value: str


@dataclass(frozen=True)
class TemplateRef:
    """spec.template (v1alpha1.TemplateInstantiationSpec)."""

    name: str
    kind: str
    arguments: tuple[Argument, ...]
    env: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class BuildSpec:
    source: Source | None
    sources: tuple[Source, ...]
    steps: tuple[Placed, ...]
    volumes: tuple[Placed, ...]
    service_account_name: str
    template: TemplateRef | None
    node_selector: dict[str, str]
    timeout: str | None
    affinity: dict[str, Any] | None
    status: str


@dataclass(frozen=True)
class Build:
    origin: Origin
    meta: Meta
    spec: BuildSpec


@dataclass(frozen=True)
class Parameter:
    name: str
    description: str
    default: str | None


@dataclass(frozen=True)
class Template:
    """A BuildTemplate or ClusterBuildTemplate (v1alpha1.BuildTemplateSpec)."""

    origin: Origin
    meta: Meta
    parameters: tuple[Parameter, ...]
    steps: tuple[Placed, ...]
    volumes: tuple[Placed, ...]

    @property
    def kind(self) -> str:
        return self.origin.kind


@dataclass(frozen=True)
class ServiceAccount:
    origin: Origin
    meta: Meta
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class Secret:
    """What a Secret tells the pod: its type, annotations and key names, never a value."""

    origin: Origin
    meta: Meta
    type: str
    keys: frozenset[str] | None  # None: the document gives no data (it lives in the cluster)


Document = Build | Template | ServiceAccount | Secret


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class Fields:
    """Typed reads of a document's values; every error names the document and field."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin

    def fail(self, path: Path, message: str) -> InputError:
        return self.origin.error(path, message)

    def _wrong(self, path: Path, want: str, value: Any) -> InputError:
        scalar = isinstance(value, bool | int | float)
        hint = " (quote it in YAML)" if want == "a string" and scalar else ""
        return self.fail(path, f"must be {want}, not {_type_name(value)}{hint}")

    def mapping(self, value: Any, path: Path) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._wrong(path, "a mapping", value)
        return value

    def string(self, value: Any, path: Path) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._wrong(path, "a string", value)
        return value

    def boolean(self, value: Any, path: Path) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._wrong(path, "true or false", value)
        return value

    def items(self, value: Any, path: Path) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._wrong(path, "a list", value)
        return value

    def strings(self, value: Any, path: Path) -> list[str]:
        return [self.string(v, (*path, i)) for i, v in enumerate(self.items(value, path))]

    def string_map(self, value: Any, path: Path) -> dict[str, str]:
        return {k: self.string(v, (*path, k)) for k, v in self.mapping(value, path).items()}

    def known(
        self, mapping: Mapping[str, Any], allowed: frozenset[str] | tuple[str, ...], path: Path
    ) -> None:
        for key in mapping:
            if key not in allowed:
                hint = _HINTS.get(key, "")
                raise self.fail((*path, key), f"unknown field{hint}")

    def passthrough(self, value: Any, path: Path) -> Any:
        """A copy of a value the Pod takes as written (resources, probes, volume sources, ...)."""
        if isinstance(value, dict):
            return {k: self.passthrough(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.passthrough(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(path, f"{value} is not a number JSON can hold")
        return value

    def required(self, value: str, path: Path) -> str:
        if not value:
            raise self.fail(path, "is required")
        return value


_HINTS = {
    "volumes": " (Knative v0.7's spec.template has no volumes: give them in spec.volumes)",
}


def _prune(mapping: dict[str, Any]) -> dict[str, Any]:
    """Drop the fields Go leaves out of its JSON (null, empty string, empty list): omitempty."""
    return {k: v for k, v in mapping.items() if v is not None and v != "" and v != []}


def read_env(f: Fields, value: Any, path: Path) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(f.items(value, path)):
        where = (*path, i)
        env = f.mapping(item, where)
        f.known(env, ENV_FIELDS, where)
        f.required(f.string(env.get("name"), (*where, "name")), (*where, "name"))
        f.string(env.get("value"), (*where, "value"))
        f.mapping(env.get("valueFrom"), (*where, "valueFrom"))
        clean = {k: f.passthrough(env[k], (*where, k)) for k in ENV_FIELDS if k in env}
        clean = {k: v for k, v in clean.items() if v is not None}
        out.append(clean)
    return out


def read_container(f: Fields, value: Any, path: Path) -> Container:
    """A core/v1 Container as Knative's step, custom source or template step."""
    raw = f.mapping(value, path)
    if value is None:
        raise f.fail(path, "must be a container (a mapping with image, args, ...)")
    f.known(raw, CONTAINER_FIELDS, path)
    out: Container = {}
    for key in CONTAINER_FIELDS:
        if key not in raw:
            continue
        item = raw[key]
        where = (*path, key)
        if key in _CONTAINER_STRINGS:
            out[key] = f.string(item, where)
        elif key in ("command", "args"):
            out[key] = f.strings(item, where)
        elif key == "env":
            out[key] = read_env(f, item, where)
        elif key == "volumeMounts":
            out[key] = read_volume_mounts(f, item, where)
        elif key in _CONTAINER_LISTS:
            out[key] = f.passthrough(f.items(item, where), where)
        elif key in _CONTAINER_MAPS:
            out[key] = f.passthrough(f.mapping(item, where), where) if item is not None else None
        elif key in _CONTAINER_BOOLS:
            out[key] = f.boolean(item, where) if item is not None else None
    return _prune(out)


def read_volume_mounts(f: Fields, value: Any, path: Path) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(f.items(value, path)):
        where = (*path, i)
        mount = f.mapping(item, where)
        f.known(mount, VOLUME_MOUNT_FIELDS, where)
        clean: dict[str, Any] = {}
        for key in VOLUME_MOUNT_FIELDS:
            if key not in mount:
                continue
            if key == "readOnly":
                clean[key] = f.boolean(mount[key], (*where, key))
            else:
                clean[key] = f.string(mount[key], (*where, key))
        f.required(clean.get("name", ""), (*where, "name"))
        f.required(clean.get("mountPath", ""), (*where, "mountPath"))
        out.append(_prune(clean))
    return out


def read_volumes(f: Fields, value: Any, path: Path) -> tuple[Placed, ...]:
    out = []
    for i, item in enumerate(f.items(value, path)):
        where = (*path, i)
        volume = f.mapping(item, where)
        f.known(volume, VOLUME_FIELDS, where)
        f.required(f.string(volume.get("name"), (*where, "name")), (*where, "name"))
        for key, source in volume.items():
            if key != "name" and source is not None:
                f.mapping(source, (*where, key))
        clean = {k: f.passthrough(v, (*where, k)) for k, v in volume.items() if v is not None}
        out.append(Placed(clean, f.origin, where))
    return tuple(out)


def read_meta(f: Fields, raw: MarkedMap) -> Meta:
    meta = f.mapping(raw.get("metadata"), ("metadata",))
    name = f.required(f.string(meta.get("name"), ("metadata", "name")), ("metadata", "name"))
    namespace = f.string(meta.get("namespace"), ("metadata", "namespace")) or None
    uid = f.string(meta.get("uid"), ("metadata", "uid")) or None
    return Meta(
        name=name,
        namespace=namespace,
        labels=f.string_map(meta.get("labels"), ("metadata", "labels")),
        annotations=f.string_map(meta.get("annotations"), ("metadata", "annotations")),
        uid=uid,
    )


_BUILD_SPEC = frozenset(
    {
        "generation",
        "source",
        "sources",
        "steps",
        "volumes",
        "serviceAccountName",
        "template",
        "nodeSelector",
        "timeout",
        "affinity",
        "status",
    }
)
_SOURCE = frozenset({"git", "gcs", "custom", "subPath", "name", "targetPath"})


def _read_source(f: Fields, value: Any, path: Path) -> Source:
    raw = f.mapping(value, path)
    f.known(raw, _SOURCE, path)
    git = gcs = None
    custom = None
    if raw.get("git") is not None:
        where = (*path, "git")
        spec = f.mapping(raw["git"], where)
        f.known(spec, ("url", "revision"), where)
        git = GitSource(
            f.string(spec.get("url"), (*where, "url")),
            f.string(spec.get("revision"), (*where, "revision")),
        )
    if raw.get("gcs") is not None:
        where = (*path, "gcs")
        spec = f.mapping(raw["gcs"], where)
        f.known(spec, ("type", "location"), where)
        gcs = GcsSource(
            f.string(spec.get("type"), (*where, "type")),
            f.string(spec.get("location"), (*where, "location")),
        )
    if raw.get("custom") is not None:
        custom = read_container(f, raw["custom"], (*path, "custom"))
    return Source(
        path=path,
        git=git,
        gcs=gcs,
        custom=custom,
        sub_path=f.string(raw.get("subPath"), (*path, "subPath")),
        name=f.string(raw.get("name"), (*path, "name")),
        target_path=f.string(raw.get("targetPath"), (*path, "targetPath")),
    )


def _read_template_ref(f: Fields, value: Any, path: Path) -> TemplateRef:
    raw = f.mapping(value, path)
    f.known(raw, ("name", "kind", "arguments", "env"), path)
    arguments = []
    for i, item in enumerate(f.items(raw.get("arguments"), (*path, "arguments"))):
        where = (*path, "arguments", i)
        arg = f.mapping(item, where)
        f.known(arg, ("name", "value"), where)
        arguments.append(
            Argument(
                f.string(arg.get("name"), (*where, "name")),
                f.string(arg.get("value"), (*where, "value")),
            )
        )
    return TemplateRef(
        name=f.string(raw.get("name"), (*path, "name")),
        kind=f.string(raw.get("kind"), (*path, "kind")),
        arguments=tuple(arguments),
        env=tuple(read_env(f, raw.get("env"), (*path, "env"))),
    )


def read_build(raw: MarkedMap, source: str, name: str) -> Build:
    f = Fields(Origin(source, BUILD, name, raw))
    meta = read_meta(f, raw)
    spec = f.mapping(raw.get("spec"), ("spec",))
    f.known(spec, _BUILD_SPEC, ("spec",))
    steps = tuple(
        Placed(read_container(f, item, ("spec", "steps", i)), f.origin, ("spec", "steps", i))
        for i, item in enumerate(f.items(spec.get("steps"), ("spec", "steps")))
    )
    source_spec = (
        _read_source(f, spec["source"], ("spec", "source"))
        if spec.get("source") is not None
        else None
    )
    sources = tuple(
        _read_source(f, item, ("spec", "sources", i))
        for i, item in enumerate(f.items(spec.get("sources"), ("spec", "sources")))
    )
    template = (
        _read_template_ref(f, spec["template"], ("spec", "template"))
        if spec.get("template") is not None
        else None
    )
    timeout = spec.get("timeout")
    if timeout is not None and not isinstance(timeout, str):
        raise f.fail(
            ("spec", "timeout"),
            f"must be a Go duration string such as '10m' or '1h30m', not {_type_name(timeout)}",
        )
    affinity = spec.get("affinity")
    return Build(
        origin=f.origin,
        meta=meta,
        spec=BuildSpec(
            source=source_spec,
            sources=sources,
            steps=steps,
            volumes=read_volumes(f, spec.get("volumes"), ("spec", "volumes")),
            service_account_name=f.string(
                spec.get("serviceAccountName"), ("spec", "serviceAccountName")
            ),
            template=template,
            node_selector=f.string_map(spec.get("nodeSelector"), ("spec", "nodeSelector")),
            timeout=timeout,
            affinity=f.passthrough(f.mapping(affinity, ("spec", "affinity")), ("spec", "affinity"))
            if affinity is not None
            else None,
            status=f.string(spec.get("status"), ("spec", "status")),
        ),
    )


def read_template(raw: MarkedMap, source: str, kind: str, name: str) -> Template:
    f = Fields(Origin(source, kind, name, raw))
    meta = read_meta(f, raw)
    spec = f.mapping(raw.get("spec"), ("spec",))
    f.known(spec, ("generation", "parameters", "steps", "volumes"), ("spec",))
    parameters = []
    for i, item in enumerate(f.items(spec.get("parameters"), ("spec", "parameters"))):
        where = ("spec", "parameters", i)
        param = f.mapping(item, where)
        f.known(param, ("name", "description", "default"), where)
        default = param.get("default")
        parameters.append(
            Parameter(
                name=f.string(param.get("name"), (*where, "name")),
                description=f.string(param.get("description"), (*where, "description")),
                # `default: ""` is a default (Go's *string is set); only a missing or null one is not.
                default=None if default is None else f.string(default, (*where, "default")),
            )
        )
    steps = tuple(
        Placed(read_container(f, item, ("spec", "steps", i)), f.origin, ("spec", "steps", i))
        for i, item in enumerate(f.items(spec.get("steps"), ("spec", "steps")))
    )
    return Template(
        origin=f.origin,
        meta=meta,
        parameters=tuple(parameters),
        steps=steps,
        volumes=read_volumes(f, spec.get("volumes"), ("spec", "volumes")),
    )


def read_service_account(raw: MarkedMap, source: str, name: str) -> ServiceAccount:
    f = Fields(Origin(source, "ServiceAccount", name, raw))
    meta = read_meta(f, raw)
    names = []
    for i, item in enumerate(f.items(raw.get("secrets"), ("secrets",))):
        ref = f.mapping(item, ("secrets", i))
        names.append(
            f.required(f.string(ref.get("name"), ("secrets", i, "name")), ("secrets", i, "name"))
        )
    return ServiceAccount(f.origin, meta, tuple(names))


def read_secret(raw: MarkedMap, source: str, name: str) -> Secret:
    f = Fields(Origin(source, "Secret", name, raw))
    meta = read_meta(f, raw)
    keys: set[str] | None = None
    # Only the key names are read: the values stay in the document, which nothing prints.
    for part in ("data", "stringData"):
        if raw.get(part) is not None:
            keys = (keys or set()) | set(f.mapping(raw[part], (part,)))
    return Secret(
        origin=f.origin,
        meta=meta,
        type=f.string(raw.get("type"), ("type",)) or "Opaque",
        keys=frozenset(keys) if keys is not None else None,
    )
