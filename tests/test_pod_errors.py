"""`stepkit pod` refuses every Build Knative v0.7 refused, and more: exit 2, one line naming the file,
line, Build and field, nothing on stdout, no secret value anywhere.

Each case cites the Go function of knative/build v0.7.0 whose error it reproduces, or says
"ours" where Knative let the Build through and the Pod then failed or was refused.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import assert_no_leak, run_stepkit

BUILD = """apiVersion: build.knative.dev/v1alpha1
kind: Build
metadata:
  name: b
spec:
"""


@dataclass
class Err:
    id: str
    yaml: str
    expected: str
    args: tuple[str, ...] = ()


def build(spec: str, *, name: str = "b", before: str = "") -> str:
    """Documents before, then a Build whose spec is the given (indented) YAML."""
    head = BUILD.replace("name: b", f"name: {name}")
    return (
        textwrap.dedent(before)
        + head
        + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
        + "\n"
    )


STEP = "steps: [{name: s, image: i}]"
TEMPLATE = """
apiVersion: build.knative.dev/v1alpha1
kind: BuildTemplate
metadata: {name: t}
spec:
  parameters: [{name: A}, {name: B, default: b}]
  steps: [{name: s, image: "i:${B}", args: ["${A}"]}]
---
"""
SA = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: robot}
secrets: [{name: creds}]
---
"""


def secret(name: str, annotations: str, kind: str = "basic-auth", extra: str = "") -> str:
    """A Secret document of type kubernetes.io/<kind>, then the separator."""
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, annotations: {annotations}}}\n"
        f"type: kubernetes.io/{kind}\n{extra}---\n"
    )


ERRORS = [
    # BuildSpec.Validate: ErrMissingOneOf("template", "steps").
    Err(
        "neither-steps-nor-template",
        build("serviceAccountName: x"),
        "input.yaml:5:1: Build 'b': spec: give steps or a template (Knative: expected exactly "
        "one, got neither)",
    ),
    # BuildSpec.Validate: ErrMultipleOneOf("template", "steps").
    Err(
        "both-steps-and-template",
        build(f"template: {{name: t}}\n{STEP}"),
        "input.yaml:7:3: Build 'b': spec.steps: give steps or a template, not both",
    ),
    # TemplateInstantiationSpec.Validate: ErrMissingField("name").
    Err(
        "template-without-name",
        build("template: {arguments: []}"),
        "input.yaml:6:3: Build 'b': spec.template.name: is required",
    ),
    # TemplateInstantiationSpec.Validate: ErrInvalidValue(kind, "kind").
    Err(
        "template-bad-kind",
        build("template: {name: t, kind: Task}"),
        "input.yaml:6:23: Build 'b': spec.template.kind: 'Task' is neither BuildTemplate nor "
        "ClusterBuildTemplate",
    ),
    # validateSources: ErrMultipleOneOf("source", "sources").
    Err(
        "source-and-sources",
        build(
            f"source: {{git: {{url: u, revision: r}}}}\nsources: [{{git: {{url: u, revision: r}}}}]\n{STEP}"
        ),
        "input.yaml:7:3: Build 'b': spec.sources: give source or sources, not both",
    ),
    # validateSources: ErrMultipleOneOf("name").ViaField("sources").
    Err(
        "duplicate-source-names",
        build(
            """
            sources:
            - {name: x, git: {url: u, revision: r}, targetPath: a}
            - {name: x, git: {url: u, revision: r}, targetPath: b}
            """
            + STEP
        ),
        "input.yaml:8:6: Build 'b': spec.sources[1].name: 'x' names two sources",
    ),
    # validateSources keys sources by name, so two without a name clash too.
    Err(
        "two-unnamed-sources",
        build(
            """
            sources:
            - {git: {url: u, revision: r}, targetPath: a}
            - {git: {url: u, revision: r}, targetPath: b}
            """
            + STEP
        ),
        "input.yaml:8:5: Build 'b': spec.sources[1].name: a second source without a name: name the sources",
    ),
    # validateSources: ErrMultipleOneOf("subpath").ViaField("sources").
    Err(
        "several-subpaths",
        build(
            """
            sources:
            - {name: x, git: {url: u, revision: r}, targetPath: a, subPath: a}
            - {name: y, git: {url: u, revision: r}, targetPath: b, subPath: b}
            """
            + STEP
        ),
        "input.yaml:8:58: Build 'b': spec.sources[1].subPath: a second subPath (first in "
        "spec.sources.0)",
    ),
    # validateSources: ErrInvalidValue("Empty Target Path", "targetPath").
    Err(
        "two-empty-target-paths",
        build(
            """
            sources:
            - {name: x, git: {url: u, revision: r}}
            - {name: y, gcs: {type: Archive, location: "gs://b/o"}}
            """
            + STEP
        ),
        "input.yaml:8:5: Build 'b': spec.sources[1].targetPath: two sources without targetPath",
    ),
    # validateSources: ErrInvalidValue(targetPath, "targetPath") for a custom source.
    Err(
        "custom-with-target-path",
        build("sources:\n- {custom: {image: c}, targetPath: x}\n" + STEP),
        "input.yaml:7:26: Build 'b': spec.sources[0].targetPath: a custom source has no targetPath",
    ),
    # Ours: an absolute target path (Knative's git-init ran `git init /src` outside the
    # workspace, then failed to enter /workspace/src).
    Err(
        "target-path-absolute",
        build(
            """
            sources:
            - {name: x, git: {url: u, revision: r}, targetPath: /src/}
            - {name: y, git: {url: u, revision: r}, targetPath: src/lib}
            """
            + STEP
        ),
        "input.yaml:7:43: Build 'b': spec.sources[0].targetPath: '/src/' must be relative to "
        "/workspace",
    ),
    # insertNode: "Overlapping Target Paths", one inside the other, or the same.
    Err(
        "overlapping-target-paths-nested",
        build(
            """
            sources:
            - {name: x, git: {url: u, revision: r}, targetPath: src}
            - {name: y, git: {url: u, revision: r}, targetPath: src/lib}
            """
            + STEP
        ),
        "input.yaml:8:43: Build 'b': spec.sources[1].targetPath: 'src/lib' overlaps 'src' of "
        "spec.sources.0 (Knative: Overlapping Target Paths)",
    ),
    Err(
        "overlapping-target-paths-equal",
        build(
            """
            sources:
            - {name: x, git: {url: u, revision: r}, targetPath: src}
            - {name: y, gcs: {type: Archive, location: "gs://b/o"}, targetPath: ./src}
            """
            + STEP
        ),
        "spec.sources[1].targetPath: './src' overlaps 'src'",
    ),
    # Ours: a target path out of the workspace (git-init and gcs-fetcher would refuse it in the pod).
    Err(
        "target-path-escapes",
        build("sources:\n- {git: {url: u, revision: r}, targetPath: a/../../etc}\n" + STEP),
        "spec.sources[0].targetPath: 'a/../../etc' must name a directory below /workspace, "
        "without '..'",
    ),
    Err(
        "sub-path-escapes",
        build("source: {git: {url: u, revision: r}, subPath: ../x}\n" + STEP),
        "spec.source.subPath: '../x' must name a directory below /workspace",
    ),
    # validateTimeout: ErrOutOfBoundsValue, above 24h or negative.
    Err(
        "timeout-too-long",
        build(f"timeout: 24h1s\n{STEP}"),
        "input.yaml:6:3: Build 'b': spec.timeout: '24h1s' is out of bounds: 0 <= timeout <= 24h",
    ),
    Err("timeout-negative", build(f"timeout: -1m\n{STEP}"), "spec.timeout: '-1m' is out of bounds"),
    # metav1.Duration's JSON: a string time.ParseDuration reads.
    Err(
        "timeout-not-a-duration",
        build(f"timeout: 10 minutes\n{STEP}"),
        "spec.timeout: '10 minutes' is not a Go duration",
    ),
    Err(
        "timeout-a-number",
        build(f"timeout: 600\n{STEP}"),
        "spec.timeout: must be a Go duration string such as '10m'",
    ),
    # Ours: 0 (Knative's timeout handler failed the Build at once).
    Err(
        "timeout-zero",
        build(f"timeout: 0s\n{STEP}"),
        "spec.timeout: 0 would stop the Build before it starts",
    ),
    # validateSteps: ErrMissingField("Image").
    Err(
        "step-without-image",
        build("steps: [{name: s}]"),
        "input.yaml:6:11: Build 'b': spec.steps[0].image: is required",
    ),
    # validateSteps: ErrMultipleOneOf("name").
    Err(
        "duplicate-step-names",
        build("steps:\n- {name: s, image: i}\n- {name: s, image: j}"),
        "input.yaml:8:6: Build 'b': spec.steps[1].name: step name 's' is used twice",
    ),
    # ValidateVolumes: ErrMultipleOneOf("name").
    Err(
        "duplicate-volumes",
        build(f"volumes: [{{name: v, emptyDir: {{}}}}, {{name: v, emptyDir: {{}}}}]\n{STEP}"),
        "input.yaml:6:39: Build 'b': spec.volumes[1].name: volume 'v' is declared twice",
    ),
    # MakePod's ValidateVolumes over the Pod's volumes: a Build's volume named like Knative's own.
    Err(
        "volume-named-workspace",
        build(f"volumes: [{{name: workspace, emptyDir: {{}}}}]\n{STEP}"),
        "input.yaml:6:14: Build 'b': spec.volumes[0].name: volume 'workspace' is declared twice: "
        "the pod's own volumes are workspace, home and secret-volume-<secret>",
    ),
    # validateObjectMetadata: no '.', at most 63 characters; ours: a DNS label.
    Err(
        "name-with-dot",
        build(STEP, name="my.build"),
        "input.yaml:4:3: Build 'my.build': metadata.name: must not contain '.'",
    ),
    Err("name-too-long", build(STEP, name="b" * 64), "metadata.name: is longer than 63 characters"),
    Err(
        "name-upper-case",
        build(STEP, name="MyBuild"),
        "metadata.name: 'MyBuild' is not a DNS label",
    ),
    # startPodForBuild: the template must exist (in the Build's namespace for a BuildTemplate).
    Err(
        "missing-template",
        build("template: {name: nope}"),
        "input.yaml:6:14: Build 'b': spec.template.name: BuildTemplate 'nope' is not in the input "
        "(namespace 'default')",
    ),
    Err(
        "missing-cluster-template",
        build("template: {name: t, kind: ClusterBuildTemplate}", before=TEMPLATE),
        "spec.template.name: ClusterBuildTemplate 't' is not in the input; give its YAML with -f",
    ),
    Err(
        "template-in-another-namespace",
        build(
            "template: {name: t, arguments: [{name: A, value: a}]}",
            before=TEMPLATE.replace("{name: t}", "{name: t, namespace: other}"),
        ),
        "BuildTemplate 't' is not in the input (namespace 'default'); give its YAML with -f; "
        "the input has one in namespace 'other'",
    ),
    # validateArguments: UnsatisfiedParameter.
    Err(
        "parameter-without-value",
        build("template: {name: t, arguments: [{name: B, value: x}]}", before=TEMPLATE),
        "input.yaml:14:23: Build 'b': spec.template.arguments: BuildTemplate 't' needs a value "
        "for parameter 'A': it has no default (Knative: UnsatisfiedParameter)",
    ),
    # validateArguments: DuplicateArgName.
    Err(
        "duplicate-arguments",
        build(
            "template: {name: t, arguments: [{name: A, value: x}, {name: A, value: y}]}",
            before=TEMPLATE,
        ),
        "spec.template.arguments[1].name: argument 'A' is given twice (Knative: DuplicateArgName)",
    ),
    # BuildTemplateSpec.Validate as the webhook ran it: validateParameters, validateSteps, ValidateVolumes.
    Err(
        "template-duplicate-parameters",
        build(
            "template: {name: t, arguments: [{name: A, value: a}]}",
            before=TEMPLATE.replace("{name: B, default: b}", "{name: A, default: b}"),
        ),
        "input.yaml:6:28: BuildTemplate 't' (for Build 'b'): spec.parameters[1].name: parameter "
        "'A' is declared twice",
    ),
    Err(
        "template-step-without-image",
        build(
            "template: {name: t, arguments: [{name: A, value: a}]}",
            before=TEMPLATE.replace('image: "i:${B}", ', ""),
        ),
        "BuildTemplate 't' (for Build 'b'): spec.steps[0].image: is required",
    ),
    Err(
        "template-duplicate-steps",
        build(
            "template: {name: t, arguments: [{name: A, value: a}]}",
            before=TEMPLATE.replace('args: ["${A}"]}]', 'args: ["${A}"]}, {name: s, image: j}]'),
        ),
        "BuildTemplate 't' (for Build 'b'): spec.steps[1].name: step name 's' is used twice",
    ),
    Err(
        "template-duplicate-volumes",
        build(
            "template: {name: t, arguments: [{name: A, value: a}]}",
            before=TEMPLATE.replace(
                "  steps:",
                "  volumes: [{name: v, emptyDir: {}}, {name: v, emptyDir: {}}]\n  steps:",
            ),
        ),
        "BuildTemplate 't' (for Build 'b'): spec.volumes[1].name: volume 'v' is declared twice",
    ),
    # validateTemplate / validatePlaceholders: nested placeholders.
    Err(
        "template-nested-placeholder",
        build(
            "template: {name: t, arguments: [{name: A, value: a}]}",
            before=TEMPLATE.replace('["${A}"]', '["${A${B}}"]'),
        ),
        "BuildTemplate 't' (for Build 'b'): spec.steps[0].args[0]: nested placeholder",
    ),
    Err(
        "template-name-with-dot",
        build(
            "template: {name: t.x, arguments: [{name: A, value: a}]}",
            before=TEMPLATE.replace("{name: t}", "{name: t.x}"),
        ),
        "BuildTemplate 't.x' (for Build 'b'): metadata.name: must not contain '.'",
    ),
    # Ours: an argument that empties the image (the API server refuses a container without one).
    Err(
        "image-empty-after-replacement",
        build(
            "template: {name: t, arguments: [{name: A, value: a}, {name: I, value: ''}]}",
            before=TEMPLATE.replace('image: "i:${B}"', 'image: "${I}"').replace(
                "{name: B, default: b}]", "{name: B, default: b}, {name: I}]"
            ),
        ),
        "BuildTemplate 't' (for Build 'b'): spec.steps[0].image: is empty after the template's "
        "parameters are replaced",
    ),
    # validateSecrets: the ServiceAccount must exist (ours: `default` may be left out).
    Err(
        "missing-service-account",
        build(f"serviceAccountName: robot\n{STEP}"),
        "input.yaml:6:3: Build 'b': spec.serviceAccountName: ServiceAccount 'robot' is not in the "
        "input (namespace 'default')",
    ),
    # validateSecrets: each Secret the ServiceAccount names must exist.
    Err(
        "missing-secret",
        build(f"serviceAccountName: robot\n{STEP}", before=SA),
        "input.yaml:5:12: ServiceAccount 'robot' (for Build 'b'): secrets[0].name: Secret 'creds' "
        "is not in the input (namespace 'default')",
    ),
    # validateSecrets: BadSecretAnnotation for index.docker.io.
    Err(
        "docker-hub-short-annotation",
        build(
            f"serviceAccountName: robot\n{STEP}",
            before=SA + secret("creds", "{build.knative.dev/docker-0: index.docker.io}"),
        ),
        "Secret 'creds' (for Build 'b'): metadata.annotations.build.knative.dev/docker-0: "
        "'index.docker.io' should be 'https://index.docker.io/v1/'",
    ),
    # Ours: a Secret whose data lacks a key creds-init reads.
    Err(
        "secret-missing-key",
        build(
            f"serviceAccountName: robot\n{STEP}",
            before=SA
            + secret(
                "creds",
                "{build.knative.dev/git-0: 'https://h'}",
                extra="stringData: {username: octocat}\n",
            ),
        ),
        "Secret 'creds' (for Build 'b'): data: has no key 'password', which creds-init reads for "
        "kubernetes.io/basic-auth",
    ),
    # Ours: two secrets for one url (creds-init takes each once; Knative's failed in the pod).
    Err(
        "same-url-two-secrets",
        build(
            f"serviceAccountName: robot\n{STEP}",
            before=SA.replace("[{name: creds}]", "[{name: creds}, {name: creds2}]")
            + secret("creds", "{build.knative.dev/git-0: 'https://h'}")
            + secret("creds2", "{tekton.dev/git-0: 'https://h'}"),
        ),
        "Secret 'creds2' (for Build 'b'): metadata.annotations.tekton.dev/git-0: 'https://h' also "
        "has -basic-git credentials from Secret 'creds'; creds-init takes each once",
    ),
    # Ours: an ssh host written as an https URL with the https port.
    Err(
        "ssh-annotation-with-https-port",
        build(
            f"serviceAccountName: robot\n{STEP}",
            before=SA + secret("creds", "{build.knative.dev/git-0: 'https://h:8443'}", "ssh-auth"),
        ),
        "Secret 'creds' (for Build 'b'): metadata.annotations.build.knative.dev/git-0: "
        "'https://h:8443' names an https port",
    ),
    # Ours: a secret name that is no Kubernetes name (it becomes a path and a flag).
    Err(
        "secret-name-traversal",
        build(
            f"serviceAccountName: robot\n{STEP}",
            before=SA.replace("{name: creds}", "{name: ../../x}")
            + secret("../../x", "{build.knative.dev/git-0: 'https://h'}"),
        ),
        "Secret '../../x' (for Build 'b'): metadata.name: '../../x' is not a Kubernetes secret name",
    ),
    # gitToContainer: ErrMissingField url, revision.
    Err(
        "git-without-url",
        build(f"source: {{git: {{revision: r}}}}\n{STEP}"),
        "input.yaml:6:12: Build 'b': spec.source.git.url: is required",
    ),
    Err(
        "git-without-revision",
        build(f"source: {{git: {{url: u}}}}\n{STEP}"),
        "spec.source.git.revision: is required",
    ),
    # Ours: a value that would be read as another flag of git-init.
    Err(
        "git-revision-option",
        build(f"source: {{git: {{url: u, revision: --upload-pack=touch /tmp/PWNED}}}}\n{STEP}"),
        "spec.source.git.revision: '--upload-pack=touch /tmp/PWNED' must not start with '-'",
    ),
    Err(
        "git-url-option",
        build(
            f"source: {{git: {{url: '--upload-pack=touch /tmp/PWNED', revision: main}}}}\n{STEP}"
        ),
        "spec.source.git.url: '--upload-pack=touch /tmp/PWNED' must not start with '-'",
    ),
    Err(
        "git-revision-control-character",
        build(f'source: {{git: {{url: u, revision: "main\\x1b]0;title\\x07"}}}}\n{STEP}'),
        "spec.source.git.revision: 'main\\x1b]0;title\\x07' holds a control character",
    ),
    # gcsToContainer: ErrMissingField location; ours: a type gcs-fetcher takes.
    Err(
        "gcs-without-location",
        build(f"source: {{gcs: {{type: Archive}}}}\n{STEP}"),
        "spec.source.gcs.location: is required",
    ),
    Err(
        "gcs-bad-type",
        build(f"source: {{gcs: {{type: Tarball, location: 'gs://b/o'}}}}\n{STEP}"),
        "spec.source.gcs.type: 'Tarball' is not one of Archive, Manifest, ZipArchive, TarGzArchive",
    ),
    # customToContainer: the container must have no name.
    Err(
        "custom-with-name",
        build(f"source: {{custom: {{name: c, image: i}}}}\n{STEP}"),
        "spec.source.custom.name: must be empty: the container is named custom-source",
    ),
    # Ours: a source is exactly one of git, gcs, custom.
    Err(
        "source-of-two-kinds",
        build(
            f"source: {{git: {{url: u, revision: r}}, gcs: {{type: Archive, location: x}}}}\n{STEP}"
        ),
        "spec.source: give exactly one of git, gcs and custom, not git and gcs",
    ),
    # Ours: what the API server refuses in the Pod MakePod returned.
    Err(
        "container-name-not-a-label",
        build(f"source: {{name: My_Src, git: {{url: u, revision: r}}}}\n{STEP}"),
        "spec.source.name: makes the container name 'build-step-git-source-My_Src', which is not "
        "a DNS label",
    ),
    Err(
        "two-containers-one-name",
        build("source: {custom: {image: c}}\nsteps: [{name: custom-source, image: i}]"),
        "spec.steps[0]: makes a second container named 'build-step-custom-source'",
    ),
    Err(
        "mount-of-undeclared-volume",
        build("steps: [{name: s, image: i, volumeMounts: [{name: cache, mountPath: /c}]}]"),
        "spec.steps[0].volumeMounts[0].name: mounts volume 'cache', which no volume declares",
    ),
    # Ours: what the API server checks of the Pod's labels, annotations and nodeSelector.
    Err(
        "label-value-invalid",
        build(STEP).replace("name: b\n", "name: b\n  labels: {team: 'a b'}\n"),
        "input.yaml:5:12: Build 'b': metadata.labels.team: 'a b' is not a label value",
    ),
    Err(
        "annotation-key-invalid",
        build(STEP).replace("name: b\n", "name: b\n  annotations: {'bad key': x}\n"),
        "metadata.annotations.bad key: 'bad key' is not a label or annotation key",
    ),
    Err(
        "node-selector-invalid",
        build(f"nodeSelector: {{zone: 'eu/west'}}\n{STEP}"),
        "spec.nodeSelector.zone: 'eu/west' is not a label value",
    ),
    # Reconcile: a cancelled Build runs no Pod.
    Err(
        "cancelled",
        build(f"status: BuildCancelled\n{STEP}"),
        "spec.status: BuildCancelled: a cancelled Build runs no Pod",
    ),
    # The Go structs' decoding: wrong types; ours: unknown fields are refused, not dropped.
    Err(
        "arg-is-a-number",
        build("steps: [{name: s, image: i, args: [--port, 8080]}]"),
        "spec.steps[0].args[1]: must be a string, not a number (quote it in YAML)",
    ),
    Err(
        "env-value-is-a-boolean",
        build("steps: [{name: s, image: i, env: [{name: X, value: yes}]}]"),
        "spec.steps[0].env[0].value: must be a string, not a boolean (quote it in YAML)",
    ),
    Err(
        "unknown-step-field",
        build("steps: [{name: s, image: i, comand: [x]}]"),
        "input.yaml:6:31: Build 'b': spec.steps[0].comand: unknown field",
    ),
    Err("unknown-spec-field", build(f"step: []\n{STEP}"), "spec.step: unknown field"),
    Err(
        "template-volumes-field",
        build("template: {name: t, volumes: []}"),
        "spec.template.volumes: unknown field (Knative v0.7's spec.template has no volumes: give "
        "them in spec.volumes)",
    ),
    Err(
        "label-not-a-string",
        build(STEP).replace("name: b\n", "name: b\n  labels: {n: 1}\n"),
        "metadata.labels.n: must be a string, not a number",
    ),
    # The documents themselves.
    Err(
        "wrong-api-version",
        build(STEP).replace("build.knative.dev/v1alpha1", "tekton.dev/v1beta1"),
        "input.yaml:1:1: Build 'b': apiVersion: 'tekton.dev/v1beta1' is not "
        "build.knative.dev/v1alpha1",
    ),
    Err(
        "no-name",
        build(STEP).replace("name: b\n", "labels: {}\n"),
        "Build '': metadata.name: is required",
    ),
    Err(
        "defined-twice",
        build(STEP) + "---\n" + build(STEP),
        "input.yaml:8:1: Build 'b': is defined twice (also at input.yaml:1)",
    ),
    Err("not-a-mapping", "- a\n- b\n", "input.yaml:1:1: a document must be a mapping"),
    Err(
        "no-kind",
        "apiVersion: v1\nmetadata: {name: x}\n",
        "input.yaml:1:1: a document needs apiVersion and kind",
    ),
    Err(
        "yaml-does-not-parse",
        build(STEP) + "  oops: [\n",
        "input.yaml:8:1: invalid YAML: expected the node content, but found '<stream end>'",
    ),
    Err(
        "yaml-duplicate-key",
        build(f"{STEP}\ntimeout: 1m\ntimeout: 2m"),
        "input.yaml:8:3: invalid YAML: duplicate key 'timeout' (first at line 7, column 3)",
    ),
    Err("no-build", TEMPLATE, "no Build in the input"),
    # Options.
    Err(
        "build-option-names-none",
        build(STEP),
        "--build: no Build named 'other' in the input",
        ("--build", "other"),
    ),
    Err(
        "namespace-conflict",
        build(STEP).replace("name: b\n", "name: b\n  namespace: prod\n"),
        "input.yaml:5:3: Build 'b': metadata.namespace: is 'prod' but --namespace is 'dev'",
        ("--namespace", "dev"),
    ),
]


@pytest.mark.parametrize("err", ERRORS, ids=[e.id for e in ERRORS])
def test_invalid_input_is_one_line_and_exit_2(err: Err, tmp_path: Path) -> None:
    (tmp_path / "input.yaml").write_text(err.yaml)
    result = run_stepkit("pod", "-f", "input.yaml", *err.args, cwd=tmp_path)
    assert result.returncode == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stepkit pod: error: ")
    assert err.expected in lines[0]
    assert "\x1b" not in result.stderr


def test_error_ids_are_unique() -> None:
    assert len({e.id for e in ERRORS}) == len(ERRORS)


def test_a_valid_build_beside_an_invalid_one_prints_nothing(tmp_path: Path) -> None:
    """All Pods are made before the first is printed: no half output for kubectl to apply."""
    (tmp_path / "input.yaml").write_text(
        build(STEP, name="good") + "---\n" + build("steps: [{name: s}]")
    )
    result = run_stepkit("pod", "-f", "input.yaml", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "Build 'b': spec.steps[0].image: is required" in result.stderr


SECRET_VALUES = [
    "hunter2-PASSWORD-zz9",
    "octocat-USER-77x",
    "-----BEGIN OPENSSH PRIVATE KEY-----ab",
]


def test_secret_values_reach_no_output_on_success_or_error(tmp_path: Path) -> None:
    secret = (
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, annotations: "
        "{build.knative.dev/git-0: 'https://h'}}\n"
        f"type: kubernetes.io/basic-auth\nstringData: {{username: {SECRET_VALUES[1]}, password: {SECRET_VALUES[0]}}}\n"
        f"data: {{ssh-privatekey: '{SECRET_VALUES[2]}'}}\n---\n"
    )
    good = build(f"serviceAccountName: robot\n{STEP}", before=SA + secret)
    (tmp_path / "good.yaml").write_text(good)
    ok = run_stepkit("pod", "-f", "good.yaml", "--debug", cwd=tmp_path)
    assert ok.returncode == 0, ok.output
    assert "-basic-git=creds=https://h" in ok.stdout
    assert_no_leak(ok.output, SECRET_VALUES)
    # A Secret that does not parse: the message gives the position, not the line.
    broken = good.replace(f"password: {SECRET_VALUES[0]}", f"password: {SECRET_VALUES[0]}: x: ]")
    broken = broken.replace("stringData: {", "stringData:\n  ").replace("}\ndata", "\ndata")
    (tmp_path / "broken.yaml").write_text(broken)
    bad = run_stepkit("pod", "-f", "broken.yaml", "--debug", cwd=tmp_path)
    assert bad.returncode == 2, bad.output
    assert "broken.yaml:" in bad.stderr
    assert_no_leak(bad.output, SECRET_VALUES)
    # An invalid Build with the secret in the input: still no value.
    (tmp_path / "invalid.yaml").write_text(
        build(f"serviceAccountName: robot\ntimeout: 48h\n{STEP}", before=SA + secret)
    )
    invalid = run_stepkit("pod", "-f", "invalid.yaml", "--log-format", "json", cwd=tmp_path)
    assert invalid.returncode == 2 and "spec.timeout" in invalid.stderr
    assert_no_leak(invalid.output, SECRET_VALUES)
