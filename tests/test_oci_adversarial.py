"""What a hostile registry or image does to image-fetcher (ADVERSARIAL.md 45-53), each through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.archives import zst
from tests.conftest import Run, Secrets, assert_no_leak, run_stepkit
from tests.hostile_registry import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    HostileRegistry,
    OtherHost,
    current_platform,
    sha256,
)
from tests.ocipeers import LayerFile, layer_tar
from tests.peers import OCI_LAYER_ZSTD
from tests.test_imagefetcher import error_line, login, snapshot

USER = "puller"
PASSWORD = "hostile-s3cret-pw"
# Exit codes (stepkit.errors): a bad flag or a hostile layer is 2 (InputError, ArchiveError);
# a registry that breaks the protocol (wrong digest, ambiguous manifest, bad redirect) is a
# failed fetch, 1, as stepkit/oci/registry.py raises it.
BAD_INPUT = 2
FAILED = 1
GOOD_LAYER = layer_tar([LayerFile("etc/conf", b"image conf\n")])


@dataclass
class Scene:
    """A hostile registry, a second host, a workspace with a file in it and a sentinel beside it."""

    reg: HostileRegistry
    other: OtherHost
    tmp: Path
    dest: Path
    outside: Path
    before: dict[str, str] = field(default_factory=dict)

    def fetch(self, image: str, *args: str) -> Run:
        """image-fetcher of `image` (repository[:tag][@digest]) on the hostile registry into dest."""
        return run_stepkit(
            "image-fetcher",
            f"-image={self.reg.host}/{image}",
            f"-dest_dir={self.dest}",
            f"-ca-file={self.reg.ca_file}",
            "-retries=0",
            "-timeout=20s",
            *args,
            timeout=60,
        )

    def assert_untouched(self) -> None:
        """dest as it was, the sentinel beside it intact, no staging directory left anywhere."""
        assert snapshot(self.dest) == self.before
        self.assert_outside_untouched()

    def assert_outside_untouched(self) -> None:
        """The sentinel beside dest intact and no staging directory left (after a success too)."""
        assert snapshot(self.outside) == {"sentinel": "untouched\n"}
        left = [p for p in self.tmp.rglob(".stepkit-image-*")]
        assert not left, left

    def blob_requests(self, digest: str) -> list[str]:
        return [r.path for r in self.reg.requests if r.path.endswith(f"/blobs/{digest}")]


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    with HostileRegistry(tmp_path / "reg") as reg, OtherHost(tmp_path / "other") as other:
        dest = tmp_path / "workspace" / "src"
        dest.mkdir(parents=True)
        (dest / "kept").write_text("kept\n")
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "sentinel").write_text("untouched\n")
        yield Scene(reg, other, tmp_path, dest, outside, snapshot(dest))


def one_line_naming(result: Run, *names: str) -> str:
    """The failure's error line, which must name each of `names`; no traceback anywhere."""
    line = error_line(result)
    assert "Traceback" not in result.output, result.output
    for name in names:
        assert name in line, (name, line)
    return line


def manifest_for(reg: HostileRegistry, layers: list[dict[str, object]]) -> dict[str, object]:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    return {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": reg.add_blob(config), "size": len(config)},
        "layers": layers,
    }


# ---------------------------------------------------------------------------------------------
# 45: blob bytes that are not what the descriptor promises
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_adv45_blob_bytes_differ_from_digest(scene: Scene, chunked: bool) -> None:
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    digest = sha256(GOOD_LAYER)
    # Same length, one byte changed near the end: only the digest can tell.
    evil = GOOD_LAYER[:-9] + bytes([GOOD_LAYER[-9] ^ 1]) + GOOD_LAYER[-8:]
    scene.reg.add_blob(GOOD_LAYER, serve=evil, chunked=chunked)
    result = scene.fetch("org/app:v1")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, digest)
    scene.assert_untouched()


@pytest.mark.parametrize("chunked", [False, True])
def test_adv45_blob_longer_than_descriptor_size(scene: Scene, chunked: bool) -> None:
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    digest = sha256(GOOD_LAYER)
    # The promised bytes, then more: a client must stop at the size, not trust the server.
    scene.reg.add_blob(GOOD_LAYER, serve=GOOD_LAYER + b"\0" * 70000, chunked=chunked)
    result = scene.fetch("org/app:v1")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, digest)
    scene.assert_untouched()


def test_adv45_zstd_layer_digest_is_of_the_compressed_blob(scene: Scene) -> None:
    layer = zst(layer_tar([LayerFile("etc/conf", b"zstd conf\n")], gzip=False))
    desc = {"mediaType": OCI_LAYER_ZSTD, "digest": scene.reg.add_blob(layer), "size": len(layer)}
    scene.reg.add_manifest("org/app", "zstd", manifest_for(scene.reg, [desc]))
    result = scene.fetch("org/app:zstd")
    assert result.returncode == 0, result.output
    assert snapshot(scene.dest)["etc/conf"] == "zstd conf\n"
    # Same length, one byte changed: refused on the digest, before any decompression.
    fetched = snapshot(scene.dest)
    scene.reg.add_blob(layer, serve=layer[:-9] + bytes([layer[-9] ^ 1]) + layer[-8:])
    result = scene.fetch("org/app:zstd")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, str(desc["digest"]))
    assert snapshot(scene.dest) == fetched
    scene.assert_outside_untouched()


def test_adv45_manifest_bytes_differ_from_the_digest_asked_for(scene: Scene) -> None:
    good = scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    evil = layer_tar([LayerFile("evil", b"PWNED")])
    other = manifest_for(scene.reg, [{"mediaType": OCI_LAYER_GZIP,
                                      "digest": scene.reg.add_blob(evil), "size": len(evil)}])  # fmt: skip
    # Asked for the good digest, the registry answers another manifest and claims the digest.
    scene.reg.add_manifest("org/app", good, other, digest_header=good)
    result = scene.fetch(f"org/app@{good}")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, good)
    assert not [r.path for r in scene.reg.requests if "/blobs/" in r.path]
    scene.assert_untouched()


# ---------------------------------------------------------------------------------------------
# 46: ambiguous manifests (CVE-2021-41190)
# ---------------------------------------------------------------------------------------------


def test_adv46_manifest_with_both_manifests_and_layers(scene: Scene) -> None:
    leaf = scene.reg.add_image("org/app", "leaf", [GOOD_LAYER])
    body = manifest_for(scene.reg, [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(GOOD_LAYER),
                                     "size": len(GOOD_LAYER)}])  # fmt: skip
    body["manifests"] = [
        scene.reg.manifest_descriptor("org/app", leaf, platform=current_platform())
    ]
    for media in (OCI_MANIFEST, OCI_INDEX):
        scene.reg.add_manifest("org/app", "both", {**body, "mediaType": media})
        result = scene.fetch("org/app:both")
        assert result.returncode == FAILED, result.output
        one_line_naming(result, "org/app:both", "manifests", "layers")
        assert not scene.blob_requests(sha256(GOOD_LAYER))
        scene.assert_untouched()


def test_adv46_media_type_differs_from_content_type(scene: Scene) -> None:
    body = manifest_for(scene.reg, [{"mediaType": OCI_LAYER_GZIP,
                                     "digest": scene.reg.add_blob(GOOD_LAYER),
                                     "size": len(GOOD_LAYER)}])  # fmt: skip
    scene.reg.add_manifest("org/app", "lie", body, content_type=OCI_INDEX)
    result = scene.fetch("org/app:lie")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, OCI_MANIFEST, OCI_INDEX)
    scene.reg.add_manifest("org/app", "docker-lie", body, content_type=DOCKER_MANIFEST)
    result = scene.fetch("org/app:docker-lie")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, DOCKER_MANIFEST)
    assert not scene.blob_requests(sha256(GOOD_LAYER))
    scene.assert_untouched()


# ---------------------------------------------------------------------------------------------
# 47: digest strings, from the user and from manifests (ollama#17214)
# ---------------------------------------------------------------------------------------------

BAD_DIGESTS = [
    "sha256:../../etc/passwd",
    "SHA256:" + "a" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "A" * 64,
    "md5:" + "a" * 32,
    "sha256:" + "a" * 64 + "/../x",
]


@pytest.mark.parametrize("digest", BAD_DIGESTS)
def test_adv47_bad_digest_in_image_flag_rejected_before_any_request(
    scene: Scene, digest: str
) -> None:
    result = scene.fetch(f"org/app@{digest}")
    assert result.returncode == BAD_INPUT, result.output
    one_line_naming(result, "--image")
    assert scene.reg.requests == []
    scene.assert_untouched()


@pytest.mark.parametrize("digest", BAD_DIGESTS[:3])
def test_adv47_bad_digest_in_a_manifest_rejected_before_use(scene: Scene, digest: str) -> None:
    scene.reg.add_manifest("org/app", "layer", manifest_for(scene.reg, [
        {"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": 10},
    ]))  # fmt: skip
    result = scene.fetch("org/app:layer")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, "digest")
    # An index entry's digest is checked the same way, before it becomes a URL.
    scene.reg.add_manifest("org/app", "index", {"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": 10,
                       "platform": {"os": "linux", "architecture": current_platform()[6:]}}]})  # fmt: skip
    result = scene.fetch("org/app:index")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, "digest")
    paths = [r.path for r in scene.reg.requests]
    assert not [p for p in paths if "etc/passwd" in p or "/blobs/" in p or "SHA256" in p], paths
    scene.assert_untouched()


# ---------------------------------------------------------------------------------------------
# 48: redirects of blobs (CVE-2020-15157, CVE-2018-18074)
# ---------------------------------------------------------------------------------------------


def test_adv48_redirect_to_another_host_gets_no_authorization(
    scene: Scene, secrets: Secrets
) -> None:
    scene.reg.require_basic(USER, PASSWORD)
    login(secrets, scene.reg.host, username=USER, password=PASSWORD)
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    digest = sha256(GOOD_LAYER)
    # Blob storage elsewhere (as S3/GCS behind a real registry): fetched, but without creds.
    scene.other.serve("/storage/layer", GOOD_LAYER)
    scene.reg.redirect_blob(digest, f"{scene.other.url}/storage/layer?sig=1")
    result = scene.fetch("org/app:v1")
    assert result.returncode == 0, result.output
    assert snapshot(scene.dest) == {**scene.before, "etc/": "dir", "etc/conf": "image conf\n"}
    reached = [r for r in scene.other.requests if r.path.startswith("/storage/layer")]
    assert reached, scene.other.requests
    assert all(r.authorization is None for r in scene.other.requests)
    # The registry itself did get the credentials: they were there to be leaked.
    assert any(r.authorization for r in scene.reg.requests)
    scene.assert_outside_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_adv48_redirect_to_plain_http_or_file_is_refused(
    scene: Scene, secrets: Secrets, tmp_path: Path, scheme: str
) -> None:
    scene.reg.require_basic(USER, PASSWORD)
    login(secrets, scene.reg.host, username=USER, password=PASSWORD)
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    digest = sha256(GOOD_LAYER)
    with OtherHost(tmp_path / "plain", tls=False) as plain:
        plain.serve("/layer", GOOD_LAYER)
        location = f"{plain.url}/layer" if scheme == "http" else f"file://{scene.outside}/sentinel"
        scene.reg.redirect_blob(digest, location)
        result = scene.fetch("org/app:v1")
        assert result.returncode == FAILED, result.output
        one_line_naming(result, digest, f"{scheme}:")
        assert plain.requests == []
    scene.assert_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


# ---------------------------------------------------------------------------------------------
# 49: token realms on another host or over plain HTTP (ggcr#2193, jib#4523)
# ---------------------------------------------------------------------------------------------


def test_adv49_realm_on_another_host_gets_no_basic_credentials(
    scene: Scene, secrets: Secrets
) -> None:
    # The other host hands anyone a token: the fetch may go on, anonymously, with a warning.
    scene.other.issue_tokens("/token")
    scene.reg.require_bearer(f"{scene.other.url}/token")
    login(secrets, scene.reg.host, username=USER, password=PASSWORD)
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    result = scene.fetch("org/app:v1")
    assert result.returncode == 0, result.output
    assert "without credentials" in result.stderr and scene.other.host in result.stderr
    assert scene.other.token_requests, "the realm was never asked"
    assert all(t.basic is None for t in scene.other.token_requests)
    assert all(r.authorization is None for r in scene.other.requests)
    scene.assert_outside_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


def test_adv49_realm_on_another_host_demanding_credentials_is_denied(
    scene: Scene, secrets: Secrets
) -> None:
    # An attacker's realm that asks for the registry's password gets a clear refusal instead.
    scene.other.issue_tokens("/token", credentials=(USER, PASSWORD))
    scene.reg.require_bearer(f"{scene.other.url}/token")
    login(secrets, scene.reg.host, username=USER, password=PASSWORD)
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    result = scene.fetch("org/app:v1")
    assert result.returncode == 3, result.output
    one_line_naming(result, scene.other.host, "anonymous")
    assert scene.other.token_requests
    assert all(t.basic is None for t in scene.other.token_requests)
    assert all(r.authorization is None for r in scene.other.requests)
    scene.assert_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


def test_adv49_realm_over_plain_http_gets_nothing(
    scene: Scene, secrets: Secrets, tmp_path: Path
) -> None:
    with OtherHost(tmp_path / "plain", tls=False) as plain:
        plain.issue_tokens("/token")
        scene.reg.require_bearer(f"{plain.url}/token")
        login(secrets, scene.reg.host, username=USER, password=PASSWORD)
        scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
        result = scene.fetch("org/app:v1")
        assert result.returncode == FAILED, result.output
        one_line_naming(result, "plain-HTTP", plain.host)
        assert all(t.basic is None for t in plain.token_requests)
        assert all(r.authorization is None for r in plain.requests)
    scene.assert_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


def test_adv49_named_realm_host_still_gets_nothing_over_http_or_a_redirect(
    scene: Scene, secrets: Secrets, tmp_path: Path
) -> None:
    # --token-realm-host opens a realm host to the credentials over HTTPS only, and the
    # token service's redirect is still refused, never followed with them.
    login(secrets, scene.reg.host, username=USER, password=PASSWORD)
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    other_name = scene.other.host.rsplit(":", 1)[0]
    with OtherHost(tmp_path / "plain", tls=False) as plain:
        plain.issue_tokens("/token")
        scene.reg.require_bearer(f"{plain.url}/token")
        named = plain.host.rsplit(":", 1)[0]
        result = scene.fetch("org/app:v1", f"-token-realm-host={named}")
        assert result.returncode == FAILED, result.output
        one_line_naming(result, "plain-HTTP", plain.host)
        assert all(r.authorization is None for r in plain.requests)
    scene.other.serve("/token", b"", status=307, headers={"Location": f"{scene.reg.url}/steal"})
    scene.reg.require_bearer(f"{scene.other.url}/token")
    result = scene.fetch("org/app:v1", f"-token-realm-host={other_name}")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, "redirect")
    assert len([r for r in scene.other.requests if r.path.startswith("/token")]) == 1
    assert not [r for r in scene.reg.requests if r.path.startswith("/steal")]
    scene.assert_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


def test_adv49_named_realm_host_gets_the_credentials(scene: Scene, secrets: Secrets) -> None:
    # The user's opt-in for a realm on another host (and not a parent domain): it gets them.
    scene.other.issue_tokens("/token", credentials=(USER, PASSWORD))
    scene.reg.require_bearer(f"{scene.other.url}/token")
    login(secrets, scene.reg.host, username=USER, password=PASSWORD)
    scene.reg.add_image("org/app", "v1", [GOOD_LAYER])
    named = scene.other.host.rsplit(":", 1)[0]
    result = scene.fetch("org/app:v1", f"-token-realm-host={named}")
    assert result.returncode == 0, result.output
    assert scene.other.token_requests
    assert all(t.basic == (USER, PASSWORD) for t in scene.other.token_requests)
    assert snapshot(scene.dest)["etc/conf"] == "image conf\n"
    scene.assert_outside_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


# ---------------------------------------------------------------------------------------------
# 50, 51: whiteouts and symlinks in layers (stereoscope#647, GHSA-vgfc-2cjj-9qwc)
# ---------------------------------------------------------------------------------------------


def serve_layers(scene: Scene, *layers: list[LayerFile]) -> str:
    return scene.reg.add_image("org/layers", "v1", [layer_tar(entries) for entries in layers])


def test_adv50_opaque_marker_after_its_siblings(scene: Scene) -> None:
    serve_layers(
        scene,
        [LayerFile("d/old", b"old\n"), LayerFile("d/sub/older", b"older\n")],
        [LayerFile("d/new", b"new\n"), LayerFile("d", type="opaque")],
    )
    result = scene.fetch("org/layers:v1")
    assert result.returncode == 0, result.output
    # The marker hides the lower layers only; its siblings in its own layer stay.
    assert snapshot(scene.dest) == {**scene.before, "d/": "dir", "d/new": "new\n"}
    scene.assert_outside_untouched()


def test_adv50_whiteout_in_the_same_layer_as_its_target(scene: Scene) -> None:
    serve_layers(
        scene,
        [LayerFile("a/x", b"lower\n"), LayerFile("a/y", b"y\n")],
        [LayerFile("a/x", b"upper\n"), LayerFile("a/x", type="whiteout")],
    )
    result = scene.fetch("org/layers:v1")
    assert result.returncode == 0, result.output
    # A whiteout applies to lower layers: the file of its own layer survives.
    assert snapshot(scene.dest) == {**scene.before, "a/": "dir", "a/x": "upper\n", "a/y": "y\n"}
    scene.assert_outside_untouched()


def test_adv50_whiteout_of_a_dir_beside_a_deeper_whiteout(scene: Scene) -> None:
    serve_layers(
        scene,
        [LayerFile("a/b/f", b"f\n"), LayerFile("a/b/g", b"g\n"), LayerFile("z", b"z\n")],
        [LayerFile("a/b/f", type="whiteout"), LayerFile("a", type="whiteout")],
    )
    result = scene.fetch("org/layers:v1")
    assert result.returncode == 0, result.output
    # Whiteouts are no entries of their layer: `a` goes whole, no empty `a/b` is left.
    assert snapshot(scene.dest) == {**scene.before, "z": "z\n"}
    scene.assert_outside_untouched()


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "a/.wh..", "a/.wh..."])
def test_adv50_whiteout_of_nothing_dot_or_dotdot(scene: Scene, name: str) -> None:
    serve_layers(
        scene,
        [LayerFile("a/x", b"x\n"), LayerFile("b", b"b\n")],
        [LayerFile(name, type="file")],
    )
    result = scene.fetch("org/layers:v1")
    assert result.returncode == BAD_INPUT, result.output
    one_line_naming(result, name)
    scene.assert_untouched()


def test_adv50_whiteout_through_a_lower_layer_symlink(scene: Scene) -> None:
    # The lower layer points `l` at the real host directory holding the sentinel.
    serve_layers(
        scene,
        [LayerFile("l", type="symlink", target=str(scene.outside))],
        [LayerFile("l/sentinel", type="whiteout")],
    )
    result = scene.fetch("org/layers:v1")
    assert result.returncode == BAD_INPUT, result.output
    one_line_naming(result, "l/.wh.sentinel")
    scene.assert_untouched()
    # The same through an opaque marker below the symlink.
    serve_layers(
        scene,
        [LayerFile("l", type="symlink", target="/")],
        [LayerFile(f"l{scene.outside}", type="opaque")],
    )
    result = scene.fetch("org/layers:v1")
    assert result.returncode == BAD_INPUT, result.output
    scene.assert_untouched()


def test_adv51_upper_layer_writes_below_a_lower_symlink_to_root(scene: Scene) -> None:
    # `app -> /`, then `app/<host path of the sentinel>`: followed on the host it would
    # overwrite the sentinel (the same as app/etc/passwd, without risking the machine).
    serve_layers(
        scene,
        [LayerFile("app", type="symlink", target="/")],
        [LayerFile(f"app{scene.outside}/sentinel", b"PWNED\n")],
    )
    result = scene.fetch("org/layers:v1")
    assert result.returncode == BAD_INPUT, result.output
    one_line_naming(result, "app")
    scene.assert_untouched()


def test_adv51_path_through_a_symlink_stays_in_the_image(scene: Scene) -> None:
    serve_layers(
        scene,
        [LayerFile("etc/passwd", b"image passwd\n"), LayerFile("app", type="symlink", target="/etc"),
         LayerFile("up", type="symlink", target="../../../../../../etc")],
    )  # fmt: skip
    result = scene.fetch("org/layers:v1", "-path=/app")
    assert result.returncode == 0, result.output
    assert snapshot(scene.dest) == {**scene.before, "passwd": "image passwd\n"}
    # A relative link climbing past the image's root ends at the image's root too.
    up = scene.tmp / "up"
    result = run_stepkit("image-fetcher", f"-image={scene.reg.host}/org/layers:v1", "-path=/up",
                         f"-dest_dir={up}", f"-ca-file={scene.reg.ca_file}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(up) == {"passwd": "image passwd\n"}
    scene.assert_outside_untouched()


# ---------------------------------------------------------------------------------------------
# 52: foreign layers
# ---------------------------------------------------------------------------------------------


def test_adv52_foreign_layer_is_not_fetched(scene: Scene, secrets: Secrets) -> None:
    scene.reg.require_basic(USER, PASSWORD)
    login(secrets, scene.reg.host, username=USER, password=PASSWORD)
    scene.other.serve("/foreign.tar.gz", GOOD_LAYER)
    digest = sha256(GOOD_LAYER)
    body = manifest_for(scene.reg, [{
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": digest, "size": len(GOOD_LAYER),
        "urls": [f"{scene.other.url}/foreign.tar.gz"],
    }])  # fmt: skip
    body["mediaType"] = DOCKER_MANIFEST
    scene.reg.add_manifest("org/app", "foreign", body)
    result = scene.fetch("org/app:foreign")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, digest)
    assert scene.other.requests == []
    assert not scene.blob_requests(digest)
    # An OCI layer descriptor with urls is refused the same way.
    body = manifest_for(scene.reg, [{"mediaType": DOCKER_LAYER_GZIP, "digest": digest,
        "size": len(GOOD_LAYER), "urls": [f"{scene.other.url}/foreign.tar.gz"]}])  # fmt: skip
    scene.reg.add_manifest("org/app", "urls", body)
    result = scene.fetch("org/app:urls")
    assert result.returncode == FAILED, result.output
    assert scene.other.requests == []
    scene.assert_untouched()
    assert_no_leak(result.output, [*secrets.values, PASSWORD])


# ---------------------------------------------------------------------------------------------
# 53: index depth, cycles, no matching platform
# ---------------------------------------------------------------------------------------------


def test_adv53_index_cycle_is_refused(scene: Scene) -> None:
    _, claimed = scene.reg.add_index_cycle("org/app", "loop")
    result = scene.fetch("org/app:loop")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, claimed)
    manifests = [r for r in scene.reg.requests if "/manifests/" in r.path]
    assert len(manifests) <= 4, [r.path for r in manifests]
    scene.assert_untouched()


def test_adv53_index_chain_deeper_than_the_bound(scene: Scene) -> None:
    leaf = scene.reg.add_image("org/app", "leaf", [GOOD_LAYER])
    scene.reg.add_index_chain("org/app", "deep", 12, leaf=leaf)
    result = scene.fetch("org/app:deep")
    assert result.returncode == FAILED, result.output
    one_line_naming(result, "org/app")
    assert "deeper than" in error_line(result)
    manifests = [r for r in scene.reg.requests if "/manifests/" in r.path]
    assert len(manifests) < 12
    # One level (index -> manifest) is the ordinary multi-platform image.
    scene.reg.add_index_chain("org/app", "one", 1, leaf=leaf)
    assert scene.fetch("org/app:one").returncode == 0
    assert snapshot(scene.dest)["etc/conf"] == "image conf\n"


def test_adv53_no_matching_platform(scene: Scene) -> None:
    amd = scene.reg.add_image("org/app", "amd", [GOOD_LAYER], platform="linux/amd64")
    arm = scene.reg.add_image("org/app", "arm", [GOOD_LAYER], platform="linux/arm64")
    scene.reg.add_index("org/app", "multi", {"linux/amd64": amd, "linux/arm64": arm})
    result = scene.fetch("org/app:multi", "-platform=linux/riscv64")
    assert result.returncode == FAILED, result.output
    line = one_line_naming(result, "linux/riscv64")
    assert "linux/amd64" in line and "linux/arm64" in line
    assert not scene.blob_requests(sha256(GOOD_LAYER))
    scene.assert_untouched()
