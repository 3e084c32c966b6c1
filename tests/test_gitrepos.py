"""Prove the git fetcher's peers and fixture repositories with plain git: daemon, caps, repos, attacks, faults."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gitrepos import (
    HostileRepo,
    Submodule,
    make_big_repo,
    make_case_collision_repo,
    make_cr_path_repo,
    make_dash_url_repo,
    make_evil_name_repo,
    make_hostile_repos,
    make_leaf_repo,
    make_newline_url_repo,
    make_rich_repo,
    make_submodule_repos,
    make_superproject,
    make_symlinked_path_repo,
    set_server_caps,
)
from tests.peers import (
    LOOPBACK,
    EndlessGitHttpServer,
    FailingHttpProxy,
    FlakyProxy,
    GitDaemon,
    GitHttpServer,
    git_env,
    make_repo,
    run_git,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _bounded(args: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run git with a deadline; return (exit status or None if it had to be killed, stderr).

    git runs in a process group of its own, so the kill also ends git-remote-http and other
    helpers it started, which would otherwise hang on as orphans.
    """
    proc = subprocess.Popen(
        ["git", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        return None, err


def _git_bytes(args: list[str], env: dict[str, str], cwd: Path) -> bytes:
    # Bytes, not text: text mode turns the CR of "sub\r" into a newline.
    return subprocess.run(
        ["git", *args], env=env, cwd=cwd, capture_output=True, check=True, timeout=60
    ).stdout


def _fetch(
    url: str, what: str, env: dict[str, str], dest: Path, *, version: str, depth: bool = False
) -> subprocess.CompletedProcess[str]:
    """`git fetch url what` into a new empty repository, with the given protocol version."""
    run_git(["init", "-q", str(dest)], env=env)
    args = ["-c", f"protocol.version={version}", "fetch", "-q", "--no-tags"]
    if depth:
        args.append("--depth=1")
    return run_git([*args, url, what], env=env, cwd=dest, check=False)


def _config_blob(repo: Path, commit: str, env: dict[str, str]) -> dict[str, str]:
    """.gitmodules of commit read the way git reads it, with every byte of each value kept."""
    raw = _git_bytes(["config", "--blob", f"{commit}:.gitmodules", "--list", "-z"], env, repo)
    pairs = (entry.split("\n", 1) for entry in raw.decode().split("\0") if entry)
    return {key: value for key, value in pairs}


@contextlib.contextmanager
def _serve(transport: str, root: Path) -> Iterator[GitDaemon | GitHttpServer]:
    server: GitDaemon | GitHttpServer = (
        GitDaemon(root) if transport == "daemon" else GitHttpServer(root, {})
    )
    with server:
        yield server


# --------------------------------------------------------------------------------------------
# git daemon
# --------------------------------------------------------------------------------------------


def test_git_daemon_serves_v0_and_v2(tmp_path: Path, client_env: dict[str, str]) -> None:
    srv = tmp_path / "srv"
    refs = make_repo(tmp_path / "src", commits=2, bare_copy_to=srv / "x.git")
    with GitDaemon(srv) as daemon:
        assert daemon.url_for("x.git") == f"git://{LOOPBACK}:{daemon.port}/x.git"
        for version in ("0", "2"):
            dest = tmp_path / f"clone-v{version}"
            run_git(
                [
                    "-c",
                    f"protocol.version={version}",
                    "clone",
                    "-q",
                    daemon.url_for("x.git"),
                    str(dest),
                ],
                env=client_env,
            )
            head = run_git(["rev-parse", "HEAD"], env=client_env, cwd=dest).stdout.strip()
            assert head == refs["refs/heads/main"]
        missing = run_git(["ls-remote", daemon.url_for("nope.git")], env=client_env, check=False)
        # --informative-errors: the client learns why, not just that the line dropped.
        assert missing.returncode != 0
        assert "no such repository: /nope.git" in missing.stderr
        assert daemon.requests() == ["/x.git", "/x.git", "/nope.git"]
        # Only a v2 client says which protocol it wants (ls-remote too: v2 is the default);
        # v0 sends no such attribute.
        assert daemon.protocols() == ["version=2", "version=2"]
        port = daemon.port
    assert "Request upload-pack for '/x.git'" in daemon.log_text()  # kept after exit
    with pytest.raises(OSError), socket.create_connection((LOOPBACK, port), timeout=2):
        pass


class _BrokenGitDaemon(GitDaemon):
    def _argv(self, port: int) -> list[str]:
        return [*super()._argv(port), "--no-such-option"]


def test_git_daemon_start_failures_are_explained(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    with (
        pytest.raises(RuntimeError, match=r"(?s)git daemon exited.*log tail.*usage: git daemon"),
        _BrokenGitDaemon(tmp_path / "srv"),
    ):
        pass
    with pytest.raises(RuntimeError, match="not a directory"), GitDaemon(tmp_path / "no"):
        pass


# --------------------------------------------------------------------------------------------
# server capabilities
# --------------------------------------------------------------------------------------------


def test_set_server_caps_writes_allow_any_first(tmp_path: Path, client_env: dict[str, str]) -> None:
    bare = tmp_path / "r.git"
    make_repo(tmp_path / "src", commits=1, bare_copy_to=bare)
    # Written in the wrong order by hand first: set_server_caps must not just update in place.
    run_git(["config", "uploadpack.allowReachableSHA1InWant", "true"], env=client_env, cwd=bare)
    run_git(["config", "uploadpack.allowAnySHA1InWant", "false"], env=client_env, cwd=bare)
    for sha_in_want in (True, False, True):
        set_server_caps(bare, sha_in_want=sha_in_want, filters=not sha_in_want)
    listed = run_git(["config", "--get-regexp", "^uploadpack\\."], env=client_env, cwd=bare)
    assert listed.stdout.splitlines() == [
        "uploadpack.allowanysha1inwant false",
        "uploadpack.allowtipsha1inwant true",
        "uploadpack.allowreachablesha1inwant true",
        "uploadpack.allowfilter false",
    ]


@pytest.mark.parametrize("transport", ["daemon", "http"])
def test_sha_in_want_binds_protocol_v0_only(
    tmp_path: Path, client_env: dict[str, str], transport: str
) -> None:
    srv = tmp_path / "srv"
    bare = srv / "rich.git"
    refs = make_rich_repo(bare)
    # A commit no ref reaches, as a force-push or a deleted branch leaves behind.
    dangling_env = {**client_env, "GIT_COMMITTER_DATE": "1700000000 +0000"}
    dangling_env["GIT_AUTHOR_DATE"] = dangling_env["GIT_COMMITTER_DATE"]
    dangling = run_git(
        ["commit-tree", f"{refs['main']}^{{tree}}", "-m", "dangling"], env=dangling_env, cwd=bare
    ).stdout.strip()
    absent = "1" * 40
    n = iter(range(100))

    def fetch(what: str, version: str, depth: bool = False) -> subprocess.CompletedProcess[str]:
        return _fetch(url, what, client_env, tmp_path / f"c{next(n)}", version=version, depth=depth)

    with _serve(transport, srv) as server:
        url = server.url_for("rich.git")

        set_server_caps(bare, sha_in_want=False, filters=False)
        for depth in (False, True):
            v0 = fetch(refs["old"], "0", depth)
            # 1 from git:// (fetch-pack in-process), 128 over http (via git-remote-http).
            assert v0.returncode == (1 if transport == "daemon" else 128)
            assert f"Server does not allow request for unadvertised object {refs['old']}" in (
                v0.stderr
            )
            # The finding that matters for design: protocol v2 serves it all the same.
            assert fetch(refs["old"], "2", depth).returncode == 0
        assert fetch(refs["pull"], "0").returncode == 0  # the tip of an advertised ref
        v2_dangling = fetch(dangling, "2")
        assert v2_dangling.returncode == 0, v2_dangling.stderr  # not even reachability counts

        set_server_caps(bare, sha_in_want=True, filters=False)
        assert fetch(refs["old"], "0", True).returncode == 0
        v0_dangling = fetch(dangling, "0")
        assert v0_dangling.returncode == 128
        assert f"remote error: upload-pack: not our ref {dangling}" in v0_dangling.stderr
        assert fetch(dangling, "2").returncode == 0
        v2_absent = fetch(absent, "2")
        assert v2_absent.returncode == 128
        assert f"remote error: upload-pack: not our ref {absent}" in v2_absent.stderr


@pytest.mark.parametrize("version", ["0", "2"])
def test_filter_toggle_falls_back_to_a_full_clone(
    tmp_path: Path, client_env: dict[str, str], version: str
) -> None:
    srv = tmp_path / "srv"
    bare = srv / "rich.git"
    make_rich_repo(bare)

    def clone(name: str) -> tuple[str, list[str]]:
        dest = tmp_path / name
        args = ["-c", f"protocol.version={version}", "clone", "--no-checkout", "--filter=blob:none"]
        proc = run_git([*args, daemon.url_for("rich.git"), str(dest)], env=client_env)
        missing = run_git(
            ["rev-list", "--objects", "--missing=print", "--all"], env=client_env, cwd=dest
        ).stdout.split()
        config = run_git(
            ["config", "--get-regexp", "^remote\\.origin\\.p"], env=client_env, cwd=dest
        )
        # Either way the clone calls itself partial: the config cannot tell the difference.
        assert config.stdout.splitlines() == [
            "remote.origin.promisor true",
            "remote.origin.partialclonefilter blob:none",
        ]
        return proc.stderr, [o for o in missing if o.startswith("?")]

    with GitDaemon(srv) as daemon:
        set_server_caps(bare, sha_in_want=False, filters=False)
        err, missing = clone("unfiltered")
        assert "warning: filtering not recognized by server, ignoring" in err
        assert missing == []  # every blob came anyway

        set_server_caps(bare, sha_in_want=False, filters=True)
        err, missing = clone("filtered")
        assert "filtering not recognized" not in err
        assert missing, "blob:none left every blob on the server"


# --------------------------------------------------------------------------------------------
# repositories
# --------------------------------------------------------------------------------------------


def test_make_rich_repo_has_every_revision_form(tmp_path: Path, client_env: dict[str, str]) -> None:
    bare = tmp_path / "srv" / "rich.git"
    refs = make_rich_repo(bare)
    assert refs == make_rich_repo(tmp_path / "again.git")
    # Pinned: a commit's SHA depends only on its content, so this holds on every machine.
    assert refs["main"] == "40d09e5e3fe89140cffabdb32344973980099bc6"

    def git(*args: str) -> str:
        return run_git(list(args), env=client_env, cwd=bare).stdout.strip()

    assert git("symbolic-ref", "HEAD") == "refs/heads/main"
    assert git("rev-list", "--count", "main") == "12"
    for name in ("main", "feature/x", "release-1.0", "deadbeef"):
        assert git("rev-parse", f"refs/heads/{name}") == refs[name] == refs[f"refs/heads/{name}"]
    assert git("cat-file", "-t", "v1.0") == "tag"
    assert git("rev-parse", "v1.0^{commit}") == refs["v1.0^{}"] == refs["main~6"]
    assert git("cat-file", "-t", "refs/tags/light") == "commit"
    assert refs["light"] == refs["main~4"]

    # refs/pull/7/head: on no branch and no tag, only on its own ref.
    contains = git("for-each-ref", "--contains", refs["pull"], "--format=%(refname)")
    assert contains.splitlines() == ["refs/pull/7/head"]
    assert git("merge-base", "--is-ancestor", refs["main~1"], refs["pull"]) == ""
    # "old": on main, a tip of nothing.
    assert refs["old"] == refs["main~9"]
    assert refs["old"] not in {sha for ref, sha in refs.items() if ref.startswith("refs/")}
    # A branch named like the old commit's abbreviated SHA wins, with git's own warning.
    short = run_git(["rev-parse", refs["old"][:7]], env=client_env, cwd=bare)
    assert short.stdout.strip() == refs["release-1.0"]
    assert f"refname '{refs['old'][:7]}' is ambiguous" in short.stderr

    exec_tree = git("ls-tree", refs["exec"], "bin/tool", "latest-docs").splitlines()
    assert [line.split()[0] for line in exec_tree] == ["100755", "120000"]
    assert git("cat-file", "blob", f"{refs['exec']}:latest-docs") == "docs/index.md"
    top = git("ls-tree", "--name-only", "main").splitlines()
    assert {"docs", "src", "README.md", "LICENSE", "Makefile", "VERSION", "bin"} <= set(top)
    assert git("ls-tree", "--name-only", "main", "src/").splitlines() == ["src/app", "src/lib"]

    with GitDaemon(bare.parent) as daemon:
        clone = tmp_path / "clone"
        run_git(["clone", "-q", daemon.url_for("rich.git"), str(clone)], env=client_env)
        # A clone takes branches and tags only: the pull commit is not there...
        gone = run_git(["cat-file", "-e", refs["pull"]], env=client_env, cwd=clone, check=False)
        assert gone.returncode != 0
        # ...until it is fetched by its ref.
        run_git(["fetch", "-q", "origin", "refs/pull/7/head"], env=client_env, cwd=clone)
        fetched = run_git(["rev-parse", "FETCH_HEAD"], env=client_env, cwd=clone).stdout.strip()
        assert fetched == refs["pull"]


def test_make_submodule_repos_clone_recursively(tmp_path: Path, client_env: dict[str, str]) -> None:
    srv = tmp_path / "srv"
    shas = make_submodule_repos(srv)
    assert sorted(p.name for p in srv.iterdir()) == ["nested.git", "sub.git", "super.git"]
    with GitDaemon(srv) as daemon:
        clone = tmp_path / "clone"
        run_git(
            ["clone", "-q", "--recurse-submodules", daemon.url_for("super.git"), str(clone)],
            env=client_env,
        )
        base = daemon.url
    assert (clone / "libs/sub/SUB.md").read_text() == "submodule\n"
    assert (clone / "libs/sub/deps/nested/NESTED.md").read_text() == "nested submodule\n"
    status = run_git(["submodule", "status", "--recursive"], env=client_env, cwd=clone).stdout
    assert f" {shas['sub']} libs/sub" in status
    assert f" {shas['nested']} libs/sub/deps/nested" in status
    # The relative urls resolved against the daemon's address.
    url = run_git(["config", "submodule.sub.url"], env=client_env, cwd=clone).stdout.strip()
    assert url == f"{base}/sub.git"


def test_make_superproject_with_credentials_in_a_submodule_url(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """The fixture, and the premise of git-init's handling: plain git takes a submodule url's
    credentials from .gitmodules into .git/config and the submodule's own config."""
    srv = tmp_path / "srv"
    leaf = make_leaf_repo(srv / "lib.git", "leaf\n")
    with GitHttpServer(srv, {"lib.git": ("bob", "LEAF-TOKEN")}) as server:
        url = server.url_for("lib.git").replace("http://", "http://bob:LEAF-TOKEN@")
        tip = make_superproject(srv / "super.git", [Submodule("lib", "deps/lib", url, leaf)])
        clone = tmp_path / "clone"
        run_git(
            ["clone", "-q", "--recurse-submodules", server.url_for("super.git"), str(clone)],
            env=client_env,
        )
        assert ("lib.git", "bob") in server.granted
    assert run_git(["rev-parse", "HEAD"], env=client_env, cwd=clone).stdout.strip() == tip
    assert (clone / "deps/lib/README.md").read_text() == "leaf\n"
    assert "LEAF-TOKEN" in (clone / ".git" / "config").read_text()
    assert "LEAF-TOKEN" in (clone / ".git" / "modules" / "lib" / "config").read_text()


def test_make_big_repo_small(tmp_path: Path, client_env: dict[str, str]) -> None:
    bare = tmp_path / "big.git"
    shas = make_big_repo(bare, commits=24, mib=2)
    assert shas == make_big_repo(tmp_path / "again.git", commits=24, mib=2)

    def git(*args: str) -> str:
        return run_git(list(args), env=client_env, cwd=bare).stdout.strip()

    assert git("rev-parse", "main") == shas["tip"] == shas["refs/heads/main"]
    assert git("rev-list", "--count", "main") == "24"
    assert git("rev-list", "--count", shas["old"]) == "10"
    assert git("rev-list", "--max-parents=0", "main") == shas["first"]
    stats = dict(line.split(": ", 1) for line in git("count-objects", "-v").splitlines())
    history_kib = int(stats["size-pack"])
    assert history_kib > 2 * 1024 * 0.95  # random content: the pack does not shrink
    tip_bytes = sum(
        int(line.split()[3]) for line in git("ls-tree", "-r", "-l", "main").splitlines()
    )
    assert tip_bytes * 4 < history_kib * 1024


# --------------------------------------------------------------------------------------------
# hostile repositories
# --------------------------------------------------------------------------------------------

# What each .gitmodules says, read back the way git reads it (--blob --list).
_EXPECTED_GITMODULES = {
    "evil-name.git": {
        "submodule.../../modules/evil.path": "evil",
        "submodule.../../modules/evil.url": "../evil-name-sub.git",
    },
    "dash-url.git": {"submodule.sub.path": "sub", "submodule.sub.url": "-a./foo"},
    "dash-url -u": {"submodule.sub.path": "sub", "submodule.sub.url": "-u./payload"},
    "newline-url.git": {
        "submodule.sub.path": "sub",
        "submodule.sub.url": "./%0ahost=example.com/foo.git",
    },
    "cr-path.git": {"submodule.sub.path": "sub\r", "submodule.sub.url": "../cr-path-sub.git"},
    "case-collision.git": {
        "submodule.x/y.path": "A/modules/x",
        "submodule.x/y.url": "../case-collision-hook.git",
    },
    "symlinked-path.git": {
        "submodule.x/y.path": "A/modules/x",
        "submodule.x/y.url": "../case-collision-hook.git",
    },
}

# What `git fsck` on the server says; "" means fsck finds nothing wrong.
_FSCK = {
    "evil-name.git": "gitmodulesName: disallowed submodule name: ../../modules/evil",
    "dash-url.git": "gitmodulesUrl: disallowed submodule url: -a./foo",
    "dash-url -u": "gitmodulesUrl: disallowed submodule url: -u./payload",
    "newline-url.git": "gitmodulesUrl: disallowed submodule url: ./%0ahost=example.com/foo.git",
    "cr-path.git": "",
    "case-collision.git": "",
    "symlinked-path.git": "duplicateEntries: contains duplicate file entries",
}


def _kind(repo: HostileRepo) -> str:
    # make_dash_url_repo names its non-default variants by a hash of the url.
    return "dash-url -u" if repo.name.startswith("dash-url-") else repo.name


@pytest.fixture
def hostile(tmp_path: Path) -> list[HostileRepo]:
    return make_hostile_repos(tmp_path / "srv", tmp_path / "marker" / "PWNED")


def test_hostile_repos_carry_live_payloads(
    tmp_path: Path, client_env: dict[str, str], hostile: list[HostileRepo]
) -> None:
    by_name = {repo.name: repo for repo in hostile}
    assert {_kind(repo) for repo in hostile} == set(_EXPECTED_GITMODULES) == set(_FSCK)
    for repo in hostile:
        kind = _kind(repo)
        shown = _git_bytes(
            ["cat-file", "blob", f"{repo.commit}:.gitmodules"], client_env, repo.bare
        )
        assert shown == repo.gitmodules.encode(), kind
        assert _config_blob(repo.bare, repo.commit, client_env) == _EXPECTED_GITMODULES[kind]
        fsck = run_git(["fsck", "--no-dangling"], env=client_env, cwd=repo.bare, check=False)
        if _FSCK[kind]:
            assert fsck.returncode != 0 and _FSCK[kind] in fsck.stderr, kind
        else:
            assert fsck.returncode == 0, f"{kind}: {fsck.stderr}"
        if repo.payload_repo is None:
            continue
        # Positive control: the payload is executable in the tree and really makes the marker,
        # so "marker absent" after a fetch means something.
        mode = run_git(
            ["ls-tree", "main", "--", repo.payload_path], env=client_env, cwd=repo.payload_repo
        ).stdout.split()[0]
        assert mode == "100755", repo.name
        script = tmp_path / "payload.sh"
        script.write_bytes(
            _git_bytes(
                ["cat-file", "blob", f"main:{repo.payload_path}"], client_env, repo.payload_repo
            )
        )
        script.chmod(0o755)
        repo.marker.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(script)], check=True, timeout=30)
        assert repo.marker.exists(), repo.name
        repo.marker.unlink()

    def tree(name: str) -> list[bytes]:
        repo = by_name[name]
        return _git_bytes(["ls-tree", "-z", repo.commit], client_env, repo.bare).split(b"\0")

    cr = tree("cr-path.git")
    assert any(e.startswith(b"160000 commit ") and e.endswith(b"\tsub\r") for e in cr)
    assert any(e.startswith(b"120000 blob ") and e.endswith(b"\tsub") for e in cr)
    assert any(
        e.startswith(b"120000 blob ") and e.endswith(b"\ta") for e in tree("case-collision.git")
    )
    names = [e.split(b"\t", 1)[1] for e in tree("symlinked-path.git") if e]
    assert names.count(b"A") == 2  # a symlink and a directory of the same name
    hook = by_name["evil-name.git"]
    shipped = run_git(
        ["ls-tree", "-r", "--name-only", hook.commit, "modules/evil/"],
        env=client_env,
        cwd=hook.bare,
    ).stdout.split()
    assert {"modules/evil/HEAD", "modules/evil/config", "modules/evil/refs/heads/main"} <= set(
        shipped
    )


def test_git_refuses_or_defuses_hostile_submodules(
    tmp_path: Path, client_env: dict[str, str], hostile: list[HostileRepo]
) -> None:
    marker = hostile[0].marker
    # Exit status and the line git 2.39.5 prints for `clone --recurse-submodules`.
    expected = {
        "evil-name.git": (0, "warning: ignoring suspicious submodule name: ../../modules/evil"),
        "dash-url.git": (
            128,
            "warning: ignoring 'submodule.sub.url' which may be interpreted as a command-line "
            "option: -a./foo",
        ),
        "dash-url -u": (128, "may be interpreted as a command-line option: -u./payload"),
        "newline-url.git": (1, "fatal: newline is forbidden in git:// hosts and repo paths"),
        "cr-path.git": (0, ""),
        "case-collision.git": (0, ""),
        "symlinked-path.git": (0, ""),
    }
    with GitDaemon(hostile[0].bare.parent) as daemon:
        for repo in hostile:
            kind = _kind(repo)
            plain = tmp_path / "plain" / repo.name
            run_git(["clone", "-q", daemon.url_for(repo.name), str(plain)], env=client_env)
            # Without --recurse-submodules no submodule is even cloned.
            assert not (plain / ".git" / "modules").exists(), kind

            fsck_args = ["-c", "transfer.fsckObjects=true", "clone", "-q"]
            fsck_dest = tmp_path / "fsck" / repo.name
            fsck = run_git(
                [*fsck_args, daemon.url_for(repo.name), str(fsck_dest)], env=client_env, check=False
            )
            if _FSCK[kind]:
                # fsck on transfer refuses the objects before anything is checked out.
                assert fsck.returncode == 128, kind
                assert f"{_FSCK[kind]}\nfatal: fsck error in packed object" in fsck.stderr, kind
            else:
                assert fsck.returncode == 0, f"{kind}: {fsck.stderr}"

            rec = tmp_path / "recursive" / repo.name
            proc = run_git(
                ["clone", "--recurse-submodules", daemon.url_for(repo.name), str(rec)],
                env=client_env,
                check=False,
            )
            status, line = expected[kind]
            assert proc.returncode == status, f"{kind}: {proc.stderr}"
            assert line in proc.stderr, kind
            assert not marker.exists(), f"{kind}: the payload ran"
    # The ignored name leaves no submodule git dir anywhere, least of all the shipped one.
    evil = tmp_path / "recursive" / "evil-name.git"
    assert not (evil / ".git" / "modules").exists()
    assert not (evil / "modules/evil/index").exists()

    # CVE-2025-48384: fixed git quotes the CR, so the submodule lands in "sub\r" and the
    # symlink "sub" still points at an untouched hooks directory.
    cr = tmp_path / "recursive" / "cr-path.git"
    assert (cr / "sub\r" / "post-checkout").is_file()
    assert os.readlink(cr / "sub") == ".git/modules/sub/hooks"
    assert not (cr / ".git/modules/sub/hooks/post-checkout").exists()
    worktree = (cr / ".git/modules/sub/config").read_bytes()
    assert b'worktree = "../../../sub\r"' in worktree

    # CVE-2024-32002 on a case-sensitive fs: A and a are two things; the hook is a plain file.
    case = tmp_path / "recursive" / "case-collision.git"
    assert os.readlink(case / "a") == ".git"
    assert (case / "A/modules/x/y/hooks/post-checkout").is_file()
    assert not (case / ".git/modules/x/y/hooks/post-checkout").exists()

    # Duplicate "A": checkout keeps the directory, silently drops the symlink.
    sym = tmp_path / "recursive" / "symlinked-path.git"
    assert (sym / "A").is_dir() and not (sym / "A").is_symlink()
    listed = run_git(["ls-files"], env=client_env, cwd=sym).stdout.split()
    assert listed == [".gitmodules", "A/modules/x"]


def test_newline_url_never_leaks_a_credential(tmp_path: Path, client_env: dict[str, str]) -> None:
    srv = tmp_path / "srv"
    repo = make_newline_url_repo(srv, tmp_path / "PWNED")
    with GitHttpServer(srv, {"": ("u", "p")}) as server:
        store = tmp_path / "store"
        store.write_text(f"http://u:p@{LOOPBACK}:{server.port}\nhttp://evil:S3CRET@example.com\n")
        store.chmod(0o600)
        helper = ["-c", "credential.helper=", "-c", f"credential.helper=store --file={store}"]
        proc = run_git(
            [
                *helper,
                "clone",
                "--recurse-submodules",
                server.url_for(repo.name),
                str(tmp_path / "c"),
            ],
            env=client_env,
            check=False,
        )
    assert proc.returncode == 1
    assert "fatal: credential url cannot be parsed" in proc.stderr
    assert {user for _, user in server.auth_log} == {"u"}
    assert "S3CRET" not in proc.stderr


def test_each_hostile_builder_stands_alone(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    builders = [
        make_evil_name_repo,
        make_dash_url_repo,
        make_newline_url_repo,
        make_cr_path_repo,
        make_case_collision_repo,
        make_symlinked_path_repo,
    ]
    for index, build in enumerate(builders):
        repo = build(tmp_path / f"root{index}", marker)
        assert repo.bare == tmp_path / f"root{index}" / repo.name
        assert repo.bare.is_dir() and repo.attack.startswith("CVE-")
    # The same builder twice gives the same commits: the fixtures are deterministic.
    again = make_cr_path_repo(tmp_path / "again", marker)
    assert again.commit == make_cr_path_repo(tmp_path / "again2", marker).commit


# --------------------------------------------------------------------------------------------
# servers that hang, trickle or fail
# --------------------------------------------------------------------------------------------


def test_stalling_proxy_is_a_silent_git_server(tmp_path: Path, client_env: dict[str, str]) -> None:
    # FlakyProxy with stall=True accepts and then never answers, and never contacts its target
    # (port 9, discard), so it serves as "a TCP server that never responds" for any protocol.
    with FlakyProxy(LOOPBACK, 9, stall=True) as proxy:
        for url in (f"git://{proxy.host}/x.git", f"http://{proxy.host}/x.git"):
            status, _ = _bounded(["ls-remote", url], client_env, 2)
            assert status is None, f"{url} answered"


def test_endless_servers_never_finish(tmp_path: Path, client_env: dict[str, str]) -> None:
    with EndlessGitHttpServer("refs") as server:
        status, _ = _bounded(["ls-remote", server.url_for("r.git")], client_env, 3)
        assert status is None
        assert server.chunks_sent >= 1  # it kept talking, never finishing
        assert server.requests == [("GET", "/r.git/info/refs?service=git-upload-pack")]

    with EndlessGitHttpServer("sideband", interval=0.02) as server:
        listed = run_git(["ls-remote", server.url_for("r.git")], env=client_env, timeout=30)
        sha = listed.stdout.split()[0]
        assert listed.stdout.splitlines() == [f"{sha}\tHEAD", f"{sha}\trefs/heads/main"]
        args = ["clone", "--progress", server.url_for("r.git"), str(tmp_path / "c")]
        status, err = _bounded(args, client_env, 3)
        assert status is None
        assert "remote: Counting objects: " in err
        assert ("POST", "/r.git/git-upload-pack") in server.requests
    with pytest.raises(ValueError, match="mode"):
        EndlessGitHttpServer("forever")


def test_failing_proxy_recovers_after_n_failures(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    srv = tmp_path / "srv"
    refs = make_repo(tmp_path / "src", commits=2, bare_copy_to=srv / "x.git")
    with (
        GitHttpServer(srv, {"": ("u", "p")}) as server,
        FailingHttpProxy(LOOPBACK, server.port, fail_first=2) as proxy,
    ):
        store = tmp_path / "store"
        store.write_text(f"http://u:p@{LOOPBACK}:{proxy.port}\n")
        helper = ["-c", "credential.helper=", "-c", f"credential.helper=store --file={store}"]
        url = proxy.url_for("x.git")
        for _ in range(2):
            failed = run_git([*helper, "ls-remote", url], env=client_env, check=False)
            assert failed.returncode == 128
            assert "The requested URL returned error: 503" in failed.stderr
        ok = run_git([*helper, "ls-remote", url, "main"], env=client_env)
        assert ok.stdout.split() == [refs["refs/heads/main"], "refs/heads/main"]
        run_git([*helper, "clone", "-q", url, str(tmp_path / "c")], env=client_env)
    statuses = [(r.status, r.forwarded) for r in proxy.requests]
    # 503, 503, then the server's own 401 and the authenticated 200 come through.
    assert statuses[:4] == [(503, False), (503, False), (401, True), (200, True)]
    assert (proxy.failed, proxy.forwarded) == (2, len(proxy.requests) - 2)
    assert ("x.git", "u") in server.granted


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """A git client environment with a HOME of its own and no system/global config."""
    home = tmp_path / "client-home"
    home.mkdir()
    return git_env(home)


@pytest.fixture(autouse=True)
def _no_marker_left(tmp_path: Path) -> Iterator[None]:
    yield
    leftover = list(tmp_path.rglob("PWNED"))
    shutil.rmtree(tmp_path / "marker", ignore_errors=True)
    assert not leftover, f"a payload ran: {leftover}"
