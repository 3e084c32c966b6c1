"""stepkit.archive: hostile archives (ADVERSARIAL 33-41, 44) are refused whole, ordinary ones round-trip."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stepkit.archive import ArchiveError, ExtractStats, Limits, detect, extract, place
from stepkit.errors import EXIT_USAGE, InputError
from stepkit.validate import shown
from tests.archives import (
    SPARSE_FORMATS,
    Dir,
    Entry,
    File,
    Hard,
    Special,
    Sym,
    gnu_sparse_member,
    gnu_sparse_tar,
    gz,
    gzip_of_zeros_after,
    nested_zip,
    pax_record,
    pax_sparse_member,
    quoted_overlap_zip,
    sparse_source,
    tar_bytes,
    tar_end,
    tar_header,
    tar_member,
    zip_bytes,
    zst,
    zstd_of_zeros_after,
)


@dataclass
class Box:
    """A directory with sentinels around the destination `work/src`, which must stay absent on refusal."""

    root: Path

    @property
    def dest(self) -> Path:
        return self.root / "work" / "src"

    @property
    def outside(self) -> Path:
        return self.root / "outside"

    def archive(self, data: bytes, name: str = "a.bin") -> Path:
        path = self.root / "in" / name
        path.write_bytes(data)
        return path

    def snapshot(self) -> dict[str, tuple[int, bytes | str]]:
        """Every path in the box except the archive inputs and dest, with its type and content."""
        seen: dict[str, tuple[int, bytes | str]] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                rel = str(path.relative_to(self.root))
                if rel == "in" or rel.startswith(("in/", "work/src/")) or rel == "work/src":
                    continue
                st_ = path.lstat()
                if stat.S_ISLNK(st_.st_mode):
                    seen[rel] = (st_.st_mode, os.readlink(path))
                elif stat.S_ISREG(st_.st_mode):
                    seen[rel] = (st_.st_mode, path.read_bytes())
                else:
                    seen[rel] = (st_.st_mode, "")
        return seen


def make_box(root: Path) -> Box:
    box = Box(root)
    root.mkdir(exist_ok=True)
    (root / "in").mkdir()
    (root / "work").mkdir()
    box.outside.mkdir()
    (box.outside / "passwd").write_text("root:x:0:0\n")
    (box.outside / "shadow").write_text("root:SECRET:1\n")
    (root / "work" / "sentinel").write_text("keep\n")
    (root / "sentinel").write_text("keep\n")
    return box


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path / "box")


def refused(
    box: Box,
    data: bytes,
    entry: str | None,
    *,
    why: str = "",
    limits: Limits = Limits(),  # noqa: B008
    allow_git: bool = False,
) -> ArchiveError:
    """Extract data into box.dest, expecting a refusal naming entry; check nothing was left anywhere."""
    before = box.snapshot()
    with pytest.raises(ArchiveError) as info:
        extract(
            box.archive(data), box.dest, limits=limits, allow_git=allow_git, label="gs://b/src.tgz"
        )
    err = info.value
    assert isinstance(err, InputError)
    assert err.exit_code == EXIT_USAGE
    assert "\n" not in str(err)
    assert str(err).startswith("gs://b/src.tgz")
    if entry is not None:
        assert f"entry {shown(entry)}" in str(err), str(err)
    assert why in str(err), str(err)
    assert not os.path.lexists(box.dest)
    assert sorted(os.listdir(box.root / "work")) == ["sentinel"], "staging directory left behind"
    assert box.snapshot() == before
    return err


def both(entries: list[Entry]) -> list[bytes]:
    return [tar_bytes(entries), zip_bytes(entries)]


ARCHIVERS = [
    pytest.param(lambda e: tar_bytes(e), id="tgz"),
    pytest.param(lambda e: zip_bytes(e), id="zip"),
]
Archiver = Callable[[list[Entry]], bytes]


# --- ADVERSARIAL 33: traversal in names -------------------------------------------------


@pytest.mark.parametrize("make", ARCHIVERS)
@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../../etc/cron.d/x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:\\x", "backslash"),
        ("C:x", "drive letter"),
        ("..\\..\\x", "backslash"),
        ("a/../../b", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        ("a\nb", "control character"),
        ("a\x1b]0;x\x07", "control character"),
    ],
)
def test_adv33_traversal_names_refused(box: Box, make: Archiver, name: str, why: str) -> None:
    data = make([File("ok", b"fine"), File(name, b"pwned")])
    refused(box, data, name, why=why)


def test_adv33_absolute_outside_path_not_written(box: Box) -> None:
    target = str(box.outside / "passwd")
    refused(box, tar_bytes([File(target, b"pwned")]), target, why="absolute")
    assert (box.outside / "passwd").read_text() == "root:x:0:0\n"


def test_adv33_empty_name_refused(box: Box) -> None:
    data = tar_bytes([File("ok"), File("", b"x")], compress="")
    refused(box, data, "", why="empty name")


# --- ADVERSARIAL 34: prefix confusion ---------------------------------------------------


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv34_sibling_prefix_refused(box: Box, make: Archiver) -> None:
    refused(box, make([File("../src-evil/x", b"pwned")]), "../src-evil/x", why="'..'")
    assert not (box.root / "work" / "src-evil").exists()


# --- ADVERSARIAL 35: symlinks -----------------------------------------------------------


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv35_absolute_link_then_write_through(box: Box, make: Archiver) -> None:
    data = make([Sym("l", str(box.outside)), File("l/passwd", b"pwned")])
    refused(box, data, "l", why="absolute symlink target")


@pytest.mark.parametrize("make", ARCHIVERS)
@pytest.mark.parametrize("target", ["../../", "..", "a/../..", "../src-evil", "./../x"])
def test_adv35_link_leaving_dest(box: Box, make: Archiver, target: str) -> None:
    refused(box, make([Dir("a"), Sym("l", target)]), "l", why="leaves the destination")


@pytest.mark.parametrize("make", ARCHIVERS)
@pytest.mark.parametrize("name", [".", "./", "a/."])
def test_adv35_link_named_dot(box: Box, make: Archiver, name: str) -> None:
    refused(box, make([Dir("a"), Sym(name, "a")]), name)


def test_adv35_link_with_empty_name_or_target(box: Box) -> None:
    refused(box, tar_bytes([Sym("", "a")], compress=""), "", why="empty name")
    refused(box, tar_bytes([Sym("l", "")], compress=""), "l", why="empty symlink target")


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv35_never_write_below_an_archive_symlink(box: Box, make: Archiver) -> None:
    # Even a link that stays inside is not written through: the simplest rule that holds.
    data = make([Dir("sub"), Sym("l", "sub"), File("l/passwd", b"x")])
    refused(box, data, "l/passwd", why="is a symlink of the archive")


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv35_dotdot_after_earlier_link_is_resolved_through_it(box: Box, make: Archiver) -> None:
    # sub/up -> .. is the root; x -> sub/up/.. would be lexically "sub" but really leaves.
    data = make([Dir("sub"), Sym("sub/up", ".."), Sym("x", "sub/up/..")])
    refused(box, data, "x", why="leaves the destination")


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv35_dotdot_through_path_that_may_become_a_link(box: Box, make: Archiver) -> None:
    # "q" does not exist yet: a later "q -> sub/deeper" would change where x/.. points.
    data = make([Sym("x", "q/.."), Dir("sub"), Sym("q", "sub")])
    refused(box, data, "x", why="not a directory of the archive")


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv35_links_inside_are_kept(box: Box, make: Archiver) -> None:
    data = make(
        [
            Dir("a/b"),
            File("a/f", b"data"),
            Sym("a/b/up", "../f"),
            Sym("a/b/self", "."),
            Sym("top", "a/b/up"),
            Sym("dangling", "nowhere/x"),
            Sym("a/b/root", "../.."),
        ]
    )
    stats = extract(box.archive(data), box.dest)
    assert stats.symlinks == 5
    assert (box.dest / "top").read_bytes() == b"data"
    assert os.readlink(box.dest / "a/b/root") == "../.."
    assert (box.dest / "a/b/root").resolve() == box.dest.resolve()


# --- ADVERSARIAL 36: symlinks planted in an existing destination -------------------------


def _planted(box: Box) -> Path:
    """An existing checkout in dest with symlinks pointing outside, as a git checkout can leave."""
    box.dest.mkdir()
    (box.dest / "README").write_text("old\n")
    (box.dest / "keep").write_text("untouched\n")
    (box.dest / "sub").symlink_to(box.outside)
    (box.dest / "dirlink").symlink_to("../../outside")
    (box.dest / "passwd").symlink_to(box.outside / "passwd")
    (box.dest / "real").mkdir()
    (box.dest / "real" / "old").write_text("old\n")
    return box.dest


@pytest.mark.parametrize("make", ARCHIVERS)
@pytest.mark.parametrize("entry", ["sub/passwd", "dirlink/shadow", "sub/new/file"])
def test_adv36_place_refuses_to_write_through_planted_link(
    box: Box, make: Archiver, entry: str
) -> None:
    dest = _planted(box)
    staging = box.root / "work" / ".staging"
    extract(box.archive(make([File("README", b"new\n"), File(entry, b"pwned")])), staging)
    before = box.snapshot()
    with pytest.raises(ArchiveError) as info:
        place(staging, dest)
    assert info.value.exit_code == EXIT_USAGE
    assert entry.split("/")[0] in str(info.value)
    assert "symbolic link" in str(info.value)
    # Nothing moved: validation happens before the first rename.
    assert (dest / "README").read_text() == "old\n"
    assert box.snapshot() == before
    assert (box.outside / "passwd").read_text() == "root:x:0:0\n"
    assert sorted(os.listdir(box.outside)) == ["passwd", "shadow"]


def test_adv36_place_replaces_planted_file_link_not_its_target(box: Box) -> None:
    dest = _planted(box)
    staging = box.root / "work" / ".staging"
    data = tar_bytes([File("passwd", b"mine\n"), File("README", b"new\n"), File("real/new", b"n")])
    extract(box.archive(data), staging)
    place(staging, dest)
    assert not (dest / "passwd").is_symlink()
    assert (dest / "passwd").read_bytes() == b"mine\n"
    assert (box.outside / "passwd").read_text() == "root:x:0:0\n"
    assert (dest / "README").read_text() == "new\n"
    assert (dest / "keep").read_text() == "untouched\n"
    assert (dest / "real" / "old").read_text() == "old\n"
    assert (dest / "real" / "new").read_text() == "n"
    assert not staging.exists()


def test_adv36_place_refuses_type_changes(box: Box) -> None:
    dest = _planted(box)
    for entries, name in (([File("real", b"x")], "real"), ([File("keep/x", b"x")], "keep")):
        staging = box.root / "work" / ".staging"
        extract(box.archive(tar_bytes(entries)), staging)
        with pytest.raises(ArchiveError, match=name):
            place(staging, dest)
        shutil.rmtree(staging)
    assert (dest / "keep").read_text() == "untouched\n"


def test_adv36_place_into_missing_dest_is_a_rename(box: Box) -> None:
    staging = box.root / "work" / ".staging"
    extract(box.archive(tar_bytes([File("a/b", b"x")])), staging)
    place(staging, box.dest)
    assert (box.dest / "a" / "b").read_bytes() == b"x"
    assert not staging.exists()


def test_adv36_place_across_filesystems(box: Box) -> None:
    """A staging folder on another filesystem: entries are copied in, with the same checks."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        assert os.stat(shm).st_dev != box.root.stat().st_dev, "/dev/shm is not another filesystem"
        data = tar_bytes(
            [File("README", b"new\n"), File("real/x/run", b"#!", 0o755), Sym("real/l", "x/run")]
        )
        dest = _planted(box)
        staging = Path(shm) / "tree"
        extract(box.archive(data), staging)
        place(staging, dest)
        assert (dest / "README").read_text() == "new\n"
        assert (dest / "real" / "old").read_text() == "old\n"
        assert os.readlink(dest / "real" / "l") == "x/run"
        assert stat.S_IMODE((dest / "real" / "x" / "run").stat().st_mode) == 0o755
        assert stat.S_IMODE((dest / "real" / "x").stat().st_mode) == 0o755
        assert not staging.exists()
        assert not [p for p in dest.rglob(".*stepkit*")]
        staging = Path(shm) / "tree2"
        extract(box.archive(tar_bytes([File("sub/evil", b"x")])), staging)
        with pytest.raises(ArchiveError, match="symbolic link"):
            place(staging, dest)
        new = box.root / "work" / "fresh"
        place(staging, new)
        assert (new / "sub" / "evil").read_bytes() == b"x"
    assert sorted(os.listdir(box.outside)) == ["passwd", "shadow"]


def test_adv36_python_zipfile_would_write_through(box: Box) -> None:
    """Why place() exists: zipfile.extractall follows a planted symlink (this is the live proof)."""
    dest = _planted(box)
    with zipfile.ZipFile(io.BytesIO(zip_bytes([File("sub/planted", b"x")]))) as zf:
        zf.extractall(dest)  # noqa: S202 - showing the unsafe behaviour is the point
    assert (box.outside / "planted").exists()


# --- ADVERSARIAL 37: hard links -----------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "name", "why"),
    [
        ([Hard("h", "/etc/shadow")], "h", "absolute hard link target"),
        ([Hard("h", "../outside/shadow")], "h", "'..' in hard link target"),
        ([Hard("f", "f")], "f", "not an earlier regular file"),
        ([File("f", b"x"), Hard("f", "./f"), File("f", b"pwned")], "f", "appears twice"),
        ([Hard("h", "later"), File("later", b"x")], "h", "not an earlier regular file"),
        ([Dir("d"), Hard("h", "d")], "h", "not an earlier regular file"),
        ([File("f", b"x"), Sym("s", "f"), Hard("h", "s")], "h", "not an earlier regular file"),
        ([Sym("s", "f"), Hard("h", "s/x")], "h", "not an earlier regular file"),
        ([Hard("h", "f"), File("h", b"pwned")], "h", "not an earlier regular file"),
        ([File("f", b"x"), Hard("h", "f"), File("h", b"pwned")], "h", "appears twice"),
    ],
)
def test_adv37_hardlinks(box: Box, entries: list[Entry], name: str, why: str) -> None:
    refused(box, tar_bytes(entries), name, why=why)
    assert (box.outside / "shadow").read_text() == "root:SECRET:1\n"


def test_adv37_hardlink_to_earlier_file_is_linked(box: Box) -> None:
    stats = extract(box.archive(tar_bytes([File("d/f", b"x"), Hard("h", "./d/f")])), box.dest)
    assert stats == ExtractStats(files=2, dirs=1, symlinks=0, bytes=1)
    assert (box.dest / "h").read_bytes() == b"x"
    assert (box.dest / "h").stat().st_ino == (box.dest / "d/f").stat().st_ino


# --- ADVERSARIAL 38: deep symlink chains --------------------------------------------------


def _realpath_limit_attack() -> list[Entry]:
    """CPython test_tarfile test_realpath_limit_attack (CVE-2025-4517), rebuilt."""
    steps = "abcdefghijklmnop"
    component = "d" * ((4096 - 40) // (len(steps) + 1))
    entries: list[Entry] = []
    path = ""
    for step in steps:
        entries.append(Dir(os.path.join(path, component)))
        entries.append(Sym(os.path.join(path, step), component))
        path = os.path.join(path, component)
    linkpath = os.path.join(*steps, "l" * 254)
    entries.append(Sym(linkpath, os.path.join(*[".."] * len(steps))))
    entries.append(Sym("escape", os.path.join(linkpath, "..")))
    entries.append(Hard("flaglink", os.path.join("escape", "flag")))
    entries.append(File("flaglink", b"overwrite"))
    entries.append(File("escape/newfile", b"new"))
    return entries


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_adv38_realpath_limit_attack(box: Box, fmt: int) -> None:
    data = tar_bytes(_realpath_limit_attack(), fmt=fmt)
    # With the default limits the long names alone are refused; with path limits lifted the
    # symlink rule refuses the first entry that goes through a link.
    refused(box, data, None, why="longer than 1024 bytes")
    big = Limits(max_path_bytes=1 << 20)
    refused(box, data, os.path.join(*"abcdefghijklmnop", "l" * 254), why="symlink", limits=big)


def test_adv38_long_chain_is_contained(box: Box) -> None:
    # 200 links, each to the one before: far past the kernel's 40-link limit.
    entries: list[Entry] = [Dir("d"), File("d/f", b"x"), Sym("l0", "d")]
    entries += [Sym(f"l{i}", f"l{i - 1}") for i in range(1, 200)]
    entries.append(Sym("ok", "l199/../l199"))
    stats = extract(box.archive(tar_bytes(entries)), box.dest)
    assert stats.symlinks == 201
    assert (box.dest / "l30" / "f").read_bytes() == b"x"
    root = os.path.realpath(box.dest)
    for link in box.dest.iterdir():
        real = _resolved(str(link))
        assert real is None or _inside(real, root), link
    shutil.rmtree(box.dest)
    entries.append(Sym("esc", "l199/../.."))
    refused(box, tar_bytes(entries), "esc", why="leaves the destination")


# --- ADVERSARIAL 39: special files, modes, owners ------------------------------------------


@pytest.mark.parametrize("make", ARCHIVERS)
@pytest.mark.parametrize("kind", [b"3", b"4", b"6"])
def test_adv39_devices_and_fifos_refused(box: Box, make: Archiver, kind: bytes) -> None:
    refused(box, make([File("ok"), Special("dev", kind)]), "dev")


def test_adv39_modes_stripped_and_owner_is_runner(box: Box) -> None:
    entries: list[Entry] = [
        File("suid", b"x", 0o4755),
        File("sgid", b"x", 0o2711),
        File("sticky", b"x", 0o1644),
        File("world", b"x", 0o777),
        File("private", b"x", 0o600),
        File("onlyx", b"x", 0o100),
        Dir("d", 0o7777),
        Dir("closed", 0o000),
        File("closed/f", b"x", 0o000),
    ]
    for data in (tar_bytes(entries, uid=0), zip_bytes(entries)):
        dest = box.root / "work" / f"out{len(os.listdir(box.root / 'work'))}"
        extract(box.archive(data), dest)
        modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in dest.rglob("*")}
        assert modes == {
            "suid": 0o755,
            "sgid": 0o755,
            "sticky": 0o644,
            "world": 0o755,
            "private": 0o644,
            "onlyx": 0o755,
            "d": 0o755,
            "closed": 0o755,
            "f": 0o644,
        }
        assert stat.S_IMODE(dest.stat().st_mode) == 0o755
        assert {p.lstat().st_uid for p in [dest, *dest.rglob("*")]} == {os.getuid()}


def test_adv39_modes_hold_under_any_umask(box: Box) -> None:
    old = os.umask(0o077)
    try:
        extract(box.archive(tar_bytes([File("d/x", b"x", 0o755), File("y")])), box.dest)
    finally:
        os.umask(old)
    assert stat.S_IMODE((box.dest / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((box.dest / "d/x").stat().st_mode) == 0o755
    assert stat.S_IMODE((box.dest / "y").stat().st_mode) == 0o644


# --- ADVERSARIAL 40: bombs and limits ----------------------------------------------------


def test_adv40_gzip_bomb_stream_aborts_at_header(box: Box) -> None:
    # 10 GiB of zeros behind a header that admits it: refused before a byte is written.
    header = tar_header(b"zeros", size=10 << 30)
    data = gzip_of_zeros_after(header, 64 << 20)  # the stream needs no more to prove it
    err = refused(box, data, "zeros", why="times its size")
    assert "compression bomb" in str(err)


def test_adv40_total_bytes_counted_across_entries(box: Box) -> None:
    entries: list[Entry] = [File(f"f{i:02}", bytes(1 << 20)) for i in range(40)]
    limits = Limits(max_bytes=10 << 20, max_ratio=1e9)
    refused(box, tar_bytes(entries), "f10", why=f"more than {10 << 20} bytes", limits=limits)
    refused(box, zip_bytes(entries), "f10", why=f"more than {10 << 20} bytes", limits=limits)


def test_adv40_ratio_applies_only_past_one_mib(box: Box) -> None:
    # 512 KiB of zeros compresses ~1000:1 but stays under the 1 MiB floor: accepted.
    extract(box.archive(tar_bytes([File("z", bytes(512 << 10))])), box.dest)
    shutil.rmtree(box.dest)
    refused(box, tar_bytes([File("z", bytes(20 << 20))]), "z", why="times its size")


def test_adv40_lying_zip_sizes_refused(box: Box) -> None:
    data = bytearray(zip_bytes([File("f", bytes(100_000))], compression=zipfile.ZIP_DEFLATED))
    # Claim 10 bytes uncompressed in the central directory (and the local header).
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    refused(box, bytes(data), "f", why="sizes differ")
    data[22:26] = (10).to_bytes(4, "little")
    refused(box, bytes(data), "f")


def test_adv40_nested_zip_is_not_recursed(box: Box) -> None:
    stats = extract(box.archive(nested_zip(5, 1 << 20)), box.dest)
    assert stats.files == 1
    assert [p.name for p in box.dest.iterdir()] == ["layer4.zip"]


def test_adv40_quoted_overlap_zip(box: Box) -> None:
    data = quoted_overlap_zip()
    # Both entries really are readable without an overlap check (the attack works on zipfile):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert len(zf.read("outer")) > len(zf.read("inner")) > 0
    refused(box, data, "inner", why="overlaps entry 'outer'")


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv40_too_many_entries(box: Box, make: Archiver) -> None:
    entries: list[Entry] = [File(f"d/f{i}") for i in range(1500)]
    limits = Limits(max_entries=1000)
    err = refused(box, make(entries), None, why="more than 1000 entries", limits=limits)
    if "entry" in str(err):  # tar counts as it goes; zip counts its central directory first
        assert "entry 'd/f1000'" in str(err)


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv40_four_kib_names(box: Box, make: Archiver) -> None:
    name = "a" * 4096
    refused(box, make([File(name, b"x")]), name, why="longer than 1024 bytes")
    link = Sym("l", "b/" * 600)
    refused(box, make([link]), "l", why="symlink target longer than 1024 bytes")


def test_adv40_many_tiny_entries_in_one_small_gzip(box: Box) -> None:
    # 10^6 entries are the same stream, longer; 20 000 make the point against a limit of 5 000.
    headers = b"".join(tar_header(f"d/{i}".encode()) for i in range(20_000))
    data = gz(headers + tar_end())
    refused(box, data, "d/5000", why="more than 5000 entries", limits=Limits(max_entries=5000))


def test_adv40_zero_stream_aborts_at_ratio_after_limit_bytes(box: Box) -> None:
    # 64 entries of 1 MiB zeros: a small gzip. The ratio cap (250 x its size) stops it at the
    # first file that would cross the cap, so no more than the cap was ever written.
    entries: list[Entry] = [File(f"f{i:02}", bytes(1 << 20)) for i in range(64)]
    data = tar_bytes(entries)
    cap = max(1 << 20, int(250 * len(data)))
    assert cap < 64 << 20
    refused(box, data, f"f{cap // (1 << 20):02}", why="times its size")


# --- ADVERSARIAL 41: malformed tar ----------------------------------------------------------


def _pax(records: bytes, name: bytes = b"././@PaxHeader") -> bytes:
    return tar_member(name, records, typeflag=b"x")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(
            _pax(b"0 \n") + tar_member(b"f", b"x") + tar_end(), "pax", id="zero-length-pax-record"
        ),
        pytest.param(
            _pax(b"00 path=x\n") + tar_member(b"f") + tar_end(), "pax", id="pax-length-too-short"
        ),
        pytest.param(
            _pax(b"99 path=x\n") + tar_member(b"f") + tar_end(), "pax", id="pax-length-too-long"
        ),
        pytest.param(
            _pax(b"x path=x\n") + tar_member(b"f") + tar_end(), "pax", id="pax-length-not-number"
        ),
        pytest.param(
            _pax(pax_record("size", b"-5")) + tar_member(b"f") + tar_end(),
            "pax size",
            id="pax-negative-size",
        ),
        pytest.param(
            tar_header(b"f", size_field=b"\xff" * 12) + tar_end(),
            "negative",
            id="base256-negative-size",
        ),
        pytest.param(
            tar_header(b"f", size_field=b"\x80" + b"\xff" * 11) + tar_end(),
            "times its size",
            id="huge-size",
        ),
        pytest.param(
            tar_header(b"f", size_field=b"12345678901z") + tar_end(),
            "bad header field",
            id="garbage-size",
        ),
        pytest.param(
            tar_member(b"././@LongLink", b"x" * 150 + b"/\0", typeflag=b"L")
            + tar_member(b"short", b"data", typeflag=b"\0")
            + tar_end(),
            "a directory with data",
            id="aregtype-in-gnu-longname",
        ),
        pytest.param(
            tar_member(b"././@LongLink", b"name", typeflag=b"L") + tar_end(),
            "without entry",
            id="longname-without-entry",
        ),
        pytest.param(
            b"".join(tar_member(b"././@LongLink", b"n", typeflag=b"L") for _ in range(10))
            + tar_end(),
            "extended headers",
            id="longname-flood",
        ),
        pytest.param(
            tar_member(b"././@LongLink", bytes(100_000), typeflag=b"L") + tar_end(),
            "extended headers",
            id="huge-longname",
        ),
        pytest.param(
            tar_member(b"ok", b"data") + tar_header(b"f", size=1000) + b"x" * 100,
            "truncated",
            id="truncated-data",
        ),
        pytest.param(
            tar_member(b"ok", b"data") + tar_header(b"f")[:300], "truncated", id="truncated-header"
        ),
        pytest.param(
            tar_member(b"ok", b"data") + b"\x01" * 512, "corrupt tar header", id="bad-checksum"
        ),
        pytest.param(
            tar_header(b"f", size=10) + b"\x01" * 4096 + tar_end(),
            "corrupt tar header",
            id="data-longer-than-size",
        ),
        pytest.param(
            gnu_sparse_member(b"s", [(0, 10)], 5, bytes(10)) + tar_end(),
            "past the file's size",
            id="gnu-sparse-region-past-size",
        ),
        pytest.param(
            _pax(pax_record("GNU.sparse.major", b"1")) + tar_member(b"f") + tar_end(),
            "sparse",
            id="pax-sparse",
        ),
        pytest.param(
            tar_member(b"g", pax_record("path", b"../x"), typeflag=b"g")
            + tar_member(b"f")
            + tar_end(),
            "global pax",
            id="global-pax-path",
        ),
        pytest.param(
            _pax(pax_record("path", b"../../x")) + tar_member(b"f") + tar_end(),
            "'..'",
            id="pax-path",
        ),
        pytest.param(
            _pax(pax_record("size", b"10")) + tar_header(b"d/", typeflag=b"5") + bytes(512),
            "directory with data",
            id="dir-with-pax-size",
        ),
        pytest.param(
            tar_header(b"l", typeflag=b"2", linkname=b"x", size=3) + bytes(512) + tar_end(),
            "link with data",
            id="link-with-data",
        ),
        pytest.param(tar_member(b"\xff\xfe", b"x") + tar_end(), "not UTF-8", id="non-utf8-name"),
        pytest.param(
            tar_member(b"x", typeflag=b"Z") + tar_end(), "unsupported entry type", id="unknown-type"
        ),
    ],
)
@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tgz"])
def test_adv41_malformed_tar(box: Box, data: bytes, why: str, compress: bool) -> None:
    refused(box, gz(data) if compress else data, None, why=why)


def test_adv41_truncated_gzip(box: Box) -> None:
    data = tar_bytes([File(f"f{i}", os.urandom(20_000)) for i in range(10)])
    refused(box, data[: len(data) // 2], None, why="corrupt or truncated compressed data")


def test_adv41_not_an_archive(box: Box) -> None:
    for data, why in (
        (b"hello world\n" * 100, "not a zip or tar archive"),
        (b"", "not a zip or tar"),
    ):
        refused(box, data, None, why=why)
    refused(box, b"\x28\xb5\x2f\xfd" + bytes(100), None, why="corrupt or truncated")
    refused(box, gz(b"hello world\n" * 100), None, why="not a tar archive")


def test_adv41_valid_oddities_accepted(box: Box) -> None:
    # An empty pax header, a GNU long name ending in '/' on an AREGTYPE entry (a directory,
    # as tar reads it), and no end-of-archive blocks at all.
    data = (
        _pax(b"")
        + tar_member(b"f", b"x")
        + tar_member(b"././@LongLink", b"d" * 150 + b"/\0", typeflag=b"L")
        + tar_member(b"short", typeflag=b"\0")
        + tar_member(b"a/b", b"yz")
    )
    stats = extract(box.archive(data), box.dest)
    assert stats == ExtractStats(files=2, dirs=2, symlinks=0, bytes=3)
    assert (box.dest / ("d" * 150)).is_dir()


# --- tar as GNU tar, bsdtar and Go read it, or refused where they disagree ---------------------


def _gnu_tar_names(path: Path) -> list[str]:
    """What GNU tar lists: the oracle for what the other readers agree on."""
    out = subprocess.run(["tar", "-tf", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def _long(name: bytes, typeflag: bytes = b"L") -> bytes:
    return tar_member(b"././@LongLink", name + b"\0", typeflag=typeflag)


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        pytest.param(
            _pax(pax_record("path", b"first")) + _pax(pax_record("path", b"second")),
            "second",
            id="two-pax-paths",
        ),
        pytest.param(
            _pax(pax_record("path", b"first")) + _pax(pax_record("mtime", b"1")),
            "hdr",
            id="second-pax-drops-first",
        ),
        pytest.param(_long(b"first") + _long(b"second"), "second", id="two-long-names"),
        pytest.param(
            tar_member(b"g", pax_record("comment", b"c"), typeflag=b"g")
            + _pax(pax_record("path", b"xp")),
            "xp",
            id="global-then-pax",
        ),
    ],
)
def test_consecutive_extended_headers_last_one_wins(box: Box, headers: bytes, name: str) -> None:
    data = headers + tar_member(b"hdr", b"data") + tar_end()
    archive = box.archive(data)
    assert _gnu_tar_names(archive) == [name]
    extract(archive, box.dest)
    assert os.listdir(box.dest) == [name]
    assert (box.dest / name).read_bytes() == b"data"


@pytest.mark.parametrize(
    ("data", "entry", "why"),
    [
        pytest.param(
            _long(b"longname") + _pax(pax_record("path", b"paxname")) + tar_member(b"hdr", b"x"),
            "hdr",
            "GNU long name 'longname' and a pax path",
            id="long-name-then-pax-path",
        ),
        pytest.param(
            _pax(pax_record("path", b"paxname")) + _long(b"longname") + tar_member(b"hdr", b"x"),
            "hdr",
            "GNU long name 'longname' and a pax path",
            id="pax-path-then-long-name",
        ),
        pytest.param(
            _long(b"klink", b"K")
            + _pax(pax_record("linkpath", b"paxlink"))
            + tar_header(b"hdr", typeflag=b"2", linkname=b"x"),
            "hdr",
            "GNU long link 'klink' and a pax linkpath",
            id="long-link-and-pax-linkpath",
        ),
        pytest.param(
            _pax(pax_record("path", b"xp"))
            + tar_member(b"g", pax_record("comment", b"c"), typeflag=b"g")
            + tar_member(b"hdr", b"x"),
            "g",
            "global pax header between an extended header and its entry",
            id="pax-then-global",
        ),
        pytest.param(
            _pax(pax_record("path", b"")) + tar_member(b"hdr", b"x"),
            "hdr",
            "empty pax path",
            id="empty",
        ),
    ],
)
def test_extended_headers_readers_disagree_on_are_refused(
    box: Box, data: bytes, entry: str, why: str
) -> None:
    refused(box, data + tar_end(), entry, why=why)
    refused(box, gz(data + tar_end()), entry, why=why)


def test_hard_link_to_itself_from_gnu_tar_is_a_no_op(box: Box) -> None:
    src = box.root / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"once\n")
    archive = box.root / "in" / "twice.tar"
    # `$(find d)` names d/f twice: once below d, once itself. GNU tar stores the second as a
    # hard link to itself.
    subprocess.run(["tar", "cf", str(archive), "d", "d/f"], cwd=src, check=True)
    listing = subprocess.run(
        ["tar", "tvf", str(archive)], capture_output=True, text=True, check=True
    ).stdout
    assert "d/f link to d/f" in listing
    stats = extract(archive, box.dest)
    assert stats == ExtractStats(files=1, dirs=1, symlinks=0, bytes=5)
    assert (box.dest / "d" / "f").read_bytes() == b"once\n"
    assert (box.dest / "d" / "f").stat().st_nlink == 1


@pytest.mark.parametrize("size", [10, 512, 8**11 - 1])
def test_directory_size_field_is_ignored(box: Box, size: int) -> None:
    # No tool writes one, but POSIX calls it an allocation hint: no data follows.
    data = tar_header(b"d/", typeflag=b"5", size=size) + tar_member(b"d/f", b"x") + tar_end()
    archive = box.archive(data)
    assert _gnu_tar_names(archive) == ["d/", "d/f"]
    stats = extract(archive, box.dest)
    assert stats == ExtractStats(files=1, dirs=1, symlinks=0, bytes=1)


def test_hard_link_size_field_is_ignored(box: Box) -> None:
    # Some old writers put the linked file's size there; no reader takes data after it.
    data = (
        tar_member(b"f", b"abc")
        + tar_header(b"h", typeflag=b"1", linkname=b"f", size=3)
        + tar_member(b"g", b"x")
        + tar_end()
    )
    archive = box.archive(data)
    assert _gnu_tar_names(archive) == ["f", "h", "g"]
    extract(archive, box.dest)
    assert (box.dest / "h").read_bytes() == b"abc"


@pytest.mark.parametrize(
    ("header", "why"),
    [
        # GNU tar reads data after these; Go and bsdtar do not.
        (tar_header(b"l", typeflag=b"2", linkname=b"f", size=512), "link with data"),
        (tar_header(b"a/", typeflag=b"\0", size=512), "directory with data"),
        (_pax(pax_record("size", b"512")) + tar_header(b"h", typeflag=b"1", linkname=b"f"), "link"),
        (tar_header(b"label", typeflag=b"V", size=512), "volume label with data"),
    ],
)
def test_header_only_entries_with_disputed_data_are_refused(
    box: Box, header: bytes, why: str
) -> None:
    data = tar_member(b"f", b"x") + header + tar_member(b"after", b"y" * 10) + tar_end()
    refused(box, data, None, why=why)


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_gnu_volume_label_is_skipped(box: Box, fmt: str) -> None:
    src = box.root / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("f\n")
    archive = box.root / "in" / "labelled.tar"
    subprocess.run(
        ["tar", f"--format={fmt}", "-V", "Label 1", "-cf", str(archive), "sub"], cwd=src, check=True
    )
    assert b"Label 1" in archive.read_bytes()
    stats = extract(archive, box.dest)
    assert stats == ExtractStats(files=1, dirs=1, symlinks=0, bytes=2)
    assert sorted(os.listdir(box.dest)) == ["sub"]


def test_gnu_incremental_directories_are_directories(box: Box) -> None:
    src = box.root / "src"
    (src / "top" / "sub").mkdir(parents=True)
    (src / "top" / "a").write_text("a\n")
    (src / "top" / "sub" / "b").write_text("b\n")
    archive = box.root / "in" / "level0.tar"
    snapshot = box.root / "snapshot"
    subprocess.run(["tar", "-g", str(snapshot), "-cf", str(archive), "top"], cwd=src, check=True)
    # typeflag D, with the directory's listing (the dumpdir) as data
    assert archive.read_bytes()[156:157] == b"D"
    stats = extract(archive, box.dest)
    assert stats == ExtractStats(files=2, dirs=2, symlinks=0, bytes=4)
    assert (box.dest / "top" / "sub" / "b").read_text() == "b\n"


def test_gnu_incremental_listing_counts_against_the_extended_header_budget(box: Box) -> None:
    data = tar_header(b"d/", typeflag=b"D", size=70 << 20) + bytes(70 << 20) + tar_end()
    refused(box, gz(data), "d/", why="incremental directory listing")


def test_detect_empty_tar_and_zip_behind_a_stub(box: Box) -> None:
    empty = box.root / "in" / "empty.tar"
    subprocess.run(["tar", "cf", str(empty), "-T", "/dev/null"], check=True)
    assert set(empty.read_bytes()) == {0}
    assert detect(empty) == "tar"
    stats = extract(empty, box.dest)
    assert stats == ExtractStats(files=0, dirs=0, symlinks=0, bytes=0)
    assert os.listdir(box.dest) == []

    src = box.root / "zsrc"
    src.mkdir()
    (src / "hello.txt").write_text("hello\n")
    plain = box.root / "in" / "plain.zip"
    subprocess.run(["zip", "-q", str(plain), "hello.txt"], cwd=src, check=True)
    stub = Path("/bin/true").read_bytes()
    sfx = box.root / "in" / "sfx.zip"
    sfx.write_bytes(stub + plain.read_bytes())
    adjusted = box.root / "in" / "adjusted.zip"
    adjusted.write_bytes(sfx.read_bytes())
    # zip -A rewrites the offsets to count from the start of the file, as SFX tools do.
    subprocess.run(["zip", "-q", "-A", str(adjusted)], check=True)
    for n, path in enumerate((sfx, adjusted)):
        assert detect(path) == "zip"
        extract(path, box.root / f"out{n}")
        assert (box.root / f"out{n}" / "hello.txt").read_text() == "hello\n"


def test_detect_prefers_tar_over_a_zip_inside_it(box: Box) -> None:
    # A tar whose last member is a zip ends with the zip's end-of-central-directory record:
    # it is read as the tar it is.
    inner = zip_bytes([File("zipped", b"z")])
    path = box.archive(tar_bytes([File("outer", b"o"), File("x.zip", inner)], compress=""))
    assert zipfile.is_zipfile(path)
    assert detect(path) == "tar"
    extract(path, box.dest)
    assert sorted(os.listdir(box.dest)) == ["outer", "x.zip"]


def test_zip_version_needed_too_high_is_bad_input(box: Box) -> None:
    data = bytearray(zip_bytes([File("ok", b"1"), File("new/format.bin", b"2")]))
    cd = data.rindex(b"PK\x01\x02")  # the second entry's central directory record
    data[cd + 6 : cd + 8] = (64).to_bytes(2, "little")  # version needed to extract: 6.4
    err = refused(box, bytes(data), "new/format.bin", why="version 6.4")
    assert "6.3" in str(err)


# --- sparse files ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", SPARSE_FORMATS)
def test_sparse_files_from_gnu_tar_keep_their_holes(box: Box, options: list[str]) -> None:
    src = sparse_source(box.root / "src")
    archive = box.root / "in" / "sparse.tar"
    gnu_sparse_tar(src, archive, options)
    assert archive.stat().st_size < 100_000
    stats = extract(archive, box.dest)
    out = box.dest / "sparse.img"
    assert out.read_bytes() == src.read_bytes()
    assert stats.bytes == 3 << 20
    # Written as a sparse file: far fewer blocks than its size.
    assert out.stat().st_blocks * 512 < 1 << 20
    assert os.listdir(box.dest) == ["sparse.img"]


@pytest.mark.parametrize("version", ["gnu", "0.0", "0.1", "1.0"])
@pytest.mark.parametrize(
    ("regions", "realsize", "stored", "why"),
    [
        ([(0, 10), (5, 10)], 100, 20, "out of order or overlapping"),
        ([(50, 10), (0, 10)], 100, 20, "out of order or overlapping"),
        ([(95, 10)], 100, 10, "past the file's size"),
        ([(0, 10)], 100, 20, "describes 10 bytes of data but the entry holds 20"),
        ([(0, 30)], 100, 20, "describes 30 bytes of data but the entry holds 20"),
    ],
)
def test_hostile_sparse_maps_are_refused(
    box: Box,
    version: str,
    regions: list[tuple[int, int]],
    realsize: int,
    stored: int,
    why: str,
) -> None:
    if version == "gnu":
        member = gnu_sparse_member(b"s", regions, realsize, b"d" * stored)
    else:
        member = pax_sparse_member(version, b"s", regions, realsize, b"d" * stored)
    refused(box, member + tar_end(), "s", why=why)


@pytest.mark.parametrize(
    ("records", "why"),
    [
        (
            [("GNU.sparse.size", b"100"), ("GNU.sparse.numblocks", b"1"),
             ("GNU.sparse.offset", b"-5"), ("GNU.sparse.numbytes", b"5")],
            "bad sparse map number",
        ),
        (
            [("GNU.sparse.size", b"100"), ("GNU.sparse.numblocks", b"2"),
             ("GNU.sparse.offset", b"0"), ("GNU.sparse.offset", b"10"),
             ("GNU.sparse.numbytes", b"5"), ("GNU.sparse.numbytes", b"5")],
            "do not alternate",
        ),
        (
            [("GNU.sparse.size", b"100"), ("GNU.sparse.numblocks", b"2"),
             ("GNU.sparse.map", b"0,5")],
            "does not hold the 2 regions",
        ),
        ([("GNU.sparse.major", b"2"), ("GNU.sparse.minor", b"0")], "unknown GNU sparse format"),
        ([("GNU.sparse.map", b"0,5")], "without its size"),
    ],
)  # fmt: skip
def test_malformed_pax_sparse_headers_are_refused(
    box: Box, records: list[tuple[str, bytes]], why: str
) -> None:
    pax = b"".join(pax_record(k, v) for k, v in records)
    data = _pax(pax) + tar_member(b"s", b"d" * 5) + tar_end()
    refused(box, data, "s", why=why)


def test_sparse_headers_on_a_symlink_and_negative_old_gnu_offsets_are_refused(box: Box) -> None:
    data = (
        _pax(pax_record("GNU.sparse.size", b"5") + pax_record("GNU.sparse.map", b"0,5"))
        + tar_header(b"s", typeflag=b"2", linkname=b"x")
        + tar_end()
    )
    refused(box, data, "s", why="not a regular file")
    member = bytearray(gnu_sparse_member(b"s", [(0, 5)], 100, b"d" * 5))
    member[386:398] = b"\xff" * 12  # a base-256 negative offset
    member[148:156] = b" " * 8
    member[148:156] = b"%06o\0 " % sum(member[:512])
    refused(box, bytes(member) + tar_end(), "s", why="negative")


def test_sparse_full_size_counts_against_the_limits(box: Box) -> None:
    # A few bytes of data, 10 GiB of holes: the holes are what a disk fills up with.
    size = (10 << 30) + 1
    member = pax_sparse_member("1.0", b"s", [(size, 0)], size, b"")
    refused(box, member + tar_end(), "s", why=f"more than {10 * 1024**3} bytes",
            limits=Limits(max_ratio=1e12))  # fmt: skip
    refused(box, gz(member + tar_end()), "s", why="times its size")


def test_old_gnu_sparse_map_with_extension_blocks(box: Box) -> None:
    # 30 regions: 4 in the header, the rest in two extension blocks.
    regions = [(i * 1000, 10) for i in range(30)]
    data = bytes(range(256)) * 2
    member = gnu_sparse_member(b"s", regions, 40_000, data[:300])
    extract(box.archive(member + tar_end()), box.dest)
    out = (box.dest / "s").read_bytes()
    assert len(out) == 40_000
    assert out[:10] == data[:10] and out[29_000:29_010] == data[290:300]
    assert out[10:1000] == bytes(990)


# --- zstd: the same limits and checks as gzip ---------------------------------------------------


def test_adv40_zstd_bomb_stream_aborts_at_header(box: Box) -> None:
    # 64 MiB of zeros is a few KiB of zstd; the header admits 10 GiB: refused before writing.
    data = zstd_of_zeros_after(tar_header(b"zeros", size=10 << 30), 64 << 20)
    assert len(data) < 10_000
    err = refused(box, data, "zeros", why="times its size")
    assert "compression bomb" in err.args[0]


def test_adv40_zstd_zero_stream_aborts_at_ratio(box: Box) -> None:
    entries: list[Entry] = [File(f"f{i:02}", bytes(1 << 20)) for i in range(64)]
    data = zst(tar_bytes(entries, compress=""))
    cap = max(1 << 20, int(250 * len(data)))
    assert cap < 64 << 20
    refused(box, data, f"f{cap // (1 << 20):02}", why="times its size")


def test_adv41_truncated_and_corrupt_zstd(box: Box) -> None:
    data = zst(tar_bytes([File(f"f{i}", os.urandom(20_000)) for i in range(10)], compress=""))
    refused(box, data[: len(data) // 2], None, why="corrupt or truncated compressed data")
    # A frame whose only block has the reserved block type.
    refused(box, b"\x28\xb5\x2f\xfd\x00\x00\x07\x00\x00", None, why="corrupt or truncated")


def test_adv40_zstd_frame_asking_for_a_huge_window_is_refused(box: Box) -> None:
    # A frame header may ask for a window of up to 2 TiB, which the decoder would allocate:
    # one asking for 1 GiB (window log 30) is refused, like zstd's own 128 MiB default.
    frame = b"\x28\xb5\x2f\xfd\x00" + bytes([20 << 3])
    block = tar_member(b"f", b"x") + tar_end()
    data = frame + (1 | len(block) << 3).to_bytes(3, "little") + block
    err = refused(box, data, None, why="corrupt or truncated compressed data")
    assert "memory" in str(err), str(err)
    # The same frame asking for 128 MiB is read.
    ok = b"\x28\xb5\x2f\xfd\x00" + bytes([17 << 3]) + data[6:]
    extract(box.archive(ok), box.dest)
    assert (box.dest / "f").read_bytes() == b"x"


def test_zstd_concatenated_frames(box: Box) -> None:
    tar = tar_bytes([File("a", os.urandom(3000)), File("b", b"bee")], compress="")
    extract(box.archive(zst(tar[:1000]) + zst(tar[1000:])), box.dest)
    assert (box.dest / "b").read_bytes() == b"bee"
    # pzstd -1 cuts its input into frames of about 2 MiB, each behind a skippable frame.
    src = box.root / "big"
    src.mkdir()
    (src / "random").write_bytes(os.urandom(6 << 20))
    archive = box.root / "in" / "big.tzst"
    subprocess.run(
        ["sh", "-c", f"tar -cf - -C {src} random | pzstd -q -1 -p 2 -c > {archive}"], check=True
    )
    assert archive.read_bytes().count(b"\x50\x2a\x4d\x18") > 1
    out = box.root / "out"
    extract(archive, out)
    assert (out / "random").read_bytes() == (src / "random").read_bytes()


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )


def test_zstd_library_is_imported_only_for_zstd_data(box: Box) -> None:
    tgz = box.archive(tar_bytes([File("f", b"x")]), "a.tgz")
    tzst = box.archive(zst(tar_bytes([File("f", b"x")], compress="")), "a.tzst")
    code = (
        "import sys\nfrom pathlib import Path\nfrom stepkit.archive import extract\n"
        f"extract(Path({str(tgz)!r}), Path({str(box.root / 'one')!r}))\n"
        "assert not [m for m in sys.modules if 'zstd' in m], 'imported for gzip'\n"
        f"extract(Path({str(tzst)!r}), Path({str(box.root / 'two')!r}))\n"
        "assert [m for m in sys.modules if 'zstd' in m]\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert (box.root / "two" / "f").read_bytes() == b"x"


def test_zstd_library_missing_is_a_clear_error(box: Box) -> None:
    tzst = box.archive(zst(tar_bytes([File("f", b"x")], compress="")), "a.tzst")
    # No installation here lacks the package, so its absence is simulated: a None entry in
    # sys.modules makes the import fail as a missing package does.
    code = (
        "import sys\nsys.modules['backports.zstd'] = None\nsys.modules['compression.zstd'] = None\n"
        "from pathlib import Path\nfrom stepkit.archive import extract\n"
        "from stepkit.errors import StepkitError\n"
        "try:\n"
        f"    extract(Path({str(tzst)!r}), Path({str(box.dest)!r}), label='gs://b/a.tzst')\n"
        "except StepkitError as exc:\n"
        "    print(exc.exit_code, exc)\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("1 gs://b/a.tzst: "), proc.stdout
    assert "backports.zstd" in proc.stdout and "stepkit[gcs]" in proc.stdout
    assert not os.path.lexists(box.dest)
    assert sorted(os.listdir(box.root / "work")) == ["sentinel"]


# --- ADVERSARIAL 44: .git --------------------------------------------------------------------


GIT_CONFIG = b"[core]\n\tfsmonitor = touch PWNED\n\thooksPath = /tmp/hooks\n"


@pytest.mark.parametrize("make", ARCHIVERS)
@pytest.mark.parametrize(
    "name", [".git/config", ".GIT/config", "sub/.Git/hooks/post-checkout", ".git. /config"]
)
def test_adv44_git_dir_refused_by_default(box: Box, make: Archiver, name: str) -> None:
    err = refused(box, make([File("README"), File(name, GIT_CONFIG)]), name, why=".git")
    assert "--allow-git" in str(err)


@pytest.mark.parametrize("make", ARCHIVERS)
def test_adv44_git_link_name_refused(box: Box, make: Archiver) -> None:
    refused(box, make([Dir("x"), Sym(".git", "x")]), ".git", why=".git")


def test_adv44_git_dir_allowed_when_asked(box: Box) -> None:
    extract(box.archive(tar_bytes([File(".git/config", GIT_CONFIG)])), box.dest, allow_git=True)
    assert (box.dest / ".git" / "config").read_bytes() == GIT_CONFIG


# --- destination handling ---------------------------------------------------------------------


def test_dest_must_not_exist_and_parent_must(box: Box) -> None:
    archive = box.archive(tar_bytes([File("f")]))
    box.dest.mkdir()
    with pytest.raises(InputError, match="already exists"):
        extract(archive, box.dest)
    with pytest.raises(InputError, match="does not exist"):
        extract(archive, box.root / "nope" / "src")


def test_interrupt_removes_partial_tree(box: Box, monkeypatch: pytest.MonkeyPatch) -> None:
    from stepkit import archive as mod

    real = mod._Tree.add_file
    calls = []

    def interrupted(self: mod._Tree, name: str, *args: object, **kw: object) -> None:
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self, name, *args, **kw)  # type: ignore[arg-type]

    # A mock only to deliver Ctrl-C at a known point; the extraction itself is real.
    monkeypatch.setattr(mod._Tree, "add_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(box.archive(tar_bytes([File(f"f{i}", b"x") for i in range(5)])), box.dest)
    assert not os.path.lexists(box.dest)
    assert os.listdir(box.root / "work") == ["sentinel"]


# --- round trips ------------------------------------------------------------------------------


def _source_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "empty" / "nested").mkdir(parents=True)
    (root / "README.md").write_text("hello\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "data.bin").write_bytes(os.urandom(300_000))
    (root / "pkg" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "pkg" / "run.sh").chmod(0o755)
    (root / "pkg" / "ünïcode spâce.txt").write_text("u\n")
    (root / "pkg" / "link").symlink_to("sub/data.bin")
    (root / "pkg" / "sub" / "up").symlink_to("../../README.md")
    (root / "dangling").symlink_to("not/there")
    (root / "pkg" / "dirlink").symlink_to("sub")
    # Past 100 bytes: GNU long names and long links, or pax paths, depending on the format.
    deep = root / "deep" / ("x" * 70) / ("y" * 70)
    deep.mkdir(parents=True)
    (deep / "file.txt").write_text("deep\n")
    (root / "deep" / "longlink").symlink_to(f"{'x' * 70}/{'y' * 70}/file.txt")


def _describe(root: Path) -> dict[str, tuple[str, object, int]]:
    out: dict[str, tuple[str, object, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st_ = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(path), 0)
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", None, 0o755)
            else:
                out[rel] = ("file", path.read_bytes(), 0o755 if st_.st_mode & 0o111 else 0o644)
    return out


@pytest.mark.parametrize(
    "command",
    [
        ["tar", "czf", "{a}", "-C", "{s}", "."],
        ["tar", "cJf", "{a}", "-C", "{s}", "."],
        ["tar", "cjf", "{a}", "-C", "{s}", "."],
        [
            "tar",
            "cf",
            "{a}",
            "--format=pax",
            "-C",
            "{s}",
            "pkg",
            "empty",
            "README.md",
            "dangling",
            "deep",
        ],
        ["tar", "--zstd", "-cf", "{a}", "-C", "{s}", "."],
        # pzstd puts a skippable frame (holding the frame's size) before each frame.
        ["sh", "-c", "tar -cf - -C {s} . | pzstd -q -p 2 -c > {a}"],
        ["zip", "-qry", "{a}", "."],
        ["zip", "-qry0", "{a}", "."],
    ],
    ids=["tgz", "txz", "tbz2", "pax", "tzst", "pzstd", "zip", "zip-stored"],
)
def test_roundtrip_source_tree(tmp_path: Path, command: list[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _source_tree(src)
    archive = tmp_path / "archive.bin"  # detection goes by content, not name
    argv = [c.format(a=archive, s=src) for c in command]
    subprocess.run(argv, cwd=src, check=True)
    out = tmp_path / "out"
    stats = extract(archive, out, label="gs://b/src")
    assert _describe(out) == _describe(src)
    assert stats.symlinks == 5
    assert stats.files == 6
    assert stats.bytes == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_roundtrip_zip_methods(box: Box, compression: int) -> None:
    entries: list[Entry] = [
        File("a/b", os.urandom(5000)),
        File("x", b"y" * 70_000, 0o755),
        Sym("a/l", "b"),
    ]
    extract(box.archive(zip_bytes(entries, compression=compression)), box.dest)
    assert (box.dest / "a/b").read_bytes() == entries[0].data  # type: ignore[union-attr]
    assert (box.dest / "a/l").read_bytes() == entries[0].data  # type: ignore[union-attr]
    assert os.access(box.dest / "x", os.X_OK)


def test_ustar_prefix_names(box: Box) -> None:
    name = "p" * 90 + "/" + "q" * 60
    data = tar_bytes([File(name, b"x")], compress="", fmt=tarfile.USTAR_FORMAT)
    assert b"p" * 90 in data[345:500]  # the name really is split into prefix and name
    extract(box.archive(data), box.dest)
    assert (box.dest / name).read_bytes() == b"x"


def test_zip_unicode_path_extra_field(box: Box) -> None:
    """Info-ZIP's 0x7075 field carries the UTF-8 name when the header's name is in another charset."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("cafX")
        utf8 = "café".encode()
        body = b"\x01" + zlib.crc32(b"cafX").to_bytes(4, "little") + utf8
        info.extra = struct.pack("<HH", 0x7075, len(body)) + body
        zf.writestr(info, b"x")
    extract(box.archive(buf.getvalue()), box.dest)
    assert os.listdir(box.dest) == ["café"]


def test_detect_by_content(tmp_path: Path) -> None:
    for data, kind in (
        (zip_bytes([File("a")]), "zip"),
        (tar_bytes([File("a")]), "tar"),
        (tar_bytes([File("a")], compress=""), "tar"),
        (tar_bytes([File("a")], compress="xz"), "tar"),
        (tar_bytes([File("a")], compress="bz2"), "tar"),
        (zst(tar_bytes([File("a")], compress="")), "tar"),
        (tar_bytes([File("a")], compress="", fmt=tarfile.USTAR_FORMAT), "tar"),
    ):
        path = tmp_path / "archive.zip"
        path.write_bytes(data)
        assert detect(path) == kind


def test_duplicate_directories_merge(box: Box) -> None:
    stats = extract(
        box.archive(tar_bytes([File("d/f", b"x"), Dir("d"), Dir("d/"), Dir("./")])), box.dest
    )
    assert stats.dirs == 1 and stats.files == 1


# --- properties ---------------------------------------------------------------------------------

# Mostly names that pass, so link chains get built; the hostile ones often enough to matter.
_PLAIN = st.sampled_from(["a", "b", "l", "é"])
_COMPONENTS = st.one_of(
    _PLAIN,
    _PLAIN,
    _PLAIN,
    st.sampled_from(["..", "."]),
    st.sampled_from(["", "a\\b", "C:", "/", "\x00", "\x7f", ".git", ".."]),
)
_PATHS = st.lists(_COMPONENTS, min_size=1, max_size=4).map("/".join)
_ENTRY = st.one_of(
    st.builds(File, _PATHS, st.just(b"x")),
    st.builds(Dir, _PATHS),
    st.builds(Sym, _PATHS, _PATHS),
    st.builds(Hard, _PATHS, _PATHS),
)
# Valid names with link targets full of '..': where the symlink rules do their work.
_NAMES = st.lists(_PLAIN, min_size=1, max_size=3).map("/".join)
_TARGETS = st.lists(st.sampled_from(["a", "b", "l", "..", "."]), min_size=1, max_size=5).map(
    "/".join
)
_ENTRY = st.one_of(
    _ENTRY,
    st.builds(Dir, _NAMES),
    st.builds(File, _NAMES, st.just(b"x")),
    st.builds(Sym, _NAMES, _TARGETS),
    st.builds(Sym, _NAMES, _TARGETS),
)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _resolved(path: str) -> str | None:
    """Where the kernel would take path; None for a symlink loop, which it refuses to follow."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
    # Dangling: realpath's lexical completion of the missing part over-approximates the reach.
    return os.path.realpath(path)


def _check_property(entries: list[Entry], use_zip: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        box = make_box(Path(tmp))
        try:
            data = zip_bytes(entries) if use_zip else tar_bytes(entries, fmt=tarfile.PAX_FORMAT)
        except (ValueError, UnicodeError):
            return  # the writer itself refuses this archive
        before = box.snapshot()
        try:
            extract(box.archive(data), box.dest)
        except ArchiveError:
            assert not os.path.lexists(box.dest)
            event("refused")
        else:
            event("extracted")
            root = os.path.realpath(box.dest)
            for dirpath, dirnames, filenames in os.walk(box.dest):
                for name in dirnames + filenames:
                    path = os.path.join(dirpath, name)
                    real = _resolved(path)
                    assert real is None or _inside(real, root), (path, real)
        assert box.snapshot() == before


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(_ENTRY, min_size=1, max_size=6))
def test_property_tar_nothing_escapes(entries: list[Entry]) -> None:
    _check_property(entries, use_zip=False)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(_ENTRY.filter(lambda e: not isinstance(e, Hard)), min_size=1, max_size=6))
def test_property_zip_nothing_escapes(entries: list[Entry]) -> None:
    _check_property(entries, use_zip=True)
