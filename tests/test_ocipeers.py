"""The OCI test peers themselves: layers and layouts as written, pushed unchanged, token auth as specified."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ocipeers import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EPOCH,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    REF_NAME,
    LayerFile,
    TokenError,
    TokenRegistry,
    layer_tar,
    push,
    read_blob,
    registry_request,
    sha256_digest,
    skopeo,
    write_index_layout,
    write_layout,
)
from tests.peers import Registry

USER, PASSWORD = "pusher", 'p@ss:w/rd "é'

LOWER = [
    LayerFile("etc", type="dir"),
    LayerFile("etc/hello", b"hello\n"),
    LayerFile("etc/old", b"old\n", mode=0o600),
    LayerFile("bin", type="dir", mode=0o700),
    LayerFile("bin/sh", b"#!fake\n", mode=0o755),
    LayerFile("app", type="symlink", target="/etc"),
]
UPPER = [
    LayerFile("etc/old", type="whiteout"),
    LayerFile("bin", type="opaque"),
    LayerFile("bin/busybox", b"busy\n", mode=0o755),
    LayerFile("hello-again", type="hardlink", target="etc/hello"),
    LayerFile("etc/.wh.", b""),  # a literal (hostile) name, written as given
]


def members(layer: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tar:
        return tar.getmembers()


def test_layer_tar_writes_every_kind_of_entry_in_order() -> None:
    got = members(layer_tar(LOWER + UPPER))
    assert [m.name for m in got] == [
        "etc",
        "etc/hello",
        "etc/old",
        "bin",
        "bin/sh",
        "app",
        "etc/.wh.old",
        "bin/.wh..wh..opq",
        "bin/busybox",
        "hello-again",
        "etc/.wh.",
    ]
    by_name = {m.name: m for m in got}
    assert by_name["etc"].isdir() and by_name["etc"].mode == 0o755
    assert by_name["bin"].mode == 0o700
    assert by_name["etc/old"].mode == 0o600 and by_name["bin/sh"].mode == 0o755
    assert by_name["app"].issym() and by_name["app"].linkname == "/etc"
    assert by_name["hello-again"].islnk() and by_name["hello-again"].linkname == "etc/hello"
    for name in ("etc/.wh.old", "bin/.wh..wh..opq", "etc/.wh."):
        assert by_name[name].isreg() and by_name[name].size == 0
    assert {(m.uid, m.gid, m.mtime) for m in got} == {(0, 0, EPOCH)}
    with tarfile.open(fileobj=io.BytesIO(layer_tar(LOWER)), mode="r:gz") as tar:
        file = tar.extractfile("etc/hello")
        assert file is not None and file.read() == b"hello\n"


def test_layer_tar_is_reproducible_and_gzip_is_optional() -> None:
    assert layer_tar(LOWER) == layer_tar(LOWER)
    plain = layer_tar(LOWER, gzip=False)
    assert plain == layer_tar(LOWER, gzip=False)
    assert layer_tar(LOWER)[:2] == b"\x1f\x8b" and plain[:2] != b"\x1f\x8b"
    assert gzip.decompress(layer_tar(LOWER)) == plain
    with pytest.raises(ValueError, match="unknown type"):
        layer_tar([LayerFile("x", type="fifo")])


def test_write_layout_writes_an_oci_layout_tags_share(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layers = [layer_tar(LOWER), layer_tar(UPPER, gzip=False)]
    first = write_layout(layout, "v1", layers)
    second = write_layout(layout, "v2", layers[:1], platform="linux/arm64/v8")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    tags = {m["annotations"][REF_NAME]: m for m in index["manifests"]}
    assert {t: m["digest"] for t, m in tags.items()} == {"v1": first, "v2": second}
    assert tags["v1"]["mediaType"] == OCI_MANIFEST

    raw = read_blob(layout, first)
    assert sha256_digest(raw) == first and tags["v1"]["size"] == len(raw)
    manifest = json.loads(raw)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [d["mediaType"] for d in manifest["layers"]] == [OCI_LAYER_GZIP, OCI_LAYER]
    assert [read_blob(layout, d["digest"]) for d in manifest["layers"]] == layers
    assert manifest["config"]["mediaType"] == OCI_CONFIG
    config = json.loads(read_blob(layout, manifest["config"]["digest"]))
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"]["diff_ids"] == [
        sha256_digest(gzip.decompress(layers[0])),
        sha256_digest(layers[1]),
    ]
    arm = json.loads(read_blob(layout, json.loads(read_blob(layout, second))["config"]["digest"]))
    assert (arm["architecture"], arm["variant"]) == ("arm64", "v8")

    # Rewriting a tag moves it; the same input gives the same digest.
    assert write_layout(layout, "v1", layers) == first
    assert write_layout(layout, "v2", layers) == first
    index = json.loads((layout / "index.json").read_text())
    assert sorted(m["annotations"][REF_NAME] for m in index["manifests"]) == ["v1", "v2"]


def test_write_layout_docker_media_types(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    digest = write_layout(
        layout, "d", [layer_tar(LOWER), layer_tar(UPPER, gzip=False)], media="docker"
    )
    manifest = json.loads(read_blob(layout, digest))
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == DOCKER_CONFIG
    assert [d["mediaType"] for d in manifest["layers"]] == [DOCKER_LAYER_GZIP, DOCKER_LAYER]
    with pytest.raises(ValueError, match="media"):
        write_layout(layout, "x", [], media="v2s1")


@pytest.mark.parametrize(
    ("media", "index_type", "child_type"),
    [
        ("oci", OCI_INDEX, OCI_MANIFEST),
        ("docker", DOCKER_LIST, DOCKER_MANIFEST),
    ],
)
def test_write_index_layout_lists_each_platform(
    tmp_path: Path, media: str, index_type: str, child_type: str
) -> None:
    layout = tmp_path / "layout"
    digest = write_index_layout(
        layout,
        "multi",
        {"linux/amd64": [layer_tar(LOWER)], "linux/arm64/v8": [layer_tar(UPPER)]},
        media=media,
    )
    index = json.loads(read_blob(layout, digest))
    assert index["mediaType"] == index_type
    assert [(m["mediaType"], m["platform"]) for m in index["manifests"]] == [
        (child_type, {"os": "linux", "architecture": "amd64"}),
        (child_type, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    ]
    top = json.loads((layout / "index.json").read_text())["manifests"]
    assert [(m["mediaType"], m["digest"]) for m in top] == [(index_type, digest)]


# --------------------------------------------------------------------------------------------
# Pushed to real registries
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """One layout with every kind of image, tag -> written digest."""
    layout = tmp_path_factory.mktemp("images") / "layout"
    layers = [layer_tar(LOWER), layer_tar(UPPER, gzip=False)]
    per_platform = {"linux/amd64": layers, "linux/arm64/v8": [layer_tar(UPPER)]}
    return layout, {
        "oci": write_layout(layout, "oci", layers),
        "docker": write_layout(layout, "docker", layers, media="docker"),
        "index": write_index_layout(layout, "index", per_platform),
        "list": write_index_layout(layout, "list", per_platform, media="docker"),
    }


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with Registry(tmp_path_factory.mktemp("basic"), {USER: PASSWORD}) as registry:
        yield registry


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    with TokenRegistry(
        tmp_path_factory.mktemp("token"), {USER: PASSWORD}, public={"pub/app"}
    ) as registry:
        yield registry


def assert_registry_holds(
    registry: Registry, layout: Path, repo: str, tag: str, digest: str
) -> None:
    """The registry serves, byte for byte, the manifest (or index) and layers written."""
    reply = registry_request(
        registry, f"/v2/{repo}/manifests/{tag}", username=USER, password=PASSWORD
    )
    assert reply.status == 200
    assert reply.header("Docker-Content-Digest") == digest
    assert reply.body == read_blob(layout, digest)
    body = json.loads(reply.body)
    assert reply.header("Content-Type") == body["mediaType"]
    manifests = [m["digest"] for m in body.get("manifests", [])] or [digest]
    for child in manifests:
        manifest = json.loads(read_blob(layout, child))
        for layer in manifest["layers"]:
            blob = registry_request(
                registry, f"/v2/{repo}/blobs/{layer['digest']}", username=USER, password=PASSWORD
            )
            assert blob.status == 200 and blob.body == read_blob(layout, layer["digest"])


@pytest.mark.parametrize("tag", ["oci", "docker", "index", "list"])
def test_push_to_htpasswd_registry_keeps_every_digest(
    basic_registry: Registry, images: tuple[Path, dict[str, str]], tag: str
) -> None:
    layout, digests = images
    assert (
        push(layout, tag, basic_registry, "team/app", username=USER, password=PASSWORD)
        == digests[tag]
    )
    assert_registry_holds(basic_registry, layout, "team/app", tag, digests[tag])


def test_push_of_one_platform_pushes_the_running_platforms_manifest(
    basic_registry: Registry, images: tuple[Path, dict[str, str]]
) -> None:
    layout, digests = images
    index = json.loads(read_blob(layout, digests["index"]))
    amd64 = next(
        m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == "amd64"
    )
    got = push(
        layout,
        "index",
        basic_registry,
        "team/single",
        username=USER,
        password=PASSWORD,
        all_platforms=False,
    )
    assert got == amd64


@pytest.mark.parametrize("tag", ["oci", "docker", "index", "list"])
def test_push_to_token_registry_keeps_every_digest(
    token_registry: TokenRegistry, images: tuple[Path, dict[str, str]], tag: str
) -> None:
    layout, digests = images
    before = len(token_registry.token_requests)
    assert (
        push(layout, tag, token_registry, "team/app", username=USER, password=PASSWORD)
        == digests[tag]
    )
    asked = token_registry.token_requests[before:]
    assert any(
        r.user == USER and r.basic and r.granted == ("repository:team/app:pull,push",)
        for r in asked
    ), asked
    assert all(r.service == token_registry.service for r in asked)
    assert_registry_holds(token_registry, layout, "team/app", tag, digests[tag])


def test_skopeo_inspect_through_the_token_flow_shows_the_layers(
    token_registry: TokenRegistry, images: tuple[Path, dict[str, str]]
) -> None:
    layout, digests = images
    push(layout, "oci", token_registry, "team/inspect", username=USER, password=PASSWORD)
    proc = skopeo(
        token_registry,
        "inspect",
        "--authfile",
        "{authfile}",
        "--cert-dir",
        "{certdir}",
        f"docker://{token_registry.host}/team/inspect:oci",
        username=USER,
        password=PASSWORD,
    )
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    manifest = json.loads(read_blob(layout, digests["oci"]))
    assert shown["Digest"] == digests["oci"]
    assert shown["Layers"] == [layer["digest"] for layer in manifest["layers"]]


def test_token_issuer_refuses_a_wrong_password_and_grants_the_right_one(
    token_registry: TokenRegistry, images: tuple[Path, dict[str, str]]
) -> None:
    layout, _ = images
    push(layout, "oci", token_registry, "team/private", username=USER, password=PASSWORD)
    path = "/v2/team/private/manifests/oci"
    before = len(token_registry.token_requests)
    with pytest.raises(TokenError) as refused:
        registry_request(token_registry, path, username=USER, password=PASSWORD + "x")
    assert refused.value.status == 401
    with pytest.raises(TokenError):
        registry_request(token_registry, path, username="nobody", password=PASSWORD)
    assert registry_request(token_registry, path, username=USER, password=PASSWORD).status == 200
    assert [
        (r.user, r.basic, r.status, r.granted) for r in token_registry.token_requests[before:]
    ] == [
        (None, True, 401, ()),
        (None, True, 401, ()),
        (USER, True, 200, ("repository:team/private:pull",)),
    ]
    assert token_registry.check_auth(USER, PASSWORD) == 200
    assert token_registry.check_auth(USER, "wrong") == 401


def test_anonymous_pull_of_a_private_repository_is_refused(
    token_registry: TokenRegistry, images: tuple[Path, dict[str, str]]
) -> None:
    layout, _ = images
    push(layout, "oci", token_registry, "team/secret", username=USER, password=PASSWORD)
    before = len(token_registry.token_requests)
    reply = registry_request(token_registry, "/v2/team/secret/manifests/oci")
    assert reply.status == 401
    assert "insufficient_scope" in reply.header("WWW-Authenticate")
    [asked] = token_registry.token_requests[before:]
    assert (asked.scope, asked.user, asked.basic, asked.granted) == (
        "repository:team/secret:pull",
        None,
        False,
        (),
    )


def test_anonymous_pull_of_a_public_repository_is_allowed_but_not_push(
    token_registry: TokenRegistry, images: tuple[Path, dict[str, str]]
) -> None:
    layout, digests = images
    push(layout, "oci", token_registry, "pub/app", username=USER, password=PASSWORD)
    reply = registry_request(token_registry, "/v2/pub/app/manifests/oci")
    assert reply.status == 200 and reply.header("Docker-Content-Digest") == digests["oci"]
    upload = registry_request(token_registry, "/v2/pub/app/blobs/uploads/", method="POST")
    assert upload.status == 401
    last = token_registry.token_requests[-1]
    # The registry names the actions in either order (push,pull or pull,push).
    resource, _, actions = last.scope.rpartition(":")
    assert (resource, set(actions.split(",")), last.user) == (
        "repository:pub/app",
        {"pull", "push"},
        None,
    )
    assert last.granted == ("repository:pub/app:pull",)


def test_registry_accepts_tokens_signed_by_kid(tmp_path: Path) -> None:
    with TokenRegistry(tmp_path / "kid", {USER: PASSWORD}, signing="kid") as registry:
        assert registry.check_auth(USER, PASSWORD) == 200
        assert registry.check_auth(USER, "wrong") == 401
        assert registry_request(registry, "/v2/team/none/manifests/x").status == 401


def test_realm_may_be_named_by_another_host_name(
    tmp_path: Path, images: tuple[Path, dict[str, str]]
) -> None:
    layout, digests = images
    with TokenRegistry(tmp_path / "r", {USER: PASSWORD}, realm_host="localhost") as registry:
        assert registry.realm.startswith("https://localhost:")
        assert (
            push(layout, "oci", registry, "team/app", username=USER, password=PASSWORD)
            == (digests["oci"])
        )
        assert registry.token_requests and all(r.user == USER for r in registry.token_requests)
