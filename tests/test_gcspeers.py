"""The GCS test peers work, and the facts the gcs-fetcher and uploader tests rely on hold."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
import requests
from google.api_core import exceptions
from google.api_core.retry import Retry
from google.cloud.storage.exceptions import DataCorruption  # type: ignore[import-untyped]
from google.cloud.storage.retry import DEFAULT_RETRY  # type: ignore[import-untyped]

from tests.gcspeers import ANONYMOUS, FakeGcs, GcsFaultProxy, OversizedGcs, PyGcsEmulator
from tests.peers import LOOPBACK, free_port

# The library's default retry waits up to 120 s on a 5xx; tests bound it.
RETRY: Retry = DEFAULT_RETRY.with_timeout(10.0).with_delay(initial=0.05, maximum=0.2)
SHORT_RETRY: Retry = DEFAULT_RETRY.with_timeout(1.0).with_delay(initial=0.05, maximum=0.1)
BUCKET = "stepkit-bucket"


@pytest.fixture
def gcs(tmp_path: Path) -> Iterator[FakeGcs]:
    with FakeGcs(tmp_path / "gcs") as server:
        server.make_bucket(BUCKET, versioning=True)
        yield server


@pytest.fixture
def proxy(gcs: FakeGcs) -> Iterator[GcsFaultProxy]:
    with GcsFaultProxy(gcs) as front:
        yield front


def raw_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP GET, so the server's own answer is seen without a client in between."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def media(name: str, generation: int | None = None) -> str:
    gen = f"&generation={generation}" if generation is not None else ""
    return f"/download/storage/v1/b/{BUCKET}/o/{name}?alt=media{gen}"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def crc32c_b64(data: bytes) -> str:
    digest: bytes = google_crc32c.Checksum(data).digest()  # type: ignore[no-untyped-call]
    return base64.b64encode(digest).decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Starting and stopping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [FakeGcs, PyGcsEmulator])
def test_server_starts_answers_and_leaves_no_process(
    tmp_path: Path, kind: type[FakeGcs] | type[PyGcsEmulator]
) -> None:
    with kind(tmp_path / "gcs") as server:
        pid, port = server.pid, server.port
        assert pid is not None and alive(pid)
        assert server.env["STORAGE_EMULATOR_HOST"] == server.url == f"http://{LOOPBACK}:{port}"
        assert server.env["GOOGLE_CLOUD_PROJECT"] == "stepkit-test"
        assert raw_get(port, "/storage/v1/b?project=stepkit-test")[0] == 200
    assert not alive(pid)
    assert not accepts(port)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url


def test_start_failure_shows_the_servers_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = FakeGcs._argv
    monkeypatch.setattr(FakeGcs, "_argv", lambda self, port: [*argv(self, port), "-no-such-flag"])
    server = FakeGcs(tmp_path / "gcs")
    with pytest.raises(RuntimeError, match="exited with status") as info, server:
        pass
    assert "flag provided but not defined: -no-such-flag" in str(info.value)
    assert server.pid is None


@pytest.mark.parametrize("kind", [FakeGcs, PyGcsEmulator])
def test_a_port_taken_meanwhile_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: type[FakeGcs] | type[PyGcsEmulator]
) -> None:
    # Another process holding the port that free_port() just handed out: the race it retries.
    squatter = socket.socket()
    squatter.bind((LOOPBACK, 0))
    squatter.listen(1)
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    monkeypatch.setattr("tests.gcspeers.free_port", lambda: next(ports, None) or free_port())
    with squatter, kind(tmp_path / "gcs") as server:
        assert server.port != taken
        assert "address already in use" in server.log_path.read_text().lower()
        server.make_bucket("retried")
        assert server.names("retried") == []


# --------------------------------------------------------------------------------------------
# fake-gcs-server facts: generations, ranges, hashes
# --------------------------------------------------------------------------------------------


def test_put_get_round_trip(gcs: FakeGcs) -> None:
    data = bytes(range(256)) * 1000
    generation = gcs.put(BUCKET, "dir/all-bytes.bin", data, content_type="application/x-tar")
    gcs.put(BUCKET, "a.txt", b"a\n")
    assert generation > 0
    assert gcs.get(BUCKET, "dir/all-bytes.bin") == data
    assert gcs.names(BUCKET) == ["a.txt", "dir/all-bytes.bin"]
    blob = gcs.client().bucket(BUCKET).get_blob("dir/all-bytes.bin")
    assert (blob.content_type, blob.size, blob.generation) == (
        "application/x-tar",
        len(data),
        generation,
    )


def test_versioned_bucket_keeps_every_generation(gcs: FakeGcs) -> None:
    gens = [gcs.put(BUCKET, "src.tgz", f"version {i}".encode()) for i in range(3)]
    assert gens == sorted(set(gens))
    assert [gcs.get(BUCKET, "src.tgz", g) for g in gens] == [
        b"version 0",
        b"version 1",
        b"version 2",
    ]
    assert gcs.get(BUCKET, "src.tgz") == b"version 2"
    assert gcs.generations(BUCKET, "src.tgz") == gens
    assert gcs.names(BUCKET) == ["src.tgz"]


def test_unversioned_bucket_drops_old_generations(gcs: FakeGcs) -> None:
    gcs.make_bucket("plain-bucket")
    old = gcs.put("plain-bucket", "a", b"old")
    new = gcs.put("plain-bucket", "a", b"new")
    assert gcs.generations("plain-bucket", "a") == [new]
    with pytest.raises(exceptions.NotFound):
        gcs.get("plain-bucket", "a", old)


def test_client_list_versions_is_not_understood(gcs: FakeGcs) -> None:
    # A fake-gcs-server quirk: it takes versions=true only, and the client sends versions=True.
    gens = [gcs.put(BUCKET, "v", b"1"), gcs.put(BUCKET, "v", b"2")]
    listed = [b.generation for b in gcs.client().list_blobs(BUCKET, versions=True)]
    assert listed == gens[-1:]
    assert gcs.generations(BUCKET, "v") == gens


def test_generation_is_served_for_media_and_metadata(gcs: FakeGcs) -> None:
    old = gcs.put(BUCKET, "src.tgz", b"old bytes")
    new = gcs.put(BUCKET, "src.tgz", b"new bytes, longer")

    status, headers, body = raw_get(gcs.port, media("src.tgz", old))
    assert (status, body, headers["x-goog-generation"]) == (200, b"old bytes", str(old))
    status, headers, body = raw_get(gcs.port, media("src.tgz"))
    assert (status, body, headers["x-goog-generation"]) == (200, b"new bytes, longer", str(new))

    status, _, body = raw_get(gcs.port, f"/storage/v1/b/{BUCKET}/o/src.tgz?generation={old}")
    meta = json.loads(body)
    assert status == 200
    assert (meta["generation"], meta["size"], meta["md5Hash"]) == (
        str(old),
        "9",
        md5_b64(b"old bytes"),
    )

    # A generation that never existed: 404, as plain text for media (GCS answers JSON).
    status, headers, body = raw_get(gcs.port, media("src.tgz", old - 1))
    assert (status, body.strip()) == (404, b"Not Found")
    status, _, body = raw_get(gcs.port, f"/storage/v1/b/{BUCKET}/o/src.tgz?generation={old - 1}")
    assert status == 404 and json.loads(body)["error"]["code"] == 404


def test_media_link_carries_no_generation(gcs: FakeGcs) -> None:
    # The trap for a fetcher: after get_blob(generation=old), the client downloads from the
    # server's mediaLink, which fake-gcs-server writes without ?generation=, so it gets the
    # live bytes. A blob built with the generation (no reload) asks for the right one.
    old = gcs.put(BUCKET, "src.tgz", b"old")
    gcs.put(BUCKET, "src.tgz", b"new")
    bucket = gcs.client().bucket(BUCKET)
    loaded = bucket.get_blob("src.tgz", generation=old)
    assert loaded.generation == old and loaded.size == 3
    assert "generation=" not in loaded.media_link
    assert loaded.download_as_bytes() == b"new"
    assert bucket.blob("src.tgz", generation=old).download_as_bytes() == b"old"


def test_range_requests(gcs: FakeGcs) -> None:
    data = b"0123456789abcdef"
    old = gcs.put(BUCKET, "r.bin", data)
    gcs.put(BUCKET, "r.bin", b"something else entirely")
    cases = {"bytes=2-5": (b"2345", "bytes 2-5/16"), "bytes=10-": (b"abcdef", "bytes 10-15/16")}
    cases["bytes=-3"] = (b"def", "bytes 13-15/16")
    for spec, (want, content_range) in cases.items():
        status, headers, body = raw_get(gcs.port, media("r.bin", old), {"Range": spec})
        assert (status, body, headers["content-range"]) == (206, want, content_range), spec
    status, headers, _ = raw_get(gcs.port, media("r.bin", old), {"Range": "bytes=99-"})
    assert status == 416
    blob = gcs.client().bucket(BUCKET).blob("r.bin", generation=old)
    assert blob.download_as_bytes(start=4, end=7) == b"4567"


def test_hashes_in_headers_and_metadata(gcs: FakeGcs) -> None:
    data = os.urandom(100_000)
    old = gcs.put(BUCKET, "h.bin", data)
    gcs.put(BUCKET, "h.bin", b"newer")
    want = f"crc32c={crc32c_b64(data)},md5={md5_b64(data)}"
    for path in (media("h.bin", old), f"/storage/v1/b/{BUCKET}/o/h.bin?alt=media&generation={old}"):
        status, headers, body = raw_get(gcs.port, path)
        assert (status, body, headers["x-goog-hash"]) == (200, data, want)
    # A ranged answer carries the whole object's hash, not the range's.
    _, headers, _ = raw_get(gcs.port, media("h.bin", old), {"Range": "bytes=0-9"})
    assert headers["x-goog-hash"] == want
    blob = gcs.client().bucket(BUCKET).blob("h.bin", generation=old)
    blob.reload()
    assert (blob.md5_hash, blob.crc32c) == (md5_b64(data), crc32c_b64(data))


# --------------------------------------------------------------------------------------------
# The proxy: every request of a real client goes through it
# --------------------------------------------------------------------------------------------

_CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from google.cloud import storage

    client = storage.Client()  # everything from the environment, as a helper does it
    bucket = client.bucket(sys.argv[1])
    old = int(sys.argv[2])
    out = {}
    blob = bucket.get_blob("src.tgz")
    out["live"] = blob.download_as_bytes().decode()  # through mediaLink
    out["old"] = bucket.blob("src.tgz", generation=old).download_as_bytes().decode()
    out["range"] = bucket.blob("src.tgz").download_as_bytes(start=0, end=2).decode()
    out["names"] = [b.name for b in client.list_blobs(sys.argv[1])]
    # Over 8 MiB, so a resumable session (the client sends smaller objects in one request).
    up = bucket.blob("up/big.bin", chunk_size=4 * 1024 * 1024)
    up.upload_from_string(b"u" * (9 * 1024 * 1024))
    out["uploaded"] = up.generation
    print(json.dumps(out))
    """
)


def test_client_from_environment_goes_only_through_the_proxy(
    gcs: FakeGcs, proxy: GcsFaultProxy
) -> None:
    old = gcs.put(BUCKET, "src.tgz", b"old")
    gcs.put(BUCKET, "src.tgz", b"live")
    before = len(gcs.request_log())
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(gcs.workdir), **proxy.env}
    proc = subprocess.run(
        [sys.executable, "-c", _CLIENT_SCRIPT, BUCKET, str(old)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = [(method, path) for method, path, _ in proxy.requests]
    # Everything the server answered meanwhile, it answered to the proxy: the same requests
    # (mediaLink downloads and resumable chunks too, whose URLs come from the server's JSON).
    # Sorted, since the client fetches bucket metadata in a thread of its own.
    deadline = time.monotonic() + 10
    while len(upstream := gcs.request_log()[before:]) < len(seen) and time.monotonic() < deadline:
        time.sleep(0.05)  # the server writes its access-log line just after answering
    assert sorted((method, path) for method, path, _ in upstream) == sorted(seen)
    assert ("GET", "/download/storage/v1/b/stepkit-bucket/o/src.tgz?alt=media") in seen
    assert sum(1 for m, p in seen if m == "PUT" and "upload_id=" in p) == 3

    out = json.loads(proc.stdout)
    assert (out["live"], out["old"], out["range"]) == ("live", "old", "liv")
    assert out["names"] == ["src.tgz"]
    assert gcs.generations(BUCKET, "up/big.bin") == [out["uploaded"]]
    assert gcs.get(BUCKET, "up/big.bin") == b"u" * (9 * 1024 * 1024)


def test_large_object_streams_both_ways(gcs: FakeGcs, proxy: GcsFaultProxy) -> None:
    data = os.urandom(24 * 1024 * 1024)
    client = proxy.client()
    blob = client.bucket(BUCKET).blob("big.tgz", chunk_size=8 * 1024 * 1024)
    blob.upload_from_string(data, retry=RETRY)
    assert gcs.get(BUCKET, "big.tgz") == data
    assert client.bucket(BUCKET).blob("big.tgz").download_as_bytes(retry=RETRY) == data
    assert proxy.count("/o/big.tgz?alt=media") == 1


def test_chunked_request_body_is_streamed_through(gcs: FakeGcs, proxy: GcsFaultProxy) -> None:
    pieces = [os.urandom(300_000), b"", os.urandom(5)]
    conn = http.client.HTTPConnection(LOOPBACK, proxy.port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=chunked.bin",
            body=iter(pieces),
            headers={"Content-Type": "application/octet-stream"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        meta = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert int(meta["generation"]) == gcs.generations(BUCKET, "chunked.bin")[0]
    assert gcs.get(BUCKET, "chunked.bin") == b"".join(pieces)


# --------------------------------------------------------------------------------------------
# The proxy's faults, as a real google-cloud-storage client sees them
# --------------------------------------------------------------------------------------------


@pytest.fixture
def obj(gcs: FakeGcs) -> bytes:
    data = os.urandom(300_000)
    gcs.put(BUCKET, "dir/src.tgz", data)
    return data


def download(proxy: GcsFaultProxy, retry: Retry = RETRY, **kwargs: Any) -> bytes:
    blob = proxy.client().bucket(BUCKET).blob("dir/src.tgz")
    data: bytes = blob.download_as_bytes(retry=retry, **kwargs)
    return data


def statuses(proxy: GcsFaultProxy, match: str) -> list[int]:
    return [status for _, path, status in proxy.requests if match in path]


def test_503_once_is_retried(proxy: GcsFaultProxy, obj: bytes) -> None:
    proxy.fail("/o/dir%2Fsrc.tgz?alt=media", status=503)
    assert download(proxy) == obj
    assert statuses(proxy, "alt=media") == [503, 200]


def test_503_times_and_decoded_match(proxy: GcsFaultProxy, obj: bytes) -> None:
    proxy.fail("/o/dir/src.tgz", status=500, times=2)  # matches the decoded path too
    assert download(proxy) == obj
    assert statuses(proxy, "alt=media") == [500, 500, 200]
    assert proxy.count("dir/src.tgz") == 3


def test_503_forever_exhausts_a_bounded_retry(proxy: GcsFaultProxy, obj: bytes) -> None:
    proxy.fail("alt=media", status=503, times=1000)
    with pytest.raises(exceptions.RetryError, match="503"):
        download(proxy, SHORT_RETRY)
    assert proxy.count("alt=media") >= 2
    assert set(statuses(proxy, "alt=media")) == {503}


def test_reset_is_retried(proxy: GcsFaultProxy, obj: bytes) -> None:
    proxy.fail("alt=media", reset=True)
    assert download(proxy) == obj
    assert statuses(proxy, "alt=media") == [0, 200]


def test_clean_truncation_is_caught_by_the_checksum(proxy: GcsFaultProxy, obj: bytes) -> None:
    proxy.fail("alt=media", truncate=1000)
    with pytest.raises(DataCorruption, match="Checksum mismatch"):
        download(proxy)
    assert statuses(proxy, "alt=media") == [200]


def test_truncation_then_reset_is_resumed_with_a_range(proxy: GcsFaultProxy, obj: bytes) -> None:
    proxy.fail("alt=media", truncate=100_000, reset=True)
    assert download(proxy) == obj
    assert statuses(proxy, "alt=media") == [200, 206]


def test_stall_past_the_clients_timeout_is_retried(proxy: GcsFaultProxy, obj: bytes) -> None:
    proxy.fail("alt=media", stall=30.0)
    assert download(proxy, timeout=0.5) == obj
    # Both arrived; only the retry was answered (the stalled one ends with the proxy).
    assert proxy.count("alt=media") == 2
    assert statuses(proxy, "alt=media") == [200]


def test_stall_within_the_clients_timeout_is_one_slow_answer(
    proxy: GcsFaultProxy, obj: bytes
) -> None:
    proxy.fail("alt=media", stall=0.3)
    assert download(proxy, timeout=60) == obj
    assert proxy.count("alt=media") == 1
    assert statuses(proxy, "alt=media") == [200]


def test_403_is_forbidden_with_gcs_wording_and_not_retried(
    proxy: GcsFaultProxy, obj: bytes
) -> None:
    proxy.fail("alt=media", status=403)
    with pytest.raises(exceptions.Forbidden) as info:
        download(proxy)
    message = info.value.message
    assert f"{ANONYMOUS} does not have storage.objects.get access" in message
    assert statuses(proxy, "alt=media") == [403]
    assert download(proxy) == obj  # once only


def test_deny_is_forever_and_only_for_its_match(
    gcs: FakeGcs, proxy: GcsFaultProxy, obj: bytes
) -> None:
    gcs.put(BUCKET, "other.txt", b"other")
    proxy.deny("dir%2Fsrc.tgz")
    bucket = proxy.client().bucket(BUCKET)
    for _ in range(2):
        with pytest.raises(exceptions.Forbidden, match=r"storage\.objects\.get access"):
            download(proxy)
    with pytest.raises(exceptions.Forbidden):
        bucket.get_blob("dir/src.tgz", retry=RETRY)
    assert bucket.blob("other.txt").download_as_bytes(retry=RETRY) == b"other"
    assert set(statuses(proxy, "dir%2Fsrc.tgz")) == {403}
    proxy.clear()
    assert download(proxy) == obj


def test_denied_upload_names_the_create_permission(proxy: GcsFaultProxy) -> None:
    proxy.deny("/upload/")
    blob = proxy.client().bucket(BUCKET).blob("new.txt")
    with pytest.raises(exceptions.Forbidden, match=r"storage\.objects\.create access"):
        blob.upload_from_string(b"x", retry=RETRY)


def test_upload_503_is_retried_and_stored_once(gcs: FakeGcs, proxy: GcsFaultProxy) -> None:
    proxy.fail("uploadType=multipart", status=503)
    blob = proxy.client().bucket(BUCKET).blob("up.txt")
    blob.upload_from_string(b"uploaded", retry=RETRY)
    assert statuses(proxy, "uploadType=multipart") == [503, 200]
    assert gcs.generations(BUCKET, "up.txt") == [blob.generation]
    assert gcs.get(BUCKET, "up.txt") == b"uploaded"


def test_custom_body_and_rules_in_order(proxy: GcsFaultProxy, obj: bytes) -> None:
    custom = b'{"error": {"code": 429, "message": "slow down"}}'
    proxy.fail("alt=media", status=429, body=custom)
    assert raw_get(proxy.port, media("dir%2Fsrc.tgz"))[::2] == (429, custom)
    proxy.fail("alt=media", status=429)
    proxy.fail("alt=media", status=404)
    with pytest.raises(exceptions.NotFound):
        download(proxy)
    assert statuses(proxy, "alt=media") == [429, 429, 404]  # 429 is retried, 404 is not


def test_fail_needs_one_fault(proxy: GcsFaultProxy) -> None:
    with pytest.raises(ValueError, match="needs"):
        proxy.fail("x")
    with pytest.raises(ValueError, match="does not combine"):
        proxy.fail("x", status=503, reset=True)


def test_resumable_chunk_503_and_reset_are_recovered(gcs: FakeGcs, proxy: GcsFaultProxy) -> None:
    data = os.urandom(9 * 1024 * 1024)  # over 8 MiB: the client opens a resumable session
    proxy.fail("upload_id=", status=503)
    proxy.fail("upload_id=", reset=True)
    blob = proxy.client().bucket(BUCKET).blob("resumed.bin", chunk_size=4 * 1024 * 1024)
    blob.upload_from_string(data, retry=RETRY)
    assert gcs.generations(BUCKET, "resumed.bin") == [blob.generation]
    assert gcs.get(BUCKET, "resumed.bin") == data
    assert statuses(proxy, "upload_id=")[:2] == [503, 0]


def test_hold_keeps_a_request_until_released(gcs: FakeGcs, proxy: GcsFaultProxy) -> None:
    gcs.put(BUCKET, "held.txt", b"held")
    gate = proxy.hold("/o/held.txt")
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(raw_get, proxy.port, media("held.txt"))
        assert gate.arrived.wait(30)
        assert not answer.done() and proxy.requests == []
        gate.release()
        status, _, body = answer.result(timeout=30)
    assert (status, body) == (200, b"held")
    assert raw_get(proxy.port, media("held.txt"))[2] == b"held", "a gate holds one request"


def test_refused_session_and_captured_bodies(gcs: FakeGcs, proxy: GcsFaultProxy) -> None:
    proxy.capture_bodies = True
    proxy.refuse_session()
    data = os.urandom(9 * 1024 * 1024)  # over 8 MiB: a resumable session
    blob = proxy.client().bucket(BUCKET).blob("refused.bin")
    with pytest.raises(requests.ConnectionError, match="refused"):
        blob.upload_from_string(data, retry=None)
    [location] = proxy.locations
    assert "upload_id=" in location
    assert not location.startswith(proxy.url), "the session names another address"
    assert not accepts(int(urllib.parse.urlsplit(location).port or 0))
    assert gcs.names(BUCKET) == []
    # The next session is a normal one, and its body is seen as sent.
    blob.upload_from_string(data, retry=None)
    assert gcs.get(BUCKET, "refused.bin") == data
    assert [b for m, p, b in proxy.bodies if m == "PUT" and "upload_id=" in p] == [data]
    assert len(proxy.locations) == 2 and proxy.locations[1].startswith(proxy.url)


@pytest.mark.parametrize("compressed", [False, True])
def test_oversized_gcs_answers_one_huge_json_object(compressed: bool) -> None:
    size = 3 * 1024 * 1024 + 5
    with OversizedGcs(size, gzip=compressed) as hostile:
        status, headers, body = raw_get(hostile.port, "/storage/v1/b/b/o/x")
        if compressed:
            assert headers["content-encoding"] == "gzip"
            assert len(body) < size // 100
            body = gzip.decompress(body)
        assert status == 200 and len(body) == size
        assert json.loads(body)["size"] == "2"
        assert hostile.sent == [len(hostile.wire_body)]


def test_oversized_gcs_sees_a_client_hang_up() -> None:
    size = 64 * 1024 * 1024
    with OversizedGcs(size) as hostile:
        with socket.create_connection((LOOPBACK, hostile.port), timeout=30) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 30
        while not hostile.sent and time.monotonic() < deadline:
            time.sleep(0.05)
    [sent] = hostile.sent
    assert 0 < sent < size


# --------------------------------------------------------------------------------------------
# The pure-Python emulator
# --------------------------------------------------------------------------------------------


def test_py_emulator_round_trip_and_its_differences(tmp_path: Path) -> None:
    with PyGcsEmulator(tmp_path / "emu") as emu, GcsFaultProxy(emu) as front:
        emu.make_bucket(BUCKET, versioning=True)
        old = emu.put(BUCKET, "dir/a.txt", b"first", content_type="text/plain")
        emu.put(BUCKET, "dir/a.txt", b"second")
        emu.put(BUCKET, "b.txt", b"b")
        assert emu.names(BUCKET) == ["b.txt", "dir/a.txt"]
        assert emu.get(BUCKET, "dir/a.txt") == b"second"
        # It ignores ?generation= and keeps no old generations.
        assert emu.get(BUCKET, "dir/a.txt", old) == b"second"
        status, headers, body = raw_get(emu.port, media("dir%2Fa.txt"))
        assert (status, body) == (200, b"second")
        assert headers["x-goog-hash"] == f"crc32c={crc32c_b64(body)},md5={md5_b64(body)}"
        status, headers, body = raw_get(emu.port, media("dir%2Fa.txt"), {"Range": "bytes=1-3"})
        assert (status, body, headers["content-range"]) == (206, b"eco", "bytes 1-3/6")
        # Through the proxy, faults and all.
        front.fail("alt=media", status=503)
        blob = front.client().bucket(BUCKET).get_blob("dir/a.txt", retry=RETRY)
        assert blob.download_as_bytes(retry=RETRY) == b"second"
        assert statuses(front, "alt=media") == [503, 200]
