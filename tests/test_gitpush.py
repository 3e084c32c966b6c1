"""git-push against real servers: git http-backend with Basic auth and sshd, with the
credentials a real creds-init run wrote, on checkouts a real git-init made."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Run, Secrets, assert_no_leak, run_stepkit
from tests.peers import (
    AuthorizedKey,
    FlakyProxy,
    GitHttpServer,
    SshServer,
    gen_keypair,
    git_env,
    make_repo,
    run_git,
)

USER = "pusher"
PASSWORD = 'p@ss:w/rd %#?+ "é€ push'  # characters url-decoding or a credential store could lose
AUTHOR = "Release Bot <bot@example.com>"
KEY_LINES: list[str] = []  # the deploy key's lines, checked in every git-push's output


@dataclass
class World:
    base: Path
    root: Path
    http: GitHttpServer
    sshd: SshServer
    ssh_private: str
    count: int = 0

    def new_repo(self) -> tuple[str, Path]:
        """A fresh bare repository on both servers (main: 3 commits); its name and path."""
        self.count += 1
        name = f"repo{self.count}.git"
        make_repo(self.base / f"src{self.count}", commits=3, bare_copy_to=self.root / name)
        return name, self.root / name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("gitpush")
    root = base / "srv"
    root.mkdir()
    private, public = gen_keypair(base / "keys" / "deploy")
    KEY_LINES[:] = [line for line in private.splitlines() if "PRIVATE KEY" not in line]
    with (
        GitHttpServer(root, {"": (USER, PASSWORD)}, push=True) as http,
        SshServer(base / "sshd", [AuthorizedKey(public, root, name="deploy", push=True)]) as sshd,
    ):
        yield World(base, root, http, sshd, private)


# --- helpers ---------------------------------------------------------------------------------


def server(bare: Path, *args: str) -> str:
    return run_git(args, env=git_env(bare.parent), cwd=bare).stdout.strip()


def server_ref(bare: Path, ref: str) -> str | None:
    proc = run_git(
        ["rev-parse", "-q", "--verify", f"{ref}^{{commit}}"],
        env=git_env(bare.parent),
        cwd=bare,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def http_creds(secrets: Secrets, *urls: str) -> None:
    secrets.add("git-basic", {"username": USER, "password": PASSWORD})
    flags = [f"-basic-git=git-basic={url}" for url in urls]
    res = run_stepkit("creds-init", *flags, "--secrets-dir", str(secrets.root))
    assert res.returncode == 0, res.stderr


def ssh_creds(secrets: Secrets, world: World) -> None:
    keys = {"ssh-privatekey": world.ssh_private, "known_hosts": world.sshd.host_key_line + "\n"}
    secrets.add("deploy", keys)
    res = run_stepkit(
        "creds-init",
        f"-ssh-git=deploy=127.0.0.1:{world.sshd.port}",
        "--secrets-dir",
        str(secrets.root),
    )
    assert res.returncode == 0, res.stderr


def git_init(tmp_path: Path, url: str, *args: str) -> Path:
    res = run_stepkit(
        "git-init",
        f"-url={url}",
        f"--workspace={tmp_path / 'workspace'}",
        "-path=src",
        f"-terminationMessagePath={tmp_path / 'git-init-termination'}",
        "--allow-http",
        *args,
    )
    assert res.returncode == 0, res.stderr
    return tmp_path / "workspace" / "src"


def git_push(tmp_path: Path, *args: str, path: str = "src") -> Run:
    res = run_stepkit(
        "git-push",
        f"--workspace={tmp_path / 'workspace'}",
        f"-path={path}",
        f"-terminationMessagePath={tmp_path / 'termination-log'}",
        "-allow-http",
        "-retry-backoff=0",
        *args,
    )
    assert_no_leak(res.output, [PASSWORD, *KEY_LINES])
    return res


def results(tmp_path: Path) -> dict[str, str]:
    entries = json.loads((tmp_path / "termination-log").read_text())
    return {e["key"]: e["value"] for e in entries}


def local(checkout: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=checkout, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, (args, proc.stderr)
    return proc.stdout.strip()


def error_line(res: Run) -> str:
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return errors[0]


def push_from_elsewhere(world: World, bare: Path, name: str, content: str) -> str:
    """Another build pushes a commit to main meanwhile; returns it."""
    other = world.base / f"other-{bare.name}-{name}"
    env = git_env(world.base)
    run_git(["clone", "-q", str(bare), str(other)], env=env)
    (other / name).write_text(content)
    run_git(["add", name], env=env, cwd=other)
    run_git(["commit", "-q", "-m", f"other {name}"], env=env, cwd=other)
    run_git(["push", "-q", "origin", "main"], env=env, cwd=other)
    return run_git(["rev-parse", "HEAD"], env=env, cwd=other).stdout.strip()


def receive_packs(world: World, since: int) -> int:
    return sum(1 for r in world.http.request_log[since:] if "receive-pack" in r.path)


# --- pushing -----------------------------------------------------------------------------------


def test_http_push_of_a_git_init_checkout_with_a_tag(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    url = world.http.url_for(name)
    http_creds(secrets, world.http.url)
    before = server_ref(bare, "main")
    checkout = git_init(tmp_path, url, "-revision=main")
    assert local(checkout, "rev-parse", "--is-shallow-repository") == "true"
    (checkout / "deploy.yaml").write_text("image: app:v2\n")
    res = git_push(tmp_path, "-message=Deploy app:v2", f"-author={AUTHOR}", "-tag=v2")
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.output, secrets.values)
    out = results(tmp_path)
    assert out["pushed"] == "true"
    assert server_ref(bare, "main") == out["commit"]
    assert server_ref(bare, "refs/tags/v2") == out["commit"]
    assert server(bare, "cat-file", "-t", "refs/tags/v2") == "tag"  # annotated
    assert server(bare, "log", "-1", "--format=%P|%an <%ae>|%cn|%s", "main") == (
        f"{before}|{AUTHOR}|Release Bot|Deploy app:v2"
    )
    assert server(bare, "show", "main:deploy.yaml") == "image: app:v2"
    assert USER in {u for _, u in world.http.granted}


def test_ssh_push_with_creds_init_key(tmp_path: Path, world: World, secrets: Secrets) -> None:
    name, bare = world.new_repo()
    ssh_creds(secrets, world)
    checkout = git_init(tmp_path, world.sshd.url_for(name), "-revision=main")
    (checkout / "README.md").write_text("changed over ssh\n")
    since = len(world.sshd.access_log())
    res = git_push(tmp_path, f"-author={AUTHOR}")
    assert res.returncode == 0, res.stderr
    assert_no_leak(res.output, secrets.values)
    assert results(tmp_path) == {"commit": server_ref(bare, "main"), "pushed": "true"}
    assert any(a.allowed and "receive-pack" in a.command for a in world.sshd.access_log()[since:])


def test_a_concurrent_push_is_fetched_rebased_and_retried(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    theirs = push_from_elsewhere(world, bare, "other.txt", "theirs\n")
    (checkout / "mine.txt").write_text("mine\n")
    res = git_push(tmp_path, f"-author={AUTHOR}", "-tag=release-1")
    assert res.returncode == 0, res.stderr
    assert "rebasing" in res.stderr
    out = results(tmp_path)
    assert out["pushed"] == "true"
    tip = server_ref(bare, "main")
    assert tip == out["commit"] and server_ref(bare, "refs/tags/release-1") == tip
    assert server(bare, "rev-parse", "main^") == theirs  # on top of theirs, nothing lost
    assert server(bare, "show", "main:other.txt") == "theirs"
    assert server(bare, "show", "main:mine.txt") == "mine"


def test_a_conflict_stops_with_nothing_pushed(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    theirs = push_from_elsewhere(world, bare, "README.md", "their line\n")
    (checkout / "README.md").write_text("my line\n")
    res = git_push(tmp_path, f"-author={AUTHOR}", "-tag=never")
    assert res.returncode == 1, res.stderr
    line = error_line(res)
    assert "conflict" in line and "README.md" in line and "nothing was pushed" in line
    assert server_ref(bare, "main") == theirs
    assert server_ref(bare, "refs/tags/never") is None
    assert results(tmp_path)["pushed"] == "false"
    assert not (checkout / ".git" / "rebase-merge").exists()  # the rebase was aborted


def test_a_detached_checkout_needs_a_branch(tmp_path: Path, world: World, secrets: Secrets) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    old = server(bare, "rev-parse", "main~1")
    checkout = git_init(tmp_path, world.http.url_for(name), f"-revision={old}")
    assert local(checkout, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached
    (checkout / "new.txt").write_text("x\n")
    res = git_push(tmp_path, f"-author={AUTHOR}")
    assert res.returncode == 2
    assert "--branch" in error_line(res)
    assert local(checkout, "diff", "--cached", "--name-only") == ""  # nothing staged
    res = git_push(tmp_path, f"-author={AUTHOR}", "-branch=release")
    assert res.returncode == 0, res.stderr
    assert server(bare, "rev-parse", "release^") == old
    assert results(tmp_path)["pushed"] == "true"


def test_a_fresh_git_init_pushes_a_new_branch(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = tmp_path / "workspace" / "site"
    checkout.mkdir(parents=True)
    local(checkout, "init", "-q", "-b", "gh-pages")
    local(checkout, "remote", "add", "origin", world.http.url_for(name))
    (checkout / "index.html").write_text("<h1>hi</h1>\n")
    res = git_push(tmp_path, f"-author={AUTHOR}", path="site")
    assert res.returncode == 0, res.stderr
    out = results(tmp_path)
    assert out == {"commit": server_ref(bare, "gh-pages"), "pushed": "true"}
    assert server(bare, "rev-list", "--count", "gh-pages") == "1"


def test_nothing_changed_pushes_nothing(tmp_path: Path, world: World, secrets: Secrets) -> None:
    name, _bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    since = len(world.http.request_log)
    res = git_push(tmp_path, f"-author={AUTHOR}")
    assert res.returncode == 0, res.stderr
    assert results(tmp_path) == {"commit": local(checkout, "rev-parse", "HEAD"), "pushed": "false"}
    assert receive_packs(world, since) == 0
    assert "nothing to push" in res.stderr


def test_only_the_paths_given_are_committed(tmp_path: Path, world: World, secrets: Secrets) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    (checkout / "manifests").mkdir()
    (checkout / "manifests" / "app.yaml").write_text("tag: v3\n")
    (checkout / "scratch.log").write_text("build noise\n")
    res = git_push(tmp_path, f"-author={AUTHOR}", "-add=manifests")
    assert res.returncode == 0, res.stderr
    assert server(bare, "ls-tree", "--name-only", "main").split() == ["README.md", "manifests"]


def test_a_tag_alone_is_pushed_and_an_existing_tag_refused(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    res = git_push(tmp_path, f"-author={AUTHOR}", "-tag=v1.0.0")
    assert res.returncode == 0, res.stderr
    head = local(checkout, "rev-parse", "HEAD")
    assert results(tmp_path) == {"commit": head, "pushed": "true"}
    assert server_ref(bare, "refs/tags/v1.0.0") == head
    res = git_push(tmp_path, f"-author={AUTHOR}", "-tag=v1.0.0", "-message=again")
    assert res.returncode == 1
    assert "already exists" in error_line(res)


def test_wrong_credentials_exit_3(tmp_path: Path, world: World, secrets: Secrets) -> None:
    name, _bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    (checkout / "x.txt").write_text("x\n")
    wrong = "wrong-" + PASSWORD
    url = world.http.url_for(name).replace("http://", f"http://{USER}:S3CRETwrong@")
    res = git_push(tmp_path, f"-author={AUTHOR}", f"-remote={url}")
    assert res.returncode == 3, res.stderr
    assert "authentication failed" in error_line(res)
    assert_no_leak(res.output, [*secrets.values, "S3CRETwrong", wrong])
    assert "S3CRETwrong" not in (checkout / ".git" / "config").read_text()


# --- hostile values ------------------------------------------------------------------------------

HOSTILE = [
    ("-branch=--upload-pack=touch PWNED", "--branch"),
    ("-branch=-x", "--branch"),
    ("-branch=main --receive-pack=touch PWNED", "--branch"),
    ("-branch=a..b", "--branch"),
    ("-tag=-f", "--tag"),
    ("-tag=--output=PWNED", "--tag"),
    ("-tag=v1\n-x", "--tag"),
    ("-remote=--receive-pack=touch PWNED", "--remote"),
    ("-remote=-oProxyCommand=touch PWNED:repo", "--remote"),
    ("-remote=ext::sh -c touch% PWNED", "--remote"),
    ("-remote=file:///etc", "--remote"),
    ("-remote=ssh://-oProxyCommand=touch%20PWNED/x", "--remote"),
    ("-remote=nosuchremote", "--remote"),
    ("-add=--exec=touch PWNED", "--add"),
    ("-add=-A", "--add"),
    ("-add=../outside", "--add"),
    ("-add=/etc/passwd", "--add"),
    ("-add=.git/config", "--add"),
    ("-author=bob", "--author"),
    ("-author=--author=x <y@z>", "--author"),
    ("-author=bob <a@b> <c@d>", "--author"),
    ("-author=bob\n<a@b>", "--author"),
    ("-message=", "--message"),
    ("-message=a\x1b]0;x\x07", "--message"),
    ("-path=../..", "--path"),
    ("-path=/etc", "--path"),
]


@pytest.mark.parametrize(("arg", "flag"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_values_are_rejected_before_git_runs(
    tmp_path: Path, world: World, secrets: Secrets, arg: str, flag: str
) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    (checkout / "change.txt").write_text("x\n")
    before = server(bare, "show-ref")
    since = len(world.http.request_log)
    res = git_push(tmp_path, f"-author={AUTHOR}", arg)
    assert res.returncode == 2, res.stderr
    assert flag in error_line(res)
    assert receive_packs(world, since) == 0
    assert server(bare, "show-ref") == before
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    assert local(checkout, "rev-list", "--count", "HEAD") == "1"  # nothing committed
    assert_no_leak(res.output, secrets.values)


def test_a_planted_ssh_command_in_the_checkout_does_not_run(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    """A step that wrote core.sshCommand (or hooks) into the checkout's .git/config runs nothing."""
    name, _bare = world.new_repo()
    ssh_creds(secrets, world)
    checkout = git_init(tmp_path, world.sshd.url_for(name), "-revision=main")
    marker = tmp_path / "PWNED"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "pre-commit").write_text(f"#!/bin/sh\ntouch {marker}\n")
    (hooks / "pre-commit").chmod(0o755)
    local(checkout, "config", "core.sshCommand", f"touch {marker}; ssh")
    local(checkout, "config", "core.hooksPath", str(hooks))
    local(checkout, "config", "core.fsmonitor", f"touch {marker}")
    (checkout / "README.md").write_text("changed\n")
    res = git_push(tmp_path, f"-author={AUTHOR}")
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    assert results(tmp_path)["pushed"] == "true"


def test_retries_are_bounded(tmp_path: Path, world: World, secrets: Secrets) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    theirs = push_from_elsewhere(world, bare, "other.txt", "theirs\n")
    (checkout / "mine.txt").write_text("mine\n")
    res = git_push(tmp_path, f"-author={AUTHOR}", "-retries=0")
    assert res.returncode == 1
    assert "nothing was pushed" in error_line(res)
    assert server_ref(bare, "main") == theirs


def test_a_checkout_reached_through_a_symlink_out_of_the_workspace_is_refused(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    outside = tmp_path / "outside"
    checkout.rename(outside)
    checkout.symlink_to(outside)
    (outside / "x.txt").write_text("x\n")
    res = git_push(tmp_path, f"-author={AUTHOR}")
    assert res.returncode == 2
    assert "--path" in error_line(res)
    assert server(bare, "rev-list", "--count", "main") == "3"


def test_a_git_file_pointing_out_of_the_workspace_is_refused(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    http_creds(secrets, world.http.url)
    checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
    elsewhere = tmp_path / "elsewhere.git"
    (checkout / ".git").rename(elsewhere)
    (checkout / ".git").write_text(f"gitdir: {elsewhere}\n")
    (checkout / "x.txt").write_text("x\n")
    res = git_push(tmp_path, f"-author={AUTHOR}")
    assert res.returncode == 2
    assert "outside the workspace" in error_line(res)
    assert server(bare, "rev-list", "--count", "main") == "3"


def test_a_dropped_connection_is_retried(tmp_path: Path, world: World, secrets: Secrets) -> None:
    name, bare = world.new_repo()
    with FlakyProxy("127.0.0.1", world.http.port, drop_first=1) as proxy:
        origin = f"http://{proxy.host}"
        http_creds(secrets, world.http.url, origin)
        checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
        (checkout / "x.txt").write_text("x\n")
        res = git_push(tmp_path, f"-author={AUTHOR}", f"-remote={origin}/{name}")
        assert res.returncode == 0, res.stderr
        assert proxy.dropped == 1
    assert "retrying" in res.stderr
    assert server_ref(bare, "main") == results(tmp_path)["commit"]


def test_a_server_that_never_answers_is_bounded(
    tmp_path: Path, world: World, secrets: Secrets
) -> None:
    name, bare = world.new_repo()
    with FlakyProxy("127.0.0.1", world.http.port, stall=True) as proxy:
        origin = f"http://{proxy.host}"
        http_creds(secrets, world.http.url, origin)
        checkout = git_init(tmp_path, world.http.url_for(name), "-revision=main")
        (checkout / "x.txt").write_text("x\n")
        res = git_push(
            tmp_path, f"-author={AUTHOR}", f"-remote={origin}/{name}", "-timeout=3", "-retries=0"
        )
    assert res.returncode == 1
    assert "timed out" in error_line(res)
    assert results(tmp_path)["pushed"] == "false"
    assert server(bare, "rev-list", "--count", "main") == "3"


def test_help_lists_the_params_with_their_env_names() -> None:
    res = run_stepkit("git-push", "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    for name in ("path", "message", "author", "branch", "tag", "remote", "add", "retries"):
        env = name.upper()
        assert f"-{name}, --{name}" in text and f"STEPKIT_{env}, PARAM_{env}" in text, name
    assert "commit" in text and "pushed" in text
    listed = run_stepkit("--help")
    assert "git-push" in listed.stdout
