"""Knative v0.7's SetDefaults and Validate for Builds and templates, and the reconciler's own checks.

Each check cites the Go function it comes from (knative/build v0.7.0, pkg/apis/build/v1alpha1
and pkg/reconciler/build). Where Knative let a Build through that then failed or misbehaved,
the check is ours and says so.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from decimal import Decimal, InvalidOperation

from controller.pod.model import (
    BUILD_TEMPLATE,
    TEMPLATE_KINDS,
    Build,
    Origin,
    Path,
    Placed,
    Source,
    Template,
    TemplateRef,
    shown,
)
from controller.pod.yamlio import format_path

# build_defaults.go: DefaultTimeout.
DEFAULT_TIMEOUT = "10m"
# build_validation.go validateTimeout: maxTimeout.
MAX_TIMEOUT_SECONDS = 24 * 3600
# metadata_validation.go: maxLength.
MAX_NAME_LENGTH = 63
# A DNS-1123 label: what a Pod's label value and container name need, and what the API
# server demands of the Build's name anyway.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# apimachinery's label rules: a name part, optionally after a DNS subdomain and '/'; a value.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# template_common.go: nestedPlaceholderRE.
NESTED_PLACEHOLDER = re.compile(r"\$\{[^}]+\$")
CANCELLED = "BuildCancelled"
# The --type values our gcs-fetcher takes (Knative passed any string on).
GCS_TYPES = ("Archive", "Manifest", "ZipArchive", "TarGzArchive")

_GO_UNITS = {
    "ns": Decimal(1),
    "us": Decimal(10) ** 3,
    # Go takes both micro signs, U+00B5 and U+03BC.
    "µs": Decimal(10) ** 3,
    "μs": Decimal(10) ** 3,
    "ms": Decimal(10) ** 6,
    "s": Decimal(10) ** 9,
    "m": 60 * Decimal(10) ** 9,
    "h": 3600 * Decimal(10) ** 9,
}
_GO_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_GO_UNIT = re.compile(r"[^0-9.]+")
_MAX_INT64 = 2**63 - 1


def go_duration(text: str) -> Decimal | None:
    """Seconds, as Go's time.ParseDuration reads text (metav1.Duration's JSON); None if it would fail."""
    s = text
    negative = False
    if s[:1] in ("+", "-"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return Decimal(0)
    if not s:
        return None
    total = Decimal(0)
    while s:
        number = _GO_NUMBER.match(s)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2)
        if not whole and not frac:
            return None
        s = s[number.end() :]
        unit = _GO_UNIT.match(s)
        if unit is None or unit.group() not in _GO_UNITS:
            return None
        s = s[unit.end() :]
        try:
            value = Decimal(f"{whole or '0'}.{frac or '0'}")
        except InvalidOperation:
            return None
        total += (value * _GO_UNITS[unit.group()]).to_integral_value(rounding="ROUND_DOWN")
        if total > _MAX_INT64:
            return None
    seconds = total / Decimal(10) ** 9
    return -seconds if negative else seconds


def set_defaults(build: Build) -> Build:
    """Build.SetDefaults (build_defaults.go): service account, timeout and template kind."""
    spec = build.spec
    template = spec.template
    if template is not None and not template.kind:
        template = dataclasses.replace(template, kind=BUILD_TEMPLATE)
    return dataclasses.replace(
        build,
        spec=dataclasses.replace(
            spec,
            service_account_name=spec.service_account_name or "default",
            timeout=spec.timeout if spec.timeout is not None else DEFAULT_TIMEOUT,
            template=template,
        ),
    )


def timeout_seconds(build: Build) -> Decimal:
    """The validated spec.timeout in seconds (after set_defaults)."""
    text = build.spec.timeout or DEFAULT_TIMEOUT
    seconds = go_duration(text)
    assert seconds is not None
    return seconds


def validate_metadata(origin: Origin, name: str, *, build: str | None = None) -> None:
    """validateObjectMetadata (metadata_validation.go): no '.', at most 63 characters; and ours:
    a DNS label, since the name becomes a label value and the Pod's name."""
    path: Path = ("metadata", "name")
    if "." in name:
        raise origin.error(
            path, "must not contain '.' (Knative: Invalid resource name)", build=build
        )
    if len(name) > MAX_NAME_LENGTH:
        raise origin.error(
            path,
            f"is longer than {MAX_NAME_LENGTH} characters (Knative: Invalid resource name)",
            build=build,
        )
    if not DNS_LABEL.fullmatch(name):
        raise origin.error(
            path,
            f"{shown(name)} is not a DNS label (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit)",
            build=build,
        )


def _label_key_error(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not _DNS_SUBDOMAIN.fullmatch(prefix) or ".." in prefix):
        return f"the prefix of {shown(key)} is not a DNS subdomain"
    if not _LABEL_NAME.fullmatch(name):
        return (
            f"{shown(key)} is not a label or annotation key (a name of at most 63 letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit, after an optional "
            "DNS prefix and '/')"
        )
    return None


def validate_labels(build: Build) -> None:
    """What the API server checks of the Pod's labels, annotation keys and nodeSelector
    (apimachinery ValidateLabels, ValidateAnnotations): they come from the Build as written."""
    origin = build.origin
    for where, mapping, values in (
        (("metadata", "labels"), build.meta.labels, True),
        (("metadata", "annotations"), build.meta.annotations, False),
        (("spec", "nodeSelector"), build.spec.node_selector, True),
    ):
        for key, value in mapping.items():
            error = _label_key_error(key)
            if error is not None:
                raise origin.error((*where, key), error)
            if values and value and not _LABEL_NAME.fullmatch(value):
                raise origin.error(
                    (*where, key),
                    f"{shown(value)} is not a label value (at most 63 letters, digits, '-', '_' "
                    "and '.', starting and ending with a letter or digit)",
                )


def validate_build(build: Build) -> None:
    """Build.Validate and BuildSpec.Validate (build_validation.go), after set_defaults.

    Knative returned right after checking a template reference, so a Build using a template
    never had its sources, volumes or timeout checked; here every check runs for every Build.
    """
    origin = build.origin
    spec = build.spec
    validate_metadata(origin, build.meta.name)
    validate_labels(build)
    if spec.status == CANCELLED:
        # Reconcile: a cancelled Build gets no Pod.
        raise origin.error(("spec", "status"), f"{CANCELLED}: a cancelled Build runs no Pod")
    if spec.template is None and not spec.steps:
        raise origin.error(
            ("spec",), "give steps or a template (Knative: expected exactly one, got neither)"
        )
    if spec.template is not None and spec.steps:
        raise origin.error(
            ("spec", "steps"),
            "give steps or a template, not both (Knative: expected exactly one, got both)",
        )
    if spec.template is not None:
        _validate_template_ref(origin, spec.template)
    validate_sources(build)
    validate_volumes(spec.volumes)
    _validate_timeout(build)
    validate_steps(spec.steps)


def _validate_template_ref(origin: Origin, ref: TemplateRef) -> None:
    """TemplateInstantiationSpec.Validate: a name, and a kind Knative knows."""
    if not ref.name:
        raise origin.error(("spec", "template", "name"), "is required (Knative: missing field)")
    if ref.kind not in TEMPLATE_KINDS:
        raise origin.error(
            ("spec", "template", "kind"),
            f"{shown(ref.kind)} is neither BuildTemplate nor ClusterBuildTemplate",
        )


def _validate_timeout(build: Build) -> None:
    """BuildSpec.validateTimeout: at most 24h, not negative; and a Go duration at all."""
    text = build.spec.timeout
    if text is None:
        return
    seconds = go_duration(text)
    path: Path = ("spec", "timeout")
    if seconds is None:
        raise build.origin.error(
            path, f"{shown(text)} is not a Go duration such as '10m', '1h30m' or '90s'"
        )
    if seconds < 0 or seconds > MAX_TIMEOUT_SECONDS:
        raise build.origin.error(
            path, f"{shown(text)} is out of bounds: 0 <= timeout <= 24h (Knative's validateTimeout)"
        )
    if seconds == 0:
        # Knative accepted 0 and its timeout handler then failed the Build at once.
        raise build.origin.error(
            path, "0 would stop the Build before it starts; give a positive duration"
        )


def _sources(build: Build) -> tuple[Source, ...]:
    return (build.spec.source,) if build.spec.source is not None else build.spec.sources


def validate_sources(build: Build) -> None:
    """BuildSpec.validateSources and insertNode (target_path_validation.go).

    Knative checked only spec.sources, never a single spec.source; here both. Its overlap
    check compared strings, so `a` and `ab/c` clashed; here paths overlap when one is a
    directory of the other.
    """
    origin = build.origin
    spec = build.spec
    if spec.source is not None and spec.sources:
        raise origin.error(
            ("spec", "sources"),
            "give source or sources, not both (Knative: expected exactly one, got both)",
        )
    names: dict[str, Source] = {}
    sub_path: Source | None = None
    empty_target: Source | None = None
    targets: list[tuple[tuple[str, ...], Source]] = []
    for source in _sources(build):
        kinds = [
            k for k, v in (("git", source.git), ("gcs", source.gcs), ("custom", source.custom)) if v
        ]
        if len(kinds) != 1:
            what = "none" if not kinds else " and ".join(kinds)
            raise origin.error(source.path, f"give exactly one of git, gcs and custom, not {what}")
        if source.name in names:
            # Knative keyed sources by name, the empty one included: of several sources, all
            # but one need a name.
            what = (
                f"{shown(source.name)} names two sources"
                if source.name
                else ("a second source without a name: name the sources")
            )
            raise origin.error(
                (*source.path, "name"), f"{what} (Knative: expected exactly one, got both)"
            )
        names[source.name] = source
        if source.sub_path:
            if sub_path is not None:
                raise origin.error(
                    (*source.path, "subPath"),
                    f"a second subPath (first in {'.'.join(map(str, sub_path.path))}); "
                    "one source at most may have one",
                )
            sub_path = source
            _relative(origin, (*source.path, "subPath"), source.sub_path, "subPath")
        if not source.target_path:
            if source.custom is not None:
                continue
            if empty_target is not None:
                raise origin.error(
                    (*source.path, "targetPath"),
                    "two sources without targetPath would both fill /workspace; give each its own",
                )
            empty_target = source
            continue
        if source.custom is not None:
            raise origin.error(
                (*source.path, "targetPath"),
                "a custom source has no targetPath: its container writes where it likes",
            )
        parts = _relative(origin, (*source.path, "targetPath"), source.target_path, "targetPath")
        for other_parts, other in targets:
            shorter = min(len(parts), len(other_parts))
            if parts[:shorter] == other_parts[:shorter]:
                raise origin.error(
                    (*source.path, "targetPath"),
                    f"{shown(source.target_path)} overlaps {shown(other.target_path)} of "
                    f"{'.'.join(map(str, other.path))} (Knative: Overlapping Target Paths)",
                )
        targets.append((parts, source))


def _relative(origin: Origin, path: Path, value: str, what: str) -> tuple[str, ...]:
    """A path below the workspace: relative, without '..' (git-init and the kubelet refuse the rest)."""
    if value.startswith("/"):
        raise origin.error(path, f"{shown(value)} must be relative to /workspace")
    parts = tuple(p for p in posixpath.normpath(value).split("/") if p not in ("", "."))
    if ".." in value.split("/") or not parts:
        raise origin.error(
            path, f"{shown(value)} must name a directory below /workspace, without '..'"
        )
    return parts


def validate_volumes(volumes: tuple[Placed, ...], *, build: str | None = None) -> None:
    """ValidateVolumes (build_template_validation.go): no volume name twice."""
    seen: dict[str, Placed] = {}
    for volume in volumes:
        name = volume.value["name"]
        if name in seen:
            first = seen[name]
            raise volume.origin.error(
                (*volume.path, "name"),
                f"volume {shown(name)} is declared twice (also at {_where(first)}; Knative: "
                "expected exactly one, got both)",
                build=build,
            )
        seen[name] = volume


def _where(placed: Placed) -> str:
    return f"{placed.origin.kind} {shown(placed.origin.name)} {format_path(placed.path)}"


def validate_steps(steps: tuple[Placed, ...], *, build: str | None = None) -> None:
    """validateSteps (build_template_validation.go): every step has an image; no name twice."""
    names: set[str] = set()
    for step in steps:
        if not step.value.get("image"):
            raise step.origin.error(
                (*step.path, "image"), "is required (Knative: missing field Image)", build=build
            )
        name = step.value.get("name", "")
        if not name:
            continue
        if name in names:
            raise step.origin.error(
                (*step.path, "name"),
                f"step name {shown(name)} is used twice (Knative: expected exactly one, got both)",
                build=build,
            )
        names.add(name)


def validate_template(template: Template, build: str) -> None:
    """BuildTemplate.Validate / ClusterBuildTemplate.Validate, as the webhook ran them when the
    template was made, and validateTemplate (template_common.go), as the reconciler did."""
    origin = template.origin
    validate_metadata(origin, template.meta.name, build=build)
    validate_steps(template.steps, build=build)
    validate_volumes(template.volumes, build=build)
    seen: set[str] = set()
    for i, param in enumerate(template.parameters):
        where: Path = ("spec", "parameters", i, "name")
        if not param.name:
            raise origin.error(where, "is required", build=build)
        if param.name in seen:
            raise origin.error(
                where,
                f"parameter {shown(param.name)} is declared twice (Knative's validateParameters)",
                build=build,
            )
        seen.add(param.name)
    for step in template.steps:
        c = step.value
        fields: list[tuple[Path, str]] = [(("name",), c.get("name", ""))]
        fields += [(("args", i), a) for i, a in enumerate(c.get("args", []))]
        fields += [
            (("env", i, "value"), e.get("value", "")) for i, e in enumerate(c.get("env", []))
        ]
        fields += [(("workingDir",), c.get("workingDir", ""))]
        fields += [(("command", i), a) for i, a in enumerate(c.get("command", []))]
        for sub, text in fields:
            if NESTED_PLACEHOLDER.search(text or ""):
                raise origin.error(
                    (*step.path, *sub),
                    "nested placeholder such as ${A${B}} (Knative's validatePlaceholders)",
                    build=build,
                )


def validate_arguments(build: Build, template: Template) -> None:
    """validateArguments (validate_build.go): no argument twice; every parameter without a
    default has an argument."""
    ref = build.spec.template
    assert ref is not None
    seen: set[str] = set()
    for i, arg in enumerate(ref.arguments):
        if arg.name in seen:
            raise build.origin.error(
                ("spec", "template", "arguments", i, "name"),
                f"argument {shown(arg.name)} is given twice (Knative: DuplicateArgName)",
            )
        seen.add(arg.name)
    missing = [p.name for p in template.parameters if p.default is None and p.name not in seen]
    if missing:
        names = ", ".join(shown(n) for n in missing)
        raise build.origin.error(
            ("spec", "template", "arguments"),
            f"{template.kind} {shown(template.meta.name)} needs a value for parameter "
            f"{names}: it has no default (Knative: UnsatisfiedParameter)",
        )
