"""Builders of hostile and ordinary tar and zip archives, in memory, for the archive tests."""

from __future__ import annotations

import gzip
import io
import os
import stat
import struct
import subprocess
import tarfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class File:
    name: str
    data: bytes = b""
    mode: int = 0o644


@dataclass(frozen=True)
class Dir:
    name: str
    mode: int = 0o755


@dataclass(frozen=True)
class Sym:
    name: str
    target: str


@dataclass(frozen=True)
class Hard:
    name: str
    target: str


@dataclass(frozen=True)
class Special:
    """A device or FIFO: tar type '3' (chr), '4' (blk) or '6' (fifo)."""

    name: str
    type: bytes


Entry = File | Dir | Sym | Hard | Special


def tar_bytes(
    entries: Sequence[Entry], *, compress: str = "gz", fmt: int = tarfile.GNU_FORMAT, uid: int = 0
) -> bytes:
    """A tar archive of entries, written by tarfile exactly as given (no name checks)."""
    buf = io.BytesIO()
    mode = "w" if compress == "" else f"w:{compress}"
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:  # type: ignore[call-overload]
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.uid = info.gid = uid
            info.uname = info.gname = "root" if uid == 0 else ""
            info.mtime = int(time.time())
            if isinstance(e, File):
                info.size = len(e.data)
                info.mode = e.mode
                tf.addfile(info, io.BytesIO(e.data))
                continue
            if isinstance(e, Dir):
                info.type = tarfile.DIRTYPE
                info.mode = e.mode
            elif isinstance(e, Sym):
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
            elif isinstance(e, Hard):
                info.type = tarfile.LNKTYPE
                info.linkname = e.target
            else:
                info.type = e.type
                info.devmajor, info.devminor = 1, 3
            tf.addfile(info)
    return buf.getvalue()


def zip_bytes(entries: Sequence[Entry], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of entries; symlinks and modes as Info-ZIP stores them (Unix attributes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are often the point
        for e in entries:
            if isinstance(e, Hard):
                raise ValueError("zip has no hard links")
            info = zipfile.ZipInfo(e.name, date_time=(2026, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.compress_type = compression
            if isinstance(e, File):
                info.external_attr = (stat.S_IFREG | e.mode) << 16
                zf.writestr(info, e.data)
            elif isinstance(e, Dir):
                info.external_attr = (stat.S_IFDIR | e.mode) << 16 | 0x10
                zf.writestr(info, b"")
            elif isinstance(e, Sym):
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, e.target.encode())
            else:
                fmt = {b"3": stat.S_IFCHR, b"4": stat.S_IFBLK, b"6": stat.S_IFIFO}[e.type]
                info.external_attr = (fmt | 0o644) << 16
                zf.writestr(info, b"")
    return buf.getvalue()


# --- raw tar blocks, for headers tarfile will not write -------------------------------


def tar_header(
    name: bytes,
    *,
    size: int = 0,
    typeflag: bytes = b"0",
    linkname: bytes = b"",
    mode: int = 0o644,
    size_field: bytes | None = None,
) -> bytes:
    """One ustar header block with a correct checksum; size_field overrides the size bytes."""
    block = bytearray(512)
    block[0 : len(name)] = name[:100]
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname[:100]
    block[257:263] = b"ustar\x00"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def gnu_sparse_member(
    name: bytes, regions: Sequence[tuple[int, int]], realsize: int, data: bytes
) -> bytes:
    """An old-format GNU sparse entry ('S', as `tar --sparse` writes), for maps no tool writes."""

    def entry(offset: int, length: int) -> bytes:
        return b"%011o\0%011o\0" % (offset, length)

    head = bytearray(tar_header(name, size=len(data), typeflag=b"S"))
    head[257:265] = b"ustar  \0"
    first, rest = regions[:4], regions[4:]
    head[386 : 386 + 24 * len(first)] = b"".join(entry(o, n) for o, n in first)
    head[482] = 1 if rest else 0
    head[483:495] = b"%011o\0" % realsize
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    out = bytes(head)
    while rest:
        chunk, rest = rest[:21], rest[21:]
        ext = bytearray(512)
        ext[: 24 * len(chunk)] = b"".join(entry(o, n) for o, n in chunk)
        ext[504] = 1 if rest else 0
        out += bytes(ext)
    return out + data + bytes(-len(data) % 512)


def pax_sparse_member(
    version: str, name: bytes, regions: Sequence[tuple[int, int]], realsize: int, data: bytes
) -> bytes:
    """A GNU pax sparse entry (0.0, 0.1 or 1.0, as `tar --format=posix --sparse-version`)."""
    records = []
    body = data
    stand_in = b"GNUSparseFile.1/" + name
    if version == "0.0":
        records += [pax_record("GNU.sparse.size", b"%d" % realsize)]
        records += [pax_record("GNU.sparse.numblocks", b"%d" % len(regions))]
        for offset, length in regions:
            records += [pax_record("GNU.sparse.offset", b"%d" % offset)]
            records += [pax_record("GNU.sparse.numbytes", b"%d" % length)]
        stand_in = name
    elif version == "0.1":
        flat = b",".join(b"%d,%d" % r for r in regions)
        records += [
            pax_record("GNU.sparse.size", b"%d" % realsize),
            pax_record("GNU.sparse.numblocks", b"%d" % len(regions)),
            pax_record("GNU.sparse.name", name),
            pax_record("GNU.sparse.map", flat),
        ]
    else:
        records += [
            pax_record("GNU.sparse.major", b"1"),
            pax_record("GNU.sparse.minor", b"0"),
            pax_record("GNU.sparse.name", name),
            pax_record("GNU.sparse.realsize", b"%d" % realsize),
        ]
        text = b"%d\n" % len(regions) + b"".join(b"%d\n%d\n" % r for r in regions)
        body = text + bytes(-len(text) % 512) + data
    pax = b"".join(records)
    return tar_member(b"PaxHeader", pax, typeflag=b"x") + tar_member(stand_in, body)


def tar_member(name: bytes, data: bytes = b"", **kw: object) -> bytes:
    """A header plus its data padded to whole blocks."""
    head = tar_header(name, size=len(data), **kw)  # type: ignore[arg-type]
    return head + data + bytes(-len(data) % 512)


def tar_end() -> bytes:
    return bytes(1024)


def pax_record(key: str, value: bytes) -> bytes:
    body = f" {key}=".encode() + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


def zst(data: bytes) -> bytes:
    from backports import zstd

    return zstd.compress(data)


def zstd_of_zeros_after(prefix: bytes, zero_bytes: int) -> bytes:
    """One zstd frame of prefix followed by zero_bytes zeros, compressed a MiB at a time."""
    from backports import zstd

    comp = zstd.ZstdCompressor()
    out = [comp.compress(prefix)]
    mib = bytes(1 << 20)
    count, rest = divmod(zero_bytes, 1 << 20)
    out += [comp.compress(mib) for _ in range(count)]
    out.append(comp.compress(bytes(rest), mode=zstd.ZstdCompressor.FLUSH_FRAME))
    return b"".join(out)


def gzip_of_zeros_after(prefix: bytes, zero_bytes: int) -> bytes:
    """A gzip stream of prefix followed by zero_bytes zeros, built without compressing them all.

    A full flush resets deflate's state, so one compressed megabyte of zeros can be repeated;
    the trailer's CRC is wrong, which an extractor that stops at its limit never reaches.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = comp.compress(prefix) + comp.flush(zlib.Z_FULL_FLUSH)
    mib = comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(zero_bytes, 1 << 20)
    tail = comp.compress(bytes(rest)) + comp.flush()
    return head + mib * count + tail


# --- raw zip, for overlapping entries --------------------------------------------------


def _local(name: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data)
    return (
        struct.pack(
            "<4sHHHHHIIIHH",
            b"PK\x03\x04",
            20,
            0,
            0,
            0,
            0x21,
            crc,
            len(data),
            len(data),
            len(name),
            0,
        )
        + name
    )


def _central(name: bytes, data: bytes, offset: int) -> bytes:
    crc = zlib.crc32(data)
    return (
        struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            0x031E,
            20,
            0,
            0,
            0,
            0x21,
            crc,
            len(data),
            len(data),
            len(name),
            0,
            0,
            0,
            0,
            (stat.S_IFREG | 0o644) << 16,
            offset,
        )
        + name
    )


def quoted_overlap_zip() -> bytes:
    """Entry "outer"'s stored data quotes entry "inner"'s whole local record (Fifield's overlap).

    Both entries are individually valid, so an extractor without an overlap check writes both.
    """
    inner_data = b"inner data " * 100
    inner = _local(b"inner", inner_data) + inner_data
    outer_head = _local(b"outer", inner)
    body = outer_head + inner
    cd = _central(b"outer", inner, 0) + _central(b"inner", inner_data, len(outer_head))
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, len(cd), len(body), 0)
    return body + cd + eocd


def nested_zip(depth: int, payload: int) -> bytes:
    """42.zip style: a zip of a zip of ... of payload zero bytes."""
    data = zip_bytes([File("zeros", bytes(payload))])
    for i in range(depth):
        data = zip_bytes([File(f"layer{i}.zip", data)])
    return data


# --- sparse files, as GNU tar writes them -------------------------------------------------


def sparse_source(root: Path) -> Path:
    """A 3 MiB file holding two runs of data in holes, and a hole at its end."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "sparse.img"
    with open(path, "wb") as fh:
        fh.seek(100_000)
        fh.write(b"A" * 5000)
        fh.seek(1 << 20)
        fh.write(os.urandom(3000))
        fh.truncate(3 << 20)
    return path


SPARSE_FORMATS = [
    pytest.param(["--format=gnu"], id="gnu-old"),
    pytest.param(["--format=posix", "--sparse-version=0.0"], id="pax-0.0"),
    pytest.param(["--format=posix", "--sparse-version=0.1"], id="pax-0.1"),
    pytest.param(["--format=posix", "--sparse-version=1.0"], id="pax-1.0"),
]


def gnu_sparse_tar(src: Path, archive: Path, options: list[str]) -> None:
    """`tar --sparse OPTIONS` of src (by its name, from its directory) into archive."""
    subprocess.run(
        ["tar", "--sparse", *options, "-cf", str(archive), src.name], cwd=src.parent, check=True
    )
