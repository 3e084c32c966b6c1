"""Building an image's root filesystem from its layers, as the OCI image spec's changesets say, never leaving it.

Rules (ADVERSARIAL.md items 50 and 51, and the archive rules of stepkit.archive):

- Layers are tar streams, plain, gzip or zstd (the compression is read from the first
  bytes, as containerd does; the media type only has to be a tar layer's). Every layer's
  digest is checked on the compressed blob before it gets here (stepkit.oci.registry), and
  the expansion cap holds for whatever the decompressor produces, whiteouts' data included.
- Entry names, link texts, sizes and types are checked by stepkit.archive (no `..`, no
  absolute names, no devices or FIFOs: `/dev/null` in a layer is refused by name), except
  that backslashes are allowed (systemd unit names have them) and `.git` is only refused
  when export() would hand it over (ADVERSARIAL 44; `allow_git` lifts that).
- Later entries replace earlier ones, of a lower layer or of the same one: a file, symlink
  or hard link replaces whatever was at its path (a directory tree too); a directory over
  a directory merges. Files get 0644, or 0755 with any execute bit; directories 0755; no
  set-id or sticky bit, owner the running user, no modification times.
- `.wh.NAME` hides NAME of lower layers only (the spec: "Whiteout files MUST only apply to
  resources in lower/parent layers"): what this layer itself wrote at or below NAME
  survives, wherever the whiteout stands in the tar. `.wh..wh..opq` in D hides every lower
  child of D in the same way, before or after the layer's own children of D. A whiteout is
  no resource of its layer ("the whiteout itself MUST also be hidden"): it makes no
  directory, and a directory it names is not thereby the layer's, so `.wh.a` beside
  `a/b/.wh.f` removes all of `a`; one in a directory that does not exist hides nothing. `.wh.`,
  `.wh..` and `.wh...` (hiding '', '.', '..'), other `.wh..wh.` names (AUFS metadata) and
  whiteouts that are not regular files are refused as malformed.
- Symlinks are stored as the image has them, absolute ones too (`bin -> usr/bin`,
  `app -> /`): they are the image's and are never followed here. An entry or whiteout whose
  directory is a symlink (or a file) of the rootfs is refused: writing through it is how a
  layer reaches the host (`app -> /`, then `app/etc/passwd`). A layer that means to replace
  the link lists the directory first (`app/`), which replaces it.
- Hard links name an earlier regular file (or symlink, linked as such) of this or a lower
  layer, by a path without symlinks in it; one naming itself (GNU tar's way of storing a
  file listed twice) changes nothing.
- Sparse files (GNU tar's formats) are written with their holes; their full size counts.
- Limits hold for the whole image: entries, bytes written, and per layer the expansion
  ratio over the layer's size.

Every operation goes through directory descriptors opened with O_NOFOLLOW below the root,
guided by an in-memory model of the tree (which entries exist, of which kind, and which
layer wrote them), so no path is ever resolved by the host. After a failure the rootfs is
half-built: the caller removes its root.

export() resolves a path the way the container would see it (each component in turn, a
symlink followed within the rootfs with `/` meaning its root, `..` stopping at the root, at
most 40 links) and renames what it names to dest: a directory becomes dest; a file
becomes the one entry of a new directory dest, under the path's last name.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from stepkit.archive import (
    _DIR_FLAGS,
    _DIR_MODE,
    _FILE_FLAGS,
    CHUNK,
    ArchiveError,
    Limits,
    TarEntry,
    _chmod_needed,
    _os_error,
    expansion_cap,
    is_git_name,
    iter_tar,
    open_tar_stream,
    place,
    split_name,
    write_data,
)
from stepkit.errors import InputError, StepkitError
from stepkit.validate import has_control, shown

MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)
_MAX_LINKS = 40  # as Linux and securejoin
_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
_DIR, _FILE, _LINK = "d", "f", "l"
_LIMITS = Limits()


@dataclass(frozen=True)
class LayerStats:
    files: int
    dirs: int
    symlinks: int
    whiteouts: int
    bytes: int


class _Node:
    """One path of the rootfs: its kind, the layer that wrote it, and the last layer that wrote below it."""

    __slots__ = ("children", "kind", "layer", "seen", "target")

    def __init__(self, kind: str, layer: int, target: str | None = None) -> None:
        self.kind = kind
        self.layer = layer
        self.seen = layer
        self.children: dict[str, _Node] | None = {} if kind == _DIR else None
        self.target = target


class RootFs:
    """An image's filesystem built in a private staging directory, layer by layer."""

    def __init__(self, root: Path, *, limits: Limits = _LIMITS, allow_git: bool = False) -> None:
        try:
            fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise _os_error(exc, f"cannot open the staging directory {root}") from None
        try:
            if os.listdir(fd):
                raise StepkitError(f"staging directory {root} is not empty")
        finally:
            os.close(fd)
        self.root = root
        self.limits = limits
        self.allow_git = allow_git
        self._tree = _Node(_DIR, 0)
        self._layer = 0
        self._entries = 0
        self._bytes = 0
        self._spent: str | None = None
        self._chmod = _chmod_needed()

    def _usable(self) -> None:
        if self._spent is not None:
            raise StepkitError(f"the image filesystem in {self.root} {self._spent}")

    def apply(self, layer: Path, *, media_type: str, label: str) -> LayerStats:
        """Apply one layer file over what is there; see the module's rules."""
        self._usable()
        if media_type not in MEDIA_TYPES and not media_type.startswith(
            ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
        ):
            raise ArchiveError(f"{label}: media type {shown(media_type)} is not an image layer")
        self._layer += 1
        self._spent = "is incomplete: applying an earlier layer failed"
        try:
            with open(layer, "rb", buffering=CHUNK) as raw:
                size = os.fstat(raw.fileno()).st_size
                cap, reason = expansion_cap(
                    self.limits,
                    size,
                    self.limits.max_bytes - self._bytes,
                    what="the layer",
                    whole="the image",
                )
                root_fd = os.open(self.root, _DIR_FLAGS)
                work = _LayerWork(self, root_fd, label, cap, reason)
                try:
                    with open_tar_stream(raw, label=label) as stream:
                        for entry in iter_tar(stream, label):
                            work.entry(entry)
                finally:
                    work.close()
                    os.close(root_fd)
        except OSError as exc:
            raise _os_error(exc, f"cannot apply {label}") from None
        self._bytes += work.bytes
        self._spent = None
        return LayerStats(
            files=work.files,
            dirs=work.dirs,
            symlinks=work.symlinks,
            whiteouts=work.whiteouts,
            bytes=work.bytes,
        )

    # export

    def export(self, path: str, dest: Path) -> None:
        """Move the image's `path` to dest (which must not exist; its parent must); see the module's rules."""
        self._usable()
        if not path or has_control(path):
            raise InputError(f"path {shown(path)} in the image is empty or has control characters")
        if os.path.lexists(dest):
            raise InputError(f"destination {dest} already exists")
        if not dest.parent.is_dir():
            raise InputError(f"destination's directory {dest.parent} does not exist")
        names, node = self._resolve(path)
        if not self.allow_git:
            found = _git_below(node, names)
            if found is not None:
                raise InputError(
                    f"path {shown(path)} in the image holds {shown('/' + found)}: a .git directory "
                    "would let the image configure git for later steps (allow it explicitly with "
                    "the helper's --allow-git option)"
                )
        self._spent = "was exported already"
        src = self.root.joinpath(*names)
        try:
            if node.kind == _DIR:
                if not names:
                    os.chmod(self.root, _DIR_MODE)
                _rename(src, dest)
                return
            base = [c for c in path.split("/") if c not in ("", ".")][-1]
            holder = self.root / f".stepkit-export-{os.urandom(6).hex()}"
            os.mkdir(holder, _DIR_MODE)
            if self._chmod:
                os.chmod(holder, _DIR_MODE)
            os.rename(src, holder / base)
            _rename(holder, dest)
        except OSError as exc:
            raise _os_error(exc, f"cannot move {shown(path)} of the image to {dest}") from None

    def _resolve(self, path: str) -> tuple[list[str], _Node]:
        """The real path (no symlinks) of the image's path, as the container resolves it, and its node."""
        todo = deque(path.split("/"))
        stack: list[tuple[str, _Node]] = []
        links = 0
        while todo:
            comp = todo.popleft()
            node = stack[-1][1] if stack else self._tree
            if node.children is None:
                raise InputError(
                    f"path {shown(path)} in the image: "
                    f"{shown('/' + '/'.join(n for n, _ in stack))} is not a directory"
                )
            if comp in ("", "."):
                continue
            if comp == "..":
                if stack:
                    stack.pop()
                continue
            child = node.children.get(comp)
            if child is None:
                raise InputError(f"path {shown(path)} does not exist in the image")
            if child.kind == _LINK:
                links += 1
                if links > _MAX_LINKS:
                    raise InputError(
                        f"path {shown(path)} in the image: more than {_MAX_LINKS} symbolic links"
                    )
                target = child.target or ""
                if target.startswith("/"):
                    stack = []
                todo.extendleft(reversed(target.split("/")))
                continue
            stack.append((comp, child))
        return [n for n, _ in stack], stack[-1][1] if stack else self._tree


def _git_below(node: _Node, names: list[str]) -> str | None:
    """The first .git name at or below the exported node, as a path in the image."""
    for i, name in enumerate(names):
        if is_git_name(name):
            return "/".join(names[: i + 1])
    todo = [(node, names)]
    while todo:
        cur, at = todo.pop()
        for name, child in (cur.children or {}).items():
            if is_git_name(name):
                return "/".join([*at, name])
            if child.children:
                todo.append((child, [*at, name]))
    return None


def _rename(src: Path, dest: Path) -> None:
    try:
        os.rename(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        place(src, dest)


class _LayerWork:
    """Applying one layer: its counters, and the chain of directory descriptors last written into."""

    def __init__(self, fs: RootFs, root_fd: int, label: str, cap: int, cap_reason: str) -> None:
        self.fs = fs
        self.layer = fs._layer
        self.label = label
        self.cap = cap
        self.cap_reason = cap_reason
        self.files = self.dirs = self.symlinks = self.whiteouts = self.bytes = 0
        # Root first; layers list a directory's entries together, so the chain is nearly
        # always what the next entry needs. Everything removed lies below its last element.
        self.chain: list[tuple[str, _Node, int]] = [("", fs._tree, root_fd)]

    def close(self) -> None:
        for _, _, fd in self.chain[1:]:
            os.close(fd)
        del self.chain[1:]

    def entry(self, entry: TarEntry) -> None:
        fs = self.fs
        fs._entries += 1
        if fs._entries > fs.limits.max_entries:
            raise entry.fail(f"the image has more than {fs.limits.max_entries} entries")
        parts = split_name(
            entry.name, limits=fs.limits, label=self.label, allow_git=True, allow_backslash=True
        )
        if not parts:
            if entry.kind == "dir":
                return  # "./": the root itself
            raise entry.fail("names the root of the image itself")
        for part in parts[:-1]:
            if part.startswith(_WH):
                raise entry.fail(f"a whiteout name {shown(part)} used as a directory")
        base = parts[-1]
        if base.startswith(_WH):
            self.whiteout(entry, parts)
            return
        if entry.kind == "hardlink":
            self.hardlink(entry, parts)
            return
        parent, pfd = self.parent(entry, parts[:-1])
        assert parent.children is not None
        existing = parent.children.get(base)
        if entry.kind == "dir":
            if existing is not None and existing.kind == _DIR:
                existing.layer = existing.seen = self.layer
                return
            if existing is not None:
                self.remove(parent, pfd, base, existing)
            self.mkdir(parent, pfd, base)
        elif entry.kind == "symlink":
            link = entry.link
            if not link:
                raise entry.fail("empty symlink target")
            if len(link.encode("utf-8", "surrogateescape")) > fs.limits.max_path_bytes:
                raise entry.fail(f"symlink target longer than {fs.limits.max_path_bytes} bytes")
            if has_control(link):
                raise entry.fail("control character in symlink target")
            if existing is not None:
                self.remove(parent, pfd, base, existing)
            os.symlink(link, base, dir_fd=pfd)
            parent.children[base] = _Node(_LINK, self.layer, link)
            self.symlinks += 1
        else:
            if entry.size < 0:
                raise entry.fail("negative size")
            if self.bytes + entry.size > self.cap:
                raise entry.fail(self.cap_reason)
            if existing is not None:
                self.remove(parent, pfd, base, existing)
            self.write(entry, parent, pfd, base)

    def parent(
        self, entry: TarEntry, parts: tuple[str, ...], *, written: bool = True
    ) -> tuple[_Node, int]:
        """The directory node and descriptor for parts, made where missing, never through a symlink.

        `written`: the directories count as written by this layer (a whiteout's do not).
        """
        chain = self.chain
        keep = 1
        while keep < len(chain) and keep <= len(parts) and chain[keep][0] == parts[keep - 1]:
            keep += 1
        for _, _, fd in chain[keep:]:
            os.close(fd)
        del chain[keep:]
        _, node, fd = chain[-1]
        for i in range(keep - 1, len(parts)):
            comp = parts[i]
            assert node.children is not None
            child = node.children.get(comp)
            if child is None:
                child = self.mkdir(node, fd, comp)
            elif child.kind == _LINK:
                raise entry.fail(
                    f"its directory {shown('/'.join(parts[: i + 1]))} is a symlink in the image "
                    "(a layer may not write through it)"
                )
            elif child.kind == _FILE:
                raise entry.fail(
                    f"its directory {shown('/'.join(parts[: i + 1]))} is a file in the image"
                )
            fd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            chain.append((comp, child, fd))
            node = child
        if written:
            for _, dnode, _ in chain:
                dnode.seen = self.layer
        return node, fd

    def mkdir(self, parent: _Node, pfd: int, name: str) -> _Node:
        os.mkdir(name, _DIR_MODE, dir_fd=pfd)
        if self.fs._chmod:
            os.chmod(name, _DIR_MODE, dir_fd=pfd, follow_symlinks=False)
        node = _Node(_DIR, self.layer)
        assert parent.children is not None
        parent.children[name] = node
        self.dirs += 1
        return node

    def remove(self, parent: _Node, pfd: int, name: str, node: _Node) -> None:
        if node.kind == _DIR:
            # rmtree with dir_fd works through descriptors and never follows a symlink.
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        assert parent.children is not None
        del parent.children[name]

    def write(self, entry: TarEntry, parent: _Node, pfd: int, name: str) -> None:
        perm = 0o755 if entry.mode & 0o111 else 0o644
        ffd = os.open(name, _FILE_FLAGS, perm, dir_fd=pfd)
        assert parent.children is not None
        parent.children[name] = _Node(_FILE, self.layer)
        try:
            if self.fs._chmod:
                os.fchmod(ffd, perm)
            write_data(
                ffd,
                entry.size,
                entry.read,
                entry.fail,
                sparse=entry.sparse,
                truncated="truncated layer",
            )
        finally:
            os.close(ffd)
        self.bytes += entry.size
        self.files += 1

    def hardlink(self, entry: TarEntry, parts: tuple[str, ...]) -> None:
        fs = self.fs
        tparts = split_name(
            entry.link,
            limits=fs.limits,
            label=self.label,
            what="hard link target",
            entry=entry.name,
            allow_git=True,
            allow_backslash=True,
        )
        target = self.lookup(tparts)
        if target is None or target.kind == _DIR:
            raise entry.fail(
                f"hard link to {shown(entry.link)}, which is not an earlier file of the image"
            )
        if tparts == parts:
            # GNU tar stores a file it is given twice as a hard link to itself: a no-op.
            return
        if tparts[: len(parts)] == parts:
            raise entry.fail(f"hard link to {shown(entry.link)}, which it would replace")
        parent, pfd = self.parent(entry, parts[:-1])
        assert parent.children is not None
        existing = parent.children.get(parts[-1])
        if existing is not None:
            self.remove(parent, pfd, parts[-1], existing)
        # The model says every directory of tparts is a real one: nothing here follows a link.
        os.link(
            "/".join(tparts),
            parts[-1],
            src_dir_fd=self.chain[0][2],
            dst_dir_fd=pfd,
            follow_symlinks=False,
        )
        parent.children[parts[-1]] = _Node(target.kind, self.layer, target.target)
        if target.kind == _LINK:
            self.symlinks += 1
        else:
            self.files += 1

    def lookup(self, parts: tuple[str, ...]) -> _Node | None:
        node = self.fs._tree
        for comp in parts:
            if node.children is None:
                return None
            child = node.children.get(comp)
            if child is None:
                return None
            node = child
        return node

    def whiteout(self, entry: TarEntry, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        hidden = base[len(_WH) :]
        if hidden in ("", ".", ".."):
            raise entry.fail(f"malformed whiteout (it would hide {shown(hidden)})")
        if base != _OPAQUE and hidden.startswith(_WH):
            raise entry.fail("unsupported whiteout metadata (AUFS '.wh..wh.' names)")
        if entry.kind != "file":
            raise entry.fail("a whiteout must be a regular file")
        if entry.size:
            # Its data is decompressed and dropped, so it counts like written bytes: else
            # a whiteout would carry a compression bomb past the cap.
            if self.bytes + entry.size > self.cap:
                raise entry.fail(self.cap_reason)
            self.bytes += entry.size
        self.whiteouts += 1
        where = self.fs._tree
        for comp in parts[:-1]:
            assert where.children is not None
            step = where.children.get(comp)
            if step is None:
                return  # nothing below a missing directory to hide, and none is made for it
            if step.kind != _DIR:
                break  # parent() refuses it, naming it
            where = step
        parent, pfd = self.parent(entry, parts[:-1], written=False)
        assert parent.children is not None
        if base == _OPAQUE:
            for name, child in list(parent.children.items()):
                self.hide_lower(parent, pfd, name, child)
        else:
            node = parent.children.get(hidden)
            if node is not None:
                self.hide_lower(parent, pfd, hidden, node)

    def hide_lower(self, parent: _Node, pfd: int, name: str, node: _Node) -> None:
        """Remove what lower layers have at or below name, keeping what this layer wrote."""
        if node.seen != self.layer:
            self.remove(parent, pfd, name, node)
            return
        if node.children is None:
            return
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        try:
            for cname, child in list(node.children.items()):
                self.hide_lower(node, fd, cname, child)
        finally:
            os.close(fd)
