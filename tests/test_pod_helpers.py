"""The Pod's helper containers run with stepkit's own helpers against a real git server: the args
`stepkit pod` writes are the args creds-init and git-init take (SPEC §0-§2), and the credentials
of the ServiceAccount's Secret are what lets the fetch in."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Secrets, assert_no_leak, run_stepkit
from tests.peers import GitHttpServer, make_bare, make_repo

PASSWORD = 'p@ss:w/rd %#?+ "é'


def run_container(
    container: dict[str, Any], helper: str, *extra: str, home: Path, cwd: Path
) -> str:
    """Run one init container as its image would (`stepkit <helper>` with the container's args and
    env), the pod's paths redirected by flags as SPEC §0 allows; returns its output."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env["HOME"] = str(home)  # the pod's /builder/home
    result = run_stepkit(helper, *container.get("args", []), *extra, env=env, cwd=cwd, timeout=120)
    assert result.returncode == 0, f"{container['name']}: {result.output}"
    return result.output


def test_creds_init_and_git_init_run_the_pods_args(tmp_path: Path, secrets: Secrets) -> None:
    src = tmp_path / "src"
    shas = make_repo(src, commits=2)
    make_bare(src, tmp_path / "srv" / "org" / "app.git")
    with GitHttpServer(tmp_path / "srv", {"": ("builder", PASSWORD)}) as server:
        text = textwrap.dedent(
            f"""\
            apiVersion: v1
            kind: Secret
            metadata:
              name: git-creds
              annotations: {{build.knative.dev/git-0: "{server.url}"}}
            type: kubernetes.io/basic-auth
            stringData: {{username: builder, password: '{PASSWORD}'}}
            ---
            apiVersion: v1
            kind: ServiceAccount
            metadata: {{name: builder}}
            secrets: [{{name: git-creds}}]
            ---
            apiVersion: build.knative.dev/v1alpha1
            kind: Build
            metadata: {{name: fetch}}
            spec:
              serviceAccountName: builder
              source:
                git: {{url: "{server.url_for("org/app.git")}", revision: main}}
                targetPath: src
              steps: [{{name: show, image: busybox}}]
            """
        )
        (tmp_path / "build.yaml").write_text(text)
        rendered = run_stepkit("pod", "-f", str(tmp_path / "build.yaml"))
        assert rendered.returncode == 0, rendered.output
        (pod,) = yaml.safe_load_all(rendered.stdout)
        creds, fetch, _step = pod["spec"]["initContainers"]

        # The kubelet mounts each secret volume of creds-init at /var/build-secrets/<secret>.
        documents = {
            d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d["kind"] == "Secret"
        }
        for mount in creds["volumeMounts"]:
            if mount["mountPath"].startswith("/var/build-secrets/"):
                name = mount["mountPath"].rsplit("/", 1)[1]
                secrets.add(name, documents[name]["stringData"])
        home = tmp_path / "home"
        workspace = tmp_path / "workspace"
        workspace.mkdir()
        out = run_container(
            creds, "creds-init", "--secrets-dir", str(secrets.root), home=home, cwd=workspace
        )
        # The server is plain HTTP on loopback; a pod's would be https. The kubelet's
        # termination log is a file of the test's.
        log = tmp_path / "termination-log"
        out += run_container(
            fetch,
            "git-init",
            "--allow-http",
            f"--termination-message-path={log}",
            home=home,
            cwd=workspace,
        )
        assert (workspace / "src" / "README.md").read_text() == "commit 2\n"
        results = {r["key"]: r["value"] for r in json.loads(log.read_text())}
        assert results["commit"] == shas["refs/heads/main"]
        assert ("org/app.git", "builder") in server.granted
        assert_no_leak(out + rendered.output, [PASSWORD])
