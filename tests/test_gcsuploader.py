"""stepkit gcs-uploader against a real fake-gcs-server: content-addressed objects, the manifest, faults, bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import stat
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builders.gcsupload import tree as uptree
from builders.gcsupload.spec import UploadSpec
from builders.gcsupload.upload import run as upload_run
from stepkit import gcsmanifest
from stepkit.errors import StepkitError
from stepkit.gcs import Location, parse_location
from tests.conftest import STEPKIT, Run, assert_no_leak, run_stepkit
from tests.gcspeers import FakeGcs, GcsFaultProxy, OversizedGcs

_buckets = itertools.count()


@pytest.fixture
def bucket(gcs: FakeGcs) -> str:
    name = f"upload-{next(_buckets)}"
    gcs.make_bucket(name)
    return name


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()  # noqa: S324 -- the manifest's own digest


def make_tree(root: Path) -> dict[str, bytes | str]:
    """A source tree; returns path -> content (bytes) or symlink target (str)."""
    files: dict[str, bytes] = {
        "README.md": b"# hello\n",
        "empty.txt": b"",
        "src/main.py": b"print('hi')\n" * 50,
        "src/pkg/deep/nested/mod.py": os.urandom(70_000),
        "src/copy-of-main.py": b"print('hi')\n" * 50,  # same content: one object
        "bin/run.sh": b"#!/bin/sh\necho run\n",
        "données/日本語 ñame.txt": "unicode ✓\n".encode(),
        # Above google-cloud-storage's 8 MiB multipart limit: a resumable upload.
        "big.bin": os.urandom(9 * 1024 * 1024 + 17),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)
    (root / "bin/run.sh").chmod(0o755)
    links = {
        "link-to-readme": "README.md",
        "src/pkg/up": "../main.py",
        "bin/srcdir": "../src",  # a link to a directory stays a link, never followed
        "dangling": "not-there-yet",
    }
    for rel, target in links.items():
        os.symlink(target, root / rel)
    out: dict[str, bytes | str] = dict(files)
    out.update(links)
    return out


def upload(src: Path, location: str, env: dict[str, str], *args: str) -> Run:
    """Results go to <src>/../termination, never to a real /dev/termination-log."""
    return run_stepkit(
        "gcs-uploader",
        "--dir",
        str(src),
        "--location",
        location,
        "--terminationMessagePath",
        str(src.parent / "termination"),
        *args,
        env=env,
    )


def manifest_of(
    gcs: FakeGcs, bucket: str, name: str = "m/manifest.json"
) -> list[gcsmanifest.Entry]:
    return gcsmanifest.parse(gcs.get(bucket, name), what="manifest")


def uploads(gcs_proxy: GcsFaultProxy) -> int:
    return sum(
        1 for r in gcs_proxy.requests if r.method in ("POST", "PUT") and "/upload/" in r.path
    )


def test_upload_tree(gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    tree = make_tree(src)
    (src / "nothing-here").mkdir()
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs_proxy.env, "--workers", "4")
    assert run.returncode == 0, run.output
    # big.bin went as a resumable upload, the rest as single requests; all conditional.
    assert [r.method for r in gcs_proxy.requests if "uploadType=resumable" in r.path] == [
        "POST",
        "PUT",
    ]
    posts = [r.path for r in gcs_proxy.requests if r.method == "POST" and "/upload/" in r.path]
    conditional = [p for p in posts if "ifGenerationMatch=0" in p]
    assert len(posts) - len(conditional) == 1, "only the manifest is written unconditionally"
    assert "'nothing-here'" in run.stderr and "empty directory" in run.stderr

    entries = {e.path: e for e in manifest_of(gcs, bucket)}
    assert set(entries) == set(tree)
    for path, content in tree.items():
        entry = entries[path]
        data = content.encode() if isinstance(content, str) else content
        assert entry.sha1 == sha1(data), path
        assert entry.source.bucket == bucket
        assert entry.source.name == sha1(data), "objects are named by their SHA-1 at the root"
        assert entry.source.generation is not None
        assert gcs.get(bucket, entry.source.name, entry.source.generation) == data
        if isinstance(content, str):
            assert entry.mode == gcsmanifest.GO_MODE_SYMLINK | 0o777, path
        else:
            assert entry.mode == (0o755 if path == "bin/run.sh" else 0o644), path
    # One object per distinct content, plus the manifest; nothing else in the bucket.
    contents = {c.encode() if isinstance(c, str) else c for c in tree.values()}
    assert len(conditional) == len(contents)
    assert gcs.names(bucket) == sorted([*(sha1(c) for c in contents), "m/manifest.json"])

    result = json.loads((tmp_path / "termination").read_text())
    [item] = [r for r in result if r["key"] == "manifest"]
    where = parse_location(item["value"], what="result")
    assert (where.bucket, where.name) == (bucket, "m/manifest.json")
    assert where.generation is not None
    assert gcsmanifest.parse(gcs.get(bucket, where.name, where.generation), what="m")
    assert "8 files and 4 symlinks" in run.stderr


def test_second_upload_sends_nothing_new_and_a_change_sends_one(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}.txt").write_bytes(f"file {i}\n".encode())
    location = f"gs://{bucket}/m/manifest.json"
    first = upload(src, location, gcs_proxy.env)
    assert first.returncode == 0, first.output
    assert uploads(gcs_proxy) == 21
    before = {e.path: e for e in manifest_of(gcs, bucket)}

    gcs_proxy.requests.clear()
    second = upload(src, location, gcs_proxy.env)
    assert second.returncode == 0, second.output
    assert uploads(gcs_proxy) == 1, "only the manifest is written again"
    # One metadata read per object already present, and nothing else about objects.
    assert sum(1 for r in gcs_proxy.requests if "/o/" in r.path) == 20
    assert "0 uploaded" in second.stderr and "20 already present" in second.stderr
    assert {e.path: e for e in manifest_of(gcs, bucket)} == before

    (src / "f7.txt").write_bytes(b"changed\n")
    gcs_proxy.requests.clear()
    third = upload(src, location, gcs_proxy.env)
    assert third.returncode == 0, third.output
    assert uploads(gcs_proxy) == 2, "the changed file's object and the manifest"
    after = {e.path: e for e in manifest_of(gcs, bucket)}
    assert after["f7.txt"].source.name == sha1(b"changed\n")
    assert gcs.get(bucket, sha1(b"changed\n")) == b"changed\n"
    assert {p: e for p, e in after.items() if p != "f7.txt"} == {
        p: e for p, e in before.items() if p != "f7.txt"
    }


def test_object_prefix_and_results_dir(gcs: FakeGcs, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    results = tmp_path / "results"
    # Go's flag spellings and the environment variables, as a Build would give them.
    run = run_stepkit(
        "gcs-uploader",
        f"-results-dir={results}",
        "-terminationMessagePath",
        str(tmp_path / "termination"),
        env={
            **gcs.env,
            "STEPKIT_GCS_UPLOAD_DIR": str(src),
            "STEPKIT_GCS_UPLOAD_LOCATION": f"https://storage.googleapis.com/{bucket}/m/manifest.json",
            "STEPKIT_GCS_UPLOAD_OBJECT_PREFIX": "cas/",
        },
    )
    assert run.returncode == 0, run.output
    assert gcs.names(bucket) == [f"cas/{sha1(b'a')}", "m/manifest.json"]
    [entry] = manifest_of(gcs, bucket)
    assert entry.source.name == f"cas/{sha1(b'a')}"
    assert (results / "manifest").read_text().startswith(f"gs://{bucket}/m/manifest.json#")


def test_object_with_wrong_content_is_replaced(gcs: FakeGcs, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"the real content\n")
    name = sha1(b"the real content\n")
    gcs.put(bucket, name, b"something else")
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs.env)
    assert run.returncode == 0, run.output
    assert "other content than its name says" in run.stderr
    [entry] = manifest_of(gcs, bucket)
    assert gcs.get(bucket, name, entry.source.generation) == b"the real content\n"


def _symlink_out(src: Path) -> str:
    os.symlink("../outside", src / "escape")
    return "'escape'"


def _symlink_absolute(src: Path) -> str:
    os.symlink("/etc/passwd", src / "abs")
    return "'abs'"


def _symlink_out_through_link(src: Path) -> str:
    (src / "d").mkdir()
    os.symlink("..", src / "d" / "up")  # inside: d/.. is the root
    os.symlink("up/..", src / "d" / "sneaky")  # lexically d/, really the root's parent
    return "'d/sneaky'"


def _fifo(src: Path) -> str:
    (src / "sub").mkdir()
    os.mkfifo(src / "sub" / "pipe")
    return "'sub/pipe'"


def _socket(src: Path) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    sock.close()
    return "'sock'"


def _backslash(src: Path) -> str:
    (src / "a\\b.txt").write_bytes(b"x")
    return "a\\b.txt"


def _newline(src: Path) -> str:
    (src / "evil\nname").write_bytes(b"x")
    return "evil\\nname"


def _drive(src: Path) -> str:
    (src / "C:evil").write_bytes(b"x")
    return "C:evil"


@pytest.mark.parametrize(
    "plant",
    [
        _symlink_out,
        _symlink_absolute,
        _symlink_out_through_link,
        _fifo,
        _socket,
        _backslash,
        _newline,
        _drive,
    ],
)
def test_hostile_tree_is_refused_before_any_upload(
    gcs: FakeGcs,
    gcs_proxy: GcsFaultProxy,
    bucket: str,
    tmp_path: Path,
    plant: Callable[[Path], str],
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "fine.txt").write_bytes(b"fine")
    named = plant(src)
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs_proxy.env)
    assert run.returncode == 2, run.output
    [line] = run.stderr.strip().splitlines()
    assert named in line, line
    assert gcs_proxy.requests == [], "refused before any request"
    assert gcs.names(bucket) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--location", "gs://BAD_bucket/m.json"], "--location"),
        (["--location", "gs://bucket-ok"], "--location"),
        (["--location", "gs://bucket-ok/m.json#12"], "--location"),
        (["--location", "http://example.com/m.json"], "--location"),
        (["--location", ""], "--location"),
        (["--location", "gs://bucket-ok/m.json", "--dir", "/nonexistent/dir"], "--dir"),
        (["--location", "gs://bucket-ok/m.json", "--object-prefix", "../x/"], "--object-prefix"),
        (["--location", "gs://bucket-ok/m.json", "--workers", "0"], "--workers"),
    ],
)
def test_bad_flags_exit_2(
    gcs_proxy: GcsFaultProxy, tmp_path: Path, args: list[str], named: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    full = ["--dir", str(src), *args] if "--dir" not in args else args
    run = run_stepkit("gcs-uploader", *full, env=gcs_proxy.env)
    assert run.returncode == 2, run.output
    assert named in run.stderr.strip().splitlines()[-1]
    assert gcs_proxy.requests == []


def test_dir_that_is_a_file(gcs_proxy: GcsFaultProxy, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    run = upload(tmp_path / "file", "gs://bucket-ok/m.json", gcs_proxy.env)
    assert run.returncode == 2, run.output
    assert "--dir" in run.stderr and "not a directory" in run.stderr


def test_permission_denied_exits_3(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    gcs_proxy.deny("/upload/")
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs_proxy.env)
    assert run.returncode == 3, run.output
    assert "storage.objects.create" in run.stderr
    assert gcs.names(bucket) == []


def test_read_denied_exits_3(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    gcs_proxy.deny(f"/o/{sha1(b'a')}")
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs_proxy.env)
    assert run.returncode == 3, run.output
    assert "storage.objects.get" in run.stderr
    assert gcs.names(bucket) == []


def test_5xx_and_resets_are_retried(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    (src / "b.txt").write_bytes(b"b")
    gcs_proxy.fail("/upload/", status=503, times=2)
    gcs_proxy.fail(f"/o/{sha1(b'b')}", reset=True)
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs_proxy.env)
    assert run.returncode == 0, run.output
    assert "3 retries" in run.stderr
    assert {e.path for e in manifest_of(gcs, bucket)} == {"a.txt", "b.txt"}


def test_retries_run_out_leave_no_manifest(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    gcs_proxy.fail("/upload/", status=503, times=50)
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs_proxy.env, "--retries", "2")
    assert run.returncode == 1, run.output
    assert "after 2 retries" in run.stderr
    assert gcs_proxy.count("/upload/") == 3
    assert gcs.names(bucket) == []


def test_missing_bucket_fails(gcs_proxy: GcsFaultProxy, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    run = upload(src, "gs://no-such-bucket/m.json", gcs_proxy.env)
    assert run.returncode == 1, run.output
    assert "no-such-bucket" in run.stderr.strip().splitlines()[-1]


def _snapshot(root: Path) -> dict[str, tuple[str, int | str | bytes]]:
    out: dict[str, tuple[str, int | str | bytes]] = {}
    paths = [Path(d, n) for d, dirs, files in os.walk(root) for n in [*dirs, *files]]
    for path in sorted(paths):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", path.read_bytes())
            out[rel + " mode"] = ("mode", stat.S_IMODE(st.st_mode))
    return out


def test_round_trip_through_gcs_fetcher(gcs: FakeGcs, bucket: str, tmp_path: Path) -> None:
    """What issue 5 asks for: upload, then fetch into an empty directory, reproduces the tree."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    run = upload(src, f"gs://{bucket}/m/manifest.json", gcs.env)
    assert run.returncode == 0, run.output
    [result] = json.loads((tmp_path / "termination").read_text())
    dest = tmp_path / "dest"
    dest.mkdir()
    fetch = run_stepkit(
        "gcs-fetcher",
        "--type",
        "Manifest",
        "--location",
        result["value"],
        "--dest_dir",
        str(dest),
        env=gcs.env,
    )
    assert fetch.returncode == 0, fetch.output
    fetched = _snapshot(dest)
    assert fetched == _snapshot(src)
    assert fetched["bin/srcdir"] == ("link", "../src")
    assert fetched["bin/run.sh mode"] == ("mode", 0o755)
    assert fetched["données/日本語 ñame.txt"] == ("file", "unicode ✓\n".encode())


def _session_ids(gcs_proxy: GcsFaultProxy) -> set[str]:
    """The upload_id of every resumable session created through the proxy."""
    ids = set()
    for location in gcs_proxy.locations:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        ids.update(query.get("upload_id", []))
    return ids


def _fail_sessions(**fault: Any) -> Callable[[GcsFaultProxy], None]:
    def plant(proxy: GcsFaultProxy) -> None:
        proxy.fail("upload_id=", times=50, **fault)

    return plant


def _refuse_sessions(proxy: GcsFaultProxy) -> None:
    proxy.refuse_session(times=50)


@pytest.mark.parametrize(
    "plant",
    [
        _fail_sessions(reset=True),
        _refuse_sessions,
        _fail_sessions(status=503, body=b"<html><body>Service Unavailable</body></html>"),
        _fail_sessions(status=400, body=b"bad request"),
        _fail_sessions(stall=30.0),
    ],
    ids=["reset", "refused", "503-html", "400-text", "stall"],
)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_resumable_session_url_never_shown(
    gcs: FakeGcs,
    gcs_proxy: GcsFaultProxy,
    bucket: str,
    tmp_path: Path,
    plant: Callable[[GcsFaultProxy], None],
    log_format: str,
) -> None:
    """Issue 10: an upload_id lets whoever holds it write the object, so no output may show it.

    Every session is created, then its connection is reset, refused, stalled or answered
    with an error that is not GCS's JSON; with --debug, so tracebacks are printed too.
    """
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # over 8 MiB: resumable
    plant(gcs_proxy)
    run = upload(
        src,
        f"gs://{bucket}/m/manifest.json",
        gcs_proxy.env,
        "--debug",
        "--log-format",
        log_format,
        "--retries",
        "1",
        "--backoff",
        "0",
        "--timeout",
        "2",
    )
    assert run.returncode == 1, run.output
    ids = _session_ids(gcs_proxy)
    assert ids, "the uploader created resumable sessions"
    assert_no_leak(run.output, sorted(ids))
    assert "Traceback" in run.stderr, "--debug printed the traceback, and it is clean too"
    assert gcs.names(bucket) == []


@pytest.mark.parametrize(
    ("status", "compressed"),
    [(200, False), (200, True), (503, False)],
    ids=["metadata", "gzip-bomb", "error-body"],
)
def test_oversized_json_answer_is_not_buffered(
    tmp_path: Path, status: int, compressed: bool
) -> None:
    """Issue 10: a hostile endpoint's 64 MiB JSON answer is refused, not read into memory."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    size = 64 << 20
    with OversizedGcs(size, status=status, gzip=compressed) as hostile:
        run = upload(src, "gs://bucket-ok/m/manifest.json", hostile.env, "--retries", "1")
    assert run.returncode == 1, run.output
    last = run.stderr.strip().splitlines()[-1]
    assert "larger than 8 MiB" in last, last
    assert "/o/" + sha1(b"a") in last, "the error names the request"
    assert hostile.sent, "the uploader asked the endpoint"
    if not compressed:
        assert all(n < size for n in hostile.sent), "the uploader stopped reading and hung up"
    assert not (tmp_path / "termination").exists()


# Same length as INSIDE: only the content tells them apart.
INSIDE = b"inside content\n"
OUTSIDE = b"OUTSIDE-SECRET\n"


def _tree_with_outside(tmp_path: Path) -> tuple[Path, Path]:
    """src/sub/x.txt inside --dir, and outside/x.txt beside it with other content."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "x.txt").write_bytes(INSIDE)
    (src / "a.txt").write_bytes(b"a")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_bytes(OUTSIDE)
    return src, outside


def test_directory_swapped_for_a_symlink_before_upload_is_not_followed(
    gcs: FakeGcs, gcs_proxy: GcsFaultProxy, bucket: str, tmp_path: Path
) -> None:
    """Issue 10: --dir/sub becomes a symlink to outside after the scan, before sub/x.txt is sent.

    The proxy holds the uploader's look-up of sub/x.txt's object (it comes after the scan and
    the hashing, just before the file is opened again to upload it), the test swaps the
    directory on the real filesystem, then lets the request go on.
    """
    src, outside = _tree_with_outside(tmp_path)
    gcs_proxy.capture_bodies = True
    gate = gcs_proxy.hold(f"/o/{sha1(INSIDE)}")
    argv = [STEPKIT, "gcs-uploader", "--dir", str(src), "--location"]
    argv += [f"gs://{bucket}/m/manifest.json", "--workers", "1", "--retries", "0"]
    argv += ["--terminationMessagePath", str(tmp_path / "termination")]
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **gcs_proxy.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert gate.arrived.wait(60), "the uploader never looked up sub/x.txt's object"
        (src / "sub").rename(tmp_path / "sub-was-here")
        os.symlink(outside, src / "sub")
        gate.release()
        _, stderr = proc.communicate(timeout=60)
    finally:
        gate.release()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    sent = [body for _, _, body in gcs_proxy.bodies]
    assert sent, "other objects were uploaded meanwhile, through the proxy"
    assert not any(OUTSIDE in body for body in sent), "a file outside --dir was uploaded"
    assert proc.returncode == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert "'sub/x.txt'" in last and "'sub' is a symlink" in last, last
    assert sha1(OUTSIDE) not in gcs.names(bucket)
    assert "m/manifest.json" not in gcs.names(bucket)
    assert not (tmp_path / "termination").exists()


def _dir_to_symlink(src: Path, outside: Path) -> str:
    (src / "sub").rename(src.parent / "sub-was-here")
    os.symlink(outside, src / "sub")
    return "'sub' is a symlink now"


def _dir_to_file(src: Path, outside: Path) -> str:
    (src / "sub").rename(src.parent / "sub-was-here")
    (src / "sub").write_bytes(OUTSIDE)
    return "'sub' is not a directory now"


def _file_to_symlink(src: Path, outside: Path) -> str:
    (src / "sub" / "x.txt").unlink()
    os.symlink(outside / "x.txt", src / "sub" / "x.txt")
    return "'sub/x.txt' was replaced by a symlink"


@pytest.mark.parametrize("swap", [_dir_to_symlink, _dir_to_file, _file_to_symlink])
@pytest.mark.parametrize("dir_is_a_link", [False, True])
def test_swap_between_scan_and_hashing_is_refused(
    gcs_proxy: GcsFaultProxy,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    swap: Callable[[Path, Path], str],
    dir_is_a_link: bool,
) -> None:
    """The same race at the first read of the file (hashing), in process: the test's own step
    runs right after the uploader's scan and swaps on the real filesystem."""
    src, outside = _tree_with_outside(tmp_path)
    # --dir itself may be a symlink (the user chose it); only what is below it is never followed.
    root_path = src
    if dir_is_a_link:
        root_path = tmp_path / "dir-link"
        os.symlink(src, root_path)
    expected: list[str] = []
    scan = uptree.walk

    def scan_then_swap(*args: Any, **kwargs: Any) -> uptree.Walked:
        walked = scan(*args, **kwargs)
        expected.append(swap(src, outside))
        return walked

    monkeypatch.setattr(uptree, "walk", scan_then_swap)
    for name, value in gcs_proxy.env.items():
        monkeypatch.setenv(name, value)
    gcs_proxy.capture_bodies = True
    spec = UploadSpec(
        dir=root_path,
        manifest=Location(bucket, "m/manifest.json"),
        prefix="",
        workers=1,
        retries=0,
        backoff=0.0,
        timeout=30.0,
        termination_path=str(tmp_path / "termination"),
        results_dir=None,
    )
    with pytest.raises(StepkitError) as caught:
        upload_run(spec)
    assert not any(OUTSIDE in body for _, _, body in gcs_proxy.bodies), "outside was uploaded"
    assert caught.value.exit_code == 1
    assert "'sub/x.txt'" in str(caught.value) and expected[0] in str(caught.value)
    assert gcs_proxy.requests == [], "it failed while hashing, before any request"
    assert not (tmp_path / "termination").exists()
