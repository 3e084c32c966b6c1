"""git-init's work: prepare the destination, fetch only what the revision needs, check it out, report it."""

from __future__ import annotations

import logging
import os
import posixpath
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from initializers.gitsrc.gitrun import Git, TransientError, UnknownRevision, remove_path
from initializers.gitsrc.spec import FULL_SHA, HEX, FetchSpec, RepoUrl, parse_url
from stepkit.errors import InputError, StepkitError
from stepkit.fsutil import SafeTree
from stepkit.gitenv import config_value
from stepkit.results import write_results
from stepkit.validate import has_control, shown

log = logging.getLogger(__name__)

MARKER = "stepkit-source"  # in .git: this checkout is ours, so a re-run may reuse it
MAX_SUBMODULE_DEPTH = 8
ALL_REFS = ("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")


def run(spec: FetchSpec) -> int:
    existed = spec.dest.exists()
    before = set(os.listdir(spec.dest)) if existed else set()
    try:
        return _run(spec)
    except BaseException:
        # A failed fetch leaves no half-made checkout for the next step to trip on: what
        # this run created goes (a previous checkout that it reused stays as it was).
        if not existed:
            remove_path(spec.dest)
        elif not before:
            for name in os.listdir(spec.dest):
                remove_path(spec.dest / name)
        raise


def _run(spec: FetchSpec) -> int:
    started = time.monotonic()
    dest = spec.dest
    reuse = _prepare_dest(spec)
    with Git(spec, dest) as git:
        _write_repo(git, spec, reuse=reuse)
        log.info(
            "fetching %s from %s into %s%s",
            shown(spec.revision) if spec.revision else "the default branch",
            spec.url.url,
            dest,
            f" (depth {spec.depth})" if spec.depth else "",
        )
        commit, branch = _fetch(git, spec)
        _checkout(git, spec, commit, branch)
        if spec.submodules:
            _submodules(git, spec, dest, spec.url, level=1)
        date = git.run("log", "-1", "--format=%ct", commit)
    results = {"commit": commit, "url": spec.url.url, "committer-date": date}
    write_results(results, termination_path=spec.termination_path, results_dir=spec.results_dir)
    log.info(
        "checked out %s%s in %.1f s",
        commit,
        f" on branch {branch}" if branch else "",
        time.monotonic() - started,
    )
    return 0


def _prepare_dest(spec: FetchSpec) -> bool:
    """Create or check the destination; True when it holds our previous checkout."""
    dest = spec.dest
    if not dest.exists():
        dest.mkdir(parents=True, mode=0o755)
        return False
    entries = os.listdir(dest)
    if not entries:
        return False
    git_dir = dest / ".git"
    ours = git_dir.is_dir() and not git_dir.is_symlink() and (git_dir / MARKER).is_file()
    if ours or spec.force:
        if not ours:
            log.warning(
                "fetching into non-empty %s (--force): tracked files there are overwritten", dest
            )
        return ours
    raise InputError(
        f"-path: {dest} is not empty and holds no previous git-init checkout; "
        "empty it or pass --force to fetch into it"
    )


def _write_repo(git: Git, spec: FetchSpec, *, reuse: bool) -> None:
    """A repository whose every setting is ours: nothing planted in .git survives to run."""
    git_dir = spec.dest / ".git"
    if os.path.lexists(git_dir) and not (git_dir.is_dir() and not git_dir.is_symlink()):
        remove_path(git_dir)  # a gitfile or symlink could point git at another repository
    if not reuse and git_dir.is_dir():
        # A foreign repository under --force: keep nothing of it.
        remove_path(git_dir)
    git.run("init", "-q", "--template=", str(spec.dest))
    for planted in (
        "hooks",
        "commondir",
        "gitdir",
        "objects/info/alternates",
        "info",
        "config.worktree",
    ):
        path = git_dir / planted
        if os.path.lexists(path):
            remove_path(path)
    with SafeTree(git_dir, create=False, label=f"{spec.dest}/.git") as tree:
        tree.write("config", _config(spec).encode(), mode=0o644, dir_mode=0o755)
        tree.write(MARKER, (spec.url.url + "\n").encode(), mode=0o644, dir_mode=0o755)
        if spec.sparse_dirs:
            tree.write(
                "info/sparse-checkout",
                _cone_patterns(spec.sparse_dirs).encode(),
                mode=0o644,
                dir_mode=0o755,
            )


def _config(spec: FetchSpec, *, partial: bool = False) -> str:
    lines = [
        "[core]",
        f"\trepositoryformatversion = {1 if partial else 0}",
        "\tfilemode = true",
        "\tbare = false",
        "\tlogallrefupdates = false",
    ]
    if spec.sparse_dirs:
        lines += ["\tsparseCheckout = true", "\tsparseCheckoutCone = true"]
    if partial:
        lines += ["[extensions]", "\tpartialClone = origin"]
    lines += [
        '[remote "origin"]',
        f"\turl = {config_value(spec.url.url)}",
        "\tfetch = +refs/heads/*:refs/remotes/origin/*",
    ]
    if partial:
        lines += ["\tpromisor = true", "\tpartialclonefilter = blob:none"]
    return "\n".join(lines) + "\n"


def _cone_patterns(dirs: tuple[str, ...]) -> str:
    """Cone-mode sparse patterns: top-level files, and each directory with its parents' files."""
    lines = ["/*", "!/*/"]
    seen: set[str] = set()
    for d in sorted(dirs):
        parts = d.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in seen:
                lines += [f"/{parent}/", f"!/{parent}/*/"]
                seen.add(parent)
        lines.append(f"/{d}/")
    return "\n".join(lines) + "\n"


def _depth(spec: FetchSpec) -> list[str]:
    return [f"--depth={spec.depth}"] if spec.depth > 0 else []


def _fetch_args(spec: FetchSpec, *refspecs: str, extra: tuple[str, ...] = ()) -> list[str]:
    return ["fetch", "--no-tags", "--no-recurse-submodules", *extra, "--", "origin", *refspecs]


def _fetch(git: Git, spec: FetchSpec) -> tuple[str, str | None]:
    """Fetch what the revision needs; return (commit, branch to check out or None for detached)."""
    rev = spec.revision
    what = f"revision {shown(rev)}" if rev else "default branch"
    depth = tuple(_depth(spec))
    if spec.refspecs:
        git.net(_fetch_args(spec, *spec.refspecs, extra=depth), what="refspec")
        return _resolve(git, rev or "FETCH_HEAD", what), None
    if FULL_SHA.match(rev):
        try:
            git.net(_fetch_args(spec, rev, extra=depth), what=what)
            return _resolve(git, rev, what, sha=True), None
        except UnknownRevision:
            log.info(
                "the server does not hand out %s by itself; fetching history without file contents",
                rev,
            )
        _fetch_history(git, spec, what)
        return _resolve(git, rev, what, sha=True), None
    if HEX.match(rev) and rev:
        # A short SHA, unless a branch or tag has that name: try the ref first.
        try:
            return _fetch_ref(git, spec, rev, what)
        except UnknownRevision:
            pass
        _fetch_history(git, spec, what)
        return _resolve(git, rev, what, sha=True), None
    return _fetch_ref(git, spec, rev, what)


def _fetch_ref(git: Git, spec: FetchSpec, rev: str, what: str) -> tuple[str, str | None]:
    src = "HEAD" if not rev else ("refs/" + rev if rev.startswith("pull/") else rev)
    git.net(_fetch_args(spec, src, extra=tuple(_depth(spec))), what=what)
    # FETCH_HEAD says what the server matched: "<sha>\t\tbranch 'main' of <url>".
    first = (spec.dest / ".git" / "FETCH_HEAD").read_text(errors="replace").split("\n", 1)[0]
    sha, _, rest = first.partition("\t")
    description = rest.rpartition("\t")[2]
    branch = None
    if description.startswith("branch '") and rev:
        branch = description[len("branch '") :].partition("' of ")[0]
    return _resolve(git, sha, what), branch


def _fetch_history(git: Git, spec: FetchSpec, what: str) -> None:
    """All commits and trees of every branch and tag, file contents only as checkout needs them."""
    with SafeTree(spec.dest / ".git", create=False) as tree:
        tree.write("config", _config(spec, partial=True).encode(), mode=0o644, dir_mode=0o755)
    try:
        git.net(_fetch_args(spec, *ALL_REFS, extra=("--filter=blob:none",)), what=what)
    except StepkitError as exc:
        if isinstance(exc, TransientError | UnknownRevision) or "filter" not in exc.message:
            raise
        log.info("the server does not support partial fetches; fetching the whole history")
        with SafeTree(spec.dest / ".git", create=False) as tree:
            tree.write("config", _config(spec).encode(), mode=0o644, dir_mode=0o755)
        git.net(_fetch_args(spec, *ALL_REFS), what=what)


def _resolve(git: Git, name: str, what: str, *, sha: bool = False) -> str:
    if not git.ok("rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"):
        raise UnknownRevision(f"{what} not found in {git.spec.url.url}")
    commit = git.run("rev-parse", "--verify", "--end-of-options", f"{name}^{{commit}}")
    if sha and not commit.startswith(name):  # a short SHA must not resolve to a ref's commit
        raise UnknownRevision(f"{what} not found in {git.spec.url.url}")
    return commit


def _checkout(git: Git, spec: FetchSpec, commit: str, branch: str | None) -> None:
    # Checking out may fetch missing file contents from a partial clone: a network call.
    if branch:
        git.net(["checkout", "--quiet", "--force", "-B", branch, commit, "--"], what="checkout")
    else:
        git.net(["checkout", "--quiet", "--force", "--detach", commit, "--"], what="checkout")


# --- submodules -----------------------------------------------------------------------


def _submodules(git: Git, spec: FetchSpec, repo: Path, parent: RepoUrl, *, level: int) -> None:
    if not (repo / ".gitmodules").is_file():
        return
    if level > MAX_SUBMODULE_DEPTH:
        raise StepkitError(f"submodules nest deeper than {MAX_SUBMODULE_DEPTH} levels in {repo}")
    raw = git.run(
        "config",
        "-z",
        "--file",
        ".gitmodules",
        "--get-regexp",
        r"^submodule\..*\.(path|url)$",
        cwd=repo,
    )
    entries: dict[str, dict[str, str]] = {}
    for item in raw.split("\0"):
        if not item:
            continue
        key, _, value = item.partition("\n")
        name, _, field = key[len("submodule.") :].rpartition(".")
        entries.setdefault(name, {})[field] = value
    paths: list[str] = []
    for name, fields in entries.items():
        path, url = fields.get("path", ""), fields.get("url", "")
        _check_submodule(name, path, url, parent, spec)
        paths.append(path)
    if not paths:
        return
    depth = _depth(spec)
    args = ["submodule", "update", "--init", "--no-recommend-shallow", *depth, "--", *paths]
    try:
        git.net(args, what="submodules", cwd=repo)
    except UnknownRevision:
        if not depth:
            raise
        log.info(
            "a submodule's server does not hand out its commit by SHA; fetching its whole history"
        )
        git.net(["submodule", "update", "--init", "--", *paths], what="submodules", cwd=repo)
    for path in paths:
        sub_url = _resolve_url(entries_url(entries, path), parent, spec)
        _submodules(git, spec, repo / path, sub_url, level=level + 1)


def entries_url(entries: dict[str, dict[str, str]], path: str) -> str:
    return next(f.get("url", "") for f in entries.values() if f.get("path") == path)


def _check_submodule(name: str, path: str, url: str, parent: RepoUrl, spec: FetchSpec) -> None:
    """What git itself should refuse, refused before git sees it (CVE-2018-11235, CVE-2025-48384)."""
    label = f"submodule {shown(name)}"
    segments = name.replace("\\", "/").split("/")
    if not name or has_control(name) or name.startswith("-") or ".." in segments:
        raise StepkitError(
            f"{label}: the name is not allowed (path traversal or control character)"
        )
    parts = path.split("/")
    if (
        not path
        or has_control(path)
        or path != path.strip()
        or path.startswith(("-", "/"))
        or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts)
    ):
        raise StepkitError(f"{label}: path {shown(path)} is not a plain relative path")
    if not url:
        raise StepkitError(f"{label}: has no url")
    _resolve_url(url, parent, spec, label=label)


def _resolve_url(
    url: str, parent: RepoUrl, spec: FetchSpec, *, label: str = "submodule"
) -> RepoUrl:
    """A submodule url, relative ones taken against the parent's, through the same checks as -url."""
    if url.startswith(("./", "../")):
        if has_control(url) or url.startswith("-"):
            raise StepkitError(f"{label}: url {shown(url)} is not allowed")
        if parent.scheme == "file" or "://" in parent.url:
            parts = urlsplit(parent.url)
            joined = posixpath.normpath(posixpath.join(parts.path.rstrip("/"), url))
            url = urlunsplit((parts.scheme, parts.netloc, joined, "", ""))
        else:
            host, _, path = parent.url.partition(":")
            url = f"{host}:{posixpath.normpath(posixpath.join(path.rstrip('/'), url))}"
    allow_http = "http" in spec.allowed_schemes
    allow_local = "file" in spec.allowed_schemes
    try:
        return parse_url(url, allow_http=allow_http, allow_local=allow_local, flag=label)
    except InputError as exc:
        raise StepkitError(exc.message) from None
