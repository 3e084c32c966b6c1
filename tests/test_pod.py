"""`stepkit pod`: a table of Builds, each with the Pod Knative v0.7's controller made for it.

Every expected Pod is written from knative/build v0.7.0's code; the comment on each case names
the Go function that decides it (pkg/reconciler/build/resources/pod.go MakePod and its helpers,
pkg/reconciler/build/apply.go ApplyTemplate, pkg/credentials, pkg/apis/build/v1alpha1
SetDefaults). Cases marked "ours" are where stepkit differs on purpose (controller/README.md).
Each Pod is printed as YAML, read back, and checked against Kubernetes' OpenAPI schemas.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate
import pytest

from tests.podcases import (
    HM,
    HOME,
    IMAGES,
    K8S_VERSION,
    VOLUMES,
    WS,
    creds_init,
    gcs,
    git,
    pod,
    render_text,
    secret_mount,
    secret_volume,
    step,
    warnings,
    without_name,
    ws,
)


@dataclass
class Case:
    id: str
    yaml: str
    pods: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    warns: list[str] = field(default_factory=list)


def basic_secret(name: str, annotations: str, namespace: str = "") -> str:
    """A basic-auth Secret document, then the separator."""
    ns = f", namespace: {namespace}" if namespace else ""
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}{ns}, annotations: {annotations}}}\n"
        "type: kubernetes.io/basic-auth\nstringData: {username: u, password: p}\n---\n"
    )


def docs(*parts: str) -> str:
    return "".join(textwrap.dedent(p) for p in parts)


CASES = [
    # MakePod, pod_test.go "simple": creds-init with no args, one named step, the implicit
    # volumes; annotations copied with sidecar.istio.io/inject "false", labels with buildName;
    # SetDefaults: serviceAccountName "default" and a 10m timeout; ours: no `default`
    # ServiceAccount document means no credentials (creds-init without flags).
    Case(
        "simple",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata:
          name: simple
          annotations: {simple-annotation-key: simple-annotation-val}
          labels: {team: infra}
        spec:
          steps:
          - name: name
            image: image
        """,
        [
            pod(
                "simple",
                [creds_init(), step("build-step-name", "image")],
                annotations={"simple-annotation-key": "simple-annotation-val"},
                labels={"team": "infra"},
            )
        ],
    ),
    # MakePod's step loop: an unnamed step is build-step-unnamed-<index>; HOME comes before the
    # step's own env (a HOME of its own follows, and wins in Kubernetes); a working directory
    # of its own is kept; every other field is the step's, in Go's field order.
    Case(
        "unnamed-steps-env-workingdir",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: steps}
        spec:
          steps:
          - image: busybox
            args: ["echo", "one"]
          - name: second
            image: busybox
            imagePullPolicy: Always
            command: ["/bin/sh", "-c"]
            args: ["pwd"]
            workingDir: /workspace/sub
            env:
            - {name: FOO, value: bar}
            - {name: HOME, value: /root}
            - name: POD
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            resources: {limits: {cpu: "1", memory: 1Gi}}
            securityContext: {runAsUser: 65532}
          - image: busybox
        """,
        [
            pod(
                "steps",
                [
                    creds_init(),
                    step("build-step-unnamed-0", "busybox", args=["echo", "one"]),
                    step(
                        "build-step-second",
                        "busybox",
                        command=["/bin/sh", "-c"],
                        args=["pwd"],
                        workingDir="/workspace/sub",
                        env=[
                            {"name": "FOO", "value": "bar"},
                            {"name": "HOME", "value": "/root"},
                            {
                                "name": "POD",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            },
                        ],
                        resources={"limits": {"cpu": "1", "memory": "1Gi"}},
                        imagePullPolicy="Always",
                        securityContext={"runAsUser": 65532},
                    ),
                    step("build-step-unnamed-2", "busybox"),
                ],
            )
        ],
    ),
    # MakePod: the Build's volumes come before the implicit ones; a step's own mounts come first,
    # and an implicit mount is left out when the step mounts something at its path
    # (filepath.Clean, so /workspace/ counts).
    Case(
        "volumes-and-mount-overrides",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: vols}
        spec:
          volumes:
          - name: docker-socket
            hostPath: {path: /var/run/docker.sock, type: Socket}
          - name: my-ws
            emptyDir: {}
          steps:
          - name: docker
            image: docker
            volumeMounts:
            - {name: docker-socket, mountPath: /var/run/docker.sock}
          - name: own-workspace
            image: busybox
            volumeMounts:
            - {name: my-ws, mountPath: /workspace/, readOnly: true}
        """,
        [
            pod(
                "vols",
                [
                    creds_init(),
                    step(
                        "build-step-docker",
                        "docker",
                        volumeMounts=[
                            {"name": "docker-socket", "mountPath": "/var/run/docker.sock"},
                            WS,
                            HM,
                        ],
                    ),
                    step(
                        "build-step-own-workspace",
                        "busybox",
                        volumeMounts=[
                            {"name": "my-ws", "readOnly": True, "mountPath": "/workspace/"},
                            HM,
                        ],
                    ),
                ],
                volumes=[
                    {
                        "name": "docker-socket",
                        "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"},
                    },
                    {"name": "my-ws", "emptyDir": {}},
                    *VOLUMES,
                ],
            )
        ],
    ),
    # gitToContainer, pod_test.go "source": a single source is index 0; args -url, -revision.
    Case(
        "git-source",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: git}
        spec:
          source:
            git: {url: "https://github.com/my/repo", revision: master}
          steps:
          - {name: name, image: image}
        """,
        [
            pod(
                "git",
                [
                    creds_init(),
                    git("0", "-url", "https://github.com/my/repo", "-revision", "master"),
                    step("build-step-name", "image"),
                ],
            )
        ],
    ),
    # gitToContainer: a named source names the container; a targetPath adds -path as written.
    Case(
        "git-source-named-target",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: git}
        spec:
          source:
            name: app
            targetPath: src/app
            git: {url: "git@github.com:my/repo.git", revision: v1.2.3}
          steps:
          - {name: name, image: image}
        """,
        [
            pod(
                "git",
                [
                    creds_init(),
                    git(
                        "app",
                        "-url",
                        "git@github.com:my/repo.git",
                        "-revision",
                        "v1.2.3",
                        "-path",
                        "src/app",
                    ),
                    step("build-step-name", "image"),
                ],
            )
        ],
    ),
    # gcsToContainer: --type, --location, and --dest_dir filepath.Join("/workspace", targetPath),
    # which cleans the path.
    Case(
        "gcs-source",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: gcs}
        spec:
          sources:
          - gcs: {type: Archive, location: "gs://bucket/src.zip"}
            targetPath: a/./b/
          - name: manifest
            gcs: {type: Manifest, location: "gs://bucket/manifest.json"}
          steps:
          - {name: name, image: image}
        """,
        [
            pod(
                "gcs",
                [
                    creds_init(),
                    gcs(
                        "0",
                        "--type",
                        "Archive",
                        "--location",
                        "gs://bucket/src.zip",
                        "--dest_dir",
                        "/workspace/a/b",
                    ),
                    gcs(
                        "manifest", "--type", "Manifest", "--location", "gs://bucket/manifest.json"
                    ),
                    step("build-step-name", "image"),
                ],
            )
        ],
    ),
    # customToContainer + MakePod: the custom source is named custom-source and becomes the first
    # step, so it gets build-step-, HOME, the mounts and /workspace; unnamed steps count it.
    Case(
        "custom-source",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: custom}
        spec:
          source:
            custom:
              image: gcr.io/cloud-builders/git:latest
              args: ["clone", "https://github.com/bazelbuild/rules_docker.git", "another-directory"]
          steps:
          - image: ubuntu
            args: ["cat", "/workspace/another-directory/BUILD"]
        """,
        [
            pod(
                "custom",
                [
                    creds_init(),
                    step(
                        "build-step-custom-source",
                        "gcr.io/cloud-builders/git:latest",
                        args=[
                            "clone",
                            "https://github.com/bazelbuild/rules_docker.git",
                            "another-directory",
                        ],
                    ),
                    step(
                        "build-step-unnamed-1",
                        "ubuntu",
                        args=["cat", "/workspace/another-directory/BUILD"],
                    ),
                ],
            )
        ],
    ),
    # MakePod with sources of every kind: git and gcs are init containers in order, custom ones
    # steps (custom-source-<name>); names and indexes from the sources list. Ours: two custom
    # sources run in the Build's order (Knative prepended each in turn, reversing them).
    Case(
        "multiple-sources",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: multi}
        spec:
          sources:
          - name: tools
            custom: {image: tools-fetcher, args: ["--dest_dir=/workspace/tools"]}
          - git: {url: "https://github.com/a/one", revision: main}
            targetPath: one
          - name: two
            git: {url: "https://github.com/a/two", revision: main}
            targetPath: two
          - name: assets
            gcs: {type: TarGzArchive, location: "gs://b/assets.tgz"}
            targetPath: assets
          - name: more
            custom: {image: more-fetcher}
          steps:
          - {name: build, image: builder}
        """,
        [
            pod(
                "multi",
                [
                    creds_init(),
                    git(
                        "1", "-url", "https://github.com/a/one", "-revision", "main", "-path", "one"
                    ),
                    git(
                        "two",
                        "-url",
                        "https://github.com/a/two",
                        "-revision",
                        "main",
                        "-path",
                        "two",
                    ),
                    gcs(
                        "assets",
                        "--type",
                        "TarGzArchive",
                        "--location",
                        "gs://b/assets.tgz",
                        "--dest_dir",
                        "/workspace/assets",
                    ),
                    step(
                        "build-step-custom-source-tools",
                        "tools-fetcher",
                        args=["--dest_dir=/workspace/tools"],
                    ),
                    step("build-step-custom-source-more", "more-fetcher"),
                    step("build-step-build", "builder"),
                ],
            )
        ],
    ),
    # MakePod: a source's subPath goes on every step's workspace mount (custom sources' too),
    # never on creds-init's or the git container's.
    Case(
        "subpath",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: sub}
        spec:
          source:
            git: {url: "https://github.com/a/repo", revision: main}
            subPath: cmd/app
          steps:
          - {name: build, image: builder}
        """,
        [
            pod(
                "sub",
                [
                    creds_init(),
                    git("0", "-url", "https://github.com/a/repo", "-revision", "main"),
                    step("build-step-build", "builder", volumeMounts=[ws("cmd/app"), HM]),
                ],
            )
        ],
    ),
    # Ours: the subPath of the first of two sources is used (Knative overwrote it with the last
    # source's empty one).
    Case(
        "subpath-first-of-two",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: sub}
        spec:
          sources:
          - name: a
            git: {url: "https://github.com/a/repo", revision: main}
            targetPath: a
            subPath: a
          - name: b
            custom: {image: fetcher}
          steps:
          - {name: build, image: builder}
        """,
        [
            pod(
                "sub",
                [
                    creds_init(),
                    git(
                        "a", "-url", "https://github.com/a/repo", "-revision", "main", "-path", "a"
                    ),
                    step("build-step-custom-source-b", "fetcher", volumeMounts=[ws("a"), HM]),
                    step("build-step-build", "builder", volumeMounts=[ws("a"), HM]),
                ],
            )
        ],
    ),
    # SetDefaults (template kind BuildTemplate) and ApplyTemplate/ApplyReplacements: the template's
    # steps; each parameter's default, then the Build's arguments; ${NAME} replaced in name,
    # image, args, env values, workingDir, command and volume mounts' name, mountPath, subPath;
    # an unknown ${NAME} is left as written.
    Case(
        "template-parameters",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: BuildTemplate
        metadata: {name: tmpl}
        spec:
          parameters:
          - {name: IMAGE, description: the image}
          - {name: TAG, default: latest}
          - {name: DIR, default: /workspace/app}
          - {name: EMPTY, default: ""}
          steps:
          - name: build-${TAG}
            image: builder:${TAG}
            command: ["${DIR}/run"]
            args: ["--image=${IMAGE}:${TAG}", "--keep=${UNKNOWN}", "--empty=${EMPTY}"]
            workingDir: ${DIR}
            env: [{name: TARGET, value: "${IMAGE}"}]
            volumeMounts: [{name: "${VOL}", mountPath: "/cache/${TAG}", subPath: "${TAG}"}]
          volumes:
          - {name: cache, emptyDir: {}}
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: templated}
        spec:
          template:
            name: tmpl
            arguments:
            - {name: IMAGE, value: gcr.io/x/app}
            - {name: TAG, value: v1}
            - {name: VOL, value: cache}
        """,
        [
            pod(
                "templated",
                [
                    creds_init(),
                    step(
                        "build-step-build-v1",
                        "builder:v1",
                        command=["/workspace/app/run"],
                        args=["--image=gcr.io/x/app:v1", "--keep=${UNKNOWN}", "--empty="],
                        workingDir="/workspace/app",
                        env=[{"name": "TARGET", "value": "gcr.io/x/app"}],
                        volumeMounts=[
                            {"name": "cache", "mountPath": "/cache/v1", "subPath": "v1"},
                            WS,
                            HM,
                        ],
                    ),
                ],
                volumes=[{"name": "cache", "emptyDir": {}}, *VOLUMES],
            )
        ],
        warns=["Build 'templated': argument 'VOL' is not a parameter of BuildTemplate 'tmpl'"],
    ),
    # ApplyTemplate: the Build's volumes, then the template's; applyVolumeReplacements replaces
    # the name, a configMap's name, a secret's secretName, a persistentVolumeClaim's claimName.
    Case(
        "template-volumes",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: BuildTemplate
        metadata: {name: tmpl}
        spec:
          parameters:
          - {name: CM, default: settings}
          - {name: SECRET}
          - {name: CLAIM}
          steps:
          - name: s
            image: i
            volumeMounts: [{name: cfg, mountPath: /etc/cfg}]
          volumes:
          - {name: cfg, configMap: {name: "${CM}"}}
          - {name: "sec-${CM}", secret: {secretName: "${SECRET}"}}
          - {name: data, persistentVolumeClaim: {claimName: "${CLAIM}"}}
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: templated}
        spec:
          volumes:
          - {name: own, emptyDir: {medium: Memory}}
          template:
            name: tmpl
            kind: BuildTemplate
            arguments:
            - {name: SECRET, value: token}
            - {name: CLAIM, value: pvc-1}
        """,
        [
            pod(
                "templated",
                [
                    creds_init(),
                    step(
                        "build-step-s",
                        "i",
                        volumeMounts=[{"name": "cfg", "mountPath": "/etc/cfg"}, WS, HM],
                    ),
                ],
                volumes=[
                    {"name": "own", "emptyDir": {"medium": "Memory"}},
                    {"name": "cfg", "configMap": {"name": "settings"}},
                    {"name": "sec-settings", "secret": {"secretName": "token"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "pvc-1"}},
                    *VOLUMES,
                ],
            )
        ],
    ),
    # ApplyReplacements + applyEnvOverride: the Build's template env (its values replaced too)
    # replaces the step variables of the same name and follows the others.
    Case(
        "template-env-override",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: BuildTemplate
        metadata: {name: tmpl}
        spec:
          parameters: [{name: LEVEL, default: info}]
          steps:
          - name: one
            image: i
            env: [{name: A, value: a}, {name: LOG, value: debug}, {name: B, value: b}]
          - name: two
            image: i
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: env}
        spec:
          template:
            name: tmpl
            env: [{name: LOG, value: "${LEVEL}"}, {name: EXTRA, value: x}]
        """,
        [
            pod(
                "env",
                [
                    creds_init(),
                    step(
                        "build-step-one",
                        "i",
                        env=[
                            {"name": "A", "value": "a"},
                            {"name": "B", "value": "b"},
                            {"name": "LOG", "value": "info"},
                            {"name": "EXTRA", "value": "x"},
                        ],
                    ),
                    step(
                        "build-step-two",
                        "i",
                        env=[{"name": "LOG", "value": "info"}, {"name": "EXTRA", "value": "x"}],
                    ),
                ],
            )
        ],
    ),
    # validateBuild: a ClusterBuildTemplate is found by name alone, from any namespace; the
    # custom source still runs first (knative test/custom-source-cluster). Ours: a value holding
    # ${OTHER} is not replaced again (Knative's result depended on Go's map order).
    Case(
        "cluster-template",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: ClusterBuildTemplate
        metadata: {name: ctmpl}
        spec:
          parameters: [{name: A}, {name: B, default: b}]
          steps:
          - {name: dump, image: "ubuntu", args: ["${A}", "${B}"]}
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: cluster, namespace: team-a}
        spec:
          source:
            custom: {image: fetcher}
          template:
            name: ctmpl
            kind: ClusterBuildTemplate
            arguments: [{name: A, value: "${B}"}]
        """,
        [
            pod(
                "cluster",
                [
                    creds_init(),
                    step("build-step-custom-source", "fetcher"),
                    step("build-step-dump", "ubuntu", args=["${B}", "b"]),
                ],
                namespace="team-a",
            )
        ],
    ),
    # makeCredentialInitializer with dockercreds and gitcreds MatchingAnnotations: for a basic-auth
    # secret the docker flags, then the git flags, each set sorted by value (SortAnnotations);
    # the secret mounted into creds-init only; its volume after the implicit ones
    # (knative test/docker-basic).
    Case(
        "basic-auth-annotations-sorted",
        docs(
            basic_secret(
                "test-docker-basic",
                "{build.knative.dev/docker-0: 'https://us.gcr.io', "
                "build.knative.dev/docker-1: 'https://eu.gcr.io', "
                "build.knative.dev/docker-2: 'https://asia.gcr.io', "
                "build.knative.dev/git-9: 'https://github.com', "
                "build.knative.dev/git-10: 'https://gitlab.com', "
                "other.example.com/docker-0: 'https://ignored.example.com'}",
            ),
            """
            apiVersion: v1
            kind: ServiceAccount
            metadata: {name: robot}
            secrets: [{name: test-docker-basic}]
            ---
            apiVersion: build.knative.dev/v1alpha1
            kind: Build
            metadata: {name: creds}
            spec:
              serviceAccountName: robot
              steps: [{name: test, image: docker}]
            """,
        ),
        [
            pod(
                "creds",
                [
                    creds_init(
                        "-basic-docker=test-docker-basic=https://asia.gcr.io",
                        "-basic-docker=test-docker-basic=https://eu.gcr.io",
                        "-basic-docker=test-docker-basic=https://us.gcr.io",
                        "-basic-git=test-docker-basic=https://github.com",
                        "-basic-git=test-docker-basic=https://gitlab.com",
                        secrets=("test-docker-basic",),
                    ),
                    step("build-step-test", "docker"),
                ],
                volumes=[*VOLUMES, secret_volume("test-docker-basic")],
                service_account="robot",
            )
        ],
    ),
    # The same for every type, in the ServiceAccount's order: ssh-auth gives -ssh-git;
    # dockerconfigjson and dockercfg need no annotation; an Opaque secret and a basic-auth one
    # without annotations give nothing and are not mounted. Ours: tekton.dev/ annotations count
    # as build.knative.dev/ ones, a value under both being one flag; an ssh host written
    # https://host is read as host, with a warning; a Secret listed twice is mounted once.
    Case(
        "secret-types",
        """
        apiVersion: v1
        kind: Secret
        metadata:
          name: ssh-key
          annotations:
            build.knative.dev/git-0: "github.com"
            build.knative.dev/git-1: "https://gitlab.com/"
            tekton.dev/git-0: "git.example.com:2222"
            tekton.dev/git-1: "github.com"
        type: kubernetes.io/ssh-auth
        data: {ssh-privatekey: AAAA}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: regcred}
        type: kubernetes.io/dockerconfigjson
        data: {.dockerconfigjson: e30=}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: legacy}
        type: kubernetes.io/dockercfg
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: opaque, annotations: {build.knative.dev/git-0: "https://x.example.com"}}
        type: Opaque
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: plain-basic}
        type: kubernetes.io/basic-auth
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: tekton-basic, annotations: {tekton.dev/docker-0: "https://registry.example.com"}}
        type: kubernetes.io/basic-auth
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: default}
        secrets:
        - {name: regcred}
        - {name: opaque}
        - {name: ssh-key}
        - {name: plain-basic}
        - {name: legacy}
        - {name: tekton-basic}
        - {name: regcred}
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: types}
        spec:
          steps: [{name: s, image: i}]
        """,
        [
            pod(
                "types",
                [
                    creds_init(
                        "-docker-config=regcred",
                        "-ssh-git=ssh-key=git.example.com:2222",
                        "-ssh-git=ssh-key=github.com",
                        "-ssh-git=ssh-key=gitlab.com",
                        "-docker-cfg=legacy",
                        "-basic-docker=tekton-basic=https://registry.example.com",
                        secrets=("regcred", "ssh-key", "legacy", "tekton-basic"),
                    ),
                    step("build-step-s", "i"),
                ],
                volumes=[
                    *VOLUMES,
                    secret_volume("regcred"),
                    secret_volume("ssh-key"),
                    secret_volume("legacy"),
                    secret_volume("tekton-basic"),
                ],
            )
        ],
        warns=[
            "Secret 'ssh-key' annotation 'build.knative.dev/git-1': an ssh-auth secret names an "
            "ssh host, not a URL: using 'gitlab.com' for 'https://gitlab.com/'"
        ],
    ),
    # makeCredentialInitializer gets the ServiceAccount of the Build's namespace; its Secrets too.
    # MakePod: the Pod's namespace is the Build's.
    Case(
        "namespaced-credentials",
        docs(
            basic_secret("creds", "{build.knative.dev/git-0: 'https://github.com'}", "ci"),
            """
            apiVersion: v1
            kind: Secret
            metadata: {name: creds, namespace: other, annotations: {build.knative.dev/git-0: "https://other.example.com"}}
            type: kubernetes.io/basic-auth
            ---
            apiVersion: v1
            kind: ServiceAccount
            metadata: {name: builder, namespace: ci}
            secrets: [{name: creds}]
            ---
            apiVersion: build.knative.dev/v1alpha1
            kind: Build
            metadata: {name: nsbuild, namespace: ci}
            spec:
              serviceAccountName: builder
              steps: [{name: s, image: i}]
            """,
        ),
        [
            pod(
                "nsbuild",
                [
                    creds_init("-basic-git=creds=https://github.com", secrets=("creds",)),
                    step("build-step-s", "i"),
                ],
                volumes=[*VOLUMES, secret_volume("creds")],
                namespace="ci",
                service_account="builder",
            )
        ],
    ),
    # --namespace is the namespace of documents that name none (as kubectl -n), and the Pod's.
    Case(
        "namespace-option",
        """
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: builder}
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: b}
        spec:
          serviceAccountName: builder
          steps: [{name: s, image: i}]
        """,
        [
            pod(
                "b",
                [creds_init(), step("build-step-s", "i")],
                namespace="dev",
                service_account="builder",
            )
        ],
        options={"namespace": "dev"},
    ),
    # MakePod: nodeSelector (Go marshals a map with sorted keys) and affinity as given; the
    # timeout (BuildSpec.Timeout, enforced by the controller's timeout handler) becomes the Pod's
    # activeDeadlineSeconds (ours: no controller is left to delete the Pod), rounded up.
    Case(
        "scheduling-and-timeout",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: sched}
        spec:
          timeout: 1h30m0.5s
          nodeSelector: {zone: b, disk: ssd}
          affinity:
            nodeAffinity:
              requiredDuringSchedulingIgnoredDuringExecution:
                nodeSelectorTerms:
                - matchExpressions: [{key: arch, operator: In, values: [amd64]}]
          steps: [{name: s, image: i}]
        """,
        [
            pod(
                "sched",
                [creds_init(), step("build-step-s", "i")],
                deadline=5401,
                node_selector={"disk": "ssd", "zone": "b"},
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "arch", "operator": "In", "values": ["amd64"]}
                                    ]
                                }
                            ]
                        }
                    }
                },
            )
        ],
    ),
    # MakePod: metav1.NewControllerRef(build) when the Build came from a cluster (it has a uid);
    # the buildName label wins over one the Build gives itself.
    Case(
        "owner-reference",
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata:
          name: owned
          uid: 0e4f8ab6-64d3-4f2a-9b1e-4a7b0f4c7c11
          labels: {build.knative.dev/buildName: other}
        spec:
          timeout: 24h
          steps: [{name: s, image: i}]
        """,
        [
            pod(
                "owned",
                [creds_init(), step("build-step-s", "i")],
                deadline=86400,
                owner_uid="0e4f8ab6-64d3-4f2a-9b1e-4a7b0f4c7c11",
            )
        ],
    ),
    # `kind: List` (kubectl get -o yaml) counts as its items; a kind stepkit pod does not use is
    # ignored; and a Build's status is ignored.
    Case(
        "list-and-other-kinds",
        """
        apiVersion: v1
        kind: List
        items:
        - apiVersion: v1
          kind: ConfigMap
          metadata: {name: settings}
          data: {a: b}
        - apiVersion: build.knative.dev/v1alpha1
          kind: Build
          metadata: {name: listed}
          spec:
            steps: [{name: s, image: i}]
          status: {builder: Cluster}
        """,
        [pod("listed", [creds_init(), step("build-step-s", "i")])],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_build_gives_knatives_pod(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    pods = render_text(case.yaml, **case.options)
    assert without_name(pods) == case.pods
    for p in pods:
        build = p["metadata"]["labels"]["build.knative.dev/buildName"]
        # GetUniquePodName's shape, <build>-pod-<6 hex>.
        assert re.fullmatch(rf"{re.escape(build)}-pod-[0-9a-f]{{6}}", p["metadata"]["name"])
    assert warnings(caplog) == case.warns


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_pod_is_valid_for_the_kubernetes_api(case: Case) -> None:
    for p in render_text(case.yaml, **case.options):
        kubernetes_validate.validate(p, K8S_VERSION, strict=True)


def test_the_schema_check_catches_a_broken_pod() -> None:
    """The check above can fail: a Pod with an unknown field or a wrong type is refused."""
    (good,) = render_text(CASES[0].yaml)
    bad = {**good, "spec": {**good["spec"], "restartPolicy": ["Never"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = {**good, "spec": {**good["spec"], "initContainer": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_the_pod_name_follows_the_pod() -> None:
    """Ours: the name's hex comes from the Pod, not chance: same input, same name (kubectl apply
    leaves the Pod be); another input, another name (a Pod's spec cannot be changed in place)."""
    text = CASES[0].yaml
    first, again = render_text(text), render_text(text)
    assert first[0]["metadata"]["name"] == again[0]["metadata"]["name"]
    changed = render_text(text.replace("image: image", "image: image2"))
    assert changed[0]["metadata"]["name"] != first[0]["metadata"]["name"]


def test_several_builds_in_input_order_and_one_by_name() -> None:
    text = """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: b2}
        spec: {steps: [{name: s, image: two}]}
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: b1}
        spec: {steps: [{name: s, image: one}]}
    """
    pods = render_text(text)
    assert [p["metadata"]["labels"]["build.knative.dev/buildName"] for p in pods] == ["b2", "b1"]
    (only,) = render_text(text, build="b1")
    assert only["spec"]["initContainers"][1]["image"] == "one"


def test_the_helper_images_are_the_options() -> None:
    (p,) = render_text(
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: b}
        spec:
          sources:
          - {name: g, git: {url: "https://h/r", revision: main}, targetPath: g}
          - {name: c, gcs: {type: Archive, location: "gs://b/o"}, targetPath: c}
          steps: [{name: s, image: i}]
        """
    )
    images = [c["image"] for c in p["spec"]["initContainers"]][:3]
    assert images == [IMAGES.creds, IMAGES.git, IMAGES.gcs_fetcher]
    assert p["spec"]["containers"] == [{"name": "nop", "image": IMAGES.nop}]


def test_long_or_dotted_secret_names_get_a_volume_name_kubernetes_takes() -> None:
    """Ours: Knative's secret-volume-<secret> is no volume name for a secret named with '.' or
    a long one, and the API server refused that Pod; such a secret gets a derived name."""
    name = "registry.example.com-" + "x" * 60
    (p,) = render_text(
        f"""
        apiVersion: v1
        kind: Secret
        metadata: {{name: {name}}}
        type: kubernetes.io/dockerconfigjson
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {{name: default}}
        secrets: [{{name: {name}}}]
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {{name: b}}
        spec: {{steps: [{{name: s, image: i}}]}}
        """
    )
    (volume,) = [v for v in p["spec"]["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": name}
    assert re.fullmatch(r"secret-volume-registry-example-com-x+-[0-9a-f]{10}", volume["name"])
    assert len(volume["name"]) <= 63
    creds = p["spec"]["initContainers"][0]
    assert creds["args"] == [f"-docker-config={name}"]
    assert creds["volumeMounts"][2] == {
        "name": volume["name"],
        "mountPath": f"/var/build-secrets/{name}",
    }
    kubernetes_validate.validate(p, K8S_VERSION, strict=True)


def test_secret_values_never_reach_the_pod(caplog: pytest.LogCaptureFixture) -> None:
    text = docs(
        basic_secret("c", "{build.knative.dev/git-0: 'https://h'}"),
        """
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: default}
        secrets: [{name: c}]
        ---
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: b}
        spec: {steps: [{name: s, image: i}]}
        """,
    )
    text = text.replace(
        "{username: u, password: p}", "{username: octo-USER-x, password: hunter2-PASS-y}"
    )
    caplog.set_level("DEBUG")
    out = str(render_text(text)) + caplog.text
    assert "hunter2-PASS-y" not in out and "octo-USER-x" not in out
    assert "-basic-git=c=https://h" in out


def test_home_and_workspace_helpers_match_knative() -> None:
    """The shared parts the table is written with are pod.go's constants."""
    assert HOME == {"name": "HOME", "value": "/builder/home"}
    assert [WS, HM] == [
        {"name": "workspace", "mountPath": "/workspace"},
        {"name": "home", "mountPath": "/builder/home"},
    ]
    assert secret_mount("s") == {"name": "secret-volume-s", "mountPath": "/var/build-secrets/s"}


def test_target_paths_overlap_by_directory_not_by_string() -> None:
    """Ours: Knative's insertNode compared strings, so `a` clashed with `ab/c`; they do not overlap."""
    (p,) = render_text(
        """
        apiVersion: build.knative.dev/v1alpha1
        kind: Build
        metadata: {name: b}
        spec:
          sources:
          - {name: one, git: {url: "https://h/one", revision: main}, targetPath: a}
          - {name: two, git: {url: "https://h/two", revision: main}, targetPath: ab/c}
          steps: [{name: s, image: i}]
        """
    )
    args = [c["args"][-1] for c in p["spec"]["initContainers"][1:3]]
    assert args == ["a", "ab/c"]
