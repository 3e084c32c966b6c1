"""Self-tests of tests/hostile_registry.py: each misbehaviour really happens on the wire."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tests.hostile_registry import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    OTHER_LOOPBACK,
    HostileRegistry,
    OtherHost,
    all_requests,
    current_platform,
    platform_dict,
    sha256,
)

BASIC = "Basic " + base64.b64encode(b"alice:s3cret").decode()


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[HostileRegistry]:
    with HostileRegistry(tmp_path / "reg") as server:
        yield server


@pytest.fixture
def other(tmp_path: Path) -> Iterator[OtherHost]:
    with OtherHost(tmp_path / "other") as server:
        yield server


def _client(ca_file: Path) -> urllib3.PoolManager:
    # No redirects followed and no retries: each test sees exactly what the server answered.
    return urllib3.PoolManager(ca_certs=str(ca_file), retries=False, timeout=30.0)


def _get(
    http: urllib3.PoolManager, url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> urllib3.BaseHTTPResponse:
    return http.request(method, url, headers=headers or {}, redirect=False)


def _challenge(header: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def test_blob_served_with_other_bytes_than_its_digest(reg: HostileRegistry) -> None:
    http = _client(reg.ca_file)
    wrong = reg.add_blob(b"promised bytes", serve=b"other bytes!!!")
    longer = reg.add_blob(b"promised", serve=b"promised and then some")
    streamed = reg.add_blob(b"promised", digest=sha256(b"x"), serve=b"promised+", chunked=True)

    resp = _get(http, f"{reg.url}/v2/org/app/blobs/{wrong}")
    assert resp.status == 200
    assert resp.data == b"other bytes!!!"
    assert sha256(resp.data) != wrong
    assert resp.headers["Docker-Content-Digest"] == wrong

    resp = _get(http, f"{reg.url}/v2/any/repo/blobs/{longer}")
    assert resp.data == b"promised and then some"
    assert resp.headers["Content-Length"] == str(len(b"promised and then some"))

    resp = _get(http, f"{reg.url}/v2/org/app/blobs/{streamed}")
    assert resp.data == b"promised+"
    assert "Content-Length" not in resp.headers
    assert resp.headers["Transfer-Encoding"] == "chunked"

    resp = _get(http, f"{reg.url}/v2/org/app/blobs/{sha256(b'never added')}")
    assert resp.status == 404
    assert json.loads(resp.data)["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_manifest_content_type_differs_from_its_media_type(reg: HostileRegistry) -> None:
    http = _client(reg.ca_file)
    image = reg.add_image("org/app", "v1", [b"layer one"])
    body = _get(http, f"{reg.url}/v2/org/app/manifests/v1").data
    lying = reg.add_manifest("org/app", "lie", body, content_type=DOCKER_MANIFEST)
    assert lying == image == sha256(body)

    for method in ("GET", "HEAD"):
        resp = _get(http, f"{reg.url}/v2/org/app/manifests/lie", method=method)
        assert resp.status == 200
        assert resp.headers["Content-Type"] == DOCKER_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == image
        assert resp.headers["Content-Length"] == str(len(body))
    assert json.loads(_get(http, f"{reg.url}/v2/org/app/manifests/lie").data)["mediaType"] == (
        OCI_MANIFEST
    )
    # The honest tag and the digest still answer the truth.
    resp = _get(http, f"{reg.url}/v2/org/app/manifests/{image}")
    assert resp.headers["Content-Type"] == OCI_MANIFEST
    # Manifests belong to their repository.
    assert _get(http, f"{reg.url}/v2/org/other/manifests/v1").status == 404


def test_manifest_with_both_manifests_and_layers_and_a_false_digest_header(
    reg: HostileRegistry,
) -> None:
    http = _client(reg.ca_file)
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "manifests": [],
        "layers": [],
    }
    true = reg.add_manifest("org/app", "both", body, digest_header=sha256(b"claimed"))
    resp = _get(http, f"{reg.url}/v2/org/app/manifests/both")
    assert sha256(resp.data) == true
    assert resp.headers["Docker-Content-Digest"] == sha256(b"claimed")
    reg.add_manifest("org/app", "nodigest", b'{"mediaType":"x"}', digest_header="")
    resp = _get(http, f"{reg.url}/v2/org/app/manifests/nodigest")
    assert resp.headers["Content-Type"] == "x"
    assert "Docker-Content-Digest" not in resp.headers


def test_redirect_reaches_other_host_which_records_headers(
    reg: HostileRegistry, other: OtherHost
) -> None:
    http = _client(reg.ca_file)  # the registry's CA file is trusted for the other host too
    reg.require_basic("alice", "s3cret")
    layer = reg.add_blob(b"layer bytes")
    other.serve("/storage/layer", b"layer bytes", headers={"Content-Type": "x-test/blob"})
    reg.redirect_blob(layer, other.url + "/storage/layer?sig=1")

    resp = _get(http, f"{reg.url}/v2/org/app/blobs/{layer}", {"Authorization": BASIC})
    assert resp.status == 307
    assert resp.headers["Location"] == other.url + "/storage/layer?sig=1"
    # A careless client that carries the registry's credentials along: the other host sees them.
    resp = _get(http, resp.headers["Location"], {"Authorization": BASIC, "X-Probe": "1"})
    assert resp.status == 200
    assert resp.data == b"layer bytes"
    assert resp.headers["Content-Type"] == "x-test/blob"
    careless = other.requests[-1]
    assert careless.authorization == BASIC
    assert careless.headers["x-probe"] == "1"
    assert careless.path == "/storage/layer?sig=1"
    assert careless.server == other.host
    assert careless.status == 200

    # urllib3 following the redirect itself drops Authorization on the way to another host.
    resp = http.request(
        "GET",
        f"{reg.url}/v2/org/app/blobs/{layer}",
        headers={"Authorization": BASIC},
        redirect=True,
        retries=urllib3.Retry(total=2, redirect=2),
    )
    assert resp.data == b"layer bytes"
    assert other.requests[-1].authorization is None
    assert [r.server for r in all_requests(reg, other)] == [reg.host, other.host] * 2
    if other.host.startswith(OTHER_LOOPBACK):
        assert other.url.startswith(f"https://{OTHER_LOOPBACK}:")


def test_bearer_challenge_points_at_the_other_hosts_token_endpoint(
    reg: HostileRegistry, other: OtherHost
) -> None:
    http = _client(reg.ca_file)
    image = reg.add_image("org/app", "v1", [b"layer"])
    other.issue_tokens("/token")
    reg.require_bearer(other.url + "/token")

    resp = _get(http, f"{reg.url}/v2/")
    assert resp.status == 401
    assert _challenge(resp.headers["WWW-Authenticate"]) == {
        "realm": other.url + "/token",
        "service": "hostile",
    }
    resp = _get(http, f"{reg.url}/v2/org/app/manifests/v1")
    challenge = _challenge(resp.headers["WWW-Authenticate"])
    assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
    assert challenge["scope"] == "repository:org/app:pull"

    # Sending Basic credentials to the realm is the leak item 49 is about: it is recorded.
    realm = f"{challenge['realm']}?service={challenge['service']}&scope={challenge['scope']}"
    resp = _get(http, realm, {"Authorization": BASIC})
    token = json.loads(resp.data)["token"]
    asked = other.token_requests[-1]
    assert asked.basic == ("alice", "s3cret")
    assert asked.scope == "repository:org/app:pull"
    assert asked.service == "hostile"

    assert (
        _get(http, f"{reg.url}/v2/org/app/manifests/v1", {"Authorization": "Bearer nope"}).status
        == 401
    )
    resp = _get(http, f"{reg.url}/v2/org/app/manifests/v1", {"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert sha256(resp.data) == image

    # An anonymous token request (and a POST, the OAuth2 form) is recorded without credentials.
    resp = http.request("POST", other.url + "/token", fields={"scope": "x"}, encode_multipart=False)
    assert resp.status == 200
    assert other.token_requests[-1].basic is None
    assert other.token_requests[-1].scope == "x"


def test_token_endpoint_over_plain_http_and_with_credentials(
    tmp_path: Path, reg: HostileRegistry
) -> None:
    with OtherHost(tmp_path / "plain", tls=False) as plain:
        plain.issue_tokens("/auth", credentials=("alice", "s3cret"), field="access_token")
        reg.require_bearer(plain.url + "/auth", service="svc")
        http = _client(reg.ca_file)
        header = _get(http, f"{reg.url}/v2/").headers["WWW-Authenticate"]
        assert _challenge(header)["realm"].startswith("http://")
        assert _get(http, plain.url + "/auth").status == 401
        resp = _get(http, plain.url + "/auth", {"Authorization": BASIC})
        token = json.loads(resp.data)["access_token"]
        assert _get(http, f"{reg.url}/v2/", {"Authorization": f"Bearer {token}"}).status == 200
        assert [t.basic for t in plain.token_requests] == [None, ("alice", "s3cret")]


def test_require_basic(reg: HostileRegistry) -> None:
    http = _client(reg.ca_file)
    reg.require_basic("alice", "s3cret")
    resp = _get(http, f"{reg.url}/v2/")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    wrong = "Basic " + base64.b64encode(b"alice:wrong").decode()
    assert _get(http, f"{reg.url}/v2/", {"Authorization": wrong}).status == 401
    assert _get(http, f"{reg.url}/v2/", {"Authorization": BASIC}).status == 200
    assert [r.status for r in reg.requests] == [401, 401, 200]
    assert reg.requests[-1].authorization == BASIC
    reg.require_bearer("https://x.invalid/t", header='Bearer realm="https://evil/"')
    assert (
        _get(http, f"{reg.url}/v2/").headers["WWW-Authenticate"] == 'Bearer realm="https://evil/"'
    )
    reg.no_auth()
    assert _get(http, f"{reg.url}/v2/").status == 200


def _walk(http: urllib3.PoolManager, reg: HostileRegistry, repo: str, ref: str) -> list[str]:
    """Follow manifests[0] from `ref`, verifying each hop, until a non-index; return digests."""
    seen = []
    while True:
        resp = _get(http, f"{reg.url}/v2/{repo}/manifests/{ref}")
        assert resp.status == 200
        seen.append(sha256(resp.data))
        doc: dict[str, Any] = json.loads(resp.data)
        if doc["mediaType"] != OCI_INDEX:
            return seen
        entry = doc["manifests"][0]
        assert entry["platform"] == platform_dict(current_platform())
        ref = entry["digest"]
        size = entry["size"]
        resp = _get(http, f"{reg.url}/v2/{repo}/manifests/{ref}", method="HEAD")
        assert resp.headers["Content-Length"] == str(size)


def test_index_chain_deeper_than_any_bound(reg: HostileRegistry) -> None:
    http = _client(reg.ca_file)
    image = reg.add_image("org/app", "img", [b"layer"])
    chain = reg.add_index_chain("org/app", "deep", 40, leaf=image)
    assert len(set(chain)) == 40
    assert _walk(http, reg, "org/app", "deep") == [*chain, image]

    # Without a leaf, the innermost index names a manifest that is not there.
    chain = reg.add_index_chain("org/app", "dangling", 3)
    last = json.loads(_get(http, f"{reg.url}/v2/org/app/manifests/{chain[-1]}").data)
    missing = last["manifests"][0]["digest"]
    assert _get(http, f"{reg.url}/v2/org/app/manifests/{missing}").status == 404


def test_index_cycle_through_a_lying_digest(reg: HostileRegistry) -> None:
    http = _client(reg.ca_file)
    true, claimed = reg.add_index_cycle("org/app", "cycle")
    assert true != claimed
    first = _get(http, f"{reg.url}/v2/org/app/manifests/cycle")
    entry = json.loads(first.data)["manifests"][0]
    assert entry["digest"] == claimed
    assert entry["size"] == len(first.data)
    assert first.headers["Content-Type"] == OCI_INDEX
    # Asked for `claimed`, the server answers the same index again, and says it is `claimed`.
    again = _get(http, f"{reg.url}/v2/org/app/manifests/{claimed}")
    assert again.data == first.data
    assert again.headers["Docker-Content-Digest"] == claimed
    assert sha256(again.data) == true != claimed


def test_fail_break_and_range(reg: HostileRegistry) -> None:
    http = _client(reg.ca_file)
    data = bytes(range(256)) * 64
    blob = reg.add_blob(data)
    url = f"{reg.url}/v2/org/app/blobs/{blob}"
    reg.fail("/blobs/", status=503, times=1, headers={"Retry-After": "0"})
    resp = _get(http, url)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "0"
    assert _get(http, url).data == data

    reg.break_blob(blob, after=1000)
    resp = http.request("GET", url, preload_content=False, redirect=False)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(data))
    with pytest.raises(urllib3.exceptions.HTTPError):
        resp.read()
    resp.release_conn()
    resp = _get(http, url, {"Range": "bytes=1000-"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert resp.data == data[1000:]
    assert _get(http, url, {"Range": f"bytes={len(data)}-"}).status == 416

    reg.honour_range = False
    resp = _get(http, url, {"Range": "bytes=1000-"})
    assert resp.status == 200
    assert resp.data == data

    reg.fail("manifests", status=429, times=None)
    for _ in range(3):
        assert _get(http, f"{reg.url}/v2/org/app/manifests/x").status == 429


def test_shared_ca_own_ca_and_plain_http(tmp_path: Path, reg: HostileRegistry) -> None:
    with (
        OtherHost(tmp_path / "own", own_ca=True) as stranger,
        HostileRegistry(tmp_path / "plain", tls=False) as plain,
    ):
        http = _client(reg.ca_file)
        with pytest.raises(urllib3.exceptions.SSLError):
            _get(http, stranger.url + "/x")
        assert stranger.requests == []
        assert _get(_client(stranger.ca_file), stranger.url + "/x").status == 404
        assert plain.url.startswith("http://")
        assert _get(http, plain.url + "/v2/").status == 200
        assert plain.requests[0].headers["host"] == plain.host
