"""git-init against real servers: every revision form on smart HTTP, ssh and git://, the fetch strategy, failures."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import Run, Secrets, assert_no_leak, run_stepkit
from tests.gitrepos import make_rich_repo, make_submodule_repos, set_server_caps
from tests.peers import (
    AuthorizedKey,
    EndlessGitHttpServer,
    FlakyProxy,
    GitDaemon,
    GitHttpServer,
    SshServer,
    free_port,
    gen_keypair,
    git_env,
    make_bare,
    make_repo,
    run_git,
)
from tests.spellings import SPELLINGS, result_args, spelling_id, written

USER = "builder"
PASSWORD = 'p@ss:w/rd %#?+ "é€ 😀'  # every character url-decoding or a credential store could lose

# Copies of the rich repository, each with the server capabilities a test varies:
# s = SHA-in-want (uploadpack.allowReachableSHA1InWant), f = uploadpack.allowFilter.
# "rich.git" is set up as GitHub is (both on); "caps-s1-fnoblob.git" filters, but not blob:none.
CAPS: dict[str, tuple[bool, bool]] = {
    "rich.git": (True, True),
    **{f"caps-s{s}-f{f}.git": (bool(s), bool(f)) for s in (0, 1) for f in (0, 1)},
    "caps-s1-fnoblob.git": (True, True),
}


@dataclass(frozen=True)
class Tree:
    """What a commit's checkout must hold: {path: (mode, content)}, as the server has it."""

    files: Mapping[str, tuple[str, bytes]]
    blobs: frozenset[str]  # distinct blob ids


@dataclass
class World:
    root: Path
    refs: dict[str, str]  # tests/gitrepos.py make_rich_repo's names
    subs: dict[str, str]  # make_submodule_repos's tips
    blobs: int  # blobs reachable from rich.git's branches and tags: what a full fetch brings
    main_count: int
    http: GitHttpServer
    sshd: SshServer
    daemon: GitDaemon
    ssh_private: str
    _trees: dict[str, Tree]

    def tree(self, commit: str) -> Tree:
        """The server's tree of commit, read once."""
        if commit not in self._trees:
            files: dict[str, tuple[str, bytes]] = {}
            blobs: set[str] = set()
            env = git_env(self.root.parent)
            listing = run_git(["ls-tree", "-r", "-z", commit], env=env, cwd=self.root / "rich.git")
            for entry in listing.stdout.split("\0"):
                if not entry:
                    continue
                meta, _, path = entry.partition("\t")
                mode, _, sha = meta.split(" ")
                content = subprocess.run(
                    ["git", "cat-file", "blob", sha],
                    cwd=self.root / "rich.git",
                    env=env,
                    capture_output=True,
                    check=True,
                    timeout=30,
                ).stdout
                files[path] = (mode, content)
                blobs.add(sha)
            self._trees[commit] = Tree(files, frozenset(blobs))
        return self._trees[commit]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("gitinit")
    root = base / "srv"
    refs = make_rich_repo(root / "rich.git")
    for name, (sha_in_want, filters) in CAPS.items():
        if name != "rich.git":
            shutil.copytree(root / "rich.git", root / name)
        set_server_caps(root / name, sha_in_want=sha_in_want, filters=filters)
    run_git(
        ["config", "uploadpackfilter.blob:none.allow", "false"],
        env=git_env(base),
        cwd=root / "caps-s1-fnoblob.git",
    )
    subs = make_submodule_repos(root)
    env = git_env(base)
    listed = run_git(
        ["rev-list", "--objects", "--branches", "--tags"], env=env, cwd=root / "rich.git"
    ).stdout
    ids = "".join(line.split(" ", 1)[0] + "\n" for line in listed.splitlines())
    kinds = run_git(
        ["cat-file", "--batch-check=%(objecttype)"], env=env, cwd=root / "rich.git", input=ids
    ).stdout.split()
    count = run_git(["rev-list", "--count", "main"], env=env, cwd=root / "rich.git").stdout
    private, public = gen_keypair(base / "keys" / "deploy")
    with (
        GitHttpServer(root, {"": (USER, PASSWORD)}) as http,
        SshServer(base / "sshd", [AuthorizedKey(public, root, name="deploy")]) as sshd,
        GitDaemon(root) as daemon,
    ):
        yield World(
            root,
            refs,
            subs,
            kinds.count("blob"),
            int(count),
            http,
            sshd,
            daemon,
            private,
            {},
        )


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def git(dest: Path, *args: str) -> str:
    """A user's git in the checkout, reading the HOME creds-init wrote."""
    proc = subprocess.run(
        ["git", *args], cwd=dest, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout.strip()


def http_creds(secrets: Secrets, url: str, password: str = PASSWORD) -> None:
    """A basic-auth secret for url, written into $HOME by a real creds-init run."""
    secrets.add("git-basic", {"username": USER, "password": password})
    creds_init_http(secrets, url)


def creds_init_http(secrets: Secrets, url: str) -> None:
    res = run_stepkit(
        "creds-init", f"-basic-git=git-basic={url}", "--secrets-dir", str(secrets.root)
    )
    assert res.returncode == 0, res.stderr


def ssh_creds(secrets: Secrets, world: World, known_hosts: str | None = None) -> None:
    """The deploy key and the server's known_hosts line, written into $HOME by creds-init."""
    keys = {
        "ssh-privatekey": world.ssh_private,
        "known_hosts": world.sshd.host_key_line + "\n" if known_hosts is None else known_hosts,
    }
    secrets.add("deploy", keys)
    res = run_stepkit(
        "creds-init",
        f"-ssh-git=deploy=127.0.0.1:{world.sshd.port}",
        "--secrets-dir",
        str(secrets.root),
    )
    assert res.returncode == 0, res.stderr


def pin_protocol_v0() -> None:
    """The user's git config asks for protocol v0, as an old server or a v2-stripping proxy forces.

    git-init reads $HOME/.gitconfig like any git; nothing of git-init itself changes.
    """
    subprocess.run(["git", "config", "--global", "protocol.version", "0"], check=True, timeout=30)


def git_init(tmp_path: Path, url: str, *args: str, env: Mapping[str, str] | None = None) -> Run:
    return run_stepkit(
        "git-init",
        f"-url={url}",
        f"--workspace={tmp_path / 'workspace'}",
        "-path=src",
        f"-terminationMessagePath={tmp_path / 'termination-log'}",
        *args,
        env=env,
    )


def error_line(res: Run) -> str:
    """The one line saying what went wrong."""
    errors = [line for line in res.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return errors[0]


def termination(tmp_path: Path) -> dict[str, str]:
    entries = json.loads((tmp_path / "termination-log").read_text())
    return {e["key"]: e["value"] for e in entries}


def blobs_present(dest: Path) -> int:
    kinds = git(dest, "cat-file", "--batch-all-objects", "--batch-check=%(objecttype)").split()
    return kinds.count("blob")


def blobs_missing(dest: Path) -> int:
    # --missing=print lists what a partial clone left on the server, without fetching it.
    out = git(dest, "rev-list", "--objects", "--all", "--missing=print")
    return sum(1 for line in out.splitlines() if line.startswith("?"))


def partial_clone(dest: Path) -> str:
    proc = subprocess.run(
        ["git", "config", "extensions.partialClone"],
        cwd=dest,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.strip()


def worktree(dest: Path) -> dict[str, tuple[str, bytes]]:
    """The checkout as git would record it: {path: (mode, content or symlink target)}."""
    found: dict[str, tuple[str, bytes]] = {}
    for path in dest.rglob("*"):
        rel = path.relative_to(dest)
        if rel.parts[0] == ".git" or (path.is_dir() and not path.is_symlink()):
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            found[str(rel)] = ("120000", os.readlink(path).encode())
        else:
            mode = "100755" if st.st_mode & stat.S_IXUSR else "100644"
            found[str(rel)] = (mode, path.read_bytes())
    return found


def assert_checkout(dest: Path, world: World, commit: str, branch: str | None) -> None:
    """HEAD at exactly commit, on branch or detached, every file, mode and symlink as committed."""
    assert git(dest, "rev-parse", "HEAD") == commit
    assert git(dest, "branch", "--show-current") == (branch or "")
    assert worktree(dest) == dict(world.tree(commit).files)
    assert git(dest, "status", "--porcelain") == ""


def http_requests(server: GitHttpServer, since: int, *, repo: str = "rich.git") -> int:
    return sum(1 for r in server.request_log[since:] if r.path.startswith(f"/{repo}/"))


def test_the_rich_repo_has_what_the_checks_rely_on(world: World) -> None:
    """The exec bit and the symlink the revision tests compare are in main's tree."""
    files = world.tree(world.refs["main"]).files
    assert files["bin/tool"][0] == "100755"
    assert files["latest-docs"] == ("120000", b"docs/index.md")


# --------------------------------------------------------------------------------------------
# every revision form on every transport
# --------------------------------------------------------------------------------------------


def form_args(world: World, form: str) -> tuple[list[str], str, str | None]:
    """The flags for one revision form, the commit it must give and the branch HEAD must be on."""
    r = world.refs
    forms: dict[str, tuple[list[str], str, str | None]] = {
        "default-branch": ([], r["main"], None),
        "branch": (["-revision=feature/x"], r["feature/x"], "feature/x"),
        "refs-heads": (["-revision=refs/heads/release-1.0"], r["release-1.0"], "release-1.0"),
        "hex-named-branch": (["-revision=deadbeef"], r["deadbeef"], "deadbeef"),
        # A branch named exactly like old's abbreviated SHA wins, as it does in git rev-parse.
        "short-sha-named-branch": ([f"-revision={r['old'][:7]}"], r["release-1.0"], r["old"][:7]),
        "annotated-tag": (["-revision=v1.0"], r["v1.0^{}"], None),
        "lightweight-tag": (["-revision=light"], r["light"], None),
        "sha-branch-tip": ([f"-revision={r['feature/x']}"], r["feature/x"], None),
        "sha-old": ([f"-revision={r['old']}"], r["old"], None),
        "sha-on-no-branch": ([f"-revision={r['pull']}"], r["pull"], None),
        "short-sha": ([f"-revision={r['old'][:10]}"], r["old"], None),
        "pull": (["-revision=pull/7/head"], r["pull"], None),
        "refs-pull": (["-revision=refs/pull/7/head"], r["pull"], None),
        "refspec": (["-refspec=+refs/pull/7/head:refs/remotes/origin/pr/7"], r["pull"], None),
        "refspec-and-revision": (
            [
                "-refspec=refs/heads/feature/x:refs/heads/feature/x refs/tags/v1.0:refs/tags/v1.0",
                "-revision=v1.0",
            ],
            r["v1.0^{}"],
            None,
        ),
    }
    return forms[form]


ALL_FORMS = [
    "default-branch",
    "branch",
    "refs-heads",
    "hex-named-branch",
    "short-sha-named-branch",
    "annotated-tag",
    "lightweight-tag",
    "sha-branch-tip",
    "sha-old",
    "sha-on-no-branch",
    "short-sha",
    "pull",
    "refs-pull",
    "refspec",
    "refspec-and-revision",
]


@pytest.mark.parametrize("form", ALL_FORMS)
def test_http_every_revision_form(
    tmp_path: Path, world: World, secrets: Secrets, form: str
) -> None:
    http_creds(secrets, world.http.url)
    args, commit, branch = form_args(world, form)
    since = len(world.http.granted)
    res = git_init(tmp_path, world.http.url_for("rich.git"), "--allow-http", *args)
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.output, secrets.values)
    dest = tmp_path / "workspace" / "src"
    assert_checkout(dest, world, commit, branch)
    assert ("rich.git", USER) in world.http.granted[since:]
    assert termination(tmp_path)["commit"] == commit
    assert_no_leak((dest / ".git" / "config").read_text(), secrets.values)


@pytest.mark.parametrize(
    "form", ["default-branch", "branch", "annotated-tag", "sha-old", "short-sha", "pull"]
)
def test_ssh_revision_forms(tmp_path: Path, world: World, secrets: Secrets, form: str) -> None:
    ssh_creds(secrets, world)
    args, commit, branch = form_args(world, form)
    since = len(world.sshd.access_log())
    res = git_init(tmp_path, world.sshd.url_for("rich.git"), *args)
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.output, secrets.values)
    assert_checkout(tmp_path / "workspace" / "src", world, commit, branch)
    log = world.sshd.access_log()[since:]
    assert log and all(a.allowed and a.key == "deploy" for a in log)


@pytest.mark.parametrize(
    "form",
    [
        "default-branch",
        "refs-heads",
        "lightweight-tag",
        "sha-on-no-branch",
        "short-sha",
        "refs-pull",
    ],
)
def test_git_daemon_revision_forms(tmp_path: Path, world: World, form: str) -> None:
    args, commit, branch = form_args(world, form)
    res = git_init(tmp_path, world.daemon.url_for("rich.git"), *args)
    assert res.returncode == 0, res.stderr
    assert_checkout(tmp_path / "workspace" / "src", world, commit, branch)


# --------------------------------------------------------------------------------------------
# the fetch strategy against server capabilities
# --------------------------------------------------------------------------------------------


def assert_shallow(dest: Path, world: World, commit: str) -> None:
    """One commit, and exactly the blobs of its tree."""
    assert git(dest, "rev-parse", "--is-shallow-repository") == "true"
    assert git(dest, "rev-list", "--count", "HEAD") == "1"
    assert partial_clone(dest) == ""
    assert blobs_present(dest) == len(world.tree(commit).blobs)


def assert_partial(dest: Path, world: World, commit: str) -> None:
    """Every commit and tree, only the blobs the checkout needed; the rest left on the server."""
    assert git(dest, "rev-parse", "--is-shallow-repository") == "false"
    assert git(dest, "rev-list", "--count", "origin/main") == str(world.main_count)
    assert partial_clone(dest) == "origin"
    assert git(dest, "config", "remote.origin.promisor") == "true"
    assert blobs_present(dest) == len(world.tree(commit).blobs) < world.blobs
    assert blobs_missing(dest) == world.blobs - blobs_present(dest)


def assert_full(dest: Path, world: World) -> None:
    """Every object, and no claim to be a partial clone."""
    assert git(dest, "rev-parse", "--is-shallow-repository") == "false"
    assert partial_clone(dest) == ""
    assert blobs_missing(dest) == 0
    assert blobs_present(dest) == world.blobs


@pytest.mark.parametrize("protocol", ["2", "0"])
@pytest.mark.parametrize("sha_in_want", [1, 0], ids=["sha-in-want", "no-sha-in-want"])
@pytest.mark.parametrize("filters", [1, 0], ids=["filters", "no-filters"])
def test_old_sha_strategy_per_server_caps(
    tmp_path: Path, world: World, protocol: str, sha_in_want: int, filters: int
) -> None:
    """An old full SHA is fetched alone (shallow) when the server hands it out, else all history.

    Protocol v2 serves any wanted object whatever allowReachableSHA1InWant says, so only v0
    reaches the fallback. There, history without file contents is no help: the checkout's
    requests for blobs by id are refused as the SHA was, so the result is the whole history.
    """
    if protocol == "0":
        pin_protocol_v0()
    old = world.refs["old"]
    asked_v2 = len(world.daemon.protocols())
    res = git_init(
        tmp_path, world.daemon.url_for(f"caps-s{sha_in_want}-f{filters}.git"), f"-revision={old}"
    )
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    assert_checkout(dest, world, old, None)
    assert (len(world.daemon.protocols()) > asked_v2) == (protocol == "2")
    if protocol == "2" or sha_in_want:
        assert_shallow(dest, world, old)
        assert "does not hand out" not in res.stderr
    else:
        assert_full(dest, world)
        assert "does not hand out" in res.stderr and "whole history" in res.stderr


@pytest.mark.parametrize("repo", ["caps-s1-f1.git", "caps-s1-f0.git", "caps-s1-fnoblob.git"])
def test_short_sha_takes_history_without_blobs_when_the_server_filters(
    tmp_path: Path, world: World, repo: str
) -> None:
    """A short SHA cannot be wanted: it takes all history, without blobs if the server filters."""
    old = world.refs["old"]
    res = git_init(tmp_path, world.daemon.url_for(repo), f"-revision={old[:10]}")
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    assert_checkout(dest, world, old, None)
    if repo == "caps-s1-f1.git":
        assert_partial(dest, world, old)
        # A blob the checkout did not need is fetched when asked for: a working clone.
        assert git(dest, "show", f"{world.refs['main']}:VERSION") == "1.1.0-dev"
    else:
        assert_full(dest, world)
        assert "does not support partial fetches" in res.stderr


def test_http_partial_clone_fetches_blobs_with_creds_init_credentials(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    """A partial clone's checkout fetches blobs in a second request, which needs the credentials too."""
    http_creds(secrets, world.http.url)
    old = world.refs["old"]
    since = len(world.http.request_log)
    res = git_init(
        tmp_path, world.http.url_for("rich.git"), "--allow-http", f"-revision={old[:10]}"
    )
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.output, secrets.values)
    dest = tmp_path / "workspace" / "src"
    assert_checkout(dest, world, old, None)
    assert_partial(dest, world, old)
    posts = [
        r
        for r in world.http.request_log[since:]
        if r.path == "/rich.git/git-upload-pack" and r.status == 200
    ]
    assert len(posts) >= 3  # ls-refs, the history, the checkout's blobs


def test_http_v0_server_refusing_shas_gives_the_whole_history(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    http_creds(secrets, world.http.url)
    pin_protocol_v0()
    old = world.refs["old"]
    res = git_init(
        tmp_path, world.http.url_for("caps-s0-f1.git"), "--allow-http", f"-revision={old}"
    )
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.output, secrets.values)
    dest = tmp_path / "workspace" / "src"
    assert_checkout(dest, world, old, None)
    assert_full(dest, world)


def test_ssh_partial_clone(tmp_path: Path, world: World, secrets: Secrets) -> None:
    ssh_creds(secrets, world)
    old = world.refs["old"]
    res = git_init(tmp_path, world.sshd.url_for("rich.git"), f"-revision={old[:10]}")
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    assert_checkout(dest, world, old, None)
    assert_partial(dest, world, old)


# --------------------------------------------------------------------------------------------
# failures: one line, the right exit code, nothing left behind
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "revision",
    ["no-such-branch", "1234567", "0123456789abcdef0123456789abcdef01234567"],
    ids=["ref", "short-sha", "full-sha"],
)
def test_unknown_revision(tmp_path: Path, world: World, secrets: Secrets, revision: str) -> None:
    http_creds(secrets, world.http.url)
    dest = tmp_path / "workspace" / "src"
    dest.mkdir(parents=True)
    res = git_init(
        tmp_path, world.http.url_for("rich.git"), "--allow-http", f"-revision={revision}"
    )
    assert res.returncode == 1, res.stderr
    line = error_line(res)
    assert revision in line and "not found" in line
    assert "retrying" not in res.stderr
    assert_no_leak(res.output, secrets.values)
    assert dest.is_dir() and not os.listdir(dest)  # it existed, empty: it is left empty


def test_unknown_revision_is_not_retried(tmp_path: Path, world: World, secrets: Secrets) -> None:
    http_creds(secrets, world.http.url)
    counts = []
    for retries in ("0", "3"):
        since = len(world.http.request_log)
        res = git_init(
            tmp_path,
            world.http.url_for("rich.git"),
            "--allow-http",
            "-revision=no-such-branch",
            f"--retries={retries}",
        )
        assert res.returncode == 1, res.stderr
        counts.append(http_requests(world.http, since))
    assert counts[0] == counts[1] > 0
    assert not (tmp_path / "workspace" / "src").exists()


@pytest.mark.parametrize("transport", ["http", "ssh", "git"])
def test_repository_not_found(
    tmp_path: Path, world: World, secrets: Secrets, transport: str
) -> None:
    if transport == "http":
        http_creds(secrets, world.http.url)
        url = world.http.url_for("no-such-repo.git")
    elif transport == "ssh":
        ssh_creds(secrets, world)
        url = world.sshd.url_for("no-such-repo.git")
    else:
        url = world.daemon.url_for("no-such-repo.git")
    res = git_init(tmp_path, url, "--allow-http", "--retries=2", "--retry-backoff=0.1")
    assert res.returncode == 1, res.stderr
    line = error_line(res)
    assert "no-such-repo" in line and "not found" in line
    assert "retrying" not in res.stderr
    assert not (tmp_path / "workspace" / "src").exists()


@pytest.mark.parametrize("creds", ["wrong-password", "none"])
def test_http_authentication_failed_is_not_retried(
    tmp_path: Path, world: World, secrets: Secrets, creds: str
) -> None:
    if creds == "wrong-password":
        secrets.add("git-basic", {"username": USER, "password": "not-the-password"})
        creds_init_http(secrets, world.http.url)
    counts = []
    for retries in ("0", "3"):
        since = len(world.http.request_log)
        res = git_init(
            tmp_path, world.http.url_for("rich.git"), "--allow-http", f"--retries={retries}"
        )
        assert res.returncode == 3, res.stderr
        assert "authentication failed" in error_line(res)
        assert "retrying" not in res.stderr
        assert_no_leak(res.output, secrets.values)
        counts.append(http_requests(world.http, since))
    assert counts[0] == counts[1] > 0
    assert all(r.status == 401 for r in world.http.request_log[-counts[1] :])
    assert not (tmp_path / "workspace" / "src").exists()


def test_a_refused_fetch_leaves_the_credential_for_the_steps_after(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    """A 401 makes git tell every credential helper to erase what it offered; creds-init's
    credential must stay for the next fetch, and git-init must not erase it either."""
    http_creds(secrets, world.http.url)
    store = Path(os.environ["HOME"]) / ".git-credentials"
    written = store.read_text()
    url = world.http.url_for("rich.git")
    since = len(world.http.auth_log)
    world.http.credentials["rich.git"] = ("someone-else", "a-token-we-lack")
    try:
        res = git_init(tmp_path, url, "--allow-http", "--retries=2")
    finally:
        del world.http.credentials["rich.git"]
    assert res.returncode == 3, res.stderr
    assert "authentication failed" in error_line(res)
    assert "retrying" not in res.stderr
    # Offered once, refused once: no retry, no second helper asked.
    assert world.http.auth_log[since:] == [("rich.git", USER)]
    assert store.read_text() == written
    res = git_init(tmp_path, url, "--allow-http", "-revision=feature/x")
    assert res.returncode == 0, res.stderr
    assert_checkout(tmp_path / "workspace" / "src", world, world.refs["feature/x"], "feature/x")
    assert store.read_text() == written
    assert_no_leak(res.output, secrets.values)


def test_ssh_key_not_authorized(tmp_path: Path, world: World, secrets: Secrets) -> None:
    other, _ = gen_keypair(tmp_path / "keys" / "other")
    secrets.add("deploy", {"ssh-privatekey": other, "known_hosts": world.sshd.host_key_line})
    res = run_stepkit(
        "creds-init",
        f"-ssh-git=deploy=127.0.0.1:{world.sshd.port}",
        "--secrets-dir",
        str(secrets.root),
    )
    assert res.returncode == 0, res.stderr
    res = git_init(tmp_path, world.sshd.url_for("rich.git"), "--retries=2")
    assert res.returncode == 3, res.stderr
    assert "authentication failed" in error_line(res)
    assert "retrying" not in res.stderr
    assert_no_leak(res.output, secrets.values)
    assert not (tmp_path / "workspace" / "src").exists()


def test_ssh_host_key_verification_failed(tmp_path: Path, world: World, secrets: Secrets) -> None:
    _, impostor = gen_keypair(tmp_path / "keys" / "impostor")
    wrong = f"[127.0.0.1]:{world.sshd.port} " + " ".join(impostor.split()[:2]) + "\n"
    ssh_creds(secrets, world, known_hosts=wrong)
    since = len(world.sshd.access_log())
    res = git_init(tmp_path, world.sshd.url_for("rich.git"), "--retries=2")
    assert res.returncode == 3, res.stderr
    assert "host key verification failed" in error_line(res)
    assert "retrying" not in res.stderr
    assert_no_leak(res.output, secrets.values)
    assert world.sshd.access_log()[since:] == []
    assert not (tmp_path / "workspace" / "src").exists()


def test_connection_refused_is_retried_then_fails(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/rich.git"
    res = git_init(tmp_path, url, "--allow-http", "--retries=2", "--retry-backoff=0.1")
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("retrying") == 2
    assert "network error" in error_line(res)
    assert not (tmp_path / "workspace" / "src").exists()


def test_stalled_server_times_out_each_attempt(tmp_path: Path, world: World) -> None:
    with FlakyProxy("127.0.0.1", world.http.port, stall=True) as proxy:
        res = git_init(
            tmp_path,
            f"http://{proxy.host}/rich.git",
            "--allow-http",
            "--timeout=3",
            "--retries=1",
            "--retry-backoff=0.1",
        )
        assert proxy.accepted >= 2  # one connection per attempt
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("retrying") == 1
    assert "timed out" in error_line(res)
    assert not (tmp_path / "workspace" / "src").exists()


def test_endless_sideband_times_out(tmp_path: Path) -> None:
    with EndlessGitHttpServer("sideband") as server:
        res = git_init(
            tmp_path,
            server.url_for("repo.git"),
            "--allow-http",
            "--timeout=3",
            "--retries=0",
            "-depth=0",  # this server offers no shallow capability
        )
        assert ("POST", "/repo.git/git-upload-pack") in server.requests
    assert res.returncode == 1, res.stderr
    assert "timed out" in error_line(res)
    assert not (tmp_path / "workspace" / "src").exists()


def test_dropped_connections_are_retried_with_backoff(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    with FlakyProxy("127.0.0.1", world.http.port, drop_first=2) as proxy:
        http_creds(secrets, f"http://{proxy.host}")
        res = git_init(
            tmp_path,
            f"http://{proxy.host}/rich.git",
            "--allow-http",
            "-revision=feature/x",
            "--retries=3",
            "--retry-backoff=0.1",
        )
        assert proxy.dropped == 2
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("retrying") == 2
    assert_no_leak(res.output, secrets.values)
    assert_checkout(tmp_path / "workspace" / "src", world, world.refs["feature/x"], "feature/x")


# --------------------------------------------------------------------------------------------
# the destination
# --------------------------------------------------------------------------------------------


def test_rerun_in_the_same_directory_and_after_the_url_changed(
    tmp_path: Path, world: World
) -> None:
    dest = tmp_path / "workspace" / "src"
    r = world.refs
    first = git_init(tmp_path, world.daemon.url_for("rich.git"))
    assert first.returncode == 0, first.stderr
    again = git_init(tmp_path, world.daemon.url_for("rich.git"), "-revision=feature/x")
    assert again.returncode == 0, again.stderr
    assert_checkout(dest, world, r["feature/x"], "feature/x")
    moved = world.daemon.url_for("caps-s1-f1.git")
    res = git_init(tmp_path, moved, f"-revision={r['old']}")
    assert res.returncode == 0, res.stderr
    assert_checkout(dest, world, r["old"], None)
    assert git(dest, "config", "remote.origin.url") == moved
    other = world.daemon.url_for("nested.git")
    res = git_init(tmp_path, other)
    assert res.returncode == 0, res.stderr
    assert git(dest, "config", "remote.origin.url") == other
    assert git(dest, "rev-parse", "HEAD") == world.subs["nested"]
    assert (dest / "NESTED.md").read_text() == "nested submodule\n"
    assert not (dest / "README.md").exists()  # tracked by the old checkout, not by this one


def test_foreign_non_empty_directory_needs_force(tmp_path: Path, world: World) -> None:
    dest = tmp_path / "workspace" / "src"
    dest.mkdir(parents=True)
    (dest / "README.md").write_text("mine\n")
    (dest / "notes.txt").write_text("keep\n")
    res = git_init(tmp_path, world.daemon.url_for("rich.git"))
    assert res.returncode == 2, res.stderr
    assert "--force" in error_line(res)
    assert (dest / "README.md").read_text() == "mine\n"
    assert sorted(os.listdir(dest)) == ["README.md", "notes.txt"]
    res = git_init(tmp_path, world.daemon.url_for("rich.git"), "--force")
    assert res.returncode == 0, res.stderr
    assert "--force" in res.stderr  # the warning
    assert git(dest, "rev-parse", "HEAD") == world.refs["main"]
    files = world.tree(world.refs["main"]).files
    assert worktree(dest) == {**files, "notes.txt": ("100644", b"keep\n")}


# --------------------------------------------------------------------------------------------
# submodules, sparse checkout, results
# --------------------------------------------------------------------------------------------


def test_submodules_use_the_same_credentials_and_depth(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    http_creds(secrets, world.http.url)
    since = len(world.http.granted)
    res = git_init(tmp_path, world.http.url_for("super.git"), "--allow-http")
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.output, secrets.values)
    dest = tmp_path / "workspace" / "src"
    sub, nested = dest / "libs" / "sub", dest / "libs" / "sub" / "deps" / "nested"
    assert git(dest, "rev-parse", "HEAD") == world.subs["super"]
    assert (sub / "SUB.md").read_text() == "submodule\n"
    assert (nested / "NESTED.md").read_text() == "nested submodule\n"
    for repo, name in ((sub, "sub"), (nested, "nested")):
        assert git(repo, "rev-parse", "HEAD") == world.subs[name]
        assert git(repo, "rev-parse", "--is-shallow-repository") == "true"
        assert git(repo, "rev-list", "--count", "HEAD") == "1"
    granted = {repo for repo, user in world.http.granted[since:] if user == USER}
    assert granted == {"super.git", "sub.git", "nested.git"}


def test_checkout_is_named_safe_for_steps_under_other_uids(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    """git refuses a repository another user owns; the steps after git-init often run as
    another UID (tests/test_images.py runs one as root), so $HOME/.gitconfig names the
    checkout and its submodules safe.directory, once, keeping creds-init's file mode."""
    http_creds(secrets, world.http.url)
    gitconfig = Path(os.environ["HOME"]) / ".gitconfig"
    assert stat.S_IMODE(gitconfig.stat().st_mode) == 0o600
    for _ in range(2):  # a re-run adds nothing
        res = git_init(tmp_path, world.http.url_for("super.git"), "--allow-http")
        assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    listed = subprocess.run(
        ["git", "config", "--file", str(gitconfig), "--get-all", "safe.directory"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert listed == [str(dest), str(dest / "libs" / "sub"), str(dest / "libs/sub/deps/nested")]
    assert stat.S_IMODE(gitconfig.stat().st_mode) == 0o600
    assert "credential-store get" in gitconfig.read_text()  # creds-init's settings all stay


def test_submodules_false_skips_them(tmp_path: Path, world: World, secrets: Secrets) -> None:
    http_creds(secrets, world.http.url)
    since = len(world.http.request_log)
    res = git_init(tmp_path, world.http.url_for("super.git"), "--allow-http", "-submodules=false")
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    assert git(dest, "rev-parse", "HEAD") == world.subs["super"]
    assert not list((dest / "libs" / "sub").iterdir())
    assert http_requests(world.http, since, repo="sub.git") == 0


def test_sparse_checkout_directories(tmp_path: Path, world: World) -> None:
    res = git_init(
        tmp_path, world.daemon.url_for("rich.git"), "-sparseCheckoutDirectories=docs,src/app"
    )
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    assert git(dest, "rev-parse", "HEAD") == world.refs["main"]
    files = world.tree(world.refs["main"]).files
    wanted = {
        path: entry
        for path, entry in files.items()
        if "/" not in path or path.startswith(("docs/", "src/app/"))
    }
    assert worktree(dest) == wanted
    assert "src/lib/util.py" in files and "bin/tool" in files  # there, and left out
    assert {"docs/guide/intro.md", "src/app/main.py", "README.md"} <= set(wanted)


def test_results_merge_into_the_termination_message_and_results_dir(
    tmp_path: Path, world: World
) -> None:
    (tmp_path / "termination-log").write_text('[{"key":"image-digest","value":"sha256:0123"}]')
    url = world.daemon.url_for("rich.git")
    res = git_init(tmp_path, url, "-revision=v1.0", f"--results-dir={tmp_path / 'results'}")
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    date = git(dest, "log", "-1", "--format=%ct")
    expected = {"commit": world.refs["v1.0^{}"], "url": url, "committer-date": date}
    assert termination(tmp_path) == {"image-digest": "sha256:0123", **expected}
    assert sorted(os.listdir(tmp_path / "results")) == sorted(expected)
    for key, value in expected.items():
        assert (tmp_path / "results" / key).read_text() == value
    assert int(date) > 1_700_000_000


def test_credentials_in_the_url_are_used_never_kept(tmp_path: Path, world: World) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    clean = world.http.url_for("rich.git")
    url = clean.replace("http://", f"http://{USER}:{quote(PASSWORD, safe='')}@")
    since = len(world.http.granted)
    res = git_init(
        tmp_path,
        url,
        "--allow-http",
        "-revision=feature/x",
        f"--results-dir={tmp_path / 'results'}",
        env={"TMPDIR": str(tmpdir)},
    )
    assert res.returncode == 0, res.stderr
    assert "-url holds credentials" in res.stderr  # the warning
    dest = tmp_path / "workspace" / "src"
    assert_checkout(dest, world, world.refs["feature/x"], "feature/x")
    assert ("rich.git", USER) in world.http.granted[since:]
    assert git(dest, "config", "remote.origin.url") == clean
    assert termination(tmp_path)["url"] == clean
    written = [res.output, (tmp_path / "termination-log").read_text()]
    for tree in (dest / ".git", tmp_path / "results", Path(os.environ["HOME"])):
        written += [p.read_bytes().decode(errors="replace") for p in tree.rglob("*") if p.is_file()]
    for text in written:
        assert_no_leak(text, [PASSWORD])
    assert not os.listdir(tmpdir)  # git-init leaves nothing in TMPDIR


# --------------------------------------------------------------------------------------------
# flags as Knative and Tekton spell them
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", ["-f=v", "-f v", "--f=v", "--f v", "env"], ids=lambda s: s.replace(" ", "_")
)
def test_every_flag_spelling(tmp_path: Path, world: World, spelling: str) -> None:
    values = {
        "url": ("STEPKIT_GIT_URL", world.daemon.url_for("rich.git")),
        "revision": ("STEPKIT_GIT_REVISION", "feature/x"),
        "path": ("STEPKIT_GIT_PATH", "src"),
        "terminationMessagePath": (
            "STEPKIT_TERMINATION_MESSAGE_PATH",
            str(tmp_path / "termination-log"),
        ),
        "workspace": ("STEPKIT_WORKSPACE", str(tmp_path / "workspace")),
    }
    dashes = spelling.split("f", 1)[0]
    args: list[str] = []
    env: dict[str, str] = {}
    for name, (variable, value) in values.items():
        if spelling == "env":
            env[variable] = value
        elif spelling.endswith("=v"):
            args.append(f"{dashes}{name}={value}")
        else:
            args += [f"{dashes}{name}", value]
    res = run_stepkit("git-init", *args, env=env)
    assert res.returncode == 0, res.stderr
    commit = world.refs["feature/x"]
    assert_checkout(tmp_path / "workspace" / "src", world, commit, "feature/x")
    assert termination(tmp_path)["commit"] == commit


@pytest.mark.parametrize("spelling", SPELLINGS, ids=spelling_id)
def test_every_spelling_of_the_result_options(
    tmp_path: Path, world: World, spelling: tuple[str, str, bool]
) -> None:
    """SPEC §0: --termination-message-path, Tekton's -terminationMessagePath, --results-dir."""
    res = run_stepkit(
        "git-init",
        f"-url={world.daemon.url_for('rich.git')}",
        f"--workspace={tmp_path / 'workspace'}",
        "-path=src",
        "-revision=v1.0",
        *result_args(tmp_path, spelling),
    )
    assert res.returncode == 0, res.stderr
    assert written(tmp_path)["commit"] == world.refs["v1.0^{}"]


@pytest.mark.parametrize("dashes", ["-", "--"])
def test_bool_flags_take_go_values(
    tmp_path: Path, world: World, secrets: Secrets, dashes: str
) -> None:
    """--allow-http, --allow-local and --force as Go reads a bool: alone, =true or =false;
    a value on the command line wins over the environment's."""
    http_creds(secrets, world.http.url)
    url = world.http.url_for("rich.git")
    res = git_init(tmp_path, url, f"{dashes}allow-http=true")
    assert res.returncode == 0, res.stderr
    shutil.rmtree(tmp_path / "workspace")
    res = git_init(
        tmp_path, url, f"{dashes}allow-http=false", env={"STEPKIT_GIT_ALLOW_HTTP": "true"}
    )
    assert res.returncode == 2, res.stderr
    assert "--allow-http" in error_line(res)
    local = str(world.root / "rich.git")
    res = git_init(tmp_path, local, f"{dashes}allow-local=true", f"{dashes}force=false")
    assert res.returncode == 0, res.stderr
    (tmp_path / "workspace" / "src" / ".git" / "stepkit-source").unlink()  # not ours any more
    res = git_init(
        tmp_path, local, f"{dashes}allow-local", f"{dashes}force=false",
        env={"STEPKIT_GIT_FORCE": "true"},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "--force" in error_line(res)
    res = git_init(tmp_path, local, f"{dashes}allow-local=1", f"{dashes}force=true")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("how", ["-depth=0", "-depth 0", "env"])
def test_depth_zero_fetches_the_whole_history(tmp_path: Path, world: World, how: str) -> None:
    flags = [] if how == "env" else how.split(" ")
    env = {"STEPKIT_GIT_DEPTH": "0"} if how == "env" else {}
    res = git_init(tmp_path, world.daemon.url_for("rich.git"), *flags, env=env)
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    assert git(dest, "rev-list", "--count", "HEAD") == str(world.main_count)
    assert git(dest, "rev-parse", "--is-shallow-repository") == "false"
    assert_checkout(dest, world, world.refs["main"], None)


def test_default_depth_is_one(tmp_path: Path, world: World) -> None:
    res = git_init(tmp_path, world.daemon.url_for("rich.git"), "-revision", "main")
    assert res.returncode == 0, res.stderr
    dest = tmp_path / "workspace" / "src"
    assert git(dest, "rev-list", "--count", "HEAD") == "1"
    assert_checkout(dest, world, world.refs["main"], "main")


def test_submodules_env_false_skips_them(tmp_path: Path, world: World) -> None:
    env = {"STEPKIT_GIT_SUBMODULES": "false"}
    since = len(world.daemon.requests())
    res = git_init(tmp_path, world.daemon.url_for("super.git"), env=env)
    assert res.returncode == 0, res.stderr
    assert not list((tmp_path / "workspace" / "src" / "libs" / "sub").iterdir())
    assert world.daemon.requests()[since:] == ["/super.git"]


def test_revision_with_upper_case_hex_letters_is_a_branch_or_a_sha(tmp_path: Path) -> None:
    """'Cafe' is a branch name; an upper-case full SHA is the same commit as its lower-case form."""
    src = tmp_path / "src-repo"
    shas = make_repo(src, commits=2, branches=["Cafe"])
    make_bare(src, tmp_path / "srv" / "r.git")
    with GitDaemon(tmp_path / "srv") as daemon:
        res = git_init(tmp_path, daemon.url_for("r.git"), "-revision=Cafe")
        assert res.returncode == 0, res.stderr
        dest = tmp_path / "workspace" / "src"
        assert git(dest, "rev-parse", "HEAD") == shas["refs/heads/Cafe"]
        assert git(dest, "branch", "--show-current") == "Cafe"
        shutil.rmtree(dest)
        res = git_init(tmp_path, daemon.url_for("r.git"), f"-revision={shas['HEAD~1'].upper()}")
        assert res.returncode == 0, res.stderr
        assert git(dest, "rev-parse", "HEAD") == shas["HEAD~1"]
