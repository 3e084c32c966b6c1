"""From YAML documents to Pods: the documents indexed as a cluster would hold them, then each Build
defaulted, validated, given its template and made into a Pod, in the reconciler's order
(knative/build v0.7.0 pkg/reconciler/build: Reconcile, validateBuild, startPodForBuild)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from controller.pod import model
from controller.pod.credentials import make_credentials
from controller.pod.makepod import Images, make_pod
from controller.pod.model import (
    BUILD,
    CLUSTER_BUILD_TEMPLATE,
    KNATIVE_API,
    TEMPLATE_KINDS,
    Build,
    Document,
    Meta,
    Origin,
    Secret,
    ServiceAccount,
    Template,
    shown,
)
from controller.pod.template import apply_template
from controller.pod.validate import (
    set_defaults,
    validate_arguments,
    validate_build,
    validate_template,
)
from controller.pod.yamlio import MarkedMap
from stepkit.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Options:
    images: Images
    namespace: str | None = None  # --namespace: for documents that name none, as kubectl -n
    build: str | None = None  # --build: only the Build of this name


@dataclass
class Inputs:
    """The documents, indexed as the API server would find them: by kind, namespace and name."""

    namespace: str | None
    builds: list[Build] = field(default_factory=list)
    templates: dict[tuple[str, str, str], Template] = field(default_factory=dict)
    accounts: dict[tuple[str, str], ServiceAccount] = field(default_factory=dict)
    secrets: dict[tuple[str, str], Secret] = field(default_factory=dict)
    _seen: dict[tuple[str, str, str], Origin] = field(default_factory=dict)

    def namespace_of(self, meta: Meta) -> str:
        """A document's namespace: its own, else --namespace, else Kubernetes' default one."""
        return meta.namespace or self.namespace or DEFAULT_NAMESPACE

    def add(self, doc: Document) -> None:
        origin = doc.origin
        cluster_scoped = origin.kind == CLUSTER_BUILD_TEMPLATE
        if (
            not cluster_scoped
            and self.namespace
            and doc.meta.namespace
            and doc.meta.namespace != self.namespace
        ):
            raise origin.error(
                ("metadata", "namespace"),
                f"is {shown(doc.meta.namespace)} but --namespace is {shown(self.namespace)} "
                "(kubectl refuses this too)",
            )
        ns = "" if cluster_scoped else self.namespace_of(doc.meta)
        key = (origin.kind, ns, doc.meta.name)
        first = self._seen.get(key)
        if first is not None:
            from controller.pod.yamlio import locate

            mark = locate(first.raw, ())
            at = f"{first.source}:{mark.line}" if mark else first.source
            raise origin.error((), f"is defined twice (also at {at})")
        self._seen[key] = origin
        if isinstance(doc, Build):
            self.builds.append(doc)
        elif isinstance(doc, Template):
            self.templates[key] = doc
        elif isinstance(doc, ServiceAccount):
            self.accounts[(ns, doc.meta.name)] = doc
        else:
            self.secrets[(ns, doc.meta.name)] = doc


def _document(tree: Any, source: str) -> Document | None:
    """The typed document for one YAML document, or None for a kind `stepkit pod` does not use."""
    mark = getattr(tree, "mark", None)
    where = f"{source}:{mark.line}:{mark.column}" if mark else source
    if not isinstance(tree, MarkedMap):
        raise InputError(f"{where}: a document must be a mapping (apiVersion, kind, metadata, ...)")
    kind, api = tree.get("kind"), tree.get("apiVersion")
    if not isinstance(kind, str) or not kind or not isinstance(api, str) or not api:
        raise InputError(f"{where}: a document needs apiVersion and kind (strings)")
    metadata = tree.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    name = name if isinstance(name, str) else ""
    if kind in (BUILD, *TEMPLATE_KINDS):
        if api != KNATIVE_API:
            raise Origin(source, kind, name, tree).error(
                ("apiVersion",),
                f"{shown(api)} is not {KNATIVE_API} (what Knative Build v0.7 serves)",
            )
        if kind == BUILD:
            return model.read_build(tree, source, name)
        return model.read_template(tree, source, kind, name)
    if kind in ("ServiceAccount", "Secret") and api == "v1":
        if kind == "Secret":
            return model.read_secret(tree, source, name)
        return model.read_service_account(tree, source, name)
    log.info("%s: ignoring %s %s (%s)", where, kind, shown(name), api)
    return None


def read_inputs(documents: list[tuple[Any, str]], namespace: str | None = None) -> Inputs:
    """Index every document; a `kind: List` (kubectl get -o yaml) counts as its items."""
    inputs = Inputs(namespace=namespace)
    pending = list(documents)
    while pending:
        tree, source = pending.pop(0)
        if isinstance(tree, MarkedMap) and tree.get("kind") == "List" and "items" in tree:
            items = tree["items"]
            if not isinstance(items, list):
                raise Origin(source, "List", "", tree).error(("items",), "must be a list")
            pending[0:0] = [(item, source) for item in items]
            continue
        doc = _document(tree, source)
        if doc is not None:
            inputs.add(doc)
    return inputs


def select(inputs: Inputs, name: str | None) -> list[Build]:
    builds = inputs.builds
    if name is not None:
        builds = [b for b in builds if b.meta.name == name]
        if not builds:
            raise InputError(f"--build: no Build named {shown(name)} in the input")
        if len(builds) > 1:
            spaces = ", ".join(sorted(inputs.namespace_of(b.meta) for b in builds))
            raise InputError(
                f"--build: Builds named {shown(name)} in several namespaces ({spaces}); "
                "give --namespace"
            )
    if not builds:
        raise InputError(
            "no Build in the input (kind: Build, apiVersion: build.knative.dev/v1alpha1)"
        )
    return builds


def _elsewhere(keys: Any, kind_name: tuple[str, ...]) -> str:
    """A hint when the object asked for is in the input under another namespace."""
    spaces = sorted(key[-2] for key in keys if key[:-2] + key[-1:] == kind_name)
    if not spaces:
        return ""
    return f"; the input has one in namespace {', '.join(shown(s) for s in spaces)}"


def _secrets_of(build: Build, inputs: Inputs) -> list[Secret]:
    """validateSecrets: the ServiceAccount and each Secret it names must exist. The `default`
    account may be left out: with no document it is the one every namespace has, holding no
    credentials of ours."""
    ns = inputs.namespace_of(build.meta)
    name = build.spec.service_account_name
    account = inputs.accounts.get((ns, name))
    if account is None:
        if name == DEFAULT_NAMESPACE:
            return []
        raise build.origin.error(
            ("spec", "serviceAccountName"),
            f"ServiceAccount {shown(name)} is not in the input (namespace {shown(ns)}); "
            f"give its YAML with -f{_elsewhere(inputs.accounts, (name,))}",
        )
    secrets = []
    for i, secret_name in enumerate(account.secrets):
        secret = inputs.secrets.get((ns, secret_name))
        if secret is None:
            raise account.origin.error(
                ("secrets", i, "name"),
                f"Secret {shown(secret_name)} is not in the input (namespace {shown(ns)}); give its "
                "YAML with -f (its type and annotations are enough: no data needed)"
                + _elsewhere(inputs.secrets, (secret_name,)),
                build=build.meta.name,
            )
        secrets.append(secret)
    return secrets


def _template_of(build: Build, inputs: Inputs) -> Template:
    ref = build.spec.template
    assert ref is not None
    ns = inputs.namespace_of(build.meta)
    scope = "" if ref.kind == CLUSTER_BUILD_TEMPLATE else ns
    template = inputs.templates.get((ref.kind, scope, ref.name))
    if template is None:
        where = "" if ref.kind == CLUSTER_BUILD_TEMPLATE else f" (namespace {shown(ns)})"
        raise build.origin.error(
            ("spec", "template", "name"),
            f"{ref.kind} {shown(ref.name)} is not in the input{where}; give its YAML with -f"
            + _elsewhere(inputs.templates, (ref.kind, ref.name)),
        )
    return template


def render_build(build: Build, inputs: Inputs, options: Options) -> dict[str, Any]:
    """One Build to its Pod: SetDefaults, Validate, validateBuild, ApplyTemplate, MakePod."""
    build = set_defaults(build)
    validate_build(build)
    creds = make_credentials(_secrets_of(build, inputs), build.meta.name)
    if build.spec.template is not None:
        template = _template_of(build, inputs)
        validate_template(template, build.meta.name)
        validate_arguments(build, template)
        build = apply_template(build, template)
    return make_pod(build, creds, options.images, build.meta.namespace or inputs.namespace)


def render(inputs: Inputs, options: Options) -> list[dict[str, Any]]:
    """Every selected Build's Pod, in input order; the first invalid Build stops them all."""
    return [render_build(b, inputs, options) for b in select(inputs, options.build)]
