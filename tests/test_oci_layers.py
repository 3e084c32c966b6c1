"""stepkit.oci.layers: layers applied as OCI changesets, nothing outside the rootfs touched (ADVERSARIAL 50, 51)."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepkit.archive import ArchiveError, Limits
from stepkit.errors import EXIT_USAGE, InputError, StepkitError
from stepkit.oci.layers import LayerStats, RootFs
from stepkit.validate import shown
from tests.archives import (
    SPARSE_FORMATS,
    gnu_sparse_member,
    gnu_sparse_tar,
    pax_record,
    pax_sparse_member,
    sparse_source,
    tar_end,
    tar_header,
    tar_member,
    zst,
    zstd_of_zeros_after,
)

OCI_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_ZSTD_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"


@dataclass(frozen=True)
class E:
    """One layer entry: kind is "file", "dir", "symlink", "hardlink", "char" or "fifo"."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""


def F(name: str, data: bytes = b"", mode: int = 0o644) -> E:
    return E(name, "file", data, mode)


def D(name: str) -> E:
    return E(name, "dir", mode=0o755)


def L(name: str, target: str) -> E:
    return E(name, "symlink", target=target)


def H(name: str, target: str) -> E:
    return E(name, "hardlink", target=target)


def W(name: str) -> E:
    """A whiteout: an empty regular file named .wh.NAME (or .wh..wh..opq) as written."""
    return E(name, "file")


def layer_bytes(entries: Sequence[E], *, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "char": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = types[e.kind]
            info.mode = e.mode
            info.linkname = e.target
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1) if compress else raw


@dataclass
class Box:
    """A temp directory holding the rootfs `root`, layer inputs in `in/`, and sentinels everywhere else."""

    base: Path
    count: int = 0

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def outside(self) -> Path:
        return self.base / "outside"

    def layer(
        self, entries: Sequence[E], *, compress: bool = True, media_type: str | None = None
    ) -> tuple[Path, str]:
        self.count += 1
        path = self.base / "in" / f"layer{self.count}"
        path.write_bytes(layer_bytes(entries, compress=compress))
        return path, media_type or (OCI_GZ if compress else OCI_TAR)

    def snapshot(self) -> dict[str, tuple[str, bytes | str]]:
        """Everything in the box but the rootfs, the exports and the inputs."""
        return {
            rel: v
            for rel, v in tree(self.base).items()
            if not rel.startswith(("root", "in/", "export"))
        }


def make_box(base: Path) -> Box:
    base.mkdir(exist_ok=True)
    (base / "in").mkdir()
    (base / "root").mkdir(mode=0o700)
    (base / "outside").mkdir()
    (base / "outside" / "passwd").write_text("root:x:0:0\n")
    (base / "outside" / "etc").mkdir()
    (base / "outside" / "etc" / "passwd").write_text("host passwd\n")
    (base / "sentinel").write_text("keep\n")
    return Box(base)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return make_box(tmp_path / "box")


def tree(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every path below root: ("d", ""), ("f", content) with the mode in the kind, or ("l", target)."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            st_ = path.lstat()
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("l", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = (f"d{stat.S_IMODE(st_.st_mode):o}", "")
            else:
                out[rel] = (f"f{stat.S_IMODE(st_.st_mode):o}", path.read_bytes())
    return out


def apply(fs: RootFs, box: Box, entries: Sequence[E], *, compress: bool = True) -> LayerStats:
    path, media = box.layer(entries, compress=compress)
    return fs.apply(path, media_type=media, label=f"layer {box.count}")


def refused(fs: RootFs, box: Box, entries: Sequence[E], entry: str | None, why: str) -> str:
    """Apply a layer expecting an ArchiveError naming entry; nothing outside the rootfs changed."""
    before = box.snapshot()
    with pytest.raises(ArchiveError) as info:
        apply(fs, box, entries)
    msg = str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert "\n" not in msg
    assert msg.startswith(f"layer {box.count}: "), msg
    if entry is not None:
        assert f"entry {shown(entry)}" in msg, msg
    assert why in msg, msg
    assert box.snapshot() == before
    # A failed layer leaves a half-built rootfs that must not be used any further.
    with pytest.raises(StepkitError, match="incomplete"):
        apply(fs, box, [F("x")])
    return msg


# --- changesets -------------------------------------------------------------------------


def test_three_layers_with_overrides_whiteouts_opaque_dirs_and_links(box: Box) -> None:
    fs = RootFs(box.root)
    s1 = apply(
        fs,
        box,
        [
            D("etc"),
            F("etc/os-release", b"ID=one\n"),
            F("etc/passwd", b"root:x:0:0\n"),
            D("usr/bin"),
            F("usr/bin/sh", b"#!sh", 0o755),
            H("usr/bin/sh2", "usr/bin/sh"),
            L("bin", "usr/bin"),
            D("app"),
            F("app/a", b"a1"),
            F("app/sub/b", b"b1"),
            F("var/cache/apt/pkg", b"x" * 3000),
            D("lib"),
            F("lib/libc.so", b"elf"),
            F("keep", b"k"),
        ],
    )
    assert s1 == LayerStats(files=9, dirs=9, symlinks=1, whiteouts=0, bytes=3030)
    s2 = apply(
        fs,
        box,
        [
            F("etc/passwd", b"root:x:0:0\napp:x:1:1\n"),
            W("etc/.wh.os-release"),
            W("app/.wh..wh..opq"),  # first, as writers put it
            F("app/new", b"n"),
            W("var/.wh.cache"),
            F("lib", b"now a file"),
            L("abs", "/etc/passwd"),
            L("up", "../../../outside"),
        ],
        compress=False,
    )
    assert s2 == LayerStats(files=3, dirs=0, symlinks=2, whiteouts=3, bytes=32)
    s3 = apply(
        fs,
        box,
        [
            F("usr/bin/new", b"new", 0o755),
            W("usr/bin/.wh..wh..opq"),  # after its sibling: hides only sh and sh2
            W(".wh.keep"),
            D("etc"),
        ],
    )
    assert s3 == LayerStats(files=1, dirs=0, symlinks=0, whiteouts=2, bytes=3)
    assert tree(box.root) == {
        "etc": ("d755", ""),
        "etc/passwd": ("f644", b"root:x:0:0\napp:x:1:1\n"),
        "usr": ("d755", ""),
        "usr/bin": ("d755", ""),
        "usr/bin/new": ("f755", b"new"),
        "bin": ("l", "usr/bin"),
        "app": ("d755", ""),
        "app/new": ("f644", b"n"),
        "var": ("d755", ""),
        "lib": ("f644", b"now a file"),
        "abs": ("l", "/etc/passwd"),
        "up": ("l", "../../../outside"),
    }


def test_hard_links_to_same_and_lower_layer(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("a", b"one"), H("b", "a")])
    apply(fs, box, [H("c", "a"), F("a", b"two"), H("d", "a")])
    ino = {n: (box.root / n).lstat().st_ino for n in "abcd"}
    assert ino["b"] == ino["c"] != ino["a"] == ino["d"]
    # Replacing a name writes a new file: the other names of the old one keep its content.
    assert (box.root / "b").read_bytes() == (box.root / "c").read_bytes() == b"one"
    assert (box.root / "d").read_bytes() == b"two"


def test_hard_link_to_a_symlink_links_the_symlink(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [L("l", str(box.outside / "passwd")), H("m", "l")])
    assert os.readlink(box.root / "m") == str(box.outside / "passwd")
    assert (box.outside / "passwd").stat().st_nlink == 1


def test_modes_normalised(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("suid", b"x", 0o4755), F("secret", b"x", 0o600), E("d", "dir", mode=0o1777)])
    t = tree(box.root)
    assert t["suid"][0] == "f755"
    assert t["secret"][0] == "f644"
    assert t["d"][0] == "d755"


def test_dir_over_dir_merges_and_file_over_dir_replaces_tree(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("d/a", b"a"), F("e/deep/x", b"x"), F("f", b"f")])
    apply(fs, box, [D("d"), F("d/b", b"b"), F("e", b"file")])
    assert tree(box.root) == {
        "d": ("d755", ""),
        "d/a": ("f644", b"a"),
        "d/b": ("f644", b"b"),
        "e": ("f644", b"file"),
        "f": ("f644", b"f"),
    }


def test_dir_entry_replaces_a_lower_symlink(box: Box) -> None:
    """A layer that lists `app/` first replaces the lower `app -> /` and then writes inside the rootfs."""
    fs = RootFs(box.root)
    apply(fs, box, [L("app", "/"), L("out", str(box.outside))])
    before = box.snapshot()
    apply(fs, box, [D("app"), F("app/etc/passwd", b"mine"), D("out"), F("out/passwd", b"mine")])
    assert (box.root / "app/etc/passwd").read_bytes() == b"mine"
    assert (box.root / "out/passwd").read_bytes() == b"mine"
    assert box.snapshot() == before


def test_same_layer_duplicates_last_wins(box: Box) -> None:
    fs = RootFs(box.root)
    apply(
        fs, box, [F("a", b"1"), F("a", b"2"), L("l", "x"), F("l", b"file"), F("d/x"), L("d", "a")]
    )
    assert tree(box.root) == {"a": ("f644", b"2"), "l": ("f644", b"file"), "d": ("l", "a")}


def test_whiteout_of_missing_name_and_in_missing_dirs_makes_nothing(box: Box) -> None:
    """A whiteout is hidden once applied (the spec): one with nothing to hide leaves no trace,
    not even the directories its name passes through."""
    fs = RootFs(box.root)
    apply(fs, box, [F("a"), D("d")])
    stats = apply(
        fs, box, [W(".wh.nothing"), W("new/.wh..wh..opq"), W("x/y/.wh.z"), W("d/e/.wh.f")]
    )
    assert stats.whiteouts == 4
    assert tree(box.root) == {"a": ("f644", b""), "d": ("d755", "")}


def test_gzip_docker_media_type_and_magic_fallback(box: Box) -> None:
    fs = RootFs(box.root)
    path, _ = box.layer([F("a", b"1")])
    fs.apply(path, media_type=DOCKER_GZ, label="l1")
    # The bytes decide the compression: an uncompressed layer labelled gzip still applies.
    path, _ = box.layer([F("b", b"2")], compress=False)
    fs.apply(path, media_type=OCI_GZ, label="l2")
    path, _ = box.layer([F("c", b"3")])
    fs.apply(
        path, media_type="application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", label="l3"
    )
    assert sorted(os.listdir(box.root)) == ["a", "b", "c"]


def test_zstd_layers_by_media_type_and_by_magic(box: Box) -> None:
    fs = RootFs(box.root)
    raw = box.base / "in" / "zl"
    big = os.urandom(300_000)
    for n, (data, media) in enumerate(
        [
            (zst(layer_bytes([F("a", b"1"), F("d/big", big)], compress=False)), OCI_ZSTD),
            (zst(layer_bytes([F("b", b"2"), W("d/.wh.big")], compress=False)), OCI_ZSTD_ND),
            # As containerd: the first bytes decide, whatever compression the type names.
            (zst(layer_bytes([F("c", b"3")], compress=False)), OCI_GZ),
        ]
    ):
        raw.write_bytes(data)
        fs.apply(raw, media_type=media, label=f"l{n}")
    assert tree(box.root) == {
        "a": ("f644", b"1"),
        "b": ("f644", b"2"),
        "c": ("f644", b"3"),
        "d": ("d755", ""),
    }


def test_zstd_bomb_truncation_and_corruption_refused(box: Box) -> None:
    raw = box.base / "in" / "zl"
    raw.write_bytes(zstd_of_zeros_after(tar_header(b"zeros", size=10 << 30), 64 << 20))
    with pytest.raises(ArchiveError, match="entry 'zeros': the layer expands to more than 250"):
        RootFs(box.root).apply(raw, media_type=OCI_ZSTD, label="l1")
    whole = zst(layer_bytes([F("a", os.urandom(50_000))], compress=False))
    raw.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveError, match="l1: corrupt or truncated compressed data"):
        RootFs(box.root).apply(raw, media_type=OCI_ZSTD, label="l1")
    raw.write_bytes(b"\x28\xb5\x2f\xfd\x00\x00\x07\x00\x00")
    with pytest.raises(ArchiveError, match="l1: corrupt or truncated compressed data"):
        RootFs(box.root).apply(raw, media_type=OCI_ZSTD, label="l1")


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_whiteout_data_counts_against_the_cap(box: Box, compress: str) -> None:
    # A whiteout's data is read and dropped: 64 MiB of zeros there is still a bomb.
    body = tar_header(b".wh.x", size=64 << 20) + bytes(64 << 20) + tar_end()
    data = gzip.compress(body, compresslevel=9) if compress == "gzip" else zst(body)
    raw = box.base / "in" / "wl"
    raw.write_bytes(data)
    with pytest.raises(ArchiveError, match=r"entry '\.wh\.x': the layer expands to more than"):
        RootFs(box.root).apply(raw, media_type=OCI_GZ, label="l1")


def test_dot_slash_and_long_names(box: Box) -> None:
    """Layers written by `tar -C dir .` name everything ./x; long names come in pax headers."""
    fs = RootFs(box.root)
    long = "/".join(["d" * 60] * 8)
    apply(fs, box, [D("./"), D("./etc"), F("./etc/x", b"x"), F(f"./{long}/f", b"deep")])
    apply(fs, box, [W("./etc/.wh.x"), H("./h", f"./{long}/f")])
    assert (box.root / "etc").is_dir() and os.listdir(box.root / "etc") == []
    assert (box.root / "h").read_bytes() == b"deep"


def test_backslash_names_allowed(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("lib/systemd/system-systemd\\x2dfsck.slice", b"u")])
    assert (box.root / "lib/systemd/system-systemd\\x2dfsck.slice").read_bytes() == b"u"


def test_large_file_streams_in_chunks(box: Box) -> None:
    fs = RootFs(box.root)
    data = os.urandom(1 << 16) * 48  # 3 MiB, several chunks
    assert apply(fs, box, [F("big", data)]).bytes == len(data)
    assert (box.root / "big").read_bytes() == data


# --- ADVERSARIAL 50: whiteouts ----------------------------------------------------------


def test_adv50_opaque_after_siblings_hides_only_lower(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("d/old1", b"1"), F("d/sub/old2", b"2"), F("d/both", b"lower")])
    apply(fs, box, [F("d/new", b"n"), F("d/both", b"upper"), F("d/sub/x"), W("d/.wh..wh..opq")])
    assert tree(box.root) == {
        "d": ("d755", ""),
        "d/new": ("f644", b"n"),
        "d/both": ("f644", b"upper"),
        "d/sub": ("d755", ""),
        "d/sub/x": ("f644", b""),
    }


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "d/.wh.", "d/.wh..", "d/.wh..."])
def test_adv50_bare_whiteouts_refused(box: Box, name: str) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("d/keep", b"k"), F("top", b"t")])
    refused(fs, box, [W(name)], name, "malformed whiteout")
    assert (box.root / "d/keep").read_bytes() == b"k"
    assert (box.root / "top").exists()


@pytest.mark.parametrize("link", ["abs", "rel", "root"])
@pytest.mark.parametrize("marker", [".wh.passwd", ".wh..wh..opq"])
def test_adv50_whiteout_through_lower_symlink_refused(box: Box, link: str, marker: str) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [L("abs", str(box.outside)), L("rel", "../outside"), L("root", "/")])
    refused(fs, box, [W(f"{link}/{marker}")], f"{link}/{marker}", "is a symlink in the image")
    assert (box.outside / "passwd").read_text() == "root:x:0:0\n"


def test_adv50_whiteout_through_symlink_deeper(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [D("a"), L("a/l", str(box.base))])
    refused(fs, box, [W("a/l/outside/.wh.passwd")], "a/l/outside/.wh.passwd", "'a/l' is a symlink")
    assert (box.outside / "passwd").exists()


def test_adv50_whiteout_of_a_symlink_removes_only_the_link(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [L("l", str(box.outside)), L("p", str(box.outside / "passwd"))])
    before = box.snapshot()
    apply(fs, box, [W(".wh.l"), W(".wh.p")])
    assert os.listdir(box.root) == []
    assert box.snapshot() == before


def test_adv50_whiteout_in_same_layer_as_target(box: Box) -> None:
    """Whiteouts apply to lower layers only: the same layer's entry survives, before or after it."""
    fs = RootFs(box.root)
    apply(fs, box, [F("a", b"lower"), F("b", b"lower"), F("d/lower", b"l"), F("e/lower")])
    apply(
        fs,
        box,
        [
            F("a", b"upper"),
            W(".wh.a"),  # after its target: the target is this layer's, it stays
            W(".wh.b"),  # before its target: hides the lower b, then b is written again
            F("b", b"upper"),
            F("d/upper", b"u"),
            W(".wh.d"),  # d's lower child goes, this layer's child stays
            W(".wh.e"),
            F("c", b"same layer"),
            W(".wh.c"),
        ],
    )
    assert tree(box.root) == {
        "a": ("f644", b"upper"),
        "b": ("f644", b"upper"),
        "c": ("f644", b"same layer"),
        "d": ("d755", ""),
        "d/upper": ("f644", b"u"),
    }
    # A later layer hides them.
    apply(fs, box, [W(".wh.a"), W(".wh.d")])
    assert sorted(os.listdir(box.root)) == ["b", "c"]


@pytest.mark.parametrize("first", ["deeper", "dir"])
def test_adv50_whiteout_of_a_dir_and_a_deeper_whiteout_in_one_layer(box: Box, first: str) -> None:
    """`.wh.a` and `a/b/.wh.f` in one layer, in either order: the deeper whiteout is no
    resource of the layer (the spec hides a whiteout once applied), so it keeps nothing of `a`
    alive: `a` goes whole, no empty `a/b` stays behind."""
    fs = RootFs(box.root)
    apply(fs, box, [F("a/b/f", b"lower"), F("a/b/g", b"lower"), F("a/c"), F("k", b"k")])
    deeper, top = W("a/b/.wh.f"), W(".wh.a")
    apply(fs, box, [deeper, top] if first == "deeper" else [top, deeper])
    assert tree(box.root) == {"k": ("f644", b"k")}


@pytest.mark.parametrize("first", ["deeper", "dir"])
def test_adv50_whiteout_of_a_dir_keeps_only_what_its_layer_wrote_below(
    box: Box, first: str
) -> None:
    """What the same layer really wrote under `a` survives `.wh.a`; a deeper whiteout or an
    opaque marker of that layer adds nothing (the directories they name stay hidden)."""
    fs = RootFs(box.root)
    apply(fs, box, [F("a/b/f", b"lower"), F("a/o/p", b"lower"), F("a/c", b"lower")])
    markers = [W("a/b/.wh.f"), W("a/o/.wh..wh..opq"), W(".wh.a")]
    written = [F("a/new", b"upper"), D("a/d")]
    apply(fs, box, markers + written if first == "dir" else written + markers)
    assert tree(box.root) == {
        "a": ("d755", ""),
        "a/new": ("f644", b"upper"),
        "a/d": ("d755", ""),
    }


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (W(".wh..wh.plnk"), "AUFS"),
        (D(".wh.x"), "must be a regular file"),
        (L(".wh.x", "y"), "must be a regular file"),
        (F(".wh.d/x"), "whiteout name '.wh.d' used as a directory"),
    ],
)
def test_adv50_odd_whiteouts_refused(box: Box, entry: E, why: str) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("x"), F("d/x")])
    refused(fs, box, [entry], entry.name + ("/" if entry.kind == "dir" else ""), why)


# --- ADVERSARIAL 51: symlinks -----------------------------------------------------------


def test_adv51_write_below_lower_symlink_to_root_refused(box: Box) -> None:
    host = Path("/etc/passwd").read_bytes()
    fs = RootFs(box.root)
    apply(fs, box, [L("app", "/")])
    refused(fs, box, [F("app/etc/passwd", b"pwned")], "app/etc/passwd", "'app' is a symlink")
    assert Path("/etc/passwd").read_bytes() == host


@pytest.mark.parametrize(
    "entry",
    [F("out/passwd", b"pwned"), D("out/newdir"), L("out/l", "x"), H("out/h", "f")],
    ids=["file", "dir", "symlink", "hardlink"],
)
def test_adv51_every_kind_below_lower_symlink_refused(box: Box, entry: E) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [L("out", str(box.outside)), F("f")])
    name = entry.name + ("/" if entry.kind == "dir" else "")
    refused(fs, box, [entry], name, "'out' is a symlink")
    assert (box.outside / "passwd").read_text() == "root:x:0:0\n"


def test_adv51_same_layer_symlink_then_write_through_refused(box: Box) -> None:
    fs = RootFs(box.root)
    refused(fs, box, [L("l", "../outside"), F("l/passwd", b"pwned")], "l/passwd", "symlink")


def test_adv51_export_symlink_to_etc_stays_in_the_image(box: Box) -> None:
    host = Path("/etc/passwd").read_bytes()
    fs = RootFs(box.root)
    apply(fs, box, [F("etc/passwd", b"image passwd\n"), L("app", "/etc")])
    fs.export("/app", box.base / "export")
    assert tree(box.base / "export") == {"passwd": ("f644", b"image passwd\n")}
    assert Path("/etc/passwd").read_bytes() == host


@pytest.mark.parametrize(
    "target", ["../../../../../etc", "/../../etc/", "../../hop", "/./etc/../etc"], ids=str
)
def test_adv51_export_through_links_is_clamped_to_the_root(box: Box, target: str) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("etc/passwd", b"image\n"), D("x/y"), L("x/y/app", target), L("hop", "etc")])
    fs.export("x/y/app", box.base / "export")
    assert tree(box.base / "export") == {"passwd": ("f644", b"image\n")}


def test_adv51_export_link_to_host_path_means_the_images(box: Box) -> None:
    """`app -> /abs/path/of/outside` names that path inside the image, where it does not exist."""
    fs = RootFs(box.root)
    apply(fs, box, [L("app", str(box.outside))])
    before = box.snapshot()
    with pytest.raises(InputError, match="does not exist in the image"):
        fs.export("/app", box.base / "export")
    assert not (box.base / "export").exists()
    assert box.snapshot() == before


# --- export -----------------------------------------------------------------------------


def _image(box: Box) -> RootFs:
    fs = RootFs(box.root)
    apply(
        fs,
        box,
        [
            F("app/src/main.py", b"print()"),
            F("app/README", b"r"),
            L("app/lib", "../usr/lib"),
            F("usr/lib/os-release", b"ID=x\n"),
            D("etc"),
            L("etc/os-release", "../usr/lib/os-release"),
            L("loop1", "loop2"),
            L("loop2", "loop1"),
        ],
    )
    return fs


def test_export_everything(box: Box) -> None:
    fs = _image(box)
    want = tree(box.root)
    fs.export("/", box.base / "export")
    assert tree(box.base / "export") == want
    assert stat.S_IMODE((box.base / "export").stat().st_mode) == 0o755
    assert not box.root.exists()
    with pytest.raises(StepkitError, match="exported already"):
        fs.export("/", box.base / "export2")


@pytest.mark.parametrize("path", ["/app/src", "app/src", "app/src/", "/app/./src", "/../app/src"])
def test_export_subdir(box: Box, path: str) -> None:
    fs = _image(box)
    fs.export(path, box.base / "export")
    assert tree(box.base / "export") == {"main.py": ("f644", b"print()")}


def test_export_keeps_links_verbatim(box: Box) -> None:
    fs = _image(box)
    fs.export("/app", box.base / "export")
    assert tree(box.base / "export")["lib"] == ("l", "../usr/lib")


def test_export_file_becomes_a_directory_holding_it(box: Box) -> None:
    fs = _image(box)
    fs.export("/etc/os-release", box.base / "export")
    # The file reached through the image's link, under the name the path gave.
    assert tree(box.base / "export") == {"os-release": ("f644", b"ID=x\n")}
    assert stat.S_IMODE((box.base / "export").stat().st_mode) == 0o755


def test_export_through_an_in_image_link(box: Box) -> None:
    fs = _image(box)
    fs.export("/app/lib", box.base / "export")
    assert tree(box.base / "export") == {"os-release": ("f644", b"ID=x\n")}


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/nope", "does not exist in the image"),
        ("/app/nope/x", "does not exist in the image"),
        ("/app/README/x", "is not a directory"),
        ("/app/README/..", "is not a directory"),
        ("/loop1", "more than 40 symbolic links"),
        ("", "empty"),
        ("/a\nb", "control characters"),
    ],
)
def test_export_bad_paths(box: Box, path: str, why: str) -> None:
    fs = _image(box)
    with pytest.raises(InputError) as info:
        fs.export(path, box.base / "export")
    assert why in str(info.value)
    assert shown(path) in str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert not (box.base / "export").exists()
    fs.export("/app/src", box.base / "export")  # still usable


def test_export_dest_must_be_new_with_a_parent(box: Box) -> None:
    fs = _image(box)
    (box.base / "export").mkdir()
    with pytest.raises(InputError, match="already exists"):
        fs.export("/", box.base / "export")
    with pytest.raises(InputError, match="does not exist"):
        fs.export("/", box.base / "missing" / "export")


def test_export_refuses_git_unless_allowed(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("app/.git/config", b"[core]\n\tfsmonitor = touch PWNED\n"), F("srv/x")])
    with pytest.raises(InputError, match=r"'/app/\.git'.*--allow-git"):
        fs.export("/app", box.base / "export")
    fs.export("/srv", box.base / "export")  # the .git elsewhere in the image does not matter
    box2 = make_box(box.base.parent / "box2")
    fs2 = RootFs(box2.root, allow_git=True)
    apply(fs2, box2, [F("app/.git/config", b"x")])
    fs2.export("/app", box2.base / "export")
    assert (box2.base / "export/.git/config").read_bytes() == b"x"


def test_root_must_be_an_empty_directory(box: Box) -> None:
    (box.root / "x").write_text("x")
    with pytest.raises(StepkitError, match="not empty"):
        RootFs(box.root)
    with pytest.raises(StepkitError):
        RootFs(box.base / "sentinel")


# --- malformed and hostile layers -------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "name", "why"),
    [
        ([F("../outside/passwd", b"x")], "../outside/passwd", "'..' in name"),
        ([F("a/../../outside/passwd")], "a/../../outside/passwd", "'..' in name"),
        ([F("/etc/passwd", b"x")], "/etc/passwd", "absolute name"),
        ([E("dev/null", "char")], "dev/null", "character device entries are not allowed"),
        ([E("fifo", "fifo")], "fifo", "FIFO entries are not allowed"),
        ([H("h", "../outside/passwd")], "h", "'..' in hard link target"),
        ([H("h", "/etc/shadow")], "h", "absolute hard link target"),
        ([H("h", "missing")], "h", "not an earlier file"),
        ([D("d"), H("h", "d")], "h", "not an earlier file"),
        ([F("a/b"), H("a", "a/b")], "a", "which it would replace"),
        ([F("x\x1by")], "x\x1by", "control character"),
        ([L("l", "a\nb")], "l", "control character in symlink target"),
        ([F("f"), F("f/x")], "f/x", "'f' is a file in the image"),
        ([F("n" * 1100)], "n" * 1100, "longer than 1024 bytes"),
    ],
)
def test_hostile_entries_refused(box: Box, entries: list[E], name: str, why: str) -> None:
    fs = RootFs(box.root)
    refused(fs, box, entries, name, why)


def test_empty_symlink_target_refused(box: Box) -> None:
    raw = tar_header(b"l", typeflag=b"2", linkname=b"") + tar_end()
    path = box.base / "in" / "raw"
    path.write_bytes(raw)
    fs = RootFs(box.root)
    with pytest.raises(ArchiveError, match="entry 'l': empty symlink target"):
        fs.apply(path, media_type=OCI_TAR, label="l1")


def test_not_a_layer_refused(box: Box) -> None:
    fs = RootFs(box.root)
    path = box.base / "in" / "junk"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(600))
    with pytest.raises(ArchiveError, match="l1: corrupt or truncated compressed data"):
        fs.apply(path, media_type=OCI_GZ, label="l1")
    path.write_bytes(os.urandom(2048))
    with pytest.raises(ArchiveError, match="not a tar archive"):
        RootFs(box.root).apply(path, media_type=OCI_TAR, label="l1")
    with pytest.raises(ArchiveError, match="is not an image layer"):
        RootFs(box.root).apply(path, media_type="application/vnd.cncf.helm.chart", label="l1")
    whole = layer_bytes([F("a", os.urandom(5000))])
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArchiveError, match="l1: corrupt or truncated"):
        RootFs(box.root).apply(path, media_type=OCI_GZ, label="l1")


def test_limits_hold_for_the_whole_image(box: Box) -> None:
    fs = RootFs(box.root, limits=Limits(max_entries=5))
    apply(fs, box, [F("a"), F("b"), F("c")])
    refused(fs, box, [F("d"), F("e"), F("f")], "f", "more than 5 entries")

    box2 = make_box(box.base.parent / "box2")
    fs = RootFs(box2.root, limits=Limits(max_bytes=1 << 21))
    apply(fs, box2, [F("a", bytes(1 << 20))])
    refused(fs, box2, [F("b", bytes(1 << 20)), F("c", b"x")], "c", f"more than {1 << 21} bytes")


def test_compression_bomb_refused(box: Box) -> None:
    fs = RootFs(box.root, limits=Limits(max_ratio=10))
    refused(fs, box, [F("zeros", bytes(8 << 20))], "zeros", "compression bomb")


# --- tar as other readers read it (the same parser as stepkit.archive) ------------------------


def apply_raw(fs: RootFs, box: Box, data: bytes, media: str = OCI_TAR) -> LayerStats:
    box.count += 1
    path = box.base / "in" / f"raw{box.count}"
    path.write_bytes(data)
    return fs.apply(path, media_type=media, label=f"layer {box.count}")


def gnu_tar(box: Box, *args: str, cwd: Path) -> bytes:
    """What GNU tar writes for args (the archive is the output)."""
    out = box.base / "in" / "gnu.tar"
    subprocess.run(["tar", *args, "-cf", str(out), "."], cwd=cwd, check=True)
    return out.read_bytes()


def _pax_member(*records: tuple[str, bytes], typeflag: bytes = b"x") -> bytes:
    return tar_member(b"PaxHeader", b"".join(pax_record(k, v) for k, v in records),
                      typeflag=typeflag)  # fmt: skip


def test_layer_tar_oddities_read_as_every_reader_does(box: Box) -> None:
    fs = RootFs(box.root)
    apply(fs, box, [F("d/f", b"lower")])
    data = (
        # Two pax headers: only the second applies (it names no path: the header's does).
        _pax_member(("path", b"first"))
        + _pax_member(("mtime", b"1"))
        + tar_member(b"hdr", b"x")
        # Size fields on a directory and on a hard link: no data follows either.
        + tar_header(b"dir/", typeflag=b"5", size=512)
        + tar_header(b"dir/h", typeflag=b"1", linkname=b"hdr", size=1)
        # A hard link to itself, as GNU tar stores a file listed twice: nothing changes.
        + tar_header(b"d/f", typeflag=b"1", linkname=b"d/f")
        + tar_end()
    )
    apply_raw(fs, box, data)
    assert tree(box.root) == {
        "d": ("d755", ""),
        "d/f": ("f644", b"lower"),
        "dir": ("d755", ""),
        "dir/h": ("f644", b"x"),
        "hdr": ("f644", b"x"),
    }


def test_layer_from_gnu_tar_with_label_incremental_dirs_and_a_file_listed_twice(box: Box) -> None:
    src = box.base / "src"
    (src / "top" / "sub").mkdir(parents=True)
    (src / "top" / "a").write_text("a\n")
    (src / "top" / "sub" / "b").write_text("b\n")
    fs = RootFs(box.root)
    labelled = gnu_tar(box, "-V", "Label", cwd=src)
    assert labelled[156:157] == b"V"
    apply_raw(fs, box, labelled)
    incremental = gnu_tar(box, "-g", str(box.base / "snapshot"), cwd=src)
    assert b"D" in incremental[156:157]
    apply_raw(fs, box, incremental)
    out = box.base / "in" / "twice.tar"
    subprocess.run(["tar", "cf", str(out), "top/a", "top/a"], cwd=src, check=True)
    apply_raw(fs, box, out.read_bytes())
    assert tree(box.root) == {
        "top": ("d755", ""),
        "top/a": ("f644", b"a\n"),
        "top/sub": ("d755", ""),
        "top/sub/b": ("f644", b"b\n"),
    }
    assert (box.root / "top" / "a").stat().st_nlink == 1


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (
            tar_member(b"././@LongLink", b"long\0", typeflag=b"L")
            + _pax_member(("path", b"pax"))
            + tar_member(b"hdr", b"x"),
            "a GNU long name 'long' and a pax path",
        ),
        (
            _pax_member(("path", b"p"))
            + _pax_member(("comment", b"c"), typeflag=b"g")
            + tar_member(b"hdr", b"x"),
            "a global pax header between an extended header and its entry",
        ),
        (_pax_member(("size", b"512")) + tar_header(b"d/", typeflag=b"5"), "directory with data"),
        (tar_header(b"l", typeflag=b"2", linkname=b"x", size=512), "link with data"),
        (tar_header(b"label", typeflag=b"V", size=512), "volume label with data"),
    ],
)
def test_layer_tar_that_readers_disagree_on_is_refused(box: Box, data: bytes, why: str) -> None:
    with pytest.raises(ArchiveError, match=why):
        apply_raw(RootFs(box.root), box, data + tar_end())
    assert tree(box.root) == {}


@pytest.mark.parametrize("options", SPARSE_FORMATS)
def test_sparse_files_in_layers_keep_their_holes(box: Box, options: list[str]) -> None:
    src = sparse_source(box.base / "src")
    archive = box.base / "in" / "sparse.tar"
    gnu_sparse_tar(src, archive, options)
    # Uncompressed: a sparse file's full size counts against the expansion ratio, and the
    # holes of this one would be over 250 times a gzip of it.
    stats = apply_raw(RootFs(box.root), box, archive.read_bytes())
    out = box.root / "sparse.img"
    assert out.read_bytes() == src.read_bytes()
    assert stats.bytes == 3 << 20
    assert out.stat().st_blocks * 512 < 1 << 20


def test_hostile_sparse_maps_in_layers_are_refused(box: Box) -> None:
    overlapping = gnu_sparse_member(b"s", [(0, 10), (5, 10)], 100, bytes(20))
    with pytest.raises(ArchiveError, match="entry 's': sparse map with regions out of order"):
        apply_raw(RootFs(box.root), box, overlapping + tar_end())
    extra = pax_sparse_member("1.0", b"s", [(0, 10)], 100, bytes(20))
    with pytest.raises(ArchiveError, match="describes 10 bytes of data but the entry holds 20"):
        apply_raw(RootFs(box.root), box, extra + tar_end())
    # The full size counts: 3 GiB of holes in a 2 GiB image.
    holes = pax_sparse_member("0.1", b"s", [(3 << 30, 0)], 3 << 30, b"")
    fs = RootFs(box.root, limits=Limits(max_bytes=2 << 30, max_ratio=1e12))
    with pytest.raises(ArchiveError, match=f"entry 's': the image holds more than {2 << 30}"):
        apply_raw(fs, box, holes + tar_end())


# --- property: nothing outside the root, whatever the layers ------------------------------

_NAMES = ["a", "b", "a/b", "a/c", "b/a", "a/b/c", "c"]
_TARGETS = ["a", "b", "..", "../..", "/", "/a", "a/b", "../outside", "OUT", "ROOT"]


@st.composite
def _layers(draw: st.DrawFn) -> list[list[E]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        entries = []
        for _ in range(draw(st.integers(0, 6))):
            name = draw(st.sampled_from(_NAMES))
            kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "wh", "opq"]))
            head, _, base = name.rpartition("/")
            pre = f"{head}/" if head else ""
            if kind == "wh":
                entries.append(W(f"{pre}.wh.{base}"))
            elif kind == "opq":
                entries.append(W(f"{pre}.wh..wh..opq"))
            elif kind == "symlink":
                entries.append(L(name, draw(st.sampled_from(_TARGETS))))
            elif kind == "hardlink":
                entries.append(H(name, draw(st.sampled_from(_NAMES))))
            else:
                entries.append(E(name, kind, b"data"))
        out.append(entries)
    return out


Ref = dict[tuple[str, ...], tuple[str, bytes | str]]


def _reference(state: Ref, entries: Sequence[E]) -> bool:
    """The changeset rules restated over a dict of paths; False where the layer must be refused."""
    touched: set[tuple[str, ...]] = set()

    def drop(p: tuple[str, ...]) -> None:
        for q in [q for q in state if q[: len(p)] == p]:
            del state[q]

    def parents(p: tuple[str, ...]) -> bool:
        for i in range(1, len(p)):
            kind = state.setdefault(p[:i], ("d", ""))[0]
            if kind != "d":
                return False
            touched.add(p[:i])
        return True

    def hide_lower(p: tuple[str, ...]) -> None:
        if p not in touched:
            drop(p)
        elif state[p][0] == "d":
            for q in [q for q in state if len(q) == len(p) + 1 and q[: len(p)] == p]:
                hide_lower(q)

    for e in entries:
        parts = tuple(e.name.split("/"))
        base = parts[-1]
        if base.startswith(".wh."):
            # A whiteout makes no directory and keeps none alive: with a directory of its
            # name missing it hides nothing; through a file or symlink it is refused.
            kinds = [state.get(parts[:i], ("",))[0] for i in range(1, len(parts))]
            missing = kinds.index("") if "" in kinds else len(kinds)
            if any(k != "d" for k in kinds[:missing]):
                return False
            if missing < len(kinds):
                continue
            hidden = base[4:]
            if hidden == ".wh..opq":
                for q in [q for q in state if len(q) == len(parts) and q[:-1] == parts[:-1]]:
                    hide_lower(q)
            elif (*parts[:-1], hidden) in state:
                hide_lower((*parts[:-1], hidden))
            continue
        if e.kind == "hardlink":
            target = tuple(e.target.split("/"))
            if target not in state or state[target][0] == "d":
                return False
            if target == parts:
                continue  # a hard link to itself (GNU tar's file listed twice) changes nothing
            if target[: len(parts)] == parts:
                return False
        if not parents(parts):
            return False
        touched.add(parts)
        if e.kind == "dir" and state.get(parts, ("",))[0] == "d":
            continue
        drop(parts)
        if e.kind == "dir":
            state[parts] = ("d", "")
        elif e.kind == "symlink":
            state[parts] = ("l", e.target)
        elif e.kind == "hardlink":
            state[parts] = state[tuple(e.target.split("/"))]
        else:
            state[parts] = ("f", e.data)
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=_layers(), path=st.sampled_from(["/", "/a", "a/b", "/b/a/..", "/c"]))
def test_property_nothing_outside_root_is_touched(layers: list[list[E]], path: str) -> None:
    """Random layers: refused exactly when the rules say, the disk as the rules say, nothing outside touched."""
    with tempfile.TemporaryDirectory() as tmp:
        box = make_box(Path(tmp) / "box")
        out, root = str(box.outside), "/" + str(box.base)
        before = box.snapshot()
        fs = RootFs(box.root)
        state: Ref = {}
        for entries in layers:
            fixed = [
                E(
                    e.name,
                    e.kind,
                    e.data,
                    e.mode,
                    e.target.replace("OUT", out).replace("ROOT", root),
                )
                for e in entries
            ]
            ok = _reference(state, fixed)
            try:
                apply(fs, box, fixed)
            except ArchiveError:
                assert not ok, "refused a layer the rules accept"
                break
            assert ok, "accepted a layer the rules refuse"
            got = {tuple(k.split("/")): (v[0][0], v[1]) for k, v in tree(box.root).items()}
            assert got == state
        else:
            with contextlib.suppress(InputError):
                fs.export(path, box.base / "export")
        assert box.snapshot() == before
