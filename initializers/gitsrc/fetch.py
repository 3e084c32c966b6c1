"""git-init's work: prepare the destination, fetch only what the revision needs, check it out, report it."""

from __future__ import annotations

import logging
import os
import posixpath
import stat
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from initializers.gitsrc.gitrun import (
    Git,
    NoShallow,
    ShaRefused,
    TransientError,
    UnknownRevision,
    remove_path,
)
from initializers.gitsrc.objects import committer_date
from initializers.gitsrc.spec import FULL_SHA, HEX, FetchSpec, RepoUrl, parse_url
from stepkit.contract import home
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
        worktrees = [dest]
        if spec.submodules:
            _submodules(git, spec, dest, spec.url, level=1, found=worktrees)
        _mark_safe_for_later_steps(git, worktrees)
        date = git.committer_dates[commit]
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
    """A fresh repository whose every setting is ours.

    Nothing of an old .git is kept: any later step could have changed our previous
    checkout's, and a foreign one under --force is someone else's. Hooks, fsmonitor,
    filters and sshCommand settings, a submodule's config under modules/, symlinked refs,
    logs or objects, a commondir or alternates pointing elsewhere would all act on the next
    git command. A re-run over our previous checkout empties the directory, so the result
    is exactly a first run's (files the old commit had and the new one lacks go too); under
    --force only .git goes and checkout overwrites the tracked files.
    """
    git_dir = spec.dest / ".git"
    if reuse:
        for name in os.listdir(spec.dest):
            remove_path(spec.dest / name)  # never follows a symlink
    elif os.path.lexists(git_dir):
        remove_path(git_dir)
    # What `git init -q --template=` makes, made here: one git process fewer per run.
    # mkdir refuses anything already there (a symlink planted since the removal included).
    os.mkdir(git_dir, 0o755)
    for sub in ("objects", "objects/info", "objects/pack", "refs", "refs/heads", "refs/tags"):
        os.mkdir(git_dir / sub, 0o755)
    with SafeTree(git_dir, create=False, label=f"{spec.dest}/.git") as tree:
        tree.write("HEAD", b"ref: refs/heads/main\n", mode=0o644, dir_mode=0o755)
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


def _fetch_at_depth(git: Git, spec: FetchSpec, refspecs: tuple[str, ...], what: str) -> None:
    """Fetch at the requested depth; a server that can't serve shallow gets the full history."""
    try:
        git.net(_fetch_args(spec, *refspecs, extra=tuple(_depth(spec))), what=what)
    except NoShallow:
        log.warning(
            "%s: the server does not support shallow fetches; fetching the full history", what
        )
        git.net(_fetch_args(spec, *refspecs), what=what)


def _fetch(git: Git, spec: FetchSpec) -> tuple[str, str | None]:
    """Fetch what the revision needs; return (commit, branch to check out or None for detached)."""
    rev = spec.revision
    what = f"revision {shown(rev)}" if rev else "default branch"
    if spec.refspecs:
        _fetch_at_depth(git, spec, spec.refspecs, "refspec")
        return _resolve(git, rev or "FETCH_HEAD", what), None
    sha = rev.lower()
    if FULL_SHA.match(sha):
        try:
            _fetch_at_depth(git, spec, (sha,), what)
        except ShaRefused:
            # Only a protocol v0 server without SHA-in-want says this (v2 serves any object
            # it has). It would refuse a partial clone's later requests for file contents
            # by id just the same, so history without blobs could not be checked out:
            # fetch every branch and tag, as a plain clone would.
            log.info(
                "the server (protocol v0) does not hand out %s by id; fetching the whole history",
                sha,
            )
            _write_config(spec, partial=False)
            git.net(_fetch_args(spec, *ALL_REFS), what=what)
        return _resolve(git, sha, what, sha=True), None
    if sha and HEX.match(sha):
        # A short SHA, unless a branch or tag has that name: try the ref first.
        try:
            return _fetch_ref(git, spec, rev, what)
        except UnknownRevision:
            pass
        # Resolving a short SHA takes the history; its file contents it does not.
        _fetch_history(git, spec, what)
        return _resolve(git, sha, what, sha=True), None
    return _fetch_ref(git, spec, rev, what)


def _fetch_ref(git: Git, spec: FetchSpec, rev: str, what: str) -> tuple[str, str | None]:
    src = "HEAD" if not rev else ("refs/" + rev if rev.startswith("pull/") else rev)
    _fetch_at_depth(git, spec, (src,), what)
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
    _write_config(spec, partial=True)
    try:
        proc = git.net(_fetch_args(spec, *ALL_REFS, extra=("--filter=blob:none",)), what=what)
    except StepkitError as exc:
        if isinstance(exc, TransientError | UnknownRevision) or "filter" not in exc.message:
            raise
        log.info("the server does not support partial fetches; fetching the whole history")
        _write_config(spec, partial=False)
        git.net(_fetch_args(spec, *ALL_REFS), what=what)
        return
    if "filtering not recognized by server" in proc.stderr:
        # A server without filter support sends everything, and git says so only in a
        # warning: the repository is complete and must not claim to be a partial clone.
        log.info("the server does not support partial fetches; fetched the whole history")
        _write_config(spec, partial=False)


def _write_config(spec: FetchSpec, *, partial: bool) -> None:
    with SafeTree(spec.dest / ".git", create=False) as tree:
        tree.write("config", _config(spec, partial=partial).encode(), mode=0o644, dir_mode=0o755)


def _resolve(git: Git, name: str, what: str, *, sha: bool = False) -> str:
    """The commit name peels to; its committer date is noted for the results on the way."""
    # Read from the object store when name is a full id (FETCH_HEAD's, or the revision's);
    # else one git call for both: every process counts against plain git in the benchmark.
    found = committer_date(git.cwd / ".git", name) if FULL_SHA.match(name) else None
    if found is None:
        out = git.output_or_none(
            "log", "-1", "--no-walk", "--format=%H %ct", "--end-of-options", f"{name}^{{commit}}"
        )
        found = (out or "").partition(" ")[::2]
    commit, date = found
    # A short SHA must not resolve to some ref's commit.
    if not commit or (sha and not commit.startswith(name)):
        raise UnknownRevision(f"{what} not found in {git.spec.url.url}")
    git.committer_dates[commit] = date
    return commit


def _checkout(git: Git, spec: FetchSpec, commit: str, branch: str | None) -> None:
    # Checking out may fetch missing file contents from a partial clone: a network call.
    target = ["-B", branch, commit] if branch else ["--detach", commit]
    args = ["checkout", "--quiet", "--force", *target, "--"]
    try:
        git.net(args, what="checkout")
    except UnknownRevision:
        if git.output_or_none("config", "--get", "extensions.partialClone") is None:
            raise
        # Over protocol v0, a server that would not hand out the commit by SHA will not hand
        # out file contents by id either (that takes uploadpack.allowAnySHA1InWant): the
        # history without them cannot be checked out, so fetch all of it after all. --refetch
        # because a plain fetch would send what we have and get no blob of it.
        log.info("the server does not hand out file contents by id; fetching the whole history")
        _write_config(spec, partial=False)
        git.net(_fetch_args(spec, *ALL_REFS, extra=("--refetch",)), what="checkout")
        git.net(args, what="checkout")


# --- submodules -----------------------------------------------------------------------


def _submodules(
    git: Git, spec: FetchSpec, repo: Path, parent: RepoUrl, *, level: int, found: list[Path]
) -> None:
    """Check out repo's submodules, recursively; each one's work tree is appended to found."""
    # The committed .gitmodules, not the work tree's: under --force an untracked one could
    # be lying there. (Checkout wrote a committed one, so without a file there is none.)
    if not (repo / ".gitmodules").is_file():
        return
    if git.output_or_none("cat-file", "-e", "HEAD:.gitmodules", cwd=repo) is None:
        return
    if level > MAX_SUBMODULE_DEPTH:
        raise StepkitError(f"submodules nest deeper than {MAX_SUBMODULE_DEPTH} levels in {repo}")
    raw = git.run(
        "config",
        "-z",
        "--blob",
        "HEAD:.gitmodules",
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
        resolved = _check_submodule(name, path, url, parent, spec)
        paths.append(path)
        if resolved.password is not None:
            # `submodule init` would copy the url, credentials and all, into .git/config and
            # the clone into the submodule's own config. It keeps a url already set: set the
            # one without them, and hand the credentials to git for that server only.
            log.warning(
                "submodule %s: its url holds credentials; they are used for %s only, never "
                "stored or shown",
                shown(name),
                resolved.url,
            )
            git.add_login(resolved)
            git.run("config", f"submodule.{name}.url", resolved.url, cwd=repo)
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
        found.append(repo / path)
        sub_url = _resolve_url(entries_url(entries, path), parent, spec)
        _submodules(git, spec, repo / path, sub_url, level=level + 1, found=found)


def _mark_safe_for_later_steps(git: Git, worktrees: list[Path]) -> None:
    """Name the checkout in $HOME/.gitconfig as a safe.directory, for the steps after us.

    git refuses a repository that another user owns ("dubious ownership"), and only global
    or system config can say otherwise. In a pod that is the rule, not the exception: this
    image runs as 65532 while step images commonly run as root, and a checkout at /workspace
    itself has a root-owned emptyDir as its work tree. creds-init wrote .gitconfig for the
    same steps; a HOME git-init cannot write only costs a warning.
    """
    config = str(home() / ".gitconfig")
    known: set[str] = set()
    if _may_list(config, worktrees):
        listed = git.output_or_none("config", "--file", config, "--get-all", "safe.directory")
        known = set((listed or "").splitlines())
    missing = [w for w in worktrees if str(w) not in known]
    if not missing or _append_safe(config, missing):
        return
    for worktree in missing:
        try:
            git.run("config", "--file", config, "--add", "safe.directory", str(worktree))
        except StepkitError as exc:
            log.warning(
                "cannot name %s a safe.directory in %s; steps under another UID will see git "
                "refuse it as owned by someone else (%s)",
                worktree,
                config,
                exc,
            )
            return


def _safe_value(path: str) -> str:
    """The value as `git config` writes it: plain, quoted only when a character needs it."""
    return config_value(path) if any(c in path for c in ' ;#"\\') else path


def _append_safe(config: str, worktrees: list[Path]) -> bool:
    """Append a [safe] section naming worktrees to config: what `git config --add` writes,
    without its process. False when config is not a plain file this UID can append to (a
    symlink, say), for git to try.
    """
    entries = "".join(f"\tdirectory = {_safe_value(str(w))}\n" for w in worktrees)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(config, flags, 0o644)
    except OSError:
        return False
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        # A last line without its newline would swallow the section header.
        lead = "\n" if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n" else ""
        data = f"{lead}[safe]\n{entries}".encode()
        return os.write(fd, data) == len(data)
    except OSError:
        return False
    finally:
        os.close(fd)


def _may_list(config: str, worktrees: list[Path]) -> bool:
    """Whether config could name one of worktrees already (else asking git is a process saved).

    A value git would read as the path holds the path's text, plain or escaped in quotes as
    config_value writes it; one named in an included file, or escaped otherwise, at worst
    gets listed twice.
    """
    try:
        with open(config, "rb") as f:
            text = f.read(8 << 20)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # The path as written plain, or escaped inside quotes as _append_safe writes it.
    forms = [form for w in worktrees for form in (str(w), config_value(str(w))[1:-1])]
    return any(form.encode() in text for form in forms)


def entries_url(entries: dict[str, dict[str, str]], path: str) -> str:
    return next(f.get("url", "") for f in entries.values() if f.get("path") == path)


def _check_submodule(name: str, path: str, url: str, parent: RepoUrl, spec: FetchSpec) -> RepoUrl:
    """What git itself should refuse, refused before git sees it (CVE-2018-11235, CVE-2025-48384).

    Returns the submodule's url, resolved and checked.
    """
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
    return _resolve_url(url, parent, spec, label=label)


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
