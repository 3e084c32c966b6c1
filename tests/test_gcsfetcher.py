"""`stepkit gcs-fetcher` against real GCS peers: fake-gcs-server, gcp-storage-emulator, a fault gcs_proxy."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import signal
import stat
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from stepkit import gcsmanifest
from stepkit.gcs import Location
from tests.conftest import STEPKIT, Run, run_stepkit
from tests.gcspeers import FakeGcs, Gate, GcsFaultProxy, OversizedGcs, PyGcsEmulator

_buckets = itertools.count()


@pytest.fixture
def bucket(gcs: FakeGcs) -> str:
    """A fresh versioned bucket per test on the module's fake-gcs-server."""
    name = f"src-{next(_buckets)}"
    gcs.make_bucket(name, versioning=True)
    return name


def fetch(env: dict[str, str], *args: str, timeout: float = 60) -> Run:
    return run_stepkit("gcs-fetcher", *args, env=env, timeout=timeout)


def tree(root: Path) -> dict[str, str]:
    """Every path under root with what it is: file content, 'dir', or '-> target'."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes().decode(errors="replace")
    return out


def sha1hex(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def stat_value(stdout: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}:\s+(\S+)", stdout, re.MULTILINE)
    assert match, f"no {name!r} line in the statistics block:\n{stdout}"
    return match.group(1)


def make_zip(files: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = ((modes or {}).get(name, 0o644) | stat.S_IFREG) << 16
            zf.writestr(info, data)
    return buf.getvalue()


def make_tgz(files: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o644)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put_manifest(
    gcs: FakeGcs | PyGcsEmulator,
    bucket: str,
    files: dict[str, bytes],
    *,
    modes: dict[str, int] | None = None,
    name: str = "manifest.json",
) -> list[gcsmanifest.Entry]:
    """Upload each file as an object named by its SHA-1 (as gcs-uploader does) and a manifest."""
    entries = []
    for path, data in files.items():
        digest = sha1hex(data)
        generation = gcs.put(bucket, f"objects/{digest}", data)
        mode = (modes or {}).get(path, 0o644)
        entries.append(
            gcsmanifest.Entry(path, Location(bucket, f"objects/{digest}", generation), digest, mode)
        )
    gcs.put(bucket, name, gcsmanifest.dump(entries))
    return entries


def assert_no_staging(dest: Path) -> None:
    assert not (dest / ".download").exists(), "the staging folder was left behind"


# ---------------------------------------------------------------------------------------------
# Each --type
# ---------------------------------------------------------------------------------------------


def test_zip_archive_extracted_with_modes_and_statistics(
    gcs: FakeGcs, bucket: str, dest: Path
) -> None:
    data = make_zip(
        {"app/main.py": b"print(1)\n", "app/run.sh": b"#!/bin/sh\n", "README": b"hi\n"},
        {"app/run.sh": 0o4777},
    )
    gcs.put(bucket, "dir/src.zip", data)
    result = fetch(
        gcs.env,
        "-type=ZipArchive",
        f"-location=gs://{bucket}/dir/src.zip",
        "-dest_dir",
        str(dest),
    )
    assert result.returncode == 0, result.output
    assert tree(dest) == {
        "README": "hi\n",
        "app": "dir",
        "app/main.py": "print(1)\n",
        "app/run.sh": "#!/bin/sh\n",
    }
    # setuid and world-writable bits from the archive never survive.
    assert stat.S_IMODE((dest / "app/run.sh").stat().st_mode) == 0o755
    assert stat_value(result.stdout, "Status") == "SUCCESS"
    assert stat_value(result.stdout, "Total files") == "3"
    assert stat_value(result.stdout, "Total retries") == "0"
    assert "MiB/s throughput" in result.stdout
    assert_no_staging(dest)


def test_targz_archive_older_generation_while_a_newer_exists(
    gcs: FakeGcs, bucket: str, dest: Path, tmp_path: Path
) -> None:
    old = gcs.put(bucket, "src.tgz", make_tgz({"version.txt": b"one\n"}))
    new = gcs.put(bucket, "src.tgz", make_tgz({"version.txt": b"two\n"}))
    result = fetch(
        gcs.env, "--type", "TarGzArchive", "--location", f"gs://{bucket}/src.tgz#{old}",
        "--dest_dir", str(dest),
    )  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(dest) == {"version.txt": "one\n"}
    termination = tmp_path / "termination-log"
    result = fetch(
        gcs.env, "--type", "TarGzArchive", "--location", f"gs://{bucket}/src.tgz",
        "--dest_dir", str(tmp_path / "again"), f"-terminationMessagePath={termination}",
    )  # fmt: skip
    assert result.returncode == 0, result.output
    # The result names the generation fetched, the newest here.
    assert json.loads(termination.read_text()) == [
        {"key": "location", "value": f"gs://{bucket}/src.tgz#{new}"}
    ]
    latest = tmp_path / "latest"
    result = fetch(
        gcs.env, "--type=TarGzArchive", f"--location=https://storage.googleapis.com/{bucket}/src.tgz",
        f"--dest_dir={latest}",
    )  # fmt: skip
    # The https form names real GCS; with STORAGE_EMULATOR_HOST the emulator answers it.
    assert result.returncode == 0, result.output
    assert tree(latest) == {"version.txt": "two\n"}


def test_tar_zst_archive_with_the_tar_type(
    gcs: FakeGcs, bucket: str, dest: Path, tmp_path: Path
) -> None:
    # What `tar --zstd` writes: TarGzArchive reads any tar, the compression told by its bytes.
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "main.py").write_text("print(1)\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "link").symlink_to("pkg/main.py")
    archive = tmp_path / "src.tar.zst"
    subprocess.run(["tar", "--zstd", "-cf", str(archive), "-C", str(src), "."], check=True)
    assert archive.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    gcs.put(bucket, "src.tar.zst", archive.read_bytes())
    result = fetch(gcs.env, "-type=TarGzArchive", f"-location=gs://{bucket}/src.tar.zst",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(dest) == {
        "link": "-> pkg/main.py",
        "pkg": "dir",
        "pkg/main.py": "print(1)\n",
        "run.sh": "#!/bin/sh\n",
    }
    assert os.access(dest / "run.sh", os.X_OK)
    assert stat_value(result.stdout, "Status") == "SUCCESS"
    assert_no_staging(dest)


def test_gnu_tar_label_incremental_sparse_and_twice_listed_file(
    gcs: FakeGcs, bucket: str, dest: Path, tmp_path: Path
) -> None:
    # One GNU tar run writes a volume label, incremental directories (D) with dumpdirs, a
    # sparse file (S) and, for d/f named twice, a hard link to itself: all read as GNU tar.
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("hi\n")
    with open(src / "d" / "sparse", "wb") as fh:
        fh.seek(300_000)
        fh.write(b"x" * 10)
        fh.truncate(600_000)
    archive = tmp_path / "a.tgz"
    subprocess.run(["tar", "-C", str(src), "-g", str(tmp_path / "snap"), "-V", "Label",
                    "--sparse", "-czf", str(archive), "d", "d/f"], check=True)  # fmt: skip
    gcs.put(bucket, "a.tgz", archive.read_bytes())
    result = fetch(gcs.env, "-type=TarGzArchive", f"-location=gs://{bucket}/a.tgz",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert sorted(tree(dest)) == ["d", "d/f", "d/sparse"]
    assert (dest / "d" / "f").read_text() == "hi\n"
    assert (dest / "d" / "sparse").read_bytes() == (src / "d" / "sparse").read_bytes()
    assert (dest / "d" / "sparse").stat().st_blocks * 512 < 300_000


def test_archive_type_is_zip_and_deprecated(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    gcs.put(bucket, "a.zip", make_zip({"f": b"x"}))
    env = {
        **gcs.env,
        "STEPKIT_GCS_LOCATION": f"gs://{bucket}/a.zip",
        "STEPKIT_GCS_TYPE": "Archive",
    }
    result = run_stepkit("gcs-fetcher", "-timeout_gcs=false", cwd=dest, env=env)
    assert result.returncode == 0, result.output
    assert "deprecated" in result.stderr and "ZipArchive" in result.stderr
    # No -dest_dir: the working directory, as the reference.
    assert tree(dest) == {"f": "x"}


def test_manifest_modes_symlinks_and_pinned_generation(
    gcs: FakeGcs, bucket: str, dest: Path
) -> None:
    old = gcs.put(bucket, "objects/conf", b"old config\n")
    gcs.put(bucket, "objects/conf", b"new config\n")
    run_sh = gcs.put(bucket, "objects/run", b"#!/bin/sh\necho hi\n")
    link = gcs.put(bucket, "objects/link", b"../bin/run.sh")
    manifest = {
        "etc/app.conf": {"sourceUrl": f"gs://{bucket}/objects/conf#{old}",
                         "sha1sum": sha1hex(b"old config\n"), "mode": 0o600},
        "bin/run.sh": {"SourceURL": f"gs://{bucket}/objects/run#{run_sh}",
                       "Sha1Sum": sha1hex(b"#!/bin/sh\necho hi\n").upper(),
                       "mode": 0o4775},
        "lib/run": {"sourceUrl": f"gs://{bucket}/objects/link#{link}", "sha1sum": "",
                    "mode": gcsmanifest.GO_MODE_SYMLINK | 0o777},
    }  # fmt: skip
    gcs.put(bucket, "m.json", json.dumps(manifest).encode())
    result = fetch(gcs.env, "-type", "Manifest", "-location", f"gs://{bucket}/m.json",
                   "-dest_dir", str(dest))  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(dest) == {
        "bin": "dir",
        "bin/run.sh": "#!/bin/sh\necho hi\n",
        "etc": "dir",
        "etc/app.conf": "old config\n",
        "lib": "dir",
        "lib/run": "-> ../bin/run.sh",
    }
    assert stat.S_IMODE((dest / "bin/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "etc/app.conf").stat().st_mode) == 0o644
    assert (dest / "lib/run").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat_value(result.stdout, "Total files") == "3"
    assert_no_staging(dest)


def test_manifest_of_two_thousand_files(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    files = {f"pkg{i % 20}/mod{i}.py": f"# {i}\n".encode() * (1 + i % 7) for i in range(2000)}
    modes = {path: 0o755 if i % 3 == 0 else 0o644 for i, path in enumerate(files)}
    entries = []
    client = gcs.client()

    def upload(item: tuple[str, bytes]) -> gcsmanifest.Entry:
        path, data = item
        blob = client.bucket(bucket).blob(f"objects/{path}")
        blob.upload_from_string(data)
        return gcsmanifest.Entry(
            path, Location(bucket, blob.name, int(blob.generation)),
            sha1hex(data), modes[path],
        )  # fmt: skip

    with ThreadPoolExecutor(16) as pool:
        entries = list(pool.map(upload, files.items()))
    gcs.put(bucket, "big.json", gcsmanifest.dump(entries))
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/big.json",
                   f"-dest_dir={dest}", "-workers=64", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.output
    got = {
        str(p.relative_to(dest)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in dest.rglob("*.py")
    }
    assert got == {path: (data, modes[path]) for path, data in files.items()}
    assert stat_value(result.stdout, "Total files") == "2000"
    assert stat_value(result.stdout, "Actual workers") == "64"


def test_pure_python_emulator_archive_and_manifest(tmp_path: Path) -> None:
    with PyGcsEmulator(tmp_path / "emu") as emu:
        emu.make_bucket("pybucket")
        emu.put("pybucket", "a.tgz", make_tgz({"x/y.txt": b"from tar\n"}))
        put_manifest(emu, "pybucket", {"m/one": b"1\n", "m/two": b"2\n"}, modes={"m/two": 0o755})
        archive_dest = tmp_path / "a"
        result = fetch(emu.env, "-type=TarGzArchive", "-location=gs://pybucket/a.tgz",
                       f"-dest_dir={archive_dest}")  # fmt: skip
        assert result.returncode == 0, result.output
        assert tree(archive_dest) == {"x": "dir", "x/y.txt": "from tar\n"}
        manifest_dest = tmp_path / "m"
        result = fetch(emu.env, "-type=Manifest", "-location=gs://pybucket/manifest.json",
                       f"-dest_dir={manifest_dest}")  # fmt: skip
        assert result.returncode == 0, result.output
        assert tree(manifest_dest) == {"m": "dir", "m/one": "1\n", "m/two": "2\n"}
        assert stat.S_IMODE((manifest_dest / "m/two").stat().st_mode) == 0o755


def test_pure_python_emulator_pinned_generation_is_refused_not_replaced(tmp_path: Path) -> None:
    # gcp-storage-emulator ignores ?generation=: the fetcher must notice, not hand out the
    # live object in place of the one asked for.
    with PyGcsEmulator(tmp_path / "emu") as emu:
        emu.make_bucket("pybucket")
        old = emu.put("pybucket", "a.zip", make_zip({"v": b"1"}))
        emu.put("pybucket", "a.zip", make_zip({"v": b"2"}))
        out = tmp_path / "out"
        result = fetch(emu.env, "-type=ZipArchive", f"-location=gs://pybucket/a.zip#{old}",
                       f"-dest_dir={out}")  # fmt: skip
        assert result.returncode == 1, result.output
        assert f"#{old}" in result.stderr
        assert tree(out) == {}


# ---------------------------------------------------------------------------------------------
# Integrity: nothing unverified lands in the destination
# ---------------------------------------------------------------------------------------------


def test_sha1sum_mismatch_fails_and_leaves_dest_unchanged(
    gcs: FakeGcs, bucket: str, dest: Path
) -> None:
    (dest / "keep.txt").write_text("mine\n")
    entries = put_manifest(gcs, bucket, {"a": b"aaa", "b/c": b"ccc"})
    bad = [gcsmanifest.Entry(e.path, e.source, "0" * 40 if e.path == "b/c" else e.sha1, e.mode)
           for e in entries]  # fmt: skip
    gcs.put(bucket, "bad.json", gcsmanifest.dump(bad))
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/bad.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 1, result.output
    assert "'b/c'" in result.stderr and "sha1sum mismatch" in result.stderr
    assert stat_value(result.stdout, "Status") == "FAILURE"
    assert tree(dest) == {"keep.txt": "mine\n"}


def test_corrupted_body_is_retried_then_fails(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    gcs.put(bucket, "src.zip", make_zip({"f": b"x" * 5000}))
    # Cut short and ended cleanly: the length looks right, only the checksum can tell.
    gcs_proxy.fail("o/src.zip?alt=media", truncate=100, times=3)
    result = fetch(gcs_proxy.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}", "-retries=2", "-backoff=10ms")  # fmt: skip
    assert result.returncode == 1, result.output
    assert "crc32c mismatch" in result.stderr
    assert "after 3 attempts" in result.stderr
    assert gcs_proxy.count("o/src.zip?alt=media") == 3
    assert stat_value(result.stdout, "Status") == "FAILURE"
    assert stat_value(result.stdout, "Total retries") == "2"
    assert tree(dest) == {}


def test_truncated_body_with_reset_is_recovered(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    gcs.put(bucket, "src.tgz", make_tgz({"f": os.urandom(50_000)}))
    gcs_proxy.fail("o/src.tgz?alt=media", truncate=1000, reset=True)
    result = fetch(gcs_proxy.env, "-type=TarGzArchive", f"-location=gs://{bucket}/src.tgz",
                   f"-dest_dir={dest}", "-backoff=10ms")  # fmt: skip
    assert result.returncode == 0, result.output
    assert gcs_proxy.count("o/src.tgz?alt=media") == 2
    assert stat_value(result.stdout, "Total retries") == "1"
    assert len((dest / "f").read_bytes()) == 50_000


# ---------------------------------------------------------------------------------------------
# Server answers: missing, denied, transient
# ---------------------------------------------------------------------------------------------


def test_missing_object_and_missing_generation(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/nope.zip",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 1, result.output
    assert f"gs://{bucket}/nope.zip: no such object" in result.stderr
    assert stat_value(result.stdout, "Status") == "FAILURE"
    gen = gcs.put(bucket, "there.zip", make_zip({"f": b"x"}))
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/there.zip#{gen + 7}",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 1, result.output
    assert f"generation {gen + 7} of gs://{bucket}/there.zip: no such object" in result.stderr
    assert tree(dest) == {}


def test_permission_denied_exits_3_naming_the_permission(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    put_manifest(gcs, bucket, {"a": b"1", "b": b"2"})
    secret_digest = sha1hex(b"2")
    gcs_proxy.deny(f"objects/{secret_digest}")
    result = fetch(gcs_proxy.env, "-type=Manifest", f"-location=gs://{bucket}/manifest.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 3, result.output
    assert "storage.objects.get" in result.stderr
    assert "permission denied" in result.stderr
    assert "roles/storage.objectViewer" in result.stderr
    assert stat_value(result.stdout, "Status") == "FAILURE"
    # A denial is not retried.
    assert gcs_proxy.count(f"objects/{secret_digest}") == 1
    assert tree(dest) == {}


def test_failure_does_not_wait_for_a_stalled_download(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    # One download waits for an answer that does not come while another is denied: the
    # denial ends the fetch now, not when the stalled request times out.
    put_manifest(gcs, bucket, {"a": b"1", "b": b"2"})
    gcs_proxy.deny(f"objects/{sha1hex(b'1')}")
    gcs_proxy.fail(f"objects/{sha1hex(b'2')}", stall=30)
    started = time.monotonic()
    result = fetch(gcs_proxy.env, "-type=Manifest", f"-location=gs://{bucket}/manifest.json",
                   f"-dest_dir={dest}", "-workers=2", "-timeout=60s")  # fmt: skip
    assert result.returncode == 3, result.output
    assert time.monotonic() - started < 15
    assert tree(dest) == {}


class _FailingCredentials:
    """A mock, as no peer can make google-auth's token refresh fail (no metadata server here)."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def before_request(self, *args: object) -> None:
        raise self.exc


def test_credential_refresh_failure_is_mapped(gcs: FakeGcs, bucket: str) -> None:
    from google.auth.exceptions import RefreshError, TransportError

    from stepkit.errors import DeniedError
    from stepkit.gcs import GcsClient, TransientError

    loc = Location(bucket, "x")
    denied = GcsClient(
        _FailingCredentials(RefreshError("invalid_grant: account not found")),  # type: ignore[no-untyped-call]
        base_url=gcs.url,
        pool_size=1,
    )
    with pytest.raises(DeniedError, match="invalid_grant"):
        denied.metadata(loc, timeout=5)
    down = GcsClient(
        _FailingCredentials(TransportError("metadata server unreachable")),  # type: ignore[no-untyped-call]
        base_url=gcs.url,
        pool_size=1,
    )
    with pytest.raises(TransientError, match="unreachable"):
        down.media(loc, connect_timeout=5, read_timeout=5)


def test_host_pool_path_answers_as_the_proxy_manager_path(gcs: FakeGcs, bucket: str) -> None:
    """GcsClient asks the host's connection pool directly when no proxy is set (the fast path
    of thousands of small reads); with a proxy it goes through urllib3's manager. Both must
    give the same bytes, headers and errors, and the fast path keeps one connection alive."""
    from stepkit.gcs import GcsClient, NotFoundError

    first = gcs.put(bucket, "dir/a b+c.txt", b"first")
    gcs.put(bucket, "dir/a b+c.txt", b"second")
    fast = GcsClient(None, base_url=gcs.url, pool_size=1)
    slow = GcsClient(None, base_url=gcs.url, pool_size=1)
    slow._pool = None  # what a client behind HTTP(S)_PROXY does: no loopback proxy to test with
    assert fast._pool is not None

    def read(client: GcsClient, loc: Location) -> tuple[bytes, str, str]:
        resp = client.media(loc, connect_timeout=5, read_timeout=5)
        try:
            return resp.raw.read(), resp.headers["x-goog-generation"], resp.headers["x-goog-hash"]
        finally:
            resp.close()

    for loc in (Location(bucket, "dir/a b+c.txt", first), Location(bucket, "dir/a b+c.txt")):
        assert read(fast, loc) == read(slow, loc)
        assert fast.metadata(loc, timeout=5) == slow.metadata(loc, timeout=5)
    assert read(fast, Location(bucket, "dir/a b+c.txt", first))[0] == b"first"
    for client in (fast, slow):
        with pytest.raises(NotFoundError, match="generation 1 of"):
            client.media(Location(bucket, "dir/a b+c.txt", 1), connect_timeout=5, read_timeout=5)
    for _ in range(5):
        read(fast, Location(bucket, "dir/a b+c.txt"))
    assert fast._pool.num_connections == 1  # keep-alive: one connection for every read


def test_5xx_and_resets_recovered_by_retry(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    files = {f"f{i}": f"content {i}".encode() for i in range(6)}
    put_manifest(gcs, bucket, files)
    d1 = sha1hex(files["f1"])
    d2 = sha1hex(files["f2"])
    gcs_proxy.fail(f"objects/{d1}", status=503)
    gcs_proxy.fail(f"objects/{d1}", status=429)
    gcs_proxy.fail(f"objects/{d2}", reset=True)
    gcs_proxy.fail("o/manifest.json?alt=media", status=500)
    result = fetch(gcs_proxy.env, "-type=Manifest", f"-location=gs://{bucket}/manifest.json",
                   f"-dest_dir={dest}", "-backoff=10ms", "-workers=4")  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(dest) == {k: v.decode() for k, v in files.items()}
    assert gcs_proxy.count(f"objects/{d1}") == 3
    assert gcs_proxy.count(f"objects/{d2}") == 2
    assert stat_value(result.stdout, "Total retries") == "4"


def test_bounded_failure_when_retries_run_out(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    gcs.put(bucket, "src.zip", make_zip({"f": b"x"}))
    gcs_proxy.fail("o/src.zip?alt=media", status=503, times=50)
    result = fetch(gcs_proxy.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}", "-retries=2", "-backoff=1ms")  # fmt: skip
    assert result.returncode == 1, result.output
    assert "HTTP 503" in result.stderr and "after 3 attempts" in result.stderr
    assert gcs_proxy.count("o/src.zip?alt=media") == 3
    assert stat_value(result.stdout, "Total retries") == "2"
    assert_no_staging(dest)
    assert tree(dest) == {}


def test_stalled_attempt_is_cancelled_and_retried(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    gcs.put(bucket, "src.zip", make_zip({"f": b"fresh"}))
    gcs_proxy.fail("o/src.zip?alt=media", stall=4)
    result = fetch(gcs_proxy.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}", "-timeout=1s", "-backoff=10ms", "-verbose")  # fmt: skip
    assert result.returncode == 0, result.output
    # The stalled request is still open in the proxy (it records a request once answered),
    # so the retry shows in the fetcher's own log and statistics.
    assert "timed out; retrying" in result.stderr
    assert stat_value(result.stdout, "Total retries") == "1"
    assert tree(dest) == {"f": "fresh"}


def test_progress_lines_while_a_download_is_slow(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    put_manifest(gcs, bucket, {"a": b"1", "b": b"2"})
    gcs_proxy.fail(f"objects/{sha1hex(b'2')}", stall=2)
    env = {**gcs_proxy.env, "STEPKIT_GCS_PROGRESS_SECONDS": "0.2"}
    result = fetch(env, "-type=Manifest", f"-location=gs://{bucket}/manifest.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert re.search(r"progress: \d of 2 files, [0-9.]+ MiB, [0-9.]+ MiB/s", result.stderr)


def test_gzip_encoded_object_is_verified_and_stored_decompressed(
    gcs: FakeGcs, bucket: str, dest: Path
) -> None:
    blob = gcs.client().bucket(bucket).blob("notes.txt")
    blob.content_encoding = "gzip"
    blob.upload_from_string(gzip.compress(b"plain text\n"), content_type="text/plain")
    gcs.put(bucket, "m.json", json.dumps({"notes.txt": {
        "sourceUrl": f"gs://{bucket}/notes.txt#{blob.generation}",
        "sha1sum": sha1hex(b"plain text\n"),
    }}).encode())  # fmt: skip
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/m.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(dest) == {"notes.txt": "plain text\n"}


# ---------------------------------------------------------------------------------------------
# Staging and destination
# ---------------------------------------------------------------------------------------------


def test_sigterm_during_a_stalled_download_cleans_up(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    (dest / "keep").write_text("mine\n")
    gcs.put(bucket, "src.zip", make_zip({"f": b"x"}))
    gcs_proxy.fail("o/src.zip?alt=media", stall=60)
    proc = subprocess.Popen(
        [STEPKIT, "gcs-fetcher", "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
         f"-dest_dir={dest}", "-timeout=10m"],
        env={**os.environ, **gcs_proxy.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Wait until the metadata request was answered: the download is the stalled request.
        while gcs_proxy.count("o/src.zip") < 1 and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        # Generous: a fetcher that waited out its read timeout (10 minutes) would hang here.
        stdout, stderr = proc.communicate(timeout=45)
    finally:
        proc.kill()
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr
    assert "Status:                      FAILURE" in stdout
    assert tree(dest) == {"keep": "mine\n"}


def test_keep_source_keeps_the_archive(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    data = make_zip({"f": b"x"})
    gcs.put(bucket, "src.zip", data)
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}", "-keep_source")  # fmt: skip
    assert result.returncode == 0, result.output
    kept = list((dest / ".download").glob("*/source.zip"))
    assert [p.read_bytes() for p in kept] == [data]


def staging_dirs(folder: Path) -> list[Path]:
    return sorted(folder.glob("stepkit-gcs-*")) if folder.is_dir() else []


class Held(NamedTuple):
    proc: subprocess.Popen[str]
    gate: Gate


@contextlib.contextmanager
def held_fetch(gcs_proxy: GcsFaultProxy, bucket: str, dest: Path, *args: str) -> Iterator[Held]:
    """gcs-fetcher of gs://bucket/src.zip into dest, its download held by the proxy (the
    staging directory made, nothing downloaded) until gate.release(); killed at the end if
    it is still running."""
    gate = gcs_proxy.hold("o/src.zip?alt=media")
    proc = subprocess.Popen(
        [STEPKIT, "gcs-fetcher", "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
         f"-dest_dir={dest}", *args],
        env={**os.environ, **gcs_proxy.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert gate.arrived.wait(30), "the fetcher never asked for the archive"
        yield Held(proc, gate)
    finally:
        gate.release()
        if proc.returncode is None:
            proc.kill()
            proc.communicate(timeout=30)


def test_staging_left_by_a_sigkilled_run_is_removed_by_the_next(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    (dest / "keep").write_text("mine\n")
    gcs.put(bucket, "src.zip", make_zip({"old": b"1"}))
    with held_fetch(gcs_proxy, bucket, dest) as (proc, _):
        dead = staging_dirs(dest / ".download")
        assert len(dead) == 1
        # SIGKILL (an OOM kill, a node lost): no handler runs, the staging stays behind.
        proc.kill()
        proc.wait(timeout=30)
    assert staging_dirs(dest / ".download") == dead
    gcs.put(bucket, "new.zip", make_zip({"new": b"2"}))
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/new.zip",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert "left by an earlier run" in result.stderr
    # The dead run's staging directory and the .download folder it made are gone.
    assert tree(dest) == {"keep": "mine\n", "new": "2"}


def test_staging_of_a_live_run_survives_another_run(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path
) -> None:
    gcs.put(bucket, "src.zip", make_zip({"held": b"1"}))
    gcs.put(bucket, "other.zip", make_zip({"other": b"2"}))
    with held_fetch(gcs_proxy, bucket, dest) as (proc, gate):
        live = staging_dirs(dest / ".download")
        assert len(live) == 1
        result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/other.zip",
                       f"-dest_dir={dest}")  # fmt: skip
        assert result.returncode == 0, result.output
        assert "left by an earlier run" not in result.stderr
        assert proc.poll() is None, "the held run died"
        assert staging_dirs(dest / ".download") == live
        # Released, the held run finishes and removes its own staging and the folder.
        gate.release()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert tree(dest) == {"held": "1", "other": "2"}


def test_staging_of_a_killed_run_in_a_custom_folder_is_removed(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, dest: Path, tmp_path: Path
) -> None:
    staging = tmp_path / "stage"
    staging.mkdir()
    (staging / "mine").write_text("not ours\n")
    gcs.put(bucket, "src.zip", make_zip({"old": b"1"}))
    with held_fetch(gcs_proxy, bucket, dest, f"-staging_folder={staging}") as (proc, _):
        assert len(staging_dirs(staging)) == 1
        proc.kill()
        proc.wait(timeout=30)
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}", f"-staging_folder={staging}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(staging) == {"mine": "not ours\n"}
    assert tree(dest) == {"old": "1"}


def test_kept_source_survives_the_next_run(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    data = make_zip({"f": b"x"})
    gcs.put(bucket, "src.zip", data)
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}", "-keep_source")  # fmt: skip
    assert result.returncode == 0, result.output
    kept = list((dest / ".download").glob("*/source.zip"))
    assert len(kept) == 1
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert "left by an earlier run" not in result.stderr
    assert list((dest / ".download").glob("*/source.zip")) == kept
    assert kept[0].read_bytes() == data


def test_custom_staging_folder_removed_on_failure(
    gcs: FakeGcs, bucket: str, dest: Path, tmp_path: Path
) -> None:
    gcs.put(bucket, "bad.zip", b"this is not a zip file")
    staging = tmp_path / "stage" / "here"
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/bad.zip",
                   f"-dest_dir={dest}", f"-staging_folder={staging}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert not staging.exists() and not staging.parent.exists()
    assert tree(dest) == {}


def test_planted_symlink_in_dest_is_not_written_through(
    gcs: FakeGcs, bucket: str, dest: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched\n")
    (dest / "sub").symlink_to(outside)
    gcs.put(bucket, "src.zip", make_zip({"sub/sentinel": b"PWNED", "sub/new": b"PWNED"}))
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/src.zip",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert "symbolic link" in result.stderr
    assert tree(outside) == {"sentinel": "untouched\n"}
    entries = put_manifest(gcs, bucket, {"sub/new": b"PWNED"}, name="m.json")
    assert entries
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/m.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert tree(outside) == {"sentinel": "untouched\n"}
    assert_no_staging(dest)


def test_large_object_in_parallel_ranges(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    blob = os.urandom(40 << 20)
    gcs.put(bucket, "big.tgz", make_tgz({"blob.bin": blob}))
    result = fetch(gcs.env, "-type=TarGzArchive", f"-location=gs://{bucket}/big.tgz",
                   f"-dest_dir={dest}", "-verbose", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.output
    assert "ranges" in result.stderr
    assert (
        hashlib.sha256((dest / "blob.bin").read_bytes()).digest() == hashlib.sha256(blob).digest()
    )


def test_help_lists_every_flag() -> None:
    result = run_stepkit("gcs-fetcher", "--help")
    assert result.returncode == 0, result.output
    for flag in ("--type", "--location", "--dest_dir", "--workers", "--retries", "--backoff",
                 "--keep_source", "--staging_folder", "--verbose", "--allowed-buckets",
                 "--allow-git", "--timeout", "STEPKIT_GCS_LOCATION"):  # fmt: skip
        assert flag in result.stdout
    # Which compressions TarGzArchive reads is said where the type is chosen.
    assert "zstd" in " ".join(result.stdout.split())


@pytest.mark.parametrize(
    ("status", "compressed"),
    [(200, False), (200, True), (503, False)],
    ids=["metadata", "gzip-bomb", "error-body"],
)
def test_oversized_metadata_answer_is_not_buffered(
    dest: Path, status: int, compressed: bool
) -> None:
    """Issue 10: a hostile endpoint's 64 MiB JSON answer is refused, not read into memory."""
    size = 64 << 20
    with OversizedGcs(size, status=status, gzip=compressed) as hostile:
        run = fetch(
            hostile.env,
            "--type",
            "Manifest",
            "--location",
            "gs://bucket-ok/m.json",
            "--dest_dir",
            str(dest),
            "--retries",
            "1",
            "--backoff",
            "0s",
        )
    assert run.returncode == 1, run.output
    last = run.stderr.strip().splitlines()[-1]
    assert "gs://bucket-ok/m.json" in last
    if status == 200:
        assert "larger than 8 MiB" in last, last
    else:
        assert "HTTP 503" in last, last
    assert hostile.sent, "the fetcher asked the endpoint"
    if not compressed:
        assert all(n < size for n in hostile.sent), "the fetcher stopped reading and hung up"
    assert list(dest.iterdir()) == []
