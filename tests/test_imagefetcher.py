"""`stepkit image-fetcher` against real registries: docker-registry (TLS, htpasswd) and its token-auth twin."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from stepkit.oci.reference import Platform
from tests.conftest import STEPKIT, Run, Secrets, assert_no_leak, run_stepkit
from tests.hostile_registry import HostileRegistry
from tests.ocipeers import (
    LayerFile,
    TokenRegistry,
    TokenRequest,
    layer_tar,
    push,
    write_index_layout,
    write_layout,
)
from tests.peers import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Registry

USER = "puller"
PASSWORD = 'reg-p@ss:"word"é'
# The image every fetch test reads: overrides, whiteouts, an opaque directory, symlinks.
LAYERS: tuple[tuple[LayerFile, ...], ...] = (
    (
        LayerFile("app", type="dir", mode=0o755),
        LayerFile("app/a.txt", b"a1\n"),
        LayerFile("app/keep.txt", b"keep\n"),
        LayerFile("app/gone.txt", b"gone\n"),
        LayerFile("etc", type="dir", mode=0o755),
        LayerFile("etc/conf", b"c1\n"),
        LayerFile("opq", type="dir", mode=0o755),
        LayerFile("opq/old1", b"o1\n"),
        LayerFile("opq/sub/old2", b"o2\n"),
        LayerFile("bin/tool", b"#!/bin/sh\necho tool\n", mode=0o755),
        LayerFile("app/link", type="symlink", target="a.txt"),
        LayerFile("abs", type="symlink", target="/etc/conf"),
        LayerFile("rm/x", b"x\n"),
    ),
    (
        LayerFile("app/a.txt", b"a2\n"),
        LayerFile("app/gone.txt", type="whiteout"),
        LayerFile("opq", type="opaque"),
        LayerFile("opq/new", b"n2\n"),
    ),
    (
        LayerFile("rm", type="whiteout"),
        LayerFile("app/b.txt", b"b3\n"),
        LayerFile("etc/conf", b"c3\n"),
        LayerFile("etclink", type="symlink", target="etc"),
    ),
)
EXPECTED: dict[str, str] = {
    "abs": "-> /etc/conf",
    "app/": "dir",
    "app/a.txt": "a2\n",
    "app/b.txt": "b3\n",
    "app/keep.txt": "keep\n",
    "app/link": "-> a.txt",
    "bin/": "dir",
    "bin/tool": "#!/bin/sh\necho tool\n",
    "etc/": "dir",
    "etc/conf": "c3\n",
    "etclink": "-> etc",
    "opq/": "dir",
    "opq/new": "n2\n",
}


# ---------------------------------------------------------------------------------------------
# Helpers shared with tests/test_oci_adversarial.py
# ---------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """Every entry below root: file contents, `-> target` for symlinks, `dir` for directories."""
    seen: dict[str, str] = {}
    if not root.exists():
        return seen
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            key = name if rel == "." else f"{rel}/{name}"
            if os.path.islink(path):
                seen[key] = f"-> {os.readlink(path)}"
            elif os.path.isdir(path):
                seen[key + "/"] = "dir"
            else:
                seen[key] = Path(path).read_bytes().decode(errors="replace")
    return seen


def fetch(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> Run:
    return run_stepkit("image-fetcher", *args, env=env, timeout=timeout)


def login(secrets: Secrets, host: str, *, username: str = USER, password: str = PASSWORD) -> None:
    """Run creds-init as the pod does: -basic-docker with a basic-auth secret for host."""
    name = f"reg-{len(secrets.values)}"
    secrets.add(name, {"username": username, "password": password})
    result = run_stepkit(
        "creds-init", f"-basic-docker={name}={host}", "--secrets-dir", str(secrets.root)
    )
    assert result.returncode == 0, result.output


def error_line(result: Run) -> str:
    """The one error line a failure prints (its last line on stderr)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, result.output
    return lines[-1]


def layers_of(groups: Sequence[Sequence[LayerFile]], *, gzip: bool = True) -> list[bytes]:
    return [layer_tar(list(group), gzip=gzip) for group in groups]


def zstd_layers(groups: Sequence[Sequence[LayerFile]]) -> list[bytes]:
    """Layers as `zstd` and `pzstd` compress them (pzstd's start with a skippable frame), gzip first."""
    tars = [layer_tar(list(group), gzip=False) for group in groups]
    tools = [["zstd", "-q", "-c", "-19"], ["pzstd", "-q", "-c", "-p", "2"]]
    out = [layer_tar(list(groups[0]))]
    for tar, argv in zip(tars[1:], itertools.cycle(tools), strict=False):
        out.append(subprocess.run(argv, input=tar, capture_output=True, check=True).stdout)
    return out


def platform_manifest(layout: Path, index_digest: str, platform: str) -> str:
    """The digest of the manifest an OCI layout's index lists for platform ("linux/arm64/v8")."""
    blob = layout / "blobs" / "sha256" / index_digest.split(":", 1)[1]
    index = json.loads(blob.read_bytes())
    want = platform.split("/")
    for entry in index["manifests"]:
        p = entry.get("platform", {})
        have = [p.get("os"), p.get("architecture")] + ([p["variant"]] if "variant" in p else [])
        if have == want:
            return str(entry["digest"])
    raise AssertionError(f"{platform} not in the index")


# ---------------------------------------------------------------------------------------------
# Fixtures: one registry per module, images pushed once
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("registry"), {USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test images in the registry: name -> pushed digest."""
    work = tmp_path_factory.mktemp("layouts")
    pushed: dict[str, str] = {}
    for media in ("oci", "docker"):
        layout = work / media
        written = write_layout(layout, "v1", layers_of(LAYERS), media=media)
        pushed[media] = push(layout, "v1", registry, f"team/{media}", username=USER,
                             password=PASSWORD)  # fmt: skip
        assert pushed[media] == written
    # Uncompressed layers (the OCI spec's plain tar media type).
    layout = work / "plain"
    write_layout(layout, "v1", layers_of(LAYERS, gzip=False))
    pushed["plain"] = push(layout, "v1", registry, "team/plain", username=USER, password=PASSWORD)
    # zstd layers, as podman and buildah push them with --compression-format zstd.
    layout = work / "zstd"
    manifest = write_layout(layout, "v1", zstd_layers(LAYERS))
    blob = json.loads((layout / "blobs" / "sha256" / manifest.split(":")[1]).read_bytes())
    assert [layer["mediaType"] for layer in blob["layers"]] == [OCI_LAYER_GZIP] + [
        OCI_LAYER_ZSTD
    ] * 2
    pushed["zstd"] = push(layout, "v1", registry, "team/zstd", username=USER, password=PASSWORD)
    layout = work / "multi"
    index = write_index_layout(layout, "v1", {
        "linux/amd64": [layer_tar([LayerFile("arch", b"amd64\n")])],
        "linux/arm64/v8": [layer_tar([LayerFile("arch", b"arm64\n")])],
    })  # fmt: skip
    pushed["multi"] = push(layout, "v1", registry, "team/multi", username=USER, password=PASSWORD)
    assert pushed["multi"] == index
    pushed["multi/linux/amd64"] = platform_manifest(layout, index, "linux/amd64")
    pushed["multi/linux/arm64/v8"] = platform_manifest(layout, index, "linux/arm64/v8")
    # An image built for old ARM boards only, as many are: no v7 entry.
    layout = work / "oldarm"
    index = write_index_layout(layout, "v1", {
        "linux/arm/v5": [layer_tar([LayerFile("arch", b"armv5\n")])],
        "linux/arm/v6": [layer_tar([LayerFile("arch", b"armv6\n")])],
    })  # fmt: skip
    pushed["oldarm"] = push(layout, "v1", registry, "team/oldarm", username=USER,
                            password=PASSWORD)  # fmt: skip
    for plat in ("linux/arm/v5", "linux/arm/v6"):
        pushed[f"oldarm/{plat}"] = platform_manifest(layout, index, plat)
    return pushed


def ca(registry: Registry) -> str:
    """The registry's test CA (TokenRegistry's issuer serves the same certificate)."""
    return f"--ca-file={registry.ca_pem}"


# ---------------------------------------------------------------------------------------------
# Layers, paths, media types, references
# ---------------------------------------------------------------------------------------------


def test_three_layer_image_whole_with_results(
    registry: Registry, images: dict[str, str], secrets: Secrets, dest: Path, tmp_path: Path
) -> None:
    login(secrets, registry.host)
    results = tmp_path / "results"
    results.mkdir()
    termination = tmp_path / "termination"
    result = fetch(f"-image={registry.host}/team/oci:v1", f"-dest_dir={dest}", ca(registry),
                   f"-results-dir={results}", f"-terminationMessagePath={termination}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(dest) == EXPECTED
    assert stat.S_IMODE((dest / "bin/tool").stat().st_mode) & 0o111
    assert not stat.S_IMODE((dest / "app/a.txt").stat().st_mode) & 0o111
    digest = images["oci"]
    image = f"{registry.host}/team/oci@{digest}"
    assert (results / "digest").read_text() == digest
    assert (results / "image").read_text() == image
    assert json.loads(termination.read_text()) == [
        {"key": "digest", "value": digest},
        {"key": "image", "value": image},
    ]
    # The summary names what was fetched; no staging directory is left in the workspace.
    assert image in result.stderr and "3 layers" in result.stderr
    assert not [p for p in dest.parent.rglob(".stepkit-image-*")]
    assert_no_leak(result.output, secrets.values)


def test_path_of_a_directory_a_file_and_through_an_image_symlink(
    registry: Registry, images: dict[str, str], secrets: Secrets, tmp_path: Path
) -> None:
    login(secrets, registry.host)
    ref = f"-image={registry.host}/team/oci:v1"
    app = tmp_path / "app"
    result = fetch(ref, "-path=/app", f"-dest_dir={app}", ca(registry))
    assert result.returncode == 0, result.output
    assert snapshot(app) == {
        "a.txt": "a2\n",
        "b.txt": "b3\n",
        "keep.txt": "keep\n",
        "link": "-> a.txt",
    }
    # Followed inside the image (etclink -> etc), never on the host.
    conf = tmp_path / "conf"
    result = fetch(ref, "--path", "etclink/", "--dest_dir", str(conf), ca(registry))
    assert result.returncode == 0, result.output
    assert snapshot(conf) == {"conf": "c3\n"}
    one = tmp_path / "one"
    one.mkdir()
    (one / "other").write_text("kept\n")
    result = fetch(ref, "-path=/bin/tool", f"-dest_dir={one}", ca(registry))
    assert result.returncode == 0, result.output
    assert snapshot(one) == {"other": "kept\n", "tool": "#!/bin/sh\necho tool\n"}
    missing = tmp_path / "missing"
    result = fetch(ref, "-path=/app/gone.txt", f"-dest_dir={missing}", ca(registry))
    assert result.returncode != 0, result.output
    assert "/app/gone.txt" in error_line(result)
    assert not missing.exists()


@pytest.mark.parametrize("media", ["docker", "plain", "zstd"])
def test_docker_media_types_and_uncompressed_layers_by_digest(
    registry: Registry, images: dict[str, str], secrets: Secrets, dest: Path, media: str
) -> None:
    login(secrets, registry.host)
    digest = images[media]
    results = dest.parent / "results"
    result = fetch(f"-image={registry.host}/team/{media}@{digest}", f"-dest_dir={dest}",
                   ca(registry), f"-results-dir={results}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(dest) == EXPECTED
    assert (results / "digest").read_text() == digest
    # A tag and a digest together: the digest is what is fetched, checked against the tag's.
    again = dest.parent / "again"
    result = fetch(f"-image={registry.host}/team/{media}:v1@{digest}", f"-dest_dir={again}",
                   ca(registry))  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(again) == EXPECTED


def test_multi_platform_index_by_flag_env_and_default(
    registry: Registry, images: dict[str, str], secrets: Secrets, tmp_path: Path
) -> None:
    login(secrets, registry.host)
    ref = f"{registry.host}/team/multi:v1"
    arm = tmp_path / "arm"
    result = fetch(f"-image={ref}", "-platform=linux/arm64/v8", f"-dest_dir={arm}",
                   ca(registry), f"-results-dir={arm.parent / 'r-arm'}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(arm) == {"arch": "arm64\n"}
    # `digest` is the manifest fetched (the platform's), not the index.
    assert (tmp_path / "r-arm" / "digest").read_text() == images["multi/linux/arm64/v8"]
    # Every flag has its variable; the default platform is the one running.
    here = str(Platform.current())
    env = {
        "STEPKIT_IMAGE_IMAGE": f"{registry.host}/team/multi@{images['multi']}",
        "STEPKIT_IMAGE_DEST_DIR": str(tmp_path / "here"),
        "STEPKIT_IMAGE_CA_FILE": str(registry.ca_pem),
        "STEPKIT_RESULTS_DIR": str(tmp_path / "r-here"),
    }
    result = fetch(env=env)
    if here in ("linux/amd64", "linux/arm64"):
        assert result.returncode == 0, result.output
        arch = here.split("/")[1]
        assert snapshot(tmp_path / "here") == {"arch": f"{arch}\n"}
        key = "multi/linux/amd64" if arch == "amd64" else "multi/linux/arm64/v8"
        assert (tmp_path / "r-here" / "digest").read_text() == images[key]
    result = fetch(env={**env, "STEPKIT_IMAGE_PLATFORM": "linux/s390x",
                        "STEPKIT_IMAGE_DEST_DIR": str(tmp_path / "none")})  # fmt: skip
    assert result.returncode != 0, result.output
    assert "linux/s390x" in error_line(result)
    assert not (tmp_path / "none").exists()


def test_arm_v7_falls_back_to_v6_as_containerd_does(
    registry: Registry, images: dict[str, str], secrets: Secrets, tmp_path: Path
) -> None:
    login(secrets, registry.host)
    ref = f"-image={registry.host}/team/oldarm:v1"
    for platform, got in [("-platform=linux/arm/v7", "v6"), ("-platform=linux/armhf", "v6"),
                          ("-platform=linux/arm64", "v6"), ("-platform=linux/arm/v5", "v5")]:  # fmt: skip
        dest = tmp_path / platform.rpartition("=")[2].replace("/", "-")
        result = fetch(ref, platform, f"-dest_dir={dest}", ca(registry),
                       f"-results-dir={dest}.r")  # fmt: skip
        assert result.returncode == 0, result.output
        assert snapshot(dest) == {"arch": f"arm{got}\n"}
        assert Path(f"{dest}.r/digest").read_text() == images[f"oldarm/linux/arm/{got}"]
    # Nothing older than v5 stands in for it, and the error lists what there is.
    result = fetch(ref, "-platform=linux/arm/v4", f"-dest_dir={tmp_path / 'v4'}", ca(registry))
    assert result.returncode == 1, result.output
    assert "linux/arm/v4" in error_line(result) and "linux/arm/v6" in error_line(result)
    assert not (tmp_path / "v4").exists()


# ---------------------------------------------------------------------------------------------
# Credentials as creds-init wrote them, TLS
# ---------------------------------------------------------------------------------------------


def test_dockerconfigjson_secret_from_creds_init(
    registry: Registry, images: dict[str, str], secrets: Secrets, dest: Path
) -> None:
    import base64

    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config = json.dumps({"auths": {registry.host: {"auth": auth}}})
    secrets.add("regcfg", {".dockerconfigjson": config})
    result = run_stepkit("creds-init", "-docker-config=regcfg", "--secrets-dir",
                         str(secrets.root))  # fmt: skip
    assert result.returncode == 0, result.output
    result = fetch(f"-image={registry.host}/team/oci:v1", f"-dest_dir={dest}", ca(registry))
    assert result.returncode == 0, result.output
    assert snapshot(dest) == EXPECTED
    assert_no_leak(result.output, [*secrets.values, PASSWORD])
    # $DOCKER_CONFIG names the directory instead of $HOME/.docker, as docker reads it.
    home = Path(os.environ["HOME"])
    moved = dest.parent / "docker-config"
    (home / ".docker").rename(moved)
    again = dest.parent / "again"
    result = fetch(f"-image={registry.host}/team/oci:v1", f"-dest_dir={again}", ca(registry),
                   env={"DOCKER_CONFIG": str(moved)})  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(again) == EXPECTED


def test_wrong_or_missing_credentials_exit_3(
    registry: Registry, images: dict[str, str], secrets: Secrets, dest: Path
) -> None:
    (dest / "old").write_text("old\n")
    ref = f"-image={registry.host}/team/oci:v1"
    result = fetch(ref, f"-dest_dir={dest}", ca(registry))
    assert result.returncode == 3, result.output
    assert registry.host in error_line(result)
    login(secrets, registry.host, password="not-the-password")
    result = fetch(ref, f"-dest_dir={dest}", ca(registry))
    assert result.returncode == 3, result.output
    assert registry.host in error_line(result)
    assert snapshot(dest) == {"old": "old\n"}
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


def test_registry_ca_is_needed_and_tls_failure_is_clear(
    registry: Registry, images: dict[str, str], secrets: Secrets, dest: Path
) -> None:
    login(secrets, registry.host)
    result = fetch(f"-image={registry.host}/team/oci:v1", f"-dest_dir={dest}")
    assert result.returncode == 1, result.output
    line = error_line(result)
    assert registry.host in line and "certificate" in line.lower()
    assert "Traceback" not in result.output
    assert snapshot(dest) == {}


def test_bearer_token_flow_with_creds_from_creds_init(
    tmp_path: Path, secrets: Secrets, dest: Path
) -> None:
    with TokenRegistry(tmp_path / "token-registry", {USER: PASSWORD}) as treg:
        layout = tmp_path / "layout"
        digest = write_layout(layout, "v1", layers_of(LAYERS))
        assert push(layout, "v1", treg, "org/app", username=USER, password=PASSWORD) == digest
        before = len(treg.token_requests)
        login(secrets, treg.host)
        results = tmp_path / "results"
        result = fetch(f"-image={treg.host}/org/app:v1", f"-dest_dir={dest}", ca(treg),
                       f"-results-dir={results}")  # fmt: skip
        assert result.returncode == 0, result.output
        assert snapshot(dest) == EXPECTED
        assert (results / "digest").read_text() == digest
        asked = treg.token_requests[before:]
        assert asked, "the token issuer was never asked"
        assert all(r.user == USER and r.status == 200 for r in asked), asked
        assert any("repository:org/app:pull" in r.granted for r in asked), asked
        assert_no_leak(result.output, [*secrets.values, PASSWORD])
        # A wrong password is refused by the token issuer: exit 3, nothing written.
        login(secrets, treg.host, password="wrong-password")
        other = tmp_path / "other"
        result = fetch(f"-image={treg.host}/org/app:v1", f"-dest_dir={other}", ca(treg))
        assert result.returncode == 3, result.output
        assert not other.exists()


def test_token_realm_on_a_sibling_host_needs_token_realm_host(
    tmp_path: Path, secrets: Secrets
) -> None:
    # A self-hosted GitLab: the registry (127.0.0.1) sends clients to a token service on
    # another host (localhost), which is not a parent domain of the registry's.
    with TokenRegistry(tmp_path / "token-registry", {USER: PASSWORD},
                       realm_host="localhost") as treg:  # fmt: skip
        layout = tmp_path / "layout"
        digest = write_layout(layout, "v1", layers_of(LAYERS))
        assert push(layout, "v1", treg, "org/app", username=USER, password=PASSWORD) == digest
        login(secrets, treg.host)
        realm_port = int(treg.realm.rsplit(":", 1)[1].split("/")[0])

        def run(
            dest: Path, *args: str, env: Mapping[str, str] | None = None
        ) -> tuple[Run, list[TokenRequest]]:
            before = len(treg.token_requests)
            result = fetch(f"-image={treg.host}/org/app:v1", f"-dest_dir={dest}", ca(treg),
                           *args, env=env)  # fmt: skip
            assert_no_leak(result.output, [*secrets.values, PASSWORD])
            return result, treg.token_requests[before:]

        # Without the option the password stays home and the error says how to send it.
        result, asked = run(tmp_path / "refused")
        assert result.returncode == 3, result.output
        line = error_line(result)
        assert "localhost" in line and "--token-realm-host" in line, line
        assert asked and not any(r.basic for r in asked)
        assert not (tmp_path / "refused").exists()
        # Named, it gets them (only over HTTPS, as here), by the flag or its variable.
        variable = {"STEPKIT_IMAGE_TOKEN_REALM_HOST": f"gitlab.example,localhost:{realm_port}"}
        for name, args, env in [("flag", ["-token-realm-host=localhost"], None),
                                ("env", [], variable)]:  # fmt: skip
            result, asked = run(tmp_path / name, *args, env=env)
            assert result.returncode == 0, result.output
            assert snapshot(tmp_path / name) == EXPECTED
            assert asked and all(r.user == USER for r in asked)
        # A port named is that port only.
        result, asked = run(
            tmp_path / "port", f"-token-realm-host=localhost:{realm_port % 65535 + 1}"
        )
        assert result.returncode == 3, result.output
        assert asked and not any(r.basic for r in asked)


# ---------------------------------------------------------------------------------------------
# The workspace
# ---------------------------------------------------------------------------------------------


def test_planted_symlink_in_dest_is_not_written_through(
    registry: Registry, images: dict[str, str], secrets: Secrets, dest: Path, tmp_path: Path
) -> None:
    login(secrets, registry.host)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "conf").write_text("untouched\n")
    (dest / "etc").symlink_to(outside)
    result = fetch(f"-image={registry.host}/team/oci:v1", f"-dest_dir={dest}", ca(registry))
    assert result.returncode == 2, result.output
    assert "symbolic link" in error_line(result)
    assert snapshot(outside) == {"conf": "untouched\n"}
    assert snapshot(dest) == {"etc": f"-> {outside}"}


def test_rerun_replaces_files_and_keeps_others(
    registry: Registry, images: dict[str, str], secrets: Secrets, dest: Path
) -> None:
    login(secrets, registry.host)
    (dest / "app").mkdir()
    (dest / "app" / "a.txt").write_text("stale\n")
    (dest / "mine").write_text("mine\n")
    result = fetch(f"-image={registry.host}/team/oci:v1", f"-dest_dir={dest}", ca(registry))
    assert result.returncode == 0, result.output
    assert snapshot(dest) == {**EXPECTED, "mine": "mine\n"}


# ---------------------------------------------------------------------------------------------
# What docker-registry never does on its own (tests/hostile_registry.py produces it)
# ---------------------------------------------------------------------------------------------


def test_insecure_registry_over_plain_http(tmp_path: Path, dest: Path) -> None:
    with HostileRegistry(tmp_path / "plain", tls=False) as plain:
        digest = plain.add_image("org/app", "v1", layers_of(LAYERS))
        ref = f"-image={plain.host}/org/app:v1"
        result = fetch(ref, f"-dest_dir={dest}", "-retries=0")
        assert result.returncode == 1, result.output
        assert plain.host in error_line(result)
        assert snapshot(dest) == {}
        env = {"STEPKIT_IMAGE_INSECURE_REGISTRY": f"other.example:5000,{plain.host}"}
        result = fetch(ref, f"-dest_dir={dest}", f"-results-dir={tmp_path / 'r'}", env=env)
        assert result.returncode == 0, result.output
        assert snapshot(dest) == EXPECTED
        assert (tmp_path / "r" / "digest").read_text() == digest
        # Naming another port of the same host does not make this one insecure.
        other = tmp_path / "other"
        port = plain.host.rsplit(":", 1)[1]
        wrong = f"{plain.host.rsplit(':', 1)[0]}:{int(port) % 65535 + 1}"
        result = fetch(ref, f"-dest_dir={other}", f"-insecure-registry={wrong}", "-retries=0")
        assert result.returncode == 1, result.output
        assert not other.exists()


def test_broken_download_is_resumed_with_range(tmp_path: Path, dest: Path) -> None:
    big = layer_tar([LayerFile("big.bin", os.urandom(400_000))])
    with HostileRegistry(tmp_path / "reg") as reg:
        reg.add_image("org/app", "v1", [big])
        digest = hashlib.sha256(big).hexdigest()
        reg.break_blob(f"sha256:{digest}", after=150_000)
        result = fetch(f"-image={reg.host}/org/app:v1", f"-dest_dir={dest}",
                       f"-ca-file={reg.ca_file}")  # fmt: skip
        assert result.returncode == 0, result.output
        gets = [r for r in reg.requests if r.method == "GET" and r.path.endswith(digest)]
        assert len(gets) == 2, [(r.method, r.path) for r in reg.requests]
        assert gets[1].headers.get("Range", "").startswith("bytes=150000-")
        assert (dest / "big.bin").stat().st_size == 400_000


def test_transient_5xx_retried_with_progress_lines(tmp_path: Path, dest: Path) -> None:
    with HostileRegistry(tmp_path / "reg") as reg:
        reg.add_image("org/app", "v1", layers_of(LAYERS))
        reg.fail(r"/blobs/", status=503, times=1)
        # The retry's back-off is long enough for several progress lines at this interval.
        env = {"STEPKIT_IMAGE_PROGRESS_SECONDS": "0.05"}
        result = fetch(f"-image={reg.host}/org/app:v1", f"-dest_dir={dest}",
                       f"-ca-file={reg.ca_file}", env=env)  # fmt: skip
        assert result.returncode == 0, result.output
        assert snapshot(dest) == EXPECTED
        assert "progress:" in result.stderr and "of 3 layers" in result.stderr
        assert [r.status for r in reg.requests if "/blobs/" in r.path].count(503) == 1


class Staller:
    """A loopback TCP server that accepts and reads but never answers: a registry stuck mid-pull.

    No registry (real or tests/hostile_registry.py) hangs on request, and a hang is what a
    pod deletion interrupts.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
                self.accepted.set()

    def close(self) -> None:
        for conn in [*self.conns, self.sock]:
            conn.close()


def test_sigterm_while_a_layer_download_hangs_cleans_up(tmp_path: Path, dest: Path) -> None:
    (dest / "old").write_text("old\n")
    staller = Staller()
    try:
        with HostileRegistry(tmp_path / "reg") as reg:
            layers = layers_of(LAYERS)
            reg.add_image("org/app", "v1", layers)
            # Layer 1 arrives and is applied; layer 2's blob storage never answers.
            reg.redirect_blob("sha256:" + hashlib.sha256(layers[1]).hexdigest(),
                              f"http://{staller.host}/blob")  # fmt: skip
            proc = subprocess.Popen(
                [STEPKIT, "image-fetcher", f"-image={reg.host}/org/app:v1", f"-dest_dir={dest}",
                 f"-ca-file={reg.ca_file}", f"-insecure-registry={staller.host}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert staller.accepted.wait(30), "the fetcher never reached the stalled blob"
                # Layer 2 downloads while layer 1 is applied: wait for layer 1's file.
                wait_for_applied(dest)
                proc.send_signal(signal.SIGTERM)
                _, stderr = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        staller.close()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert snapshot(dest) == {"old": "old\n"}


def wait_for_applied(dest: Path, name: str = "app/a.txt") -> list[Path]:
    """The staging directories in dest once one holds `name` of layer 1 in its rootfs (layers
    download in parallel, so a stalled later layer can be reached before layer 1 is applied)."""
    deadline = time.monotonic() + 30
    while True:
        staging = list(dest.glob(".stepkit-image-*"))
        if staging and (staging[0] / "rootfs" / name).exists():
            return staging
        assert time.monotonic() < deadline, f"layer 1 was never applied: {staging}"
        time.sleep(0.02)


V2_LAYER = layer_tar([LayerFile("v2", b"two\n")])


@contextlib.contextmanager
def stalled_fetch(
    reg: HostileRegistry, dest: Path, staller: Staller
) -> Iterator[subprocess.Popen[str]]:
    """image-fetcher of reg's org/app:v1 into dest, stuck on its second layer's blob (the
    first applied in staging); killed at the end if the test did not end it."""
    layers = layers_of(LAYERS)
    reg.add_image("org/app", "v1", layers)
    reg.redirect_blob("sha256:" + hashlib.sha256(layers[1]).hexdigest(),
                      f"http://{staller.host}/blob")  # fmt: skip
    proc = subprocess.Popen(
        [STEPKIT, "image-fetcher", f"-image={reg.host}/org/app:v1", f"-dest_dir={dest}",
         f"-ca-file={reg.ca_file}", f"-insecure-registry={staller.host}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert staller.accepted.wait(30), "the fetcher never reached the stalled blob"
        wait_for_applied(dest)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def staging_dirs(dest: Path) -> list[Path]:
    return sorted(p for p in dest.iterdir() if p.name.startswith(".stepkit-image-"))


def test_staging_left_by_a_sigkilled_run_is_removed_by_the_next(tmp_path: Path, dest: Path) -> None:
    (dest / "old").write_text("old\n")
    staller = Staller()
    try:
        with HostileRegistry(tmp_path / "reg") as reg:
            with stalled_fetch(reg, dest, staller) as proc:
                dead = staging_dirs(dest)
                assert len(dead) == 1 and (dead[0] / "rootfs" / "app" / "a.txt").exists()
                # SIGKILL: no handler runs, the staging directory stays behind.
                proc.kill()
                proc.wait(timeout=30)
            assert staging_dirs(dest) == dead
            reg.add_image("org/app", "v2", [V2_LAYER])
            result = fetch(f"-image={reg.host}/org/app:v2", f"-dest_dir={dest}",
                           f"-ca-file={reg.ca_file}")  # fmt: skip
    finally:
        staller.close()
    assert result.returncode == 0, result.output
    assert snapshot(dest) == {"old": "old\n", "v2": "two\n"}
    assert "left by an earlier run" in result.stderr


def test_staging_of_a_live_run_survives_another_run(tmp_path: Path, dest: Path) -> None:
    staller = Staller()
    try:
        with HostileRegistry(tmp_path / "reg") as reg, stalled_fetch(reg, dest, staller) as proc:
            live = staging_dirs(dest)
            assert len(live) == 1
            reg.add_image("org/app", "v2", [V2_LAYER])
            result = fetch(f"-image={reg.host}/org/app:v2", f"-dest_dir={dest}",
                           f"-ca-file={reg.ca_file}")  # fmt: skip
            assert result.returncode == 0, result.output
            assert proc.poll() is None, "the stalled run died"
            assert staging_dirs(dest) == live
            assert (live[0] / "rootfs" / "app" / "a.txt").read_text() == "a1\n"
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 130, stderr
    finally:
        staller.close()
    assert snapshot(dest) == {"v2": "two\n"}


def test_only_our_own_dead_staging_is_removed(tmp_path: Path, dest: Path) -> None:
    """Entries that look like staging but are not a dead run's own directory stay as they are."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched\n")
    (dest / ".stepkit-image-linkaway").symlink_to(outside)
    (dest / ".stepkit-image-afile123").write_text("a file\n")
    (dest / ".stepkit-image-other-name").mkdir()
    (dest / ".stepkit-image-other-name" / "x").write_text("x\n")
    # A lock that is a symlink out of the directory is not followed, nor the directory removed.
    (dest / ".stepkit-image-lockaway").mkdir()
    (dest / ".stepkit-image-lockaway" / ".lock").symlink_to(outside / "sentinel")
    # Without a lock file, nothing shows a directory is a run's staging.
    (dest / ".stepkit-image-nolock12").mkdir()
    (dest / ".stepkit-image-nolock12" / "x").write_text("x\n")
    if os.geteuid() == 0:  # another user's directory can be made only as root
        foreign = dest / ".stepkit-image-foreign1"
        foreign.mkdir()
        for path in (foreign / "x", foreign / ".lock"):
            path.write_text("x\n")
            os.chown(path, 65534, 65534)
        os.chown(foreign, 65534, 65534)
    before = snapshot(dest)
    with HostileRegistry(tmp_path / "reg") as reg:
        reg.add_image("org/app", "v2", [V2_LAYER])
        result = fetch(f"-image={reg.host}/org/app:v2", f"-dest_dir={dest}",
                       f"-ca-file={reg.ca_file}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(dest) == {**before, "v2": "two\n"}
    assert snapshot(outside) == {"sentinel": "untouched\n"}


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["-image=UPPER/Case:v1"], "--image"),
        (["-image=host:5000/repo:bad tag"], "--image"),
        (["-image=reg.example/app", "-platform=linux"], "--platform"),
        (["-image=reg.example/app", "-path=/a/../etc"], "--path"),
        (["-image=reg.example/app", "-insecure-registry=http://x"], "--insecure-registry"),
        (["-image=reg.example/app", "-insecure-registry=host:99999"], "--insecure-registry"),
        (["-image=reg.example/app", "-token-realm-host=https://x"], "--token-realm-host"),
        (["-image=reg.example/app", "-token-realm-host=*.example"], "--token-realm-host"),
        (["-image=reg.example/app", "-ca-file=/nonexistent/ca.pem"], "--ca-file"),
        (["-image=reg.example/app", "-timeout=soon"], "--timeout"),
        (["-image=reg.example/app", "-retries=-1"], "--retries"),
        ([], "--image"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(tmp_path: Path, args: list[str], flag: str) -> None:
    dest = tmp_path / "dest"
    result = fetch(*args, f"-dest_dir={dest}")
    assert result.returncode == 2, result.output
    line = error_line(result)
    assert flag in line or flag.lstrip("-") in line, line
    assert not dest.exists()


def test_ca_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    result = fetch("-image=reg.example/app", f"-ca-file={bogus}", f"-dest_dir={tmp_path / 'd'}")
    assert result.returncode == 2, result.output
    assert "--ca-file" in error_line(result) and "PEM" in error_line(result)


def test_help_lists_every_flag() -> None:
    result = run_stepkit("image-fetcher", "--help")
    assert result.returncode == 0, result.output
    for flag in ("--image", "--path", "--dest_dir", "--platform", "--insecure-registry",
                 "--ca-file", "--retries", "--timeout", "--results-dir",
                 "--terminationMessagePath", "STEPKIT_IMAGE_IMAGE",
                 "STEPKIT_IMAGE_INSECURE_REGISTRY", "--token-realm-host",
                 "STEPKIT_IMAGE_TOKEN_REALM_HOST"):  # fmt: skip
        assert flag in result.stdout
    listing = run_stepkit("--help")
    assert "image-fetcher" in listing.stdout
