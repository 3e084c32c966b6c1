"""The registry client: references, digests and platforms; auth and pulls against real registries."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform as host_platform
import select
import socket
import socketserver
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stepkit.errors import DeniedError, InputError, StepkitError
from stepkit.oci.auth import DockerConfig, parse_challenges
from stepkit.oci.reference import Platform, Reference, parse_reference, validate_digest
from stepkit.oci.registry import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Image,
    RegistryClient,
)
from tests.conftest import Secrets, assert_no_leak, run_stepkit
from tests.hostile_registry import HostileRegistry, OtherHost
from tests.ocipeers import (
    LayerFile,
    TokenRegistry,
    layer_tar,
    push,
    write_index_layout,
    write_layout,
)
from tests.peers import Registry

HEX = "0123456789abcdef" * 4
D = f"sha256:{HEX}"
AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
USER, PASSWORD = "puller", 'p@ss:"wörd"/x'


# --------------------------------------------------------------------------------------------
# References, digests, platforms: table tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "registry", "repository", "tag", "digest", "api_host"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None, "registry-1.docker.io"),
        ("user/app", "docker.io", "user/app", "latest", None, "registry-1.docker.io"),
        ("docker.io/alpine", "docker.io", "library/alpine", "latest", None, "registry-1.docker.io"),
        (
            "index.docker.io/user/app:v1",
            "docker.io",
            "user/app",
            "v1",
            None,
            "registry-1.docker.io",
        ),
        (
            "docker.io/library/alpine@" + D,
            "docker.io",
            "library/alpine",
            None,
            D,
            "registry-1.docker.io",
        ),
        ("alpine:3@" + D, "docker.io", "library/alpine", "3", D, "registry-1.docker.io"),
        ("localhost/app", "localhost", "app", "latest", None, "localhost"),
        ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None, "localhost:5000"),
        ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000", "team/app", "v1", None, "127.0.0.1:5000"),
        ("gcr.io/proj/img", "gcr.io", "proj/img", "latest", None, "gcr.io"),
        (
            "Registry.Example.com/org/app",
            "registry.example.com",
            "org/app",
            "latest",
            None,
            "registry.example.com",
        ),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None, "[::1]:5000"),
        ("a.b/x__y/z--w.v:_T.9-", "a.b", "x__y/z--w.v", "_T.9-", None, "a.b"),
        ("reg.io/app:" + "t" * 128, "reg.io", "app", "t" * 128, None, "reg.io"),
    ],
)
def test_parse_reference_normalises_as_docker(
    value: str, registry: str, repository: str, tag: str | None, digest: str | None, api_host: str
) -> None:
    ref = parse_reference(value, what="--image")
    assert ref == Reference(registry, repository, tag, digest)
    assert ref.api_host == api_host
    assert parse_reference(str(ref), what="--image") == ref  # the canonical form round-trips


def test_reference_str_and_helpers() -> None:
    ref = parse_reference("alpine", what="--image")
    assert str(ref) == "docker.io/library/alpine:latest"
    assert ref.name == "docker.io/library/alpine"
    assert str(ref.with_digest(D)) == f"docker.io/library/alpine@{D}"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("Alpine", "lower-case"),
        ("user/App", "lower-case"),
        ("a b", "spaces"),
        ("alpine\n", "control"),
        ("alpine:", "tag"),
        ("alpine:-x", "tag"),
        ("alpine:.x", "tag"),
        ("alpine:" + "t" * 129, "tag"),
        ("alpine:a/b", "registry"),
        ("reg.io/a//b", "repository component"),
        ("reg.io/../etc", "repository component"),
        ("reg.io/a/", "repository component"),
        ("/alpine", "repository component"),
        ("reg_io:5000/app", "registry"),
        ("-reg.io/app", "registry"),
        ("reg.io/app@sha256:abc", "digest"),
        ("reg.io/app@md5:" + HEX[:32], "digest"),
        ("reg.io/app@" + D + "x", "digest"),
        ("reg.io/-app", "repository component"),
        ("reg.io/app_", "repository component"),
        ("ünï/app", "non-ASCII"),
        ("reg.io/" + "a" * 250, "longer than 255"),
        ("reg.io/", "no repository"),
    ],
)
def test_parse_reference_refuses(value: str, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        parse_reference(value, what="--image")
    assert err.value.exit_code == 2
    assert str(err.value).startswith("--image: ")
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "value",
    [D, "sha512:" + HEX * 2, "sha256:" + "0" * 64],
)
def test_validate_digest_accepts(value: str) -> None:
    assert validate_digest(value, what="x") == value


@pytest.mark.parametrize(
    "value",
    [
        "sha256:../../etc/passwd",  # ADVERSARIAL 47 (ollama#17214)
        "sha256:" + "../" * 21 + "a",
        "SHA256:" + HEX,
        "sha256:" + HEX[:63],
        "sha256:" + HEX + "0",
        "sha256:" + HEX.upper(),
        "sha256:" + HEX[:63] + "g",
        "md5:" + HEX[:32],
        "sha384:" + HEX + HEX[:32],
        "sha512:" + HEX,
        "sha256" + HEX,
        "sha256:" + HEX + "\n",
        " sha256:" + HEX,
        "sha256:" + HEX + "/../x",
        ":" + HEX,
        "",
        "sha256:",
        "sha256:" + HEX[:32] + "\x00" + HEX[33:],
    ],
)
def test_validate_digest_refuses_before_use(value: str) -> None:
    with pytest.raises(InputError) as err:
        validate_digest(value, what="layers[0]")
    assert str(err.value).startswith("layers[0]: digest ")
    assert "\n" not in str(err.value) and "\x00" not in str(err.value)


def test_validate_digest_shortens_huge_values() -> None:
    with pytest.raises(InputError) as err:
        validate_digest("sha256:" + "a" * 100_000, what="x")
    assert len(str(err.value)) < 400


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),  # v8 is arm64's default, not written
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("windows/amd64", Platform("windows", "amd64")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
        # containerd's normalisation (platforms.Normalize / normalizeArch).
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/i386", Platform("linux", "386")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/aarch64/8", Platform("linux", "arm64")),
        ("linux/arm64/v8.2", Platform("linux", "arm64", "v8.2")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/arm/6", Platform("linux", "arm", "v6")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("macos/arm64", Platform("darwin", "arm64")),
    ],
)
def test_platform_parse(value: str, expected: Platform) -> None:
    parsed = Platform.parse(value, what="--platform")
    assert parsed == expected
    assert Platform.parse(str(parsed), what="--platform") == parsed


@pytest.mark.parametrize(
    "value",
    [
        "",
        "linux",
        "linux/",
        "/amd64",
        "linux/amd64/v8/x",
        "linux/am d64",
        "linux/../x",
        "linux/amd64\n",
    ],
)
def test_platform_parse_refuses(value: str) -> None:
    with pytest.raises(InputError) as err:
        Platform.parse(value, what="--platform")
    assert str(err.value).startswith("--platform: ")


def test_platform_current_is_this_machine() -> None:
    current = Platform.current()
    expected = {"x86_64": "amd64", "aarch64": "arm64"}.get(host_platform.machine())
    assert current.os == "linux"
    if expected is not None:
        assert current.architecture == expected
        assert current.variant is None


def _p(value: str) -> Platform:
    os_name, arch, *variant = value.split("/")
    return Platform(os_name, arch, variant[0] if variant else None)


@pytest.mark.parametrize(
    ("want", "entry", "matches"),
    [
        ("linux/amd64", "linux/amd64", True),
        ("linux/amd64", "linux/amd64/v1", True),  # v1 is amd64's default
        ("linux/amd64", "linux/amd64/v3", False),  # needs a newer CPU than asked for
        ("linux/amd64", "linux/386", True),  # containerd: amd64 runs 386
        ("linux/amd64", "windows/amd64", False),
        ("linux/amd64", "linux/arm64", False),
        ("linux/386", "linux/amd64", False),
        ("linux/amd64/v3", "linux/amd64/v2", True),
        ("linux/amd64/v3", "linux/amd64", True),
        ("linux/amd64/v3", "linux/amd64/v4", False),
        ("linux/arm64/v8", "linux/arm64", True),  # arm64 without variant is v8
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64", "linux/AArch64", True),  # an index's spelling is normalised too
        ("linux/arm64/v8", "linux/arm64/v9", False),
        ("linux/arm64/v8", "linux/arm64/v8.1", False),
        ("linux/arm64/v8.2", "linux/arm64/v8.1", True),
        ("linux/arm64/v8.2", "linux/arm64", True),
        ("linux/arm64/v9", "linux/arm64/v8.5", True),
        ("linux/arm64/v9", "linux/arm64/v8.6", False),
        ("linux/arm64", "linux/arm/v7", True),  # arm64 runs 32-bit arm
        ("linux/arm64", "linux/arm/v5", True),
        ("linux/arm/v7", "linux/arm/v7", True),
        ("linux/arm/v7", "linux/arm", True),  # arm without variant is v7
        ("linux/arm/v7", "linux/arm/v6", True),
        ("linux/arm/v7", "linux/arm/v5", True),
        ("linux/arm/v7", "linux/arm/v8", False),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/arm/v5", "linux/arm/v6", False),
        ("linux/arm/v7", "linux/arm64", False),
    ],
)
def test_platform_matches_as_containerd(want: str, entry: str, matches: bool) -> None:
    assert _p(want).matches(_p(entry)) is matches


@pytest.mark.parametrize(
    ("want", "order"),
    [
        ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
        ("linux/arm/v5", ["linux/arm/v5"]),
        ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
        ("linux/amd64", ["linux/amd64", "linux/386"]),
        (
            "linux/arm64",
            ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"],
        ),
        (
            "linux/arm64/v9.1",
            [
                "linux/arm64/v9.1",
                "linux/arm64/v9",
                "linux/arm64/v8.6",
                "linux/arm64/v8.5",
                "linux/arm64/v8.4",
                "linux/arm64/v8.3",
                "linux/arm64/v8.2",
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5",
            ],
        ),
        ("linux/s390x", ["linux/s390x"]),
    ],
)
def test_platform_candidates_best_first(want: str, order: list[str]) -> None:
    assert [str(p) for p in _p(want).candidates()] == order


# --------------------------------------------------------------------------------------------
# WWW-Authenticate and docker's config.json
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/alpine:pull"',
            [
                (
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/alpine:pull",
                    },
                )
            ],
        ),
        (
            'bearer  REALM = "https://x/t" , service=reg',
            [("bearer", {"realm": "https://x/t", "service": "reg"})],
        ),
        (r'Basic realm="a\"b\\c"', [("basic", {"realm": 'a"b\\c'})]),
        (
            'Basic realm="r", Bearer realm="https://t",error="invalid_token"',
            [
                ("basic", {"realm": "r"}),
                ("bearer", {"realm": "https://t", "error": "invalid_token"}),
            ],
        ),
        ("Negotiate dG9rZW4=, Basic realm=x", [("negotiate", {}), ("basic", {"realm": "x"})]),
        (
            'Bearer service="a,b",realm="https://t"',
            [("bearer", {"service": "a,b", "realm": "https://t"})],
        ),
        ('Bearer realm="unterminated', [("bearer", {})]),
        ("", []),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = [(c.scheme, c.params) for c in parse_challenges([header])]
    assert got == expected


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://registry-1.docker.io/v2/", "docker.io"),
        ("reg.example.com:5000", "reg.example.com:5000"),
        ("https://reg.example.com:5000/v1/", "reg.example.com:5000"),
        ("http://reg.example.com:5000", "reg.example.com:5000"),
        ("REG.example.com", "reg.example.com"),
    ],
)
def test_docker_config_keys_as_docker_reads_them(tmp_path: Path, key: str, registry: str) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"auths": {key: {"auth": _b64("u:p:w")}, "other.io": {"auth": _b64("x:y")}}})
    )
    creds = DockerConfig(config).credentials(registry)
    assert creds is not None
    assert (creds.username, creds.password.reveal()) == ("u", "p:w")
    assert DockerConfig(config).credentials("nothing.example.com") is None
    assert (
        DockerConfig(config).credentials("reg.example.com:5001") is None or registry == "docker.io"
    )


def test_docker_config_forms_and_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "a.io": {"username": "ua", "password": "Pw-a.io-9"},
                    "b.io": {"identitytoken": "refresh-me"},
                    "c.io": {"auth": "not base64!"},
                    "d.io": {},
                    "e.io": {"auth": _b64("nocolon")},
                }
            }
        )
    )
    cfg = DockerConfig(config)
    a = cfg.credentials("a.io")
    assert a is not None and (a.username, a.password.reveal()) == ("ua", "Pw-a.io-9")
    assert "Pw-a.io-9" not in repr(a) and "Pw-a.io-9" not in a.source
    b = cfg.credentials("b.io")
    assert (
        b is not None and b.identity_token is not None and b.identity_token.reveal() == "refresh-me"
    )
    assert not b.has_basic
    assert cfg.credentials("d.io") is None
    for bad in ("c.io", "e.io"):
        with pytest.raises(InputError, match=f"auths entry '{bad}'"):
            cfg.credentials(bad)
    assert DockerConfig(tmp_path / "missing.json").credentials("a.io") is None
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        DockerConfig(tmp_path / "broken.json").credentials("a.io")


def _helper(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_credential_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real helper programs on PATH, as docker runs them: server on stdin, JSON on stdout.
    bin_dir = tmp_path / "bin"
    _helper(
        bin_dir,
        "echoer",
        'read -r server || true\nprintf \'{"ServerURL":"%s","Username":"hu","Secret":"hs-%s"}\' '
        '"$server" "$server"\n',
    )
    _helper(bin_dir, "empty", 'echo "credentials not found in native keychain"; exit 1\n')
    _helper(bin_dir, "tokener", 'printf \'{"Username":"<token>","Secret":"idtok"}\'\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "auths": {"fallback.io": {"auth": _b64("fu:fp")}},
                "credsStore": "echoer",
                "credHelpers": {
                    "https://index.docker.io/v1/": "echoer",
                    "fallback.io": "empty",
                    "tok.io": "tokener",
                    "gone.io": "missing",
                    "evil.io": "../../bin/sh",
                },
            }
        )
    )
    cfg = DockerConfig(config)
    hub = cfg.credentials("docker.io")
    assert hub is not None and hub.password.reveal() == "hs-https://index.docker.io/v1/"
    store = cfg.credentials("store.io:5000")
    assert store is not None and (store.username, store.password.reveal()) == (
        "hu",
        "hs-store.io:5000",
    )
    assert "docker-credential-echoer" in store.source
    fallback = cfg.credentials("fallback.io")
    assert fallback is not None and fallback.username == "fu"
    tok = cfg.credentials("tok.io")
    assert (
        tok is not None
        and tok.identity_token is not None
        and tok.identity_token.reveal() == "idtok"
    )
    with pytest.raises(StepkitError, match="docker-credential-missing is not on PATH"):
        cfg.credentials("gone.io")
    with pytest.raises(InputError, match="not a helper name"):
        cfg.credentials("evil.io")


# --------------------------------------------------------------------------------------------
# The real registry: docker-registry with TLS and htpasswd; and with token auth
# --------------------------------------------------------------------------------------------


@dataclass
class Pushed:
    registry: Registry
    digest: str
    layers: list[bytes]


@dataclass
class RealRegistry:
    registry: Registry
    app: Pushed  # team/app:v1, OCI, two layers
    docker: Pushed  # team/docker:v1, Docker schema 2
    multi: str  # team/multi:v1, OCI index amd64 + arm64/v8
    multi_children: dict[str, str]
    dlist: str  # team/dlist:v1, Docker manifest list


def _layers(tag: str) -> list[bytes]:
    return [
        layer_tar([LayerFile("etc/", type="dir"), LayerFile("etc/name", f"{tag}\n".encode())]),
        layer_tar([LayerFile("big.bin", os.urandom(3 << 20))], gzip=False),  # > 1 chunk
    ]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRegistry]:
    work = tmp_path_factory.mktemp("registry")
    with Registry(work / "reg", {USER: PASSWORD}) as registry:
        app_layers = _layers("app")
        write_layout(work / "app", "v1", app_layers)
        app = push(work / "app", "v1", registry, "team/app", username=USER, password=PASSWORD)
        docker_layers = _layers("docker")[:1]
        write_layout(work / "docker", "v1", docker_layers, media="docker")
        docker = push(
            work / "docker", "v1", registry, "team/docker", username=USER, password=PASSWORD
        )
        images = {"linux/amd64": _layers("amd64")[:1], "linux/arm64/v8": _layers("arm64")[:1]}
        multi = write_index_layout(work / "multi", "v1", images)
        assert (
            push(work / "multi", "v1", registry, "team/multi", username=USER, password=PASSWORD)
            == multi
        )
        index = json.loads((work / "multi" / "blobs" / "sha256" / multi.split(":")[1]).read_bytes())
        children = {
            "/".join(
                v for k in ("os", "architecture", "variant") if (v := m["platform"].get(k))
            ): m["digest"]
            for m in index["manifests"]
        }
        dlist = write_index_layout(work / "dlist", "v1", images, media="docker")
        assert (
            push(work / "dlist", "v1", registry, "team/dlist", username=USER, password=PASSWORD)
            == dlist
        )
        yield RealRegistry(
            registry,
            Pushed(registry, app, app_layers),
            Pushed(registry, docker, docker_layers),
            multi,
            children,
            dlist,
        )


def _docker_config(home: Path, auths: dict[str, object]) -> Path:
    path = home / ".docker" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"auths": auths}))
    path.chmod(0o600)
    return path


def _client(ca: Path | None, **kw: object) -> RegistryClient:
    # No retries: a connection mishandled by the client must fail the test, not be retried away.
    return RegistryClient(ca_file=ca, retries=0, backoff=0.05, timeout=30, **kw)  # type: ignore[arg-type]


def _fetch_all(client: RegistryClient, image: Image, dest: Path) -> list[bytes]:
    out = []
    for n, layer in enumerate(image.layers):
        path = dest / f"layer{n}"
        seen: list[int] = []
        client.fetch_blob(image.reference, layer, path, progress=seen.append)
        assert sum(seen) == layer.size
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        out.append(path.read_bytes())
    return out


def test_resolve_by_tag_and_fetch_with_auth_credentials(
    real: RealRegistry, isolated_env: Path, tmp_path: Path
) -> None:
    reg = real.registry
    _docker_config(isolated_env, {reg.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    with _client(reg.ca_pem) as client:  # default config: $HOME/.docker/config.json
        ref = parse_reference(f"{reg.host}/team/app:v1", what="--image")
        image = client.resolve(ref, AMD64)
        assert image.digest == real.app.digest
        assert image.index_digest is None
        assert image.media_type == OCI_MANIFEST
        assert hashlib.sha256(image.manifest).hexdigest() == real.app.digest.split(":")[1]
        assert [d.size for d in image.layers] == [len(b) for b in real.app.layers]
        assert _fetch_all(client, image, tmp_path) == real.app.layers
        config = tmp_path / "config"
        client.fetch_blob(ref, image.config, config)
        assert json.loads(config.read_bytes())["architecture"] == "amd64"


def test_resolve_by_digest_with_username_password(real: RealRegistry, isolated_env: Path) -> None:
    reg = real.registry
    _docker_config(
        isolated_env, {f"https://{reg.host}/v1/": {"username": USER, "password": PASSWORD}}
    )
    with _client(reg.ca_pem) as client:
        ref = parse_reference(f"{reg.host}/team/app@{real.app.digest}", what="--image")
        image = client.resolve(ref, AMD64)
        assert image.digest == real.app.digest
        assert image.reference == ref
        # A tag and a digest: the digest is what is fetched.
        both = parse_reference(f"{reg.host}/team/app:nonexistent@{real.app.digest}", what="--image")
        assert client.resolve(both, AMD64).digest == real.app.digest


def test_docker_schema2_manifest(real: RealRegistry, isolated_env: Path, tmp_path: Path) -> None:
    reg = real.registry
    _docker_config(isolated_env, {reg.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    with _client(reg.ca_pem) as client:
        image = client.resolve(parse_reference(f"{reg.host}/team/docker:v1", what="x"), AMD64)
        assert (image.digest, image.media_type) == (real.docker.digest, DOCKER_MANIFEST)
        assert _fetch_all(client, image, tmp_path) == real.docker.layers


@pytest.mark.parametrize(
    ("repo", "media"), [("team/multi", OCI_INDEX), ("team/dlist", DOCKER_LIST)]
)
def test_index_followed_to_the_platform(
    real: RealRegistry, isolated_env: Path, repo: str, media: str
) -> None:
    reg = real.registry
    index = real.multi if repo == "team/multi" else real.dlist
    _docker_config(isolated_env, {reg.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    with _client(reg.ca_pem) as client:
        ref = parse_reference(f"{reg.host}/{repo}:v1", what="x")
        amd = client.resolve(ref, AMD64)
        arm = client.resolve(ref, ARM64)
        arm_plain = client.resolve(ref, Platform("linux", "arm64"))
        assert amd.index_digest == arm.index_digest == index
        assert amd.digest != arm.digest and arm.digest == arm_plain.digest
        if repo == "team/multi":
            assert amd.digest == real.multi_children["linux/amd64"]
            assert arm.digest == real.multi_children["linux/arm64/v8"]
        # Pinned to the index digest, the same choice.
        pinned = client.resolve(ref.with_digest(index), ARM64)
        assert pinned.digest == arm.digest and pinned.index_digest == index
        with pytest.raises(StepkitError) as err:
            client.resolve(ref, Platform("linux", "s390x"))
        message = str(err.value)
        assert "linux/s390x" in message and "linux/amd64" in message and "linux/arm64/v8" in message
        assert index in message
        assert not isinstance(err.value, (DeniedError, InputError))


def test_wrong_password_is_denied_without_showing_it(
    real: RealRegistry, isolated_env: Path
) -> None:
    reg = real.registry
    wrong = "wrong-Secret-9"
    _docker_config(isolated_env, {reg.host: {"username": USER, "password": wrong}})
    with _client(reg.ca_pem) as client, pytest.raises(DeniedError) as err:
        client.resolve(parse_reference(f"{reg.host}/team/app:v1", what="x"), AMD64)
    assert err.value.exit_code == 3
    assert reg.host in str(err.value) and "team/app" in str(err.value)
    assert_no_leak(str(err.value), [wrong, PASSWORD, f"{USER}:{wrong}"])


def test_no_credentials_is_denied(real: RealRegistry, isolated_env: Path) -> None:
    reg = real.registry
    with _client(reg.ca_pem) as client, pytest.raises(DeniedError) as err:
        client.resolve(parse_reference(f"{reg.host}/team/app:v1", what="x"), AMD64)
    assert "no user and password" in str(err.value)


def test_unknown_tag_and_untrusted_tls(real: RealRegistry, isolated_env: Path) -> None:
    reg = real.registry
    _docker_config(isolated_env, {reg.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    ref = parse_reference(f"{reg.host}/team/app:nope", what="x")
    with _client(reg.ca_pem) as client, pytest.raises(StepkitError) as err:
        client.resolve(ref, AMD64)
    assert "not found" in str(err.value) and str(ref) in str(err.value)
    # Without the test CA the registry's certificate is not trusted: a clear error, no retry.
    with _client(None) as client, pytest.raises(StepkitError) as err:
        client.resolve(parse_reference(f"{reg.host}/team/app:v1", what="x"), AMD64)
    assert "certificate verify failed" in str(err.value) and "--ca-file" in str(err.value)


def test_credential_helper_against_the_registry(
    real: RealRegistry, isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = real.registry
    secret_file = tmp_path / "pw"
    secret_file.write_text(json.dumps({"Username": USER, "Secret": PASSWORD}))
    _helper(tmp_path / "bin", "filestore", f"cat '{secret_file}'\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    config = isolated_env / ".docker" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"credHelpers": {reg.host: "filestore"}}))
    with _client(reg.ca_pem) as client:
        image = client.resolve(parse_reference(f"{reg.host}/team/app:v1", what="x"), AMD64)
    assert image.digest == real.app.digest


def test_credentials_written_by_creds_init(
    real: RealRegistry, isolated_env: Path, secrets: Secrets
) -> None:
    reg = real.registry
    secrets.add("reg", {"username": USER, "password": PASSWORD})
    res = run_stepkit(
        "creds-init", f"-basic-docker=reg={reg.host}", "--secrets-dir", str(secrets.root)
    )
    assert res.returncode == 0, res.stderr
    with _client(reg.ca_pem) as client:
        image = client.resolve(parse_reference(f"{reg.host}/team/app:v1", what="x"), AMD64)
    assert image.digest == real.app.digest


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TokenRegistry, str, str]]:
    work = tmp_path_factory.mktemp("tokenreg")
    with TokenRegistry(work / "reg", {USER: PASSWORD}, public={"pub/app"}) as registry:
        write_layout(work / "img", "v1", _layers("tok")[:1])
        pub = push(work / "img", "v1", registry, "pub/app", username=USER, password=PASSWORD)
        priv = push(work / "img", "v1", registry, "priv/app", username=USER, password=PASSWORD)
        yield registry, pub, priv


def test_bearer_flow_with_credentials(
    token_registry: tuple[TokenRegistry, str, str], isolated_env: Path, tmp_path: Path
) -> None:
    registry, _pub, priv = token_registry
    _docker_config(isolated_env, {registry.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    before = len(registry.token_requests)
    with _client(registry.ca_file) as client:
        ref = parse_reference(f"{registry.host}/priv/app:v1", what="x")
        image = client.resolve(ref, AMD64)
        assert image.digest == priv
        _fetch_all(client, image, tmp_path)
    asked = registry.token_requests[before:]
    # One token per scope, cached across the manifest and blob requests.
    assert len(asked) == 1
    assert asked[0].user == USER and asked[0].scope == "repository:priv/app:pull"
    assert asked[0].service == registry.service


def test_bearer_flow_anonymous_public_repository(
    token_registry: tuple[TokenRegistry, str, str], isolated_env: Path
) -> None:
    registry, pub, _priv = token_registry
    with _client(registry.ca_file) as client:
        image = client.resolve(parse_reference(f"{registry.host}/pub/app:v1", what="x"), AMD64)
        assert image.digest == pub
        with pytest.raises(DeniedError) as err:
            client.resolve(parse_reference(f"{registry.host}/priv/app:v1", what="x"), AMD64)
    assert "priv/app" in str(err.value) and "anonymously" in str(err.value)


def test_bearer_flow_wrong_password(
    token_registry: tuple[TokenRegistry, str, str], isolated_env: Path
) -> None:
    registry, _pub, _priv = token_registry
    _docker_config(isolated_env, {registry.host: {"username": USER, "password": "nope-wrong"}})
    with _client(registry.ca_file) as client, pytest.raises(DeniedError) as err:
        client.resolve(parse_reference(f"{registry.host}/priv/app:v1", what="x"), AMD64)
    assert "token service" in str(err.value)
    assert_no_leak(str(err.value), ["nope-wrong", PASSWORD])


def test_realm_on_another_host_gets_no_credentials(
    tmp_path_factory: pytest.TempPathFactory, isolated_env: Path
) -> None:
    # The realm named "localhost" while the registry is 127.0.0.1 (ADVERSARIAL 49, with the
    # real token flow): same machine, but another host name, so the Basic pair stays home.
    work = tmp_path_factory.mktemp("tokenreg-localhost")
    with TokenRegistry(
        work / "reg", {USER: PASSWORD}, public={"pub/app"}, realm_host="localhost"
    ) as registry:
        write_layout(work / "img", "v1", _layers("loc")[:1])
        pub = push(work / "img", "v1", registry, "pub/app", username=USER, password=PASSWORD)
        push(work / "img", "v1", registry, "priv/app", username=USER, password=PASSWORD)
        _docker_config(isolated_env, {registry.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
        before = len(registry.token_requests)
        with _client(registry.ca_file) as client:
            assert (
                client.resolve(
                    parse_reference(f"{registry.host}/pub/app:v1", what="x"), AMD64
                ).digest
                == pub
            )
            with pytest.raises(DeniedError) as err:
                client.resolve(parse_reference(f"{registry.host}/priv/app:v1", what="x"), AMD64)
        assert registry.token_requests[before:]
        assert not any(r.basic for r in registry.token_requests[before:])
        assert "were not sent to the token service localhost" in str(err.value)


# --------------------------------------------------------------------------------------------
# A registry without auth, faults and what a well-behaved registry never does (hostile peer)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[HostileRegistry]:
    with HostileRegistry(tmp_path / "hostile") as reg:
        yield reg


@pytest.fixture
def other(tmp_path: Path) -> Iterator[OtherHost]:
    with OtherHost(tmp_path / "other") as host:
        yield host


LAYER = layer_tar([LayerFile("f", os.urandom(5000))])


def test_anonymous_on_a_registry_without_auth(
    hostile: HostileRegistry, isolated_env: Path, tmp_path: Path
) -> None:
    _docker_config(isolated_env, {hostile.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    digest = hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    with _client(hostile.ca_file) as client:
        image = client.resolve(parse_reference(f"{hostile.host}/org/app:v1", what="x"), AMD64)
        assert image.digest == digest
        assert _fetch_all(client, image, tmp_path) == [LAYER]
    assert all(r.authorization is None for r in hostile.requests)  # never asked: never sent


def test_index_entry_chosen_as_containerd_would(
    hostile: HostileRegistry, isolated_env: Path
) -> None:
    """The best compatible entry wins, an exact one first; index order breaks ties."""
    images = {
        plat: hostile.add_image("org/app", plat.replace("/", "-"), [LAYER], platform=plat)
        for plat in ("linux/arm/v5", "linux/arm/v6", "linux/amd64/v2", "linux/386", "linux/arm64")
    }
    hostile.add_index(
        "org/app", "old-arm", {p: images[p] for p in ("linux/arm/v5", "linux/arm/v6")}
    )
    hostile.add_index("org/app", "x86", {p: images[p] for p in ("linux/386", "linux/amd64/v2")})
    hostile.add_index("org/app", "all", images)
    with _client(hostile.ca_file) as client:

        def pick(tag: str, want: str) -> str:
            ref = parse_reference(f"{hostile.host}/org/app:{tag}", what="x")
            return client.resolve(ref, Platform.parse(want, what="x")).digest

        assert pick("old-arm", "linux/arm/v7") == images["linux/arm/v6"]
        assert pick("old-arm", "linux/armhf") == images["linux/arm/v6"]
        assert pick("old-arm", "linux/arm") == images["linux/arm/v6"]
        assert pick("old-arm", "linux/arm64") == images["linux/arm/v6"]
        assert pick("old-arm", "linux/arm/v6") == images["linux/arm/v6"]
        assert pick("old-arm", "linux/armel") == images["linux/arm/v6"]
        assert pick("old-arm", "linux/arm/v5") == images["linux/arm/v5"]
        assert pick("x86", "linux/amd64/v3") == images["linux/amd64/v2"]
        assert pick("x86", "linux/amd64") == images["linux/386"]
        assert pick("all", "linux/aarch64") == images["linux/arm64"]  # exact beats arm/v6
        with pytest.raises(StepkitError) as err:
            pick("x86", "linux/arm/v7")
    assert "linux/arm/v7" in str(err.value) and "linux/386" in str(err.value)


def test_transient_errors_retried_4xx_not(
    hostile: HostileRegistry, isolated_env: Path, tmp_path: Path
) -> None:
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    hostile.fail("/manifests/", status=503, times=2)
    with RegistryClient(ca_file=hostile.ca_file, retries=2, backoff=0.01) as client:
        image = client.resolve(ref, AMD64)
        hostile.fail("/blobs/", status=429, times=1)
        client.fetch_blob(ref, image.layers[0], tmp_path / "l")
        assert (tmp_path / "l").read_bytes() == LAYER
        hostile.fail(image.layers[0].digest, status=502, times=None)
        with pytest.raises(StepkitError, match="gave up after 3 attempts"):
            client.fetch_blob(ref, image.layers[0], tmp_path / "l2")
        assert not (tmp_path / "l2").exists()
    hostile.fail(image.config.digest, status=400, times=None)
    count = len(hostile.requests)
    with (
        RegistryClient(ca_file=hostile.ca_file, retries=3, backoff=0.01) as client,
        pytest.raises(StepkitError, match="HTTP 400"),
    ):
        client.fetch_blob(ref, image.config, tmp_path / "l3")
    assert len(hostile.requests) == count + 1


def test_broken_blob_resumed_with_range(
    hostile: HostileRegistry, isolated_env: Path, tmp_path: Path
) -> None:
    big = os.urandom(3 << 20)
    layer = layer_tar([LayerFile("big", big)], gzip=False)
    hostile.add_image("org/app", "v1", [layer], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with RegistryClient(ca_file=hostile.ca_file, retries=1, backoff=0.01) as client:
        image = client.resolve(ref, AMD64)
        hostile.break_blob(image.layers[0].digest, after=(1 << 20) + 123)
        client.fetch_blob(ref, image.layers[0], tmp_path / "l")
    assert (tmp_path / "l").read_bytes() == layer
    ranges = [r.headers.get("Range") for r in hostile.requests if "/blobs/" in r.path]
    assert ranges == [None, f"bytes={(1 << 20) + 123}-"]


def test_resume_ignored_by_server_restarts(
    hostile: HostileRegistry, isolated_env: Path, tmp_path: Path
) -> None:
    hostile.honour_range = False
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with RegistryClient(ca_file=hostile.ca_file, retries=1, backoff=0.01) as client:
        image = client.resolve(ref, AMD64)
        hostile.break_blob(image.layers[0].digest, after=1000)
        seen: list[int] = []
        client.fetch_blob(ref, image.layers[0], tmp_path / "l", progress=seen.append)
    assert (tmp_path / "l").read_bytes() == LAYER
    assert sum(seen) == len(LAYER) and -1000 in seen


@pytest.mark.parametrize("serve", ["other", "longer", "longer-chunked", "shorter"])
def test_blob_not_matching_its_digest_is_removed(
    hostile: HostileRegistry, isolated_env: Path, tmp_path: Path, serve: str
) -> None:
    # ADVERSARIAL 45 at the client: refused, and nothing left at dest.
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with _client(hostile.ca_file) as client:
        image = client.resolve(ref, AMD64)
        desc = image.layers[0]
        bad = {
            "other": b"y" * len(LAYER),
            "longer": LAYER + b"extra",
            "longer-chunked": LAYER + b"extra",
            "shorter": LAYER[:-10],
        }[serve]
        hostile.add_blob(LAYER, digest=desc.digest, serve=bad, chunked=serve == "longer-chunked")
        with pytest.raises(StepkitError) as err:
            client.fetch_blob(ref, desc, tmp_path / "l")
    assert not (tmp_path / "l").exists()
    assert desc.digest in str(err.value)


def test_foreign_layer_refused_unfetched(
    hostile: HostileRegistry, isolated_env: Path, tmp_path: Path
) -> None:
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with _client(hostile.ca_file) as client:
        for desc in (
            Descriptor(
                "application/vnd.oci.image.layer.v1.tar", D, 10, urls=("https://example.com/x",)
            ),
            Descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", D, 10),
            Descriptor("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", D, 10),
        ):
            with pytest.raises(StepkitError, match="foreign"):
                client.fetch_blob(ref, desc, tmp_path / "l")
            assert not (tmp_path / "l").exists()
    assert hostile.requests == []


def test_redirects_never_carry_authorization_elsewhere(
    hostile: HostileRegistry, other: OtherHost, isolated_env: Path, tmp_path: Path
) -> None:
    # ADVERSARIAL 48 at the client.
    _docker_config(isolated_env, {hostile.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    hostile.require_basic(USER, PASSWORD)
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with _client(hostile.ca_file) as client:
        image = client.resolve(ref, AMD64)
        digest = image.layers[0].digest
        other.serve("/storage/blob", LAYER)
        hostile.redirect_blob(digest, other.url + "/storage/blob")
        client.fetch_blob(ref, image.layers[0], tmp_path / "l")
        assert (tmp_path / "l").read_bytes() == LAYER
        for target in (f"http://{other.host}/storage/blob", "file:///etc/passwd", "ftp://x/y"):
            hostile.redirect_blob(digest, target)
            with pytest.raises(StepkitError, match="refused"):
                client.fetch_blob(ref, image.layers[0], tmp_path / "l")
            assert not (tmp_path / "l").exists()
    assert other.requests and all(r.authorization is None for r in other.requests)
    assert any(r.authorization for r in hostile.requests)


@pytest.mark.parametrize("where", ["other-host", "http"])
def test_realm_elsewhere_gets_no_basic_credentials(
    hostile: HostileRegistry,
    other: OtherHost,
    isolated_env: Path,
    where: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # ADVERSARIAL 49 at the client.
    _docker_config(isolated_env, {hostile.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
    other.issue_tokens("/token", credentials=(USER, PASSWORD))
    realm = other.url + "/token" if where == "other-host" else f"http://{other.host}/token"
    hostile.require_bearer(realm)
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    with _client(hostile.ca_file) as client, pytest.raises(StepkitError) as err:
        client.resolve(parse_reference(f"{hostile.host}/org/app:v1", what="x"), AMD64)
    assert other.host.split(":")[0] in str(err.value)
    assert all(r.authorization is None for r in other.requests)
    assert all(t.basic is None for t in other.token_requests)
    assert_no_leak(str(err.value) + caplog.text, [PASSWORD, f"{USER}:{PASSWORD}"])


def test_manifest_lies_refused(hostile: HostileRegistry, isolated_env: Path) -> None:
    # ADVERSARIAL 46 and digest checks at the client.
    with _client(hostile.ca_file) as client:

        def resolve(tag: str) -> str:
            with pytest.raises(StepkitError) as err:
                client.resolve(parse_reference(f"{hostile.host}/org/app:{tag}", what="x"), AMD64)
            return str(err.value)

        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": D,
                "size": 2,
            },
            "layers": [],
        }
        hostile.add_manifest("org/app", "ctype", body, content_type=OCI_INDEX)
        assert "served as" in resolve("ctype")
        hostile.add_manifest("org/app", "both", {**body, "manifests": []})
        assert "CVE-2021-41190" in resolve("both")
        hostile.add_manifest("org/app", "wrongdigest", body, digest_header="sha256:" + "1" * 64)
        assert "hash to" in resolve("wrongdigest")
        hostile.add_manifest("org/app", "baddigest", body, digest_header="sha256:../../etc/passwd")
        assert "digest" in resolve("baddigest")
        hostile.add_manifest(
            "org/app",
            "layerdigest",
            {**body, "layers": [{"mediaType": "x", "digest": "sha256:../x", "size": 1}]},
        )
        assert "layers[0]" in resolve("layerdigest")
        hostile.add_manifest("org/app", "big", {**body, "pad": "x" * (4 << 20)})
        assert "4 MiB" in resolve("big")
        hostile.add_manifest(
            "org/app",
            "schema1",
            {"schemaVersion": 1, "name": "org/app", "fsLayers": []},
            media_type="application/vnd.docker.distribution.manifest.v1+prettyjws",
        )
        assert "schema 1" in resolve("schema1")


def test_index_cycles_and_depth_bounded(hostile: HostileRegistry, isolated_env: Path) -> None:
    # ADVERSARIAL 53 at the client.
    leaf = hostile.add_image("org/app", "leaf", [LAYER])
    current = Platform.current()
    hostile.add_index_chain("org/app", "deep", 5, leaf=leaf)
    hostile.add_index_chain("org/app", "ok", 4, leaf=leaf)
    hostile.add_index_cycle("org/app", "cycle")
    with _client(hostile.ca_file) as client:
        assert (
            client.resolve(parse_reference(f"{hostile.host}/org/app:ok", what="x"), current).digest
            == leaf
        )
        with pytest.raises(StepkitError, match="deeper than 4"):
            client.resolve(parse_reference(f"{hostile.host}/org/app:deep", what="x"), current)
        with pytest.raises(StepkitError, match="hash to"):
            client.resolve(parse_reference(f"{hostile.host}/org/app:cycle", what="x"), current)


def test_plain_http_only_for_registries_named_insecure(tmp_path: Path, isolated_env: Path) -> None:
    with HostileRegistry(tmp_path / "plain", tls=False) as plain:
        _docker_config(isolated_env, {plain.host: {"auth": _b64(f"{USER}:{PASSWORD}")}})
        plain.require_basic(USER, PASSWORD)
        digest = plain.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
        ref = parse_reference(f"{plain.host}/org/app:v1", what="x")
        with _client(None) as client, pytest.raises(StepkitError) as err:
            client.resolve(ref, AMD64)
        assert "TLS" in str(err.value)
        assert all(r.authorization is None for r in plain.requests)
        with _client(None, insecure=[plain.host]) as client:
            image = client.resolve(ref, AMD64)
            client.fetch_blob(ref, image.layers[0], tmp_path / "l")
        assert image.digest == digest and (tmp_path / "l").read_bytes() == LAYER
        assert any(r.authorization for r in plain.requests)


def test_identity_token_is_exchanged_at_the_registry_realm(
    hostile: HostileRegistry, isolated_env: Path
) -> None:
    _docker_config(isolated_env, {hostile.host: {"identitytoken": "refresh-Token-77"}})
    hostile.issue_tokens("/token")
    hostile.require_bearer(hostile.url + "/token", service="svc")
    digest = hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    with _client(hostile.ca_file) as client:
        image = client.resolve(parse_reference(f"{hostile.host}/org/app:v1", what="x"), AMD64)
    assert image.digest == digest
    (asked,) = hostile.token_requests
    assert asked.request.method == "POST"
    assert asked.params.get("grant_type") == "refresh_token"
    assert asked.params.get("refresh_token") == "refresh-Token-77"
    assert (asked.scope, asked.service) == ("repository:org/app:pull", "svc")


def test_unwritable_dest_is_a_clear_error(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with _client(hostile.ca_file) as client:
        image = client.resolve(ref, AMD64)
        with pytest.raises(StepkitError, match="cannot create"):
            client.fetch_blob(ref, image.layers[0], tmp_path / "missing" / "l")
        (tmp_path / "link").symlink_to(tmp_path / "target")
        with pytest.raises(StepkitError, match="cannot create"):
            client.fetch_blob(ref, image.layers[0], tmp_path / "link")
        assert not (tmp_path / "target").exists()


@pytest.mark.parametrize(
    "location", ["https://[::1/x", "https://host:port/x", "//", "https://user:pw@127.0.0.1/x"]
)
def test_malformed_redirect_refused(
    hostile: HostileRegistry, tmp_path: Path, location: str
) -> None:
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with _client(hostile.ca_file) as client:
        image = client.resolve(ref, AMD64)
        hostile.redirect_blob(image.layers[0].digest, location)
        with pytest.raises(StepkitError, match=r"refused|bad URL"):
            client.fetch_blob(ref, image.layers[0], tmp_path / "l")
    assert not (tmp_path / "l").exists()


def test_redirect_loop_bounded(hostile: HostileRegistry, tmp_path: Path) -> None:
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    ref = parse_reference(f"{hostile.host}/org/app:v1", what="x")
    with _client(hostile.ca_file) as client:
        image = client.resolve(ref, AMD64)
        digest = image.layers[0].digest
        hostile.redirect_blob(digest, f"/v2/org/app/blobs/{digest}")
        with pytest.raises(StepkitError, match="more than 5 redirects"):
            client.fetch_blob(ref, image.layers[0], tmp_path / "l")
    assert len([r for r in hostile.requests if "/blobs/" in r.path]) == 6


@pytest.mark.parametrize(
    "realm",
    ["https://x:port/t", "file:///etc/passwd", "https://[::1/t", "https://u:p@127.0.0.1/t", ""],
)
def test_malformed_realm_refused(hostile: HostileRegistry, isolated_env: Path, realm: str) -> None:
    hostile.require_bearer(realm)
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    with _client(hostile.ca_file) as client, pytest.raises(StepkitError) as err:
        client.resolve(parse_reference(f"{hostile.host}/org/app:v1", what="x"), AMD64)
    assert not isinstance(err.value, InputError)


@pytest.mark.parametrize(
    ("realm", "registry", "trusted"),
    [
        ("https://gitlab.com/jwt/auth", "registry.gitlab.com", True),  # a parent domain
        ("https://ghcr.io/token", "ghcr.io", True),
        ("https://auth.docker.io/token", "registry-1.docker.io", True),  # Docker Hub's own
        ("https://evil.example/token", "registry.gitlab.com", False),
        ("https://gitlab.com.evil.example/t", "registry.gitlab.com", False),
        ("https://lab.com/t", "registry.gitlab.com", False),  # a suffix, not a parent domain
        ("https://com/t", "registry.gitlab.com", False),  # a single label is no parent domain
        ("https://0.1/t", "127.0.0.1", False),  # IP addresses have no parent domains
        ("http://gitlab.com/jwt/auth", "registry.gitlab.com", False),  # never over plain HTTP
    ],
)
def test_which_token_realms_get_basic_credentials(realm: str, registry: str, trusted: bool) -> None:
    # A unit test on purpose: every peer here listens on 127.0.0.x, and no real peer can give
    # a loopback server the host names this rule is about.
    from urllib.parse import urlsplit

    client = RegistryClient()
    try:
        assert client._realm_trusted(urlsplit(realm), registry) is trusted
    finally:
        client.close()


@pytest.mark.parametrize(
    ("named", "realm", "trusted"),
    [
        ("gitlab.example.com", "https://gitlab.example.com/jwt/auth", True),
        ("gitlab.example.com", "https://GitLab.Example.com:8443/jwt/auth", True),  # any port
        ("gitlab.example.com:8443", "https://gitlab.example.com:8443/jwt/auth", True),
        ("gitlab.example.com:8443", "https://gitlab.example.com/jwt/auth", False),
        ("gitlab.example.com:443", "https://gitlab.example.com/jwt/auth", True),
        ("gitlab.example.com", "http://gitlab.example.com/jwt/auth", False),  # never plain HTTP
        ("gitlab.example.com", "https://evil.example/jwt/auth", False),
        ("gitlab.example.com", "https://gitlab.example.com.evil.example/t", False),
        ("[::1]", "https://[::1]:5001/t", True),
    ],
)
def test_token_realm_hosts_named_by_the_user(named: str, realm: str, trusted: bool) -> None:
    # Unit level for the same reason as above: real host names cannot point at a loopback peer.
    from urllib.parse import urlsplit

    client = RegistryClient(token_realm_hosts=[named])
    try:
        assert client._realm_trusted(urlsplit(realm), "registry.example.com") is trusted
    finally:
        client.close()


class _AuthProxyHandler(socketserver.StreamRequestHandler):
    """A CONNECT proxy that wants Proxy-Authorization, as corporate proxies do.

    No peer in tests/peers.py authenticates proxy clients (FlakyProxy and FailingHttpProxy
    only forward), so this minimal one lives here.
    """

    def handle(self) -> None:
        server: Any = self.server
        request = self.rfile.readline().decode("latin-1").split()
        headers: dict[str, str] = {}
        while (line := self.rfile.readline().decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        server.seen.append(headers.get("proxy-authorization"))
        if headers.get("proxy-authorization") != server.want:
            self.wfile.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
            self.wfile.write(b'Proxy-Authenticate: Basic realm="p"\r\nContent-Length: 0\r\n\r\n')
            return
        host, _, port = request[1].rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)))
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        sockets = [self.connection, upstream]
        try:
            while True:
                ready, _, _ = select.select(sockets, [], [], 10)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()


def test_https_proxy_with_credentials_in_its_url(
    hostile: HostileRegistry,
    isolated_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # HTTPS_PROXY=http://user:pass@proxy:port is how an authenticating proxy is named;
    # urllib3's ProxyManager ignores the URL's user info, so it must become a header.
    hostile.add_image("org/app", "v1", [LAYER], platform="linux/amd64")
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _AuthProxyHandler)
    server.daemon_threads = True
    proxy_secret = "pr0xy-s3cret"
    server.want = "Basic " + _b64(f"puser:{proxy_secret}")  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proxy = f"http://puser:{proxy_secret}@127.0.0.1:{server.server_address[1]}"
        for name in ("HTTPS_PROXY", "https_proxy"):
            monkeypatch.setenv(name, proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        with _client(hostile.ca_file) as client:
            image = client.resolve(parse_reference(f"{hostile.host}/org/app:v1", what="x"), AMD64)
            assert _fetch_all(client, image, tmp_path) == [LAYER]
        assert server.seen and all(s == server.want for s in server.seen)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
