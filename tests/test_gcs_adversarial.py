"""Hostile manifests, object names, archives and flags for gcs-fetcher (ADVERSARIAL.md 42, 43, 33, 36)."""

from __future__ import annotations

import io
import itertools
import json
import zipfile
from pathlib import Path

import pytest

from stepkit import gcsmanifest
from stepkit.errors import InputError
from stepkit.gcs import Location
from tests.archives import File, tar_bytes, tar_header, zst, zstd_of_zeros_after
from tests.conftest import run_stepkit
from tests.gcspeers import FakeGcs
from tests.test_gcsfetcher import fetch, make_zip, sha1hex, stat_value, tree

_buckets = itertools.count()


@pytest.fixture
def bucket(gcs: FakeGcs) -> str:
    name = f"adv-{next(_buckets)}"
    gcs.make_bucket(name, versioning=True)
    return name


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the destination with a sentinel; nothing may change in it."""
    path = tmp_path / "workspace"
    (path / "sentinel").parent.mkdir(parents=True, exist_ok=True)
    (path / "sentinel").write_text("untouched\n")
    return path


def outside_unchanged(outside: Path, dest: Path) -> None:
    rest = {k: v for k, v in tree(outside).items() if not k.startswith(dest.name)}
    assert rest == {"sentinel": "untouched\n"}


def manifest_bytes(entries: dict[str, dict[str, object]]) -> bytes:
    return json.dumps(entries).encode()


# ---------------------------------------------------------------------------------------------
# 42: manifest keys, buckets, digests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["../../x", "/abs", "a/../../b", "a//b", "./a", "..", "C:\\x",
                                 "..\\..\\x", "a/\x1b]0;x\x07", ""])  # fmt: skip
def test_manifest_key_that_could_leave_dest_is_rejected(
    gcs: FakeGcs, bucket: str, dest: Path, outside: Path, key: str
) -> None:
    gen = gcs.put(bucket, "obj", b"PWNED")
    gcs.put(bucket, "m.json", manifest_bytes({
        "fine.txt": {"sourceUrl": f"gs://{bucket}/obj#{gen}"},
        key: {"sourceUrl": f"gs://{bucket}/obj#{gen}"},
    }))  # fmt: skip
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/m.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert "manifest" in result.stderr and "entry" in result.stderr
    assert "\x1b" not in result.stderr
    assert tree(dest) == {}
    outside_unchanged(outside, dest)


def test_entry_from_a_bucket_not_allowed(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    gcs.make_bucket("elsewhere-bkt")
    other = gcs.put("elsewhere-bkt", "secret", b"PWNED")
    ok = gcs.put(bucket, "ok", b"fine")
    gcs.put(bucket, "m.json", manifest_bytes({
        "ok": {"sourceUrl": f"gs://{bucket}/ok#{ok}"},
        "stolen": {"sourceUrl": f"gs://elsewhere-bkt/secret#{other}"},
    }))  # fmt: skip
    args = ("-type=Manifest", f"-location=gs://{bucket}/m.json", f"-dest_dir={dest}")
    result = fetch(gcs.env, *args, f"--allowed-buckets={bucket},third-bkt")
    assert result.returncode == 2, result.output
    assert "'stolen'" in result.stderr and "'elsewhere-bkt'" in result.stderr
    assert "--allowed-buckets" in result.stderr
    assert tree(dest) == {}
    # The location itself is held to the list too; without a list any bucket is read.
    env = {**gcs.env, "STEPKIT_GCS_ALLOWED_BUCKETS": "third-bkt"}
    result = fetch(env, *args)
    assert result.returncode == 2, result.output
    assert "--location" in result.stderr
    result = fetch(gcs.env, *args)
    assert result.returncode == 0, result.output
    assert tree(dest) == {"ok": "fine", "stolen": "PWNED"}


def test_sha1sum_field_spellings_and_missing_sha1sum(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    data = b"content\n"
    gen = gcs.put(bucket, "obj", data)
    digest = sha1hex(data)
    # The reference never matched an upper-case "Sha1Sum"; here every spelling is checked.
    wrong = manifest_bytes({
        "a": {"SOURCEURL": f"gs://{bucket}/obj#{gen}", "SHA1SUM": digest.upper()},
        "b": {"sourceurl": f"gs://{bucket}/obj#{gen}", "Sha1Sum": "f" * 40},
    })  # fmt: skip
    gcs.put(bucket, "wrong.json", wrong)
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/wrong.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 1, result.output
    assert "'b'" in result.stderr and "sha1sum mismatch" in result.stderr
    assert tree(dest) == {}
    # sha1sum is optional, as in the reference: GCS's own crc32c still checks the bytes.
    gcs.put(bucket, "nosum.json", manifest_bytes({"c": {"SourceUrl": f"gs://{bucket}/obj#{gen}"}}))
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/nosum.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(dest) == {"c": "content\n"}


@pytest.mark.parametrize("target", ["../../etc", "/etc/passwd", "x/../..", "a/../../..", ""])
def test_manifest_symlink_leaving_dest_is_rejected(
    gcs: FakeGcs, bucket: str, dest: Path, outside: Path, target: str
) -> None:
    gen = gcs.put(bucket, "link", target.encode())
    gcs.put(bucket, "m.json", manifest_bytes({
        "sub/l": {"sourceUrl": f"gs://{bucket}/link#{gen}", "mode": gcsmanifest.GO_MODE_SYMLINK | 0o777},
    }))  # fmt: skip
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/m.json",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert "'sub/l'" in result.stderr
    assert tree(dest) == {}
    outside_unchanged(outside, dest)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (b"[]", "JSON object"),
        (b"{not json", "not a JSON manifest"),
        (b'{"a": {"sourceUrl": "http://example.com/x"}}', "sourceUrl"),
        (b'{"a": {"sourceUrl": "gs://Bad_Bucket/x"}}', "invalid bucket"),
        (b'{"a": {"sourceUrl": "gs://bkt/x", "sha1sum": "xyz"}}', "40 hexadecimal"),
        (b'{"a": {"sourceUrl": "gs://bkt/x", "mode": 2147484141}}', "not a regular file"),
        (b'{"a": {"sourceUrl": "gs://bkt/x", "mode": 67109297}}', "not a regular file"),
        (b'{"a": {"sourceUrl": "gs://bkt/x", "mode": "644"}}', "Go file mode"),
        (b'{"a": {"sourceUrl": "gs://bkt/x", "extra": 1}}', "unknown field"),
        (b'{"a": {"sourceUrl": "gs://bkt/x"}, "a": {"sourceUrl": "gs://bkt/y"}}', "twice"),
        (b'{"a": {"sourceUrl": "gs://bkt/x"}, "a/b": {"sourceUrl": "gs://bkt/y"}}', "parent"),
        # urlsplit's port and host checks raise ValueError: exit 2 naming the entry, not 1.
        (b'{"a": {"sourceUrl": "https://storage.googleapis.com:x/bkt/o"}}', "sourceUrl"),
        (b'{"a": {"sourceUrl": "https://storage.googleapis.com:99999/bkt/o"}}', "sourceUrl"),
        (b'{"a": {"sourceUrl": "https://[::1/bkt/o"}}', "sourceUrl"),
    ],
)
def test_manifest_parse_rejects(manifest: bytes, message: str) -> None:
    # The parser alone: each case is one bad manifest, whatever serves it.
    with pytest.raises(InputError, match=message) as info:
        gcsmanifest.parse(manifest, what="manifest gs://bkt/m.json")
    assert str(info.value).startswith("manifest gs://bkt/m.json")


def test_manifest_round_trip_and_modes() -> None:
    entries = [
        gcsmanifest.Entry("b/run", Location("bkt", "o1", 5), "a" * 40, 0o4755),
        gcsmanifest.Entry("a", Location("bkt", "o2"), None, 0o600),
        gcsmanifest.Entry("l", Location("bkt", "o3", 7), None, gcsmanifest.GO_MODE_SYMLINK | 0o777),
    ]
    parsed = gcsmanifest.parse(gcsmanifest.dump(entries), what="m")
    assert parsed == sorted(entries, key=lambda e: e.path)
    assert [(e.path, e.perm, e.is_symlink) for e in parsed] == [
        ("a", 0o644, False), ("b/run", 0o755, False), ("l", 0o755, True)
    ]  # fmt: skip
    assert json.loads(gcsmanifest.dump(entries))["b/run"] == {
        "sourceUrl": "gs://bkt/o1#5", "sha1sum": "a" * 40, "mode": 0o4755
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 43: object names never become staging paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/../../x", "..%2fx", "../x", "x/../../../../tmp/evil"])
def test_hostile_object_names_stay_out_of_paths(
    gcs: FakeGcs, bucket: str, dest: Path, tmp_path: Path, name: str
) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    gen = gcs.put(bucket, name, b"payload\n")
    gcs.put(bucket, "m.json", manifest_bytes({
        "ok/file": {"sourceUrl": f"gs://{bucket}/{name}#{gen}",
                    "sha1sum": sha1hex(b"payload\n")},
    }))  # fmt: skip
    result = fetch(gcs.env, "-type=Manifest", f"-location=gs://{bucket}/m.json",
                   f"-dest_dir={dest}", "-keep_source")  # fmt: skip
    assert result.returncode == 0, result.output
    assert {k: v for k, v in tree(dest).items() if not k.startswith(".download")} == {
        "ok": "dir", "ok/file": "payload\n",
    }  # fmt: skip
    # -keep_source keeps the manifest; no staged name comes from the object's name.
    staged = {p.name for p in (dest / ".download").rglob("*")}
    assert {n for n in staged if not n.startswith("stepkit-gcs-")} == {"manifest.json"}
    # The archive itself under such a name.
    gcs.put(bucket, name, make_zip({"z": b"zipped"}))
    out = tmp_path / "out"
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/{name}",
                   f"-dest_dir={out}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(out) == {"z": "zipped"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "out"])
    assert not (tmp_path.parent / "x").exists()


# ---------------------------------------------------------------------------------------------
# Hostile archives from GCS (33) and flags
# ---------------------------------------------------------------------------------------------


def test_zip_slip_from_gcs_exits_2_and_leaves_dest_unchanged(
    gcs: FakeGcs, bucket: str, dest: Path, outside: Path
) -> None:
    (dest / "keep").write_text("mine\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("good.txt", "fine")
        zf.writestr("../../sentinel", "PWNED")
    gcs.put(bucket, "slip.zip", buf.getvalue())
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/slip.zip",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert stat_value(result.stdout, "Status") == "FAILURE"
    assert tree(dest) == {"keep": "mine\n"}
    outside_unchanged(outside, dest)


@pytest.mark.parametrize("kind", ["traversal", "bomb"])
def test_hostile_tar_zst_exits_2_and_leaves_dest_unchanged(
    gcs: FakeGcs, bucket: str, dest: Path, outside: Path, kind: str
) -> None:
    (dest / "keep").write_text("mine\n")
    if kind == "traversal":
        data = zst(
            tar_bytes([File("good.txt", b"fine"), File("../../sentinel", b"PWNED")], compress="")
        )
        why = "'..'"
    else:
        data = zstd_of_zeros_after(tar_header(b"zeros", size=10 << 30), 64 << 20)
        why = "compression bomb"
    gcs.put(bucket, "src.tar.zst", data)
    result = fetch(gcs.env, "-type=TarGzArchive", f"-location=gs://{bucket}/src.tar.zst",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert why in result.stderr
    assert stat_value(result.stdout, "Status") == "FAILURE"
    assert tree(dest) == {"keep": "mine\n"}
    outside_unchanged(outside, dest)


def test_zip_needing_a_newer_version_exits_2_naming_the_entry(
    gcs: FakeGcs, bucket: str, dest: Path
) -> None:
    data = bytearray(make_zip({"ok": b"1", "new/format.bin": b"2"}))
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 6 : cd + 8] = (64).to_bytes(2, "little")  # version needed to extract: 6.4
    gcs.put(bucket, "new.zip", bytes(data))
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/new.zip",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert "entry 'new/format.bin'" in last and "6.4" in last, last
    assert tree(dest) == {}


def test_self_extracting_zip_is_a_zip(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    gcs.put(bucket, "sfx.zip", Path("/bin/true").read_bytes() + make_zip({"f": b"x"}))
    result = fetch(gcs.env, "-type=ZipArchive", f"-location=gs://{bucket}/sfx.zip",
                   f"-dest_dir={dest}")  # fmt: skip
    assert result.returncode == 0, result.output
    assert tree(dest) == {"f": "x"}


def test_archive_with_git_dir_needs_allow_git(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    data = make_zip({".git/config": b"[core]\n\tfsmonitor = touch PWNED\n", "f": b"x"})
    gcs.put(bucket, "git.zip", data)
    args = ("-type=ZipArchive", f"-location=gs://{bucket}/git.zip", f"-dest_dir={dest}")
    result = fetch(gcs.env, *args)
    assert result.returncode == 2, result.output
    assert ".git" in result.stderr
    assert tree(dest) == {}
    result = fetch(gcs.env, *args, "-allow-git")
    assert result.returncode == 0, result.output
    assert (dest / ".git/config").is_file()


def test_manifest_with_git_dir_needs_allow_git(gcs: FakeGcs, bucket: str, dest: Path) -> None:
    # A manifest is a source tree like an archive: its .git/config runs code with git (44).
    cfg = gcs.put(bucket, "cfg", b"[core]\n\tfsmonitor = touch PWNED\n")
    ok = gcs.put(bucket, "ok", b"x")
    gcs.put(bucket, "m.json", manifest_bytes({
        ".GIT/config": {"sourceUrl": f"gs://{bucket}/cfg#{cfg}"},
        "f": {"sourceUrl": f"gs://{bucket}/ok#{ok}"},
    }))  # fmt: skip
    args = ("-type=Manifest", f"-location=gs://{bucket}/m.json", f"-dest_dir={dest}")
    result = fetch(gcs.env, *args)
    assert result.returncode == 2, result.output
    assert ".git" in result.stderr
    assert tree(dest) == {}
    result = fetch(gcs.env, *args, "-allow-git")
    assert result.returncode == 0, result.output
    assert (dest / ".GIT/config").is_file()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--type", "Tarball", "--location", "gs://bkt/x"], "type"),
        (["--type", "Manifest", "--location", "s3://bkt/x"], "--location"),
        (["--type", "Manifest", "--location", "gs://bkt/x#-1"], "--location"),
        (["--type", "Manifest", "--location", "gs://bkt/x", "--backoff", "fast"], "--backoff"),
        (["--type", "Manifest", "--location", "gs://bkt/x", "-backoff=-1s"], "--backoff"),
        (["--type", "Manifest", "--location", "gs://bkt/x", "--workers", "0"], "workers"),
        (["--type", "Manifest", "--location", "gs://bkt/x", "--retries", "-1"], "retries"),
        (["--type", "Manifest", "--location", "gs://bkt/x", "--timeout", "0s"], "--timeout"),
        (["--type", "Manifest", "--location", "gs://bkt/x", "--allowed-buckets", "A B"],
         "--allowed-buckets"),
        (["--type", "Manifest"], "location"),
    ],
)  # fmt: skip
def test_bad_flags_exit_2_naming_the_flag(tmp_path: Path, args: list[str], flag: str) -> None:
    result = run_stepkit("gcs-fetcher", *args, f"--dest_dir={tmp_path / 'd'}")
    assert result.returncode == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert not (tmp_path / "d").exists()
