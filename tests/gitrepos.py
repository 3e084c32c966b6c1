"""Fixture git repositories for the git source fetcher's tests: revision forms, submodules, size and attacks."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers import git_env, run_git

# The same fixed epoch as tests/peers.py make_repo: every object name below is the same on
# every machine and every run.
_EPOCH = 1_700_000_000
_IDENT = "Stepkit Test <test@stepkit.invalid>"

# git mktree wants "MODE TYPE SHA\tNAME"; the type follows from the mode.
_TYPE_OF_MODE = {
    "100644": "blob",
    "100755": "blob",
    "120000": "blob",
    "160000": "commit",
    "040000": "tree",
}

Entries = Mapping[str, tuple[str, str]]
"""A tree as {path: (mode, sha)}; paths use "/" and may nest."""


class _Plumbing:
    """git plumbing in one repository with a fixed clock, so every object name is reproducible.

    Trees are written with `git mktree` straight from (mode, sha, name) entries, so nothing
    that porcelain checks (index path rules, submodule names, duplicate entries) stands in the
    way: the hostile repositories below depend on that.
    """

    def __init__(self, repo: Path, home: Path) -> None:
        self.repo = repo
        self.env = git_env(home)
        self.tick = 0

    def _dated(self) -> dict[str, str]:
        self.tick += 1
        stamp = f"{_EPOCH + self.tick * 60} +0000"
        return {**self.env, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}

    def git(self, *args: str) -> str:
        return run_git(args, env=self._dated(), cwd=self.repo).stdout.strip()

    def _feed(self, args: Sequence[str], data: bytes) -> str:
        proc = subprocess.run(
            ["git", *args],
            input=data,
            env=self._dated(),
            cwd=self.repo,
            capture_output=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"git {' '.join(args)} failed with status {proc.returncode}:\n"
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout.decode().strip()

    def blob(self, data: bytes | str) -> str:
        raw = data.encode() if isinstance(data, str) else data
        return self._feed(["hash-object", "-w", "--stdin"], raw)

    def tree(self, entries: Entries) -> str:
        """Write the (nested) tree for entries and return its name.

        A name may appear both as a leaf and as a directory ("A" and "A/x"): both entries are
        written, which is what a tree with duplicate names looks like.
        """
        leaves: list[tuple[str, str, str]] = []
        dirs: dict[str, dict[str, tuple[str, str]]] = {}
        for path, (mode, sha) in entries.items():
            head, sep, rest = path.partition("/")
            if sep:
                dirs.setdefault(head, {})[rest] = (mode, sha)
            else:
                leaves.append((mode, sha, head))
        for name, sub in dirs.items():
            leaves.append(("040000", self.tree(sub), name))
        data = b"".join(
            f"{mode} {_TYPE_OF_MODE[mode]} {sha}\t".encode() + name.encode() + b"\0"
            for mode, sha, name in leaves
        )
        # -z: a name may hold a CR (or anything but NUL and "/"), which a line format mangles.
        # --missing: a gitlink names a commit that lives in another repository.
        return self._feed(["mktree", "-z", "--missing"], data)

    def commit(self, entries: Entries, message: str, parents: Sequence[str] = ()) -> str:
        args = ["commit-tree", self.tree(entries), "-m", message]
        for parent in parents:
            args += ["-p", parent]
        return self.git(*args)

    def set_ref(self, ref: str, sha: str) -> None:
        self.git("update-ref", ref, sha)


@contextmanager
def _bare(path: Path) -> Iterator[_Plumbing]:
    """`git init --bare -b main path` and plumbing for it, with a throwaway HOME."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stepkit-git-home-") as home:
        env = git_env(Path(home))
        run_git(["init", "-q", "--bare", "-b", "main", str(path)], env=env)
        yield _Plumbing(path, Path(home))


def _file(git: _Plumbing, text: str | bytes, mode: str = "100644") -> tuple[str, str]:
    return (mode, git.blob(text))


# --------------------------------------------------------------------------------------------
# Server capabilities
# --------------------------------------------------------------------------------------------


def set_server_caps(bare: Path, *, sha_in_want: bool, filters: bool) -> None:
    """Set what upload-pack offers from `bare`, for every transport (http, ssh, git daemon).

    sha_in_want sets uploadpack.allowReachableSHA1InWant (and allowTipSHA1InWant) with
    uploadpack.allowAnySHA1InWant=false; filters sets uploadpack.allowFilter.

    Findings with git 2.39.5 (tests/test_gitrepos.py proves each over git:// and http://):

    - Order matters. upload-pack reads allowAnySHA1InWant=false as "clear the tip, reachable
      and any bits", so a false allowAny written *after* allowReachable=true turns SHA-in-want
      off again. The keys are therefore removed and rewritten, allowAny first.
    - The toggle binds protocol v0 (and v1) only. With it off, `git fetch [--depth=1] origin
      <sha of a non-tip commit>` fails on the client before any want is sent: "error: Server
      does not allow request for unadvertised object <sha>" (exit 1, since the server did not
      advertise allow-reachable-sha1-in-want). A SHA that is the tip of an advertised ref
      (refs/pull/7/head's commit) is still fetched. With it on, a reachable non-tip SHA is
      fetched and an unreachable one fails on the server: "fatal: remote error: upload-pack:
      not our ref <sha>" (exit 128).
    - Protocol v2 ignores all three keys. v2 upload-pack serves any `want <oid>` whose object
      exists in the repository (gitprotocol-v2: "Wants can be anything and are not limited to
      advertised objects"): a non-tip commit, with or without --depth=1, and even a commit no
      ref reaches. v2 is the client default since git 2.26, so a fetcher cannot learn from a
      failure whether the server "allows" SHA fetches, and cannot rely on the server to refuse
      an unreachable object; only a SHA that does not exist there fails ("fatal: remote error:
      upload-pack: not our ref <sha>", exit 128).
    - Filters: with allowFilter off, `clone/fetch --filter=blob:none` succeeds over v0 and v2
      alike after "warning: filtering not recognized by server, ignoring" (twice on v0's
      clone), downloads every blob, and still records remote.origin.promisor=true and
      remote.origin.partialclonefilter=blob:none in the client's config.
    """
    with tempfile.TemporaryDirectory(prefix="stepkit-git-home-") as home:
        env = git_env(Path(home))
        keys = (
            "uploadpack.allowAnySHA1InWant",
            "uploadpack.allowTipSHA1InWant",
            "uploadpack.allowReachableSHA1InWant",
            "uploadpack.allowFilter",
        )
        for key in keys:
            # Status 5 means "no such key", which is fine: the point is that none is left.
            proc = run_git(["config", "--unset-all", key], env=env, cwd=bare, check=False)
            if proc.returncode not in (0, 5):
                raise RuntimeError(f"git config --unset-all {key} failed: {proc.stderr.strip()}")
        values = ("false", str(sha_in_want).lower(), str(sha_in_want).lower(), str(filters).lower())
        for key, value in zip(keys, values, strict=True):
            run_git(["config", key, value], env=env, cwd=bare)


# --------------------------------------------------------------------------------------------
# A repository with every revision form
# --------------------------------------------------------------------------------------------


def make_rich_repo(path: Path) -> dict[str, str]:
    """Create the bare repository `path` for revision-form tests; return SHAs by name.

    History (every date fixed, so every SHA is the same on every run):

    - main: 12 commits. The first lays out top-level files (README.md, LICENSE, Makefile,
      VERSION), docs/ (with docs/guide/), src/app/ and src/lib/ for sparse checkout; commit 5
      ("exec") adds bin/tool with mode 100755 and the symlink latest-docs -> docs/index.md.
    - tags: annotated v1.0 on main commit 6, lightweight light on main commit 8.
    - release-1.0: two commits on top of main commit 6; feature/x: two on top of commit 10.
    - deadbeef: a branch whose name looks like a SHA prefix, one commit on top of commit 2.
    - refs/heads/<first 7 hex of "old">: a branch named exactly like the abbreviated SHA of
      the old main commit "old", pointing at release-1.0's tip: `rev-parse` of that string
      gives the branch (with a "refname is ambiguous" warning), not the commit.
    - refs/pull/7/head: one commit on top of main~1 that no branch or tag contains, so it can
      be fetched only by that ref (or, over protocol v2, by its SHA).

    The result maps every ref as `git show-ref --head -d` prints it (HEAD, refs/heads/...,
    refs/tags/v1.0 -> tag object, refs/tags/v1.0^{} -> commit, refs/tags/light,
    refs/pull/7/head), "main~k" for k in 0..11, and the short names main, feature/x,
    release-1.0, deadbeef, v1.0 (the tag object), v1.0^{}, light, pull, old (main commit 3,
    main~9: no ref points at it), exec (main commit 5).
    """
    with _bare(path) as git:
        files: dict[str, tuple[str, str]] = {
            "README.md": _file(git, "# rich\n\nA repository for revision tests.\n"),
            "LICENSE": _file(git, "Apache-2.0\n"),
            "Makefile": _file(git, "all:\n\t@echo ok\n"),
            "VERSION": _file(git, "0.1.0\n"),
            "docs/index.md": _file(git, "# docs\n"),
            "docs/guide/intro.md": _file(git, "# intro\n"),
            "src/app/__init__.py": _file(git, ""),
            "src/app/main.py": _file(git, "print('app')\n"),
            "src/lib/__init__.py": _file(git, ""),
            "src/lib/util.py": _file(git, "def util() -> int:\n    return 1\n"),
        }
        changes: list[tuple[str, dict[str, tuple[str, str]]]] = [
            ("initial layout", {}),
            ("docs: changelog", {"docs/changelog.md": _file(git, "# changes\n")}),
            ("app: cli", {"src/app/cli.py": _file(git, "print('cli')\n")}),
            ("lib: helpers", {"src/lib/helpers.py": _file(git, "HELP = 1\n")}),
            (
                "add an executable and a symlink",
                {
                    "bin/tool": _file(git, "#!/bin/sh\necho tool\n", "100755"),
                    "latest-docs": _file(git, "docs/index.md", "120000"),
                },
            ),
            ("version 1.0.0", {"VERSION": _file(git, "1.0.0\n")}),
            ("app: main v2", {"src/app/main.py": _file(git, "print('app v2')\n")}),
            ("docs: usage", {"docs/guide/usage.md": _file(git, "# usage\n")}),
            ("lib: util v2", {"src/lib/util.py": _file(git, "def util() -> int:\n    return 2\n")}),
            ("readme v2", {"README.md": _file(git, "# rich\n\nVersion two.\n")}),
            ("app: cli v2", {"src/app/cli.py": _file(git, "print('cli v2')\n")}),
            ("version 1.1.0-dev", {"VERSION": _file(git, "1.1.0-dev\n")}),
        ]
        main: list[str] = []
        states: list[dict[str, tuple[str, str]]] = []
        for message, change in changes:
            files = {**files, **change}
            main.append(git.commit(files, message, main[-1:]))
            states.append(files)

        def branch(base: int, name: str, steps: Sequence[tuple[str, str, str]]) -> str:
            """Commits on top of main commit `base` (1-based), each adding (path, text)."""
            tip, tree = main[base - 1], dict(states[base - 1])
            for message, file, text in steps:
                tree[file] = _file(git, text)
                tip = git.commit(tree, message, [tip])
            return tip

        release = branch(
            6,
            "release-1.0",
            [
                ("release: notes", "RELEASE-NOTES.md", "1.0.0: first release\n"),
                ("release: fix util", "src/lib/util.py", "def util() -> int:\n    return 10\n"),
            ],
        )
        feature = branch(
            10,
            "feature/x",
            [
                ("feature x: module", "src/app/feature_x.py", "X = True\n"),
                ("feature x: docs", "docs/feature-x.md", "# feature x\n"),
            ],
        )
        deadbeef = branch(2, "deadbeef", [("a branch named like a SHA", "deadbeef.txt", "beef\n")])
        pull = branch(11, "pull/7", [("PR #7: proposal", "src/app/pr7.py", "PR = 7\n")])

        old = main[2]
        git.set_ref("refs/heads/main", main[-1])
        git.set_ref("refs/heads/release-1.0", release)
        git.set_ref("refs/heads/feature/x", feature)
        git.set_ref("refs/heads/deadbeef", deadbeef)
        git.set_ref(f"refs/heads/{old[:7]}", release)
        git.set_ref("refs/pull/7/head", pull)
        git.git("tag", "-a", "-m", "release 1.0", "v1.0", main[5])
        git.git("tag", "light", main[7])

        refs: dict[str, str] = {}
        for line in git.git("show-ref", "--head", "-d").splitlines():
            sha, ref = line.split(" ", 1)
            refs[ref] = sha
        for k, sha in enumerate(reversed(main)):
            refs[f"main~{k}"] = sha
        refs.update(
            {
                "main": main[-1],
                "feature/x": feature,
                "release-1.0": release,
                "deadbeef": deadbeef,
                "v1.0": refs["refs/tags/v1.0"],
                "v1.0^{}": main[5],
                "light": main[7],
                "pull": pull,
                "old": old,
                "exec": main[4],
            }
        )
    return refs


# --------------------------------------------------------------------------------------------
# Submodules
# --------------------------------------------------------------------------------------------


def make_submodule_repos(root: Path) -> dict[str, str]:
    """Build bare super.git, sub.git and nested.git under `root`, ready to serve from root.

    super.git has the submodule "sub" at libs/sub with url ../sub.git; sub.git has the
    submodule "nested" at deps/nested with url ../nested.git. Both urls are relative, so they
    resolve against wherever super.git is served from (git://, http://, ssh://). Returns the
    tips of main: {"super": sha, "sub": sha, "nested": sha}.
    """
    with _bare(root / "nested.git") as git:
        nested = git.commit({"NESTED.md": _file(git, "nested submodule\n")}, "nested: initial")
        git.set_ref("refs/heads/main", nested)
    with _bare(root / "sub.git") as git:
        gitmodules = '[submodule "nested"]\n\tpath = deps/nested\n\turl = ../nested.git\n'
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "SUB.md": _file(git, "submodule\n"),
            "deps/nested": ("160000", nested),
        }
        sub = git.commit(tree, "sub: with nested")
        git.set_ref("refs/heads/main", sub)
    with _bare(root / "super.git") as git:
        gitmodules = '[submodule "sub"]\n\tpath = libs/sub\n\turl = ../sub.git\n'
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "README.md": _file(git, "superproject\n"),
            "libs/sub": ("160000", sub),
        }
        top = git.commit(tree, "super: with sub")
        git.set_ref("refs/heads/main", top)
    return {"super": top, "sub": sub, "nested": nested}


@dataclass(frozen=True)
class Submodule:
    """One .gitmodules entry of make_superproject: its name, path, url as written, and commit."""

    name: str
    path: str
    url: str
    commit: str


def make_leaf_repo(path: Path, text: str) -> str:
    """A bare repository at `path` whose main has one commit with README.md = text; its SHA."""
    with _bare(path) as git:
        tip = git.commit({"README.md": _file(git, text)}, f"leaf: {text.strip()}")
        git.set_ref("refs/heads/main", tip)
    return tip


def make_superproject(path: Path, submodules: Sequence[Submodule]) -> str:
    """A bare repository at `path` whose main has a .gitmodules naming each submodule's url
    verbatim (absolute, credentials and all) and a gitlink at each path; main's SHA.

    The urls name servers that only run during a test, so the repository is made then.
    """
    with _bare(path) as git:
        gitmodules = "".join(
            f'[submodule "{s.name}"]\n\tpath = {s.path}\n\turl = {s.url}\n' for s in submodules
        )
        tree: dict[str, tuple[str, str]] = {
            ".gitmodules": _file(git, gitmodules),
            "README.md": _file(git, "superproject\n"),
        }
        tree.update({s.path: ("160000", s.commit) for s in submodules})
        tip = git.commit(tree, "super: with submodules")
        git.set_ref("refs/heads/main", tip)
    return tip


# --------------------------------------------------------------------------------------------
# A big repository for benchmarks
# --------------------------------------------------------------------------------------------

_BIG_FILES = 4


def _big_commit(i: int, size: int, files: int = _BIG_FILES) -> bytes:
    """Commit number i of make_big_repo as a fast-import stream."""
    stamp = f"{_EPOCH + i * 60} +0000"
    message = f"big commit {i}\n".encode()
    data = hashlib.shake_256(b"stepkit-big-%d" % i).digest(size)
    readme = f"rewritten {i} times\n".encode()
    parts = [
        b"commit refs/heads/main\n",
        b"mark :%d\n" % i,
        f"author {_IDENT} {stamp}\ncommitter {_IDENT} {stamp}\n".encode(),
        b"data %d\n%b\n" % (len(message), message),
    ]
    if i > 1:
        parts.append(b"from :%d\n" % (i - 1))
    parts += [
        b"M 100644 inline data/part-%d.bin\n" % (i % files),
        b"data %d\n%b\n" % (len(data), data),
        b"M 100644 inline README.md\n",
        b"data %d\n%b\n" % (len(readme), readme),
    ]
    return b"".join(parts)


def make_big_repo(
    path: Path, *, commits: int = 300, mib: int = 30, files: int = _BIG_FILES
) -> dict[str, str]:
    """Create the bare repository `path` with `commits` commits and about `mib` MiB of history.

    Commit i rewrites data/part-(i mod files).bin (files defaults to 4) with mib*MiB/commits bytes of SHAKE-256 output
    seeded by i: deterministic, and incompressible, so the pack really is that big. The tip's
    tree holds only the last version of each of the 4 files, a small fraction of the history,
    which is what makes a shallow clone pay off. Written with one `git fast-import` run.
    Returns {"tip": main's tip, "old": commit 10 (or the first, with fewer commits), "first":
    the root commit, "refs/heads/main": the tip}.
    """
    if commits < 1 or mib < 0:
        raise ValueError("make_big_repo needs commits >= 1 and mib >= 0")
    size = (mib * 1024 * 1024) // commits
    old_index = min(10, commits)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stepkit-git-home-") as home:
        env = git_env(Path(home))
        run_git(["init", "-q", "--bare", "-b", "main", str(path)], env=env)
        marks = Path(home) / "marks"
        errors = Path(home) / "fast-import.err"
        # stderr goes to a file, not a pipe: nobody reads a pipe while the stream is written.
        with errors.open("wb") as err:
            proc = subprocess.Popen(
                ["git", "fast-import", "--quiet", f"--export-marks={marks}"],
                stdin=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=path,
            )
        assert proc.stdin is not None
        try:
            with proc.stdin:
                for i in range(1, commits + 1):
                    proc.stdin.write(_big_commit(i, size, files))
        except BrokenPipeError:
            pass  # fast-import died: its stderr says why, below
        if proc.wait(timeout=600) != 0:
            raise RuntimeError(f"git fast-import failed: {errors.read_text(errors='replace')}")
        by_mark = dict(line.split(" ", 1) for line in marks.read_text().splitlines())
    tip = by_mark[f":{commits}"].strip()
    return {
        "tip": tip,
        "old": by_mark[f":{old_index}"].strip(),
        "first": by_mark[":1"].strip(),
        "refs/heads/main": tip,
    }


# --------------------------------------------------------------------------------------------
# Hostile repositories (ADVERSARIAL items 12 and 13)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileRepo:
    """A hostile superproject under a serving root, and what lets a test prove it failed.

    `name` is its path under the root (serve the root); `payload_repo`:`payload_path` is the
    executable script (mode 100755 in main's tree) that creates `marker` if it ever runs, so a
    test can show the payload is live (run it by hand) and then that a fetch never ran it.
    """

    name: str
    bare: Path
    commit: str
    gitmodules: str
    marker: Path
    payload_repo: Path | None
    payload_path: str
    attack: str


def _hook(marker: Path) -> str:
    # Evidence, not damage: all the payload does is create the file the test looks for.
    return f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\n"


def make_evil_name_repo(root: Path, marker: Path) -> HostileRepo:
    """CVE-2018-11235: a submodule named "../../modules/evil" whose git dir the superproject ships.

    A submodule's git dir is .git/modules/<name>; with the name ../../modules/evil that is
    <worktree>/modules/evil, which this repository tracks: a complete git dir (HEAD, config,
    loose objects, refs) with hooks/post-checkout. A vulnerable git (< 2.17.1) cloning with
    --recurse-submodules finds that "existing" git dir, checks the submodule out from it and
    runs the attacker's hook. gitlink evil -> that git dir's commit; url ../evil-name-sub.git
    (served too, holding the same commit).

    git 2.39.5: `clone --recurse-submodules` exits 0 after "warning: ignoring suspicious
    submodule name: ../../modules/evil" (printed twice) and creates no submodule git dir at
    all; `git fsck` reports gitmodulesName, so transfer.fsckObjects=true refuses the clone.
    """
    sub_bare = root / "evil-name-sub.git"
    with _bare(sub_bare) as git:
        sub = git.commit({"README.md": _file(git, "an innocent submodule\n")}, "sub")
        git.set_ref("refs/heads/main", sub)
    # The shipped git dir is the submodule repository's own files, plus the hook, as blobs.
    shipped: dict[str, tuple[bytes, str]] = {
        "HEAD": (b"ref: refs/heads/main\n", "100644"),
        "config": (b"[core]\n\trepositoryformatversion = 0\n\tbare = false\n", "100644"),
        "refs/heads/main": (f"{sub}\n".encode(), "100644"),
        "hooks/post-checkout": (_hook(marker).encode(), "100755"),
    }
    for obj in sorted((sub_bare / "objects").glob("[0-9a-f][0-9a-f]/*")):
        shipped[f"objects/{obj.parent.name}/{obj.name}"] = (obj.read_bytes(), "100644")
    name = "evil-name.git"
    gitmodules = '[submodule "../../modules/evil"]\n\tpath = evil\n\turl = ../evil-name-sub.git\n'
    with _bare(root / name) as git:
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "README.md": _file(git, "CVE-2018-11235\n"),
            "evil": ("160000", sub),
            **{f"modules/evil/{p}": _file(git, data, mode) for p, (data, mode) in shipped.items()},
        }
        top = git.commit(tree, "submodule name escapes .git/modules")
        git.set_ref("refs/heads/main", top)
    return HostileRepo(
        name=name,
        bare=root / name,
        commit=top,
        gitmodules=gitmodules,
        marker=marker,
        payload_repo=root / name,
        payload_path="modules/evil/hooks/post-checkout",
        attack="CVE-2018-11235: submodule name ../../modules/evil points its git dir at "
        "attacker-tracked files, whose post-checkout hook runs",
    )


def make_dash_url_repo(root: Path, marker: Path, *, url: str = "-a./foo") -> HostileRepo:
    """CVE-2018-17456: a submodule url that git clone would read as an option.

    The default url "-a./foo" is the harmless probe of ADVERSARIAL item 12. With
    url="-u./payload" it is the real exploit: a vulnerable git (< 2.19.1) ran
    `git clone -u./payload <path>`, i.e. --upload-pack=./payload, from the superproject's
    work tree, where this repository tracks an executable `payload` (and `foo`) that creates
    the marker. gitlink sub -> a commit of dash-url-sub.git (served too). The repository is
    dash-url.git; with a url other than the default it is dash-url-<sha256 of url>.git, so
    several variants can share one root.

    git 2.39.5: `clone --recurse-submodules` exits 128 after "warning: ignoring
    'submodule.sub.url' which may be interpreted as a command-line option: -a./foo" and
    "fatal: No url found for submodule path 'sub' in .gitmodules"; fsck: gitmodulesUrl.
    """
    sub_bare = root / "dash-url-sub.git"
    if not sub_bare.exists():
        with _bare(sub_bare) as git:
            sub = git.commit({"README.md": _file(git, "the real submodule\n")}, "sub")
            git.set_ref("refs/heads/main", sub)
    sub = run_git(["rev-parse", "refs/heads/main"], env=git_env(root), cwd=sub_bare).stdout.strip()
    suffix = "" if url == "-a./foo" else "-" + hashlib.sha256(url.encode()).hexdigest()[:12]
    name = f"dash-url{suffix}.git"
    gitmodules = f'[submodule "sub"]\n\tpath = sub\n\turl = {url}\n'
    with _bare(root / name) as git:
        script = _file(git, _hook(marker), "100755")
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "README.md": _file(git, "CVE-2018-17456\n"),
            "payload": script,
            "foo": script,
            "sub": ("160000", sub),
        }
        top = git.commit(tree, "submodule url that looks like an option")
        git.set_ref("refs/heads/main", top)
    return HostileRepo(
        name=name,
        bare=root / name,
        commit=top,
        gitmodules=gitmodules,
        marker=marker,
        payload_repo=root / name,
        payload_path="payload",
        attack=f"CVE-2018-17456: submodule url {url!r} is passed to git clone as an option",
    )


def make_newline_url_repo(root: Path, marker: Path) -> HostileRepo:
    """CVE-2020-5260: a submodule url whose %0a injects a line into the credential protocol.

    url ./%0ahost=example.com/foo.git is relative, so it becomes <superproject url>/%0ahost=
    example.com/foo.git. A vulnerable git (< 2.26.1) decoded the %0a when it asked its
    credential helper for that url, adding the line "host=example.com": the helper answered
    with the example.com password, and git sent it to the superproject's server. There is no
    hook: the proof is that a password stored for example.com never reaches the server (see
    GitHttpServer.auth_log) and `marker` stays unused (payload_repo is None).

    git 2.39.5, `clone --recurse-submodules` exits 1 (after one retry of the submodule): over
    git:// "fatal: newline is forbidden in git:// hosts and repo paths"; over http "warning:
    url contains a newline in its path component" then "fatal: credential url cannot be
    parsed", before any request for the submodule. fsck: gitmodulesUrl.
    """
    name = "newline-url.git"
    gitmodules = '[submodule "sub"]\n\tpath = sub\n\turl = ./%0ahost=example.com/foo.git\n'
    with _bare(root / name) as git:
        sub = git.commit({"README.md": _file(git, "unused\n")}, "a commit for the gitlink")
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "README.md": _file(git, "CVE-2020-5260\n"),
            "sub": ("160000", sub),
        }
        top = git.commit(tree, "submodule url with an encoded newline")
        git.set_ref("refs/heads/main", top)
    return HostileRepo(
        name=name,
        bare=root / name,
        commit=top,
        gitmodules=gitmodules,
        marker=marker,
        payload_repo=None,
        payload_path="",
        attack="CVE-2020-5260: %0a in a submodule url injects host=example.com into "
        "the credential helper protocol",
    )


def make_cr_path_repo(root: Path, marker: Path) -> HostileRepo:
    """CVE-2025-48384: submodule path "sub\\r" plus a symlink sub -> .git/modules/sub/hooks.

    The recipe of git's t7450 "submodule must not checkout into different directory".
    .gitmodules has path = "sub\\r" (quoted, a real CR before the closing quote); the gitlink
    is at "sub\\r"; "sub" is a symlink to .git/modules/sub/hooks; the submodule repository
    (cr-path-sub.git) has an executable post-checkout at its top level. A vulnerable git wrote
    core.worktree = ../../../sub\\r to the submodule's config without quotes, read it back with
    the trailing CR stripped, checked the submodule out through the symlink into its own hooks
    directory and ran the new post-checkout hook.

    Upstream 2.39.5 is vulnerable (the fix is in 2.43.7, 2.44.4, ... 2.50.1); Debian's
    1:2.39.5-0+deb12u3 carries it. With that git, `clone --recurse-submodules` exits 0,
    writes core.worktree = "../../../sub\r" quoted, checks the submodule out into "sub\r" and
    runs no hook. `git fsck` finds nothing wrong here, so transfer.fsckObjects is no defence:
    only a patched git, or not recursing into submodules, is.
    """
    sub_bare = root / "cr-path-sub.git"
    with _bare(sub_bare) as git:
        sub = git.commit({"post-checkout": _file(git, _hook(marker), "100755")}, "hook")
        git.set_ref("refs/heads/main", sub)
    name = "cr-path.git"
    gitmodules = '[submodule "sub"]\n\tpath = "sub\r"\n\turl = ../cr-path-sub.git\n'
    with _bare(root / name) as git:
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "README.md": _file(git, "CVE-2025-48384\n"),
            "sub\r": ("160000", sub),
            "sub": _file(git, ".git/modules/sub/hooks", "120000"),
        }
        top = git.commit(tree, "submodule path ending in CR")
        git.set_ref("refs/heads/main", top)
    return HostileRepo(
        name=name,
        bare=root / name,
        commit=top,
        gitmodules=gitmodules,
        marker=marker,
        payload_repo=sub_bare,
        payload_path="post-checkout",
        attack="CVE-2025-48384: path 'sub\\r' is written unquoted to core.worktree, so the "
        "submodule is checked out through the symlink sub into .git/modules/sub/hooks",
    )


def _hook_repo(path: Path, marker: Path) -> str:
    """The submodule of git's t7406 CVE-2024-32002 test: y/hooks/post-checkout, executable."""
    if not path.exists():
        with _bare(path) as git:
            hook = git.commit({"y/hooks/post-checkout": _file(git, _hook(marker), "100755")}, "x")
            git.set_ref("refs/heads/main", hook)
    return run_git(["rev-parse", "refs/heads/main"], env=git_env(path), cwd=path).stdout.strip()


def make_case_collision_repo(root: Path, marker: Path) -> HostileRepo:
    """CVE-2024-32002, exactly git's t7406 recipe: submodule x/y at A/modules/x, symlink a -> .git.

    The submodule (name x/y, url ../case-collision-hook.git) has its git dir at
    .git/modules/x/y and tracks y/hooks/post-checkout. On a case-insensitive file system the
    symlink `a` and the directory `A` are one entry, so checking the submodule out into
    A/modules/x writes into .git/modules/x, i.e. y/hooks/post-checkout lands in the submodule's
    own hooks directory and runs. Patched git refuses with "directory not empty". On a
    case-sensitive file system (as here) `A` and `a` are distinct and the clone is inert: the
    fetcher must still cope with it (symlink a -> .git in the work tree, no marker). For the
    variant that really goes through the symlink here, see make_symlinked_path_repo.

    No case-insensitive file system can be had on this machine: the kernel has no casefold
    support (tmpfs -o casefold and mkfs.ext4 -O casefold mounts fail) and vfat is not
    available. git 2.39.5 clones this with exit 0 and fsck finds nothing wrong.
    """
    hook_bare = root / "case-collision-hook.git"
    hook = _hook_repo(hook_bare, marker)
    name = "case-collision.git"
    gitmodules = '[submodule "x/y"]\n\tpath = A/modules/x\n\turl = ../case-collision-hook.git\n'
    with _bare(root / name) as git:
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "A/modules/x": ("160000", hook),
            "a": _file(git, ".git", "120000"),
        }
        top = git.commit(tree, "submodule under A/, symlink a -> .git")
        git.set_ref("refs/heads/main", top)
    return HostileRepo(
        name=name,
        bare=root / name,
        commit=top,
        gitmodules=gitmodules,
        marker=marker,
        payload_repo=hook_bare,
        payload_path="y/hooks/post-checkout",
        attack="CVE-2024-32002: on a case-insensitive fs A/modules/x is a/modules/x = "
        ".git/modules/x, so the submodule's checkout writes its own hook",
    )


def make_symlinked_path_repo(root: Path, marker: Path) -> HostileRepo:
    """CVE-2024-32002 for a case-sensitive fs: the tree has both A -> .git and A/modules/x.

    The closest variant of make_case_collision_repo that exercises the same path without case
    folding: the root tree holds two entries named "A", a symlink to .git and a directory
    with the gitlink modules/x (a tree git's own fsck calls duplicateEntries; only plumbing
    can write it). If a checkout created the symlink and then let the submodule's checkout
    follow it, A/modules/x would be .git/modules/x and the hook y/hooks/post-checkout would
    land in .git/modules/x/y/hooks, the git dir of submodule x/y, and run.

    git 2.39.5 (plain or recursive clone, exit 0): the checkout keeps the directory A and
    silently drops the symlink (the index has no "A"; `git status` shows "D  A"), so the
    submodule goes into a real A/modules/x. fsck: duplicateEntries, so transfer.fsckObjects
    refuses the clone.
    """
    hook_bare = root / "case-collision-hook.git"
    hook = _hook_repo(hook_bare, marker)
    name = "symlinked-path.git"
    gitmodules = '[submodule "x/y"]\n\tpath = A/modules/x\n\turl = ../case-collision-hook.git\n'
    with _bare(root / name) as git:
        tree = {
            ".gitmodules": _file(git, gitmodules),
            "A": _file(git, ".git", "120000"),
            "A/modules/x": ("160000", hook),
        }
        top = git.commit(tree, "symlink A -> .git and submodule A/modules/x")
        git.set_ref("refs/heads/main", top)
    return HostileRepo(
        name=name,
        bare=root / name,
        commit=top,
        gitmodules=gitmodules,
        marker=marker,
        payload_repo=hook_bare,
        payload_path="y/hooks/post-checkout",
        attack="CVE-2024-32002 (case-sensitive variant): a submodule path through a symlink "
        "A -> .git, in a tree with duplicate entries",
    )


def make_hostile_repos(root: Path, marker: Path) -> list[HostileRepo]:
    """Every hostile repository above under one serving root, all sharing one marker."""
    return [
        make_evil_name_repo(root, marker),
        make_dash_url_repo(root, marker),
        make_dash_url_repo(root, marker, url="-u./payload"),
        make_newline_url_repo(root, marker),
        make_cr_path_repo(root, marker),
        make_case_collision_repo(root, marker),
        make_symlinked_path_repo(root, marker),
    ]
