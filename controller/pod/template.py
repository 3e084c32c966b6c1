"""ApplyTemplate and ApplyReplacements (pkg/reconciler/build/apply.go): a template's steps and volumes
given to a Build, with each `${NAME}` replaced by the Build's argument or the parameter's default."""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from typing import Any

from controller.pod.model import Build, Template, shown

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def replacements(build: Build, template: Template) -> dict[str, str]:
    """ApplyTemplate: every parameter's default, then the Build's arguments over them.

    Arguments that name no parameter still replace their placeholder, as in Knative.
    """
    ref = build.spec.template
    assert ref is not None
    values = {p.name: p.default for p in template.parameters if p.default is not None}
    declared = {p.name for p in template.parameters}
    for arg in ref.arguments:
        if arg.name not in declared:
            log.warning(
                "Build %s: argument %s is not a parameter of %s %s",
                shown(build.meta.name),
                shown(arg.name),
                template.kind,
                shown(template.meta.name),
            )
        values[arg.name] = arg.value
    return values


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace each `${NAME}` whose NAME has a value; leave the others as written.

    Knative replaced one name after another in the order of a Go map, which changes from run
    to run, so a value holding `${OTHER}` was itself replaced or not by chance. Here it is one
    pass: a replacement is never read again.
    """
    if "${" not in text:
        return text
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _apply_container(container: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """ApplyReplacements on one step: name, image, args, env values, workingDir, command, and each
    volume mount's name, mountPath and subPath (the fields Knative replaced; no others)."""
    c = copy.deepcopy(container)
    for key in ("name", "image", "workingDir"):
        if key in c:
            c[key] = substitute(c[key], values)
    for key in ("args", "command"):
        if key in c:
            c[key] = [substitute(a, values) for a in c[key]]
    for env in c.get("env", []):
        if "value" in env:
            env["value"] = substitute(env["value"], values)
    for mount in c.get("volumeMounts", []):
        for key in ("name", "mountPath", "subPath"):
            if key in mount:
                mount[key] = substitute(mount[key], values)
    return c


def _apply_volume(volume: dict[str, Any], values: dict[str, str]) -> dict[str, Any]:
    """applyVolumeReplacements: the name, a persistentVolumeClaim's claimName, a configMap's name
    and a secret's secretName."""
    v = copy.deepcopy(volume)
    v["name"] = substitute(v["name"], values)
    for source, key in (
        ("persistentVolumeClaim", "claimName"),
        ("configMap", "name"),
        ("secret", "secretName"),
    ):
        inner = v.get(source)
        if isinstance(inner, dict) and isinstance(inner.get(key), str):
            inner[key] = substitute(inner[key], values)
    return v


def apply_env_override(
    env: list[dict[str, Any]], override: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """applyEnvOverride: the step's variables the template's env does not name, then that env."""
    names = {e["name"] for e in override}
    return [e for e in env if e["name"] not in names] + copy.deepcopy(override)


def apply_template(build: Build, template: Template) -> Build:
    """ApplyTemplate: the template's steps become the Build's, its volumes follow the Build's own,
    then ApplyReplacements over steps, volumes and the Build's template env."""
    ref = build.spec.template
    assert ref is not None
    values = replacements(build, template)
    steps = [
        dataclasses.replace(step, value=_apply_container(step.value, values))
        for step in template.steps
    ]
    volumes = [
        dataclasses.replace(v, value=_apply_volume(v.value, values))
        for v in (*build.spec.volumes, *template.volumes)
    ]
    env = [dict(e) for e in ref.env]
    for e in env:
        if "value" in e:
            e["value"] = substitute(e["value"], values)
    if env:
        for i, step in enumerate(steps):
            container = dict(step.value)
            merged = apply_env_override(list(container.get("env", [])), env)
            container["env"] = merged
            steps[i] = dataclasses.replace(step, value=container)
    return dataclasses.replace(
        build,
        spec=dataclasses.replace(
            build.spec,
            steps=tuple(steps),
            volumes=tuple(volumes),
            template=dataclasses.replace(ref, env=tuple(env)),
        ),
    )
