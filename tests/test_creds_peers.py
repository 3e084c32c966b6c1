"""creds-init against real peers: git over smart HTTP and ssh, an OCI registry, docker's own config reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Secrets, assert_no_leak, run_stepkit
from tests.peers import (
    AuthorizedKey,
    GitHttpServer,
    NonRootUser,
    Registry,
    SshServer,
    gen_keypair,
    make_bare,
    make_repo,
)

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = 'p@ss:w/rd %#?+ "é€ 😀'  # every character git's url-decoding could lose


def git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A user's git, reading the HOME that creds-init wrote (the test's isolated HOME)."""
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def repos(tmp_path: Path) -> Path:
    root = tmp_path / "srv"
    src = tmp_path / "src"
    make_repo(src, commits=2)
    for name in ("repo.git", "org/repo-a.git", "org/repo-b.git", "org/repo-c.git"):
        make_bare(src, root / name)
    return root


def test_http_clone_with_basic_auth_from_creds_init(
    tmp_path: Path, repos: Path, secrets: Secrets
) -> None:
    secrets.add("git-basic", {"username": "builder", "password": PASSWORD + "\n"})
    with GitHttpServer(repos, {"": ("builder", PASSWORD)}) as server:
        res = run_stepkit(
            "creds-init",
            f"-basic-git=git-basic={server.url}",
            "--secrets-dir",
            str(secrets.root),
            "--log-format",
            "json",
        )
        assert res.returncode == 0, res.stderr
        assert_no_leak(res.output, secrets.values)
        for line in res.stderr.splitlines():
            assert set(json.loads(line)) == {"time", "level", "logger", "message"}
        clone = git("clone", "-q", server.url_for("repo.git"), str(tmp_path / "out"))
        assert clone.returncode == 0, clone.stderr
        assert (tmp_path / "out" / "README.md").exists()
        assert (
            server.granted == [("repo.git", "builder")] or ("repo.git", "builder") in server.granted
        )
        assert_no_leak(clone.stdout + clone.stderr, secrets.values)


def test_http_clone_fails_with_wrong_password(
    tmp_path: Path, repos: Path, secrets: Secrets
) -> None:
    secrets.add("git-basic", {"username": "builder", "password": "not-the-password"})
    with GitHttpServer(repos, {"": ("builder", PASSWORD)}) as server:
        res = run_stepkit(
            "creds-init", f"-basic-git=git-basic={server.url}", "--secrets-dir", str(secrets.root)
        )
        assert res.returncode == 0, res.stderr
        clone = git("clone", "-q", server.url_for("repo.git"), str(tmp_path / "out"))
        assert clone.returncode != 0
        assert not server.granted


def test_two_tokens_for_two_repositories_on_one_host(
    tmp_path: Path, repos: Path, secrets: Secrets
) -> None:
    secrets.add("token-a", {"username": "bot-a", "password": "token-for-repo-a"})
    secrets.add("token-b", {"username": "bot-b", "password": "token-for-repo-b"})
    creds = {
        "org/repo-a.git": ("bot-a", "token-for-repo-a"),
        "org/repo-b.git": ("bot-b", "token-for-repo-b"),
        "org/repo-c.git": ("bot-c", "token-for-repo-c"),
    }
    with GitHttpServer(repos, creds) as server:
        res = run_stepkit(
            "creds-init",
            f"-basic-git=token-a={server.url}/org/repo-a",
            f"-basic-git=token-b={server.url}/org/repo-b.git",
            "--secrets-dir",
            str(secrets.root),
        )
        assert res.returncode == 0, res.stderr
        for repo in ("org/repo-a.git", "org/repo-b", "org/repo-a"):
            dest = tmp_path / repo.replace("/", "_")
            clone = git("clone", "-q", server.url_for(repo), str(dest))
            assert clone.returncode == 0, (repo, clone.stderr)
        # A repository of the same host with no scope of its own is offered neither token.
        other = git("clone", "-q", server.url_for("org/repo-c.git"), str(tmp_path / "c"))
        assert other.returncode != 0
        users = {user for repo, user in server.auth_log if repo.startswith("org/repo-c")}
        assert users <= set(), f"tokens offered to another repository: {users}"
        granted = {(repo.removesuffix(".git"), user) for repo, user in server.granted}
        assert granted == {("org/repo-a", "bot-a"), ("org/repo-b", "bot-b")}


def test_scoped_and_host_wide_tokens_side_by_side(
    tmp_path: Path, repos: Path, secrets: Secrets
) -> None:
    secrets.add("token-a", {"username": "bot", "password": "token-for-repo-a"})
    secrets.add("host", {"username": "bot", "password": "token-for-the-host"})
    creds = {"": ("bot", "token-for-the-host"), "org/repo-a.git": ("bot", "token-for-repo-a")}
    with GitHttpServer(repos, creds) as server:
        res = run_stepkit(
            "creds-init",
            f"-basic-git=token-a={server.url}/org/repo-a",
            f"-basic-git=host={server.url}",
            "--secrets-dir",
            str(secrets.root),
        )
        assert res.returncode == 0, res.stderr
        # git's store helper moves each credential it approves to the top of its file: the
        # order below (scoped, host-wide, scoped again) proves approvals never mix them up.
        for repo in (
            "org/repo-a.git",
            "org/repo-a",
            "org/repo-b.git",
            "repo.git",
            "org/repo-a.git/",
        ):
            clone = git("clone", "-q", server.url_for(repo), str(tmp_path / repo.replace("/", "_")))
            assert clone.returncode == 0, (repo, clone.stderr)


def _ssh_secret(
    secrets: Secrets,
    name: str,
    key_dir: Path,
    known_hosts: str | None,
    *,
    kind: str = "ed25519",
    pem: bool = False,
) -> str:
    private, public = gen_keypair(key_dir / name, kind, pem=pem)
    keys = {"ssh-privatekey": private}
    if known_hosts is not None:
        keys["known_hosts"] = known_hosts
    secrets.add(name, keys)
    return public


def stepkit_for(user: NonRootUser) -> str:
    """A `stepkit` the user can run: this checkout's code and click, copied where it can read them.

    The test interpreter may live under /root (0700) and the checkout anywhere, neither of
    them readable by UID 65534; Debian's /usr/bin/python3 is, and the copies below are.
    """
    import click

    lib = user.path("lib")
    for package in (ROOT / "stepkit", ROOT / "initializers", Path(click.__file__).parent):
        shutil.copytree(package, lib / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    script = user.path("bin") / "stepkit"
    script.write_text(
        f"#!/usr/bin/python3 -I\nimport sys\nsys.path.insert(0, {str(lib)!r})\n"
        "from stepkit.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    for path in [lib, *lib.rglob("*")]:
        os.lchown(path, user.uid, user.gid)
    return str(script)


def test_ssh_clone_as_non_root_uid_with_builder_home_layout(tmp_path: Path, repos: Path) -> None:
    """The step runs as UID 65534, whose passwd home is not $HOME: ssh must still find the key."""
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    private, public = gen_keypair(key_dir / "deploy")
    with (
        NonRootUser() as user,
        SshServer(tmp_path / "sshd", [AuthorizedKey(public, repos)]) as sshd,
    ):
        home = user.path("builder-home")
        secrets_root = user.path("secrets")
        secret = Secrets(secrets_root)
        secret.add("deploy", {"ssh-privatekey": private, "known_hosts": sshd.host_key_line + "\n"})
        for p in secrets_root.rglob("*"):
            os.lchown(p, user.uid, user.gid)
        workspace = user.path("workspace")
        env = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
        res = user.run(
            [
                stepkit_for(user),
                "creds-init",
                f"-ssh-git=deploy=127.0.0.1:{sshd.port}",
                f"--secrets-dir={secrets_root}",
            ],
            env,
            workspace,
        )
        assert res.returncode == 0, res.stderr
        assert_no_leak(res.stdout + res.stderr, secret.values)
        clone = user.run(["git", "clone", "-q", sshd.url_for("repo.git"), "src"], env, workspace)
        assert clone.returncode == 0, clone.stderr
        assert (workspace / "src" / "README.md").exists()
        assert (workspace / "src").stat().st_uid == user.uid
        assert [a.allowed for a in sshd.access_log()] == [True]
        assert_no_leak(clone.stdout + clone.stderr, secret.values)


def test_ssh_without_known_hosts_accepts_new_key_then_pins_it(
    tmp_path: Path, repos: Path, secrets: Secrets
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    public = _ssh_secret(secrets, "deploy", key_dir, None)
    with SshServer(tmp_path / "sshd", [AuthorizedKey(public, repos)]) as sshd:
        res = run_stepkit(
            "creds-init",
            f"-ssh-git=deploy=127.0.0.1:{sshd.port}",
            "--secrets-dir",
            str(secrets.root),
        )
        assert res.returncode == 0, res.stderr
        assert "known_hosts" in res.stderr and "accept-new" in res.stderr
        clone = git("clone", "-q", sshd.url_for("repo.git"), str(tmp_path / "out"))
        assert clone.returncode == 0, clone.stderr
        known = (Path(os.environ["HOME"]) / ".ssh" / "known_hosts").read_text()
        assert sshd.host_key_line.split(" ", 1)[1].strip() in known


def test_ssh_wrong_known_hosts_refuses_the_server(
    tmp_path: Path, repos: Path, secrets: Secrets
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    _, other_host_key = gen_keypair(key_dir / "impostor")
    with SshServer(tmp_path / "sshd", []) as probe:
        port_line = f"[127.0.0.1]:{probe.port}"
    public = _ssh_secret(secrets, "deploy", key_dir, None)
    with SshServer(tmp_path / "sshd2", [AuthorizedKey(public, repos)]) as sshd:
        wrong = f"[127.0.0.1]:{sshd.port} " + " ".join(other_host_key.split()[:2]) + "\n"
        assert port_line  # a second server only to show ports differ per server
        (secrets.root / "deploy" / "..data" / "known_hosts").write_text(wrong)
        (secrets.root / "deploy" / "known_hosts").symlink_to(Path("..data") / "known_hosts")
        res = run_stepkit(
            "creds-init",
            f"-ssh-git=deploy=127.0.0.1:{sshd.port}",
            "--secrets-dir",
            str(secrets.root),
        )
        assert res.returncode == 0, res.stderr
        clone = git("clone", "-q", sshd.url_for("repo.git"), str(tmp_path / "out"))
        assert clone.returncode != 0
        assert "Host key verification failed" in clone.stderr
        assert not sshd.access_log()


def test_two_deploy_keys_for_two_repositories_on_one_ssh_host(
    tmp_path: Path, repos: Path, secrets: Secrets
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    with SshServer(tmp_path / "probe", []) as probe:
        _ = probe.port
    pub_a = _ssh_secret(secrets, "key-a", key_dir, "")
    pub_b = _ssh_secret(secrets, "key-b", key_dir, "", kind="rsa", pem=True)
    authorized = [
        AuthorizedKey(pub_a, repos, only_repo="org/repo-a.git", name="a"),
        AuthorizedKey(pub_b, repos, only_repo="org/repo-b.git", name="b"),
    ]
    with SshServer(tmp_path / "sshd", authorized) as sshd:
        for name in ("key-a", "key-b"):
            (secrets.root / name / "..data" / "known_hosts").write_text(sshd.host_key_line + "\n")
        base = f"ssh://root@127.0.0.1:{sshd.port}"
        res = run_stepkit(
            "creds-init",
            f"-ssh-git=key-a={base}/org/repo-a.git",
            f"-ssh-git=key-b={base}/org/repo-b",
            "--secrets-dir",
            str(secrets.root),
        )
        assert res.returncode == 0, res.stderr
        for repo in ("org/repo-a.git", "org/repo-b.git", "org/repo-a"):
            clone = git("clone", "-q", sshd.url_for(repo), str(tmp_path / repo.replace("/", "_")))
            assert clone.returncode == 0, (repo, clone.stderr)
        assert all(a.allowed for a in sshd.access_log())
        assert {(a.key, a.repo.removesuffix(".git")) for a in sshd.access_log()} == {
            ("a", "org/repo-a"),
            ("b", "org/repo-b"),
        }


def test_docker_client_and_registry_accept_the_written_auths(
    tmp_path: Path, secrets: Secrets
) -> None:
    import docker.auth

    password = 'reg-p@ss:"word"é'
    secrets.add("reg", {"username": "pusher", "password": password})
    home = Path(os.environ["HOME"])
    with Registry(tmp_path / "registry", {"pusher": password}) as registry:
        registry.push_test_image("team/app", "v1", "pusher", password)
        res = run_stepkit(
            "creds-init", f"-basic-docker=reg={registry.host}", "--secrets-dir", str(secrets.root)
        )
        assert res.returncode == 0, res.stderr
        assert_no_leak(res.output, secrets.values)
        config = docker.auth.load_config(str(home / ".docker" / "config.json"))
        auth = docker.auth.resolve_authconfig(config, registry.host)
        assert auth is not None
        assert (auth["username"], auth["password"]) == ("pusher", password)
        assert registry.check_auth(auth["username"], auth["password"]) == 200
        # skopeo reads the same file the way container tools in later steps do.
        inspect = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--authfile",
                str(home / ".docker" / "config.json"),
                "--cert-dir",
                str(registry.cert_dir),
                f"docker://{registry.host}/team/app:v1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)["Digest"].startswith("sha256:")


@pytest.mark.parametrize("scope", ["host", "repository"])
def test_a_refused_fetch_leaves_the_credential_for_later_steps(
    tmp_path: Path, repos: Path, secrets: Secrets, scope: str
) -> None:
    """git tells its helpers to erase a credential the server answered 401 to; git's own
    `store` helper then deletes the line, and every later step of the build goes without.
    What creds-init wrote must survive a refusal: a repository the token cannot read, or a
    server that refuses for a moment."""
    home = Path(os.environ["HOME"])
    secrets.add("token", {"username": "bot", "password": "token-of-the-bot"})
    if scope == "host":
        # The token reads every repository of the host but one.
        creds = {"": ("bot", "token-of-the-bot"), "org/repo-c.git": ("other", "another-token")}
        flag, store, refused, readable = "", ".git-credentials", "org/repo-c.git", "repo.git"
    else:
        creds = {"org/repo-a.git": ("bot", "token-of-the-bot")}
        flag, store = "/org/repo-a", ".git-credentials-repos"
        refused = readable = "org/repo-a.git"
    with GitHttpServer(repos, creds) as server:
        res = run_stepkit(
            "creds-init", f"-basic-git=token={server.url}{flag}", "--secrets-dir", str(secrets.root)
        )
        assert res.returncode == 0, res.stderr
        written = (home / store).read_text()
        assert "token-of-the-bot" in written
        if scope == "repository":
            server.credentials["org/repo-a.git"] = ("bot", "revoked-for-a-moment")
        denied = git("clone", "-q", server.url_for(refused), str(tmp_path / "denied"))
        assert denied.returncode != 0
        assert "Authentication failed" in denied.stderr
        assert "bot" in {user for _, user in server.auth_log}, "the token was never offered"
        assert (home / store).read_text() == written
        if scope == "repository":
            server.credentials["org/repo-a.git"] = ("bot", "token-of-the-bot")
        clone = git("clone", "-q", server.url_for(readable), str(tmp_path / "out"))
        assert clone.returncode == 0, clone.stderr
        assert (tmp_path / "out" / "README.md").exists()
        assert (home / store).read_text() == written
        assert_no_leak(denied.stderr + clone.stdout + clone.stderr, secrets.values)
