"""Prove each real test peer in tests/peers.py works with the plain tools: git, ssh, urllib."""

from __future__ import annotations

import base64
import http.client
import re
import shlex
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.peers import (
    NOBODY,
    AuthorizedKey,
    FlakyProxy,
    GitHttpServer,
    NonRootUser,
    Registry,
    SshServer,
    gen_keypair,
    git_env,
    make_bare,
    make_repo,
    nonroot_dir,
    run_as,
    run_git,
    ssh_command,
    write_oci_layout,
)

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _store(path: Path, *urls: str) -> Path:
    """A git-credential-store file: the credential reaches git only through the helper."""
    path.write_text("".join(url + "\n" for url in urls))
    path.chmod(0o600)
    return path


def _clone_http(
    url: str,
    dest: Path,
    env: dict[str, str],
    store: Path,
    *,
    version: str = "2",
    use_http_path: bool = False,
) -> tuple[int, str]:
    args = [
        # The empty value first clears any helper configured elsewhere.
        "-c",
        "credential.helper=",
        "-c",
        f"credential.helper=store --file={store}",
        "-c",
        f"protocol.version={version}",
        "-c",
        f"credential.useHttpPath={'true' if use_http_path else 'false'}",
        "clone",
        "-q",
        url,
        str(dest),
    ]
    proc = run_git(args, env=env, check=False)
    return proc.returncode, proc.stderr


def _head(repo: Path, env: dict[str, str]) -> str:
    return run_git(["rev-parse", "HEAD"], env=env, cwd=repo).stdout.strip()


def _work_clone(bare: Path, dest: Path, env: dict[str, str]) -> Path:
    """A working clone of a bare repo straight from disk (no peer), to make commits in."""
    run_git(["clone", "-q", str(bare), str(dest)], env=env)
    return dest


def _commit(work: Path, env: dict[str, str], name: str) -> str:
    """One new commit on the checked-out branch of `work`; return its SHA."""
    (work / f"{name}.txt").write_text(f"{name}\n")
    run_git(["add", f"{name}.txt"], env=env, cwd=work)
    run_git(["commit", "-q", "-m", name], env=env, cwd=work)
    return _head(work, env)


def _main_of(bare: Path, env: dict[str, str]) -> str:
    return run_git(["rev-parse", "refs/heads/main"], env=env, cwd=bare).stdout.strip()


def _open(url: str, timeout: float) -> int:
    """GET url without proxies; return the HTTP status (errors other than HTTP propagate)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# --------------------------------------------------------------------------------------------
# repositories
# --------------------------------------------------------------------------------------------


def test_make_repo_is_deterministic(tmp_path: Path, client_env: dict[str, str]) -> None:
    one = make_repo(tmp_path / "one", commits=3, branches=["feature/x"], tags=["v1", "v2"])
    two = make_repo(
        tmp_path / "two",
        commits=3,
        branches=["feature/x"],
        tags=["v1", "v2"],
        bare_copy_to=tmp_path / "two.git",
    )
    assert one == two
    # Pinned: a commit's SHA depends only on its content, so this holds on every machine.
    assert one["HEAD~2"] == "fd0ba7ebcb2292a8d8ea66cac7df73c99d83306e"
    assert one["HEAD"] == one["refs/heads/main"] == one["HEAD~0"]
    assert one["refs/tags/v1^{}"] == one["HEAD~2"]
    assert one["refs/tags/v2^{}"] == one["HEAD~1"]
    assert one["refs/tags/v1"] != one["refs/tags/v1^{}"]  # annotated: a tag object
    assert one["refs/heads/feature/x"] not in (one["HEAD~0"], one["HEAD~1"], one["HEAD~2"])

    bare = tmp_path / "two.git"
    assert run_git(["rev-parse", "--is-bare-repository"], env=client_env, cwd=bare).stdout == (
        "true\n"
    )
    shown = run_git(["show-ref"], env=client_env, cwd=bare).stdout
    assert f"{one['refs/heads/feature/x']} refs/heads/feature/x" in shown
    again = make_bare(
        tmp_path / "one", tmp_path / "cfg.git", config={"uploadpack.allowFilter": "1"}
    )
    got = run_git(["config", "uploadpack.allowFilter"], env=client_env, cwd=again).stdout
    assert got.strip() == "1"


# --------------------------------------------------------------------------------------------
# git over HTTP
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0", "2"])
def test_git_http_clone_needs_the_right_password(
    tmp_path: Path, client_env: dict[str, str], version: str
) -> None:
    srv = tmp_path / "srv"
    # Thirty branches make the clone's want list exceed 1 KiB, so git gzips the request body.
    refs = make_repo(
        tmp_path / "src",
        branches=[f"b{i:02d}" for i in range(30)],
        tags=["v1"],
        bare_copy_to=srv / "org" / "app.git",
    )
    with GitHttpServer(srv, {"": ("builder", "s3cret")}) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        url = server.url_for("org/app.git")
        good = _store(tmp_path / "good", f"http://builder:s3cret@127.0.0.1:{server.port}")
        code, err = _clone_http(url, tmp_path / "ok", client_env, good, version=version)
        assert code == 0, err
        assert _head(tmp_path / "ok", client_env) == refs["refs/heads/main"]
        assert ("org/app.git", "builder") in server.granted
        protocols = {r.git_protocol for r in server.request_log}
        assert protocols == ({"version=2"} if version == "2" else {""})
        assert any(r.content_encoding == "gzip" and r.status == 200 for r in server.request_log)

        bad = _store(tmp_path / "bad", f"http://builder:wrong@127.0.0.1:{server.port}")
        code, err = _clone_http(url, tmp_path / "no", client_env, bad, version=version)
        assert code != 0
        assert "Authentication failed" in err
        assert server.auth_log[-1] == ("org/app.git", "builder")
        assert server.request_log[-1].status == 401

        # Without any credential the server challenges as a real forge does.
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                url + "/info/refs?service=git-upload-pack", timeout=10
            )
        assert info.value.code == 401
        assert info.value.headers["WWW-Authenticate"] == 'Basic realm="git"'


def test_git_http_streams_chunked_requests(tmp_path: Path, client_env: dict[str, str]) -> None:
    srv = tmp_path / "srv"
    make_repo(tmp_path / "src", commits=1, bare_copy_to=srv / "big.git")
    # 1500 branches on distinct commits: a want list (~75 KB) larger than the smallest
    # http.postBuffer git allows, so git streams it with Transfer-Encoding: chunked.
    stream = "".join(
        f"commit refs/heads/many/{i:04d}\ncommitter T <t@stepkit.invalid> {1_700_000_000 + i} "
        f"+0000\ndata {len(str(i))}\n{i}\n\n"
        for i in range(1500)
    )
    run_git(["fast-import", "--quiet"], env=client_env, cwd=srv / "big.git", input=stream)
    with GitHttpServer(srv, {"": ("u", "p")}) as server:
        store = _store(tmp_path / "store", f"http://u:p@127.0.0.1:{server.port}")
        for version in ("0", "2"):
            dest = tmp_path / f"clone-v{version}"
            proc = run_git(
                [
                    *("-c", "credential.helper=", "-c", f"credential.helper=store --file={store}"),
                    *("-c", "http.postBuffer=65536", "-c", f"protocol.version={version}"),
                    *("clone", "-q", "--no-checkout", server.url_for("big.git"), str(dest)),
                ],
                env=client_env,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            branches = run_git(["branch", "-r"], env=client_env, cwd=dest).stdout.splitlines()
            assert len(branches) == 1500 + 2  # many/*, main, and origin/HEAD -> origin/main
            chunked = [r for r in server.request_log if r.transfer_encoding == "chunked"]
            assert chunked and all(r.status == 200 for r in chunked)
            server.request_log.clear()


def test_git_http_longest_prefix_picks_the_credential(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    srv = tmp_path / "srv"
    refs_a = make_repo(tmp_path / "a", commits=2, bare_copy_to=srv / "org" / "repo-a.git")
    refs_b = make_repo(tmp_path / "b", commits=4, bare_copy_to=srv / "org" / "repo-b.git")
    make_repo(tmp_path / "p", commits=1, bare_copy_to=srv / "pub" / "open.git")
    creds = {"org": ("org-bot", "pw-org"), "org/repo-a.git": ("alice", "pw-a")}
    with GitHttpServer(srv, creds) as server:
        assert server.credential_for("org/repo-a.git") == ("alice", "pw-a")
        assert server.credential_for("/org/repo-a") == ("alice", "pw-a")
        assert server.credential_for("org/repo-ab.git") == ("org-bot", "pw-org")
        assert server.credential_for("pub/open.git") is None
        host = f"127.0.0.1:{server.port}"

        # One host, two repositories, two credentials: git needs useHttpPath to tell them apart.
        per_path = _store(
            tmp_path / "per-path",
            f"http://alice:pw-a@{host}/org/repo-a.git",
            f"http://org-bot:pw-org@{host}/org/repo-b.git",
        )
        for name, refs in (("repo-a", refs_a), ("repo-b", refs_b)):
            dest = tmp_path / f"clone-{name}"
            code, err = _clone_http(
                server.url_for(f"org/{name}.git"), dest, client_env, per_path, use_http_path=True
            )
            assert code == 0, err
            assert _head(dest, client_env) == refs["refs/heads/main"]
        assert ("org/repo-a.git", "alice") in server.granted
        assert ("org/repo-b.git", "org-bot") in server.granted

        # The org-wide credential does not open the repository with a credential of its own.
        org_only = _store(tmp_path / "org-only", f"http://org-bot:pw-org@{host}")
        code, _ = _clone_http(
            server.url_for("org/repo-a.git"), tmp_path / "x", client_env, org_only
        )
        assert code != 0
        assert server.auth_log[-1] == ("org/repo-a.git", "org-bot")

        # A repository no prefix covers is public.
        before = len(server.auth_log)
        empty = _store(tmp_path / "empty")
        code, err = _clone_http(server.url_for("pub/open.git"), tmp_path / "pub", client_env, empty)
        assert code == 0, err
        assert len(server.auth_log) == before


def test_git_http_push_needs_push_and_the_right_password(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    srv = tmp_path / "srv"
    bare = srv / "org" / "app.git"
    refs = make_repo(tmp_path / "src", commits=2, bare_copy_to=bare)
    work = _work_clone(bare, tmp_path / "work", client_env)
    first = _commit(work, client_env, "first")
    creds = {"org": ("org-bot", "pw-org"), "org/app.git": ("pusher", "pw-push")}

    def push(server: GitHttpServer, store: Path) -> subprocess.CompletedProcess[str]:
        helper = ["-c", "credential.helper=", "-c", f"credential.helper=store --file={store}"]
        url = server.url_for("org/app.git")
        return run_git(
            [*helper, "push", url, "HEAD:refs/heads/main"], env=client_env, cwd=work, check=False
        )

    with GitHttpServer(srv, creds, push=True) as server:
        assert server.push
        host = f"127.0.0.1:{server.port}"

        wrong = push(server, _store(tmp_path / "wrong", f"http://pusher:wrong@{host}"))
        assert wrong.returncode != 0
        assert "Authentication failed" in wrong.stderr
        assert server.auth_log[-1] == ("org/app.git", "pusher")
        assert server.request_log[-1].status == 401
        # The org-wide credential is not the one the longest prefix demands, for push as for
        # fetch.
        org = push(server, _store(tmp_path / "org", f"http://org-bot:pw-org@{host}"))
        assert org.returncode != 0
        assert server.auth_log[-1] == ("org/app.git", "org-bot")
        assert _main_of(bare, client_env) == refs["refs/heads/main"]
        assert server.granted == []

        right = push(server, _store(tmp_path / "right", f"http://pusher:pw-push@{host}"))
        assert right.returncode == 0, right.stderr
        assert _main_of(bare, client_env) == first
        assert ("org/app.git", "pusher") in server.granted
        assert (
            "POST",
            "/org/app.git/git-receive-pack",
            200,
        ) in [(r.method, r.path, r.status) for r in server.request_log]

        # Fetching from a push-enabled server is unchanged: the same credential reads the
        # commit just pushed.
        code, err = _clone_http(
            server.url_for("org/app.git"),
            tmp_path / "after",
            client_env,
            _store(tmp_path / "read", f"http://pusher:pw-push@{host}"),
        )
        assert code == 0, err
        assert _head(tmp_path / "after", client_env) == first

    second = _commit(work, client_env, "second")
    with GitHttpServer(srv, creds) as server:
        assert not server.push
        host = f"127.0.0.1:{server.port}"
        refused = push(server, _store(tmp_path / "refused", f"http://pusher:pw-push@{host}"))
        assert refused.returncode != 0
        assert "403" in refused.stderr
        assert _main_of(bare, client_env) == first != second
        # Refused before any auth: the right password never even reached the check.
        assert server.request_log
        assert all(r.status == 403 for r in server.request_log)
        assert server.auth_log == []
        assert server.granted == []
        for path in (
            "/org/app.git/info/refs?service=git-receive-pack",
            "/org/app.git/git-receive-pack",
        ):
            assert _open(server.url + path, timeout=10) == 403


# --------------------------------------------------------------------------------------------
# git over ssh
# --------------------------------------------------------------------------------------------


def test_ssh_deploy_keys_open_only_their_repository(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    repos = tmp_path / "repos"
    refs_a = make_repo(tmp_path / "a", commits=2, bare_copy_to=repos / "a.git")
    refs_b = make_repo(tmp_path / "b", commits=3, bare_copy_to=repos / "b.git")
    keys = tmp_path / "keys"
    priv_a, pub_a = gen_keypair(keys / "id_a")
    priv_b, pub_b = gen_keypair(keys / "id_b", "rsa", pem=True)
    gen_keypair(keys / "id_stranger")
    assert priv_a.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub_a.startswith("ssh-ed25519 AAAA")
    assert priv_b.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert pub_b.startswith("ssh-rsa AAAA")

    authorized = [
        AuthorizedKey(pub_a, repos, only_repo="a.git", name="deploy-a"),
        AuthorizedKey(pub_b, repos, only_repo="b.git", name="deploy-b"),
    ]
    with SshServer(tmp_path / "sshd", authorized) as sshd:
        assert re.fullmatch(
            rf"\[127\.0\.0\.1\]:{sshd.port} ssh-ed25519 AAAA[0-9A-Za-z+/=]+", sshd.host_key_line
        )
        assert sshd.url_for("a.git") == f"ssh://root@127.0.0.1:{sshd.port}/a.git"
        known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")

        def clone(key: str, repo: str, dest: str, version: str = "2") -> tuple[int, str]:
            env = {
                **client_env,
                "GIT_SSH_COMMAND": shlex.join(ssh_command(keys / key, known_hosts)),
            }
            args = ["-c", f"protocol.version={version}", "clone", "-q", sshd.url_for(repo)]
            proc = run_git([*args, str(tmp_path / dest)], env=env, check=False)
            return proc.returncode, proc.stderr

        code, err = clone("id_a", "a.git", "ca")
        assert code == 0, err
        assert _head(tmp_path / "ca", client_env) == refs_a["refs/heads/main"]
        code, err = clone("id_a", "b.git", "denied")
        assert code != 0
        assert "deploy-a is not allowed to read 'b.git'" in err
        code, err = clone("id_b", "b", "cb", version="0")  # "b" finds b.git, as git would
        assert code == 0, err
        assert _head(tmp_path / "cb", client_env) == refs_b["refs/heads/main"]
        code, err = clone("id_stranger", "a.git", "stranger")
        assert code != 0
        assert "Permission denied (publickey)" in err

        # Anything but upload-pack is refused by the forced command, even for a valid key.
        argv = [*ssh_command(keys / "id_a", known_hosts), "-p", str(sshd.port)]
        shell = subprocess.run(
            [*argv, "root@127.0.0.1", "id"], capture_output=True, text=True, timeout=60, check=False
        )
        assert shell.returncode == 1
        assert "command not allowed" in shell.stderr

        seen = [(e.key, e.repo, e.allowed, e.git_protocol) for e in sshd.access_log()]
        assert seen == [
            ("deploy-a", "a.git", True, "version=2"),
            ("deploy-a", "b.git", False, "version=2"),
            ("deploy-b", "b", True, ""),
            ("deploy-a", "", False, ""),
        ]


def test_ssh_push_needs_a_key_that_may_push(tmp_path: Path, client_env: dict[str, str]) -> None:
    repos = tmp_path / "repos"
    refs_a = make_repo(tmp_path / "a", commits=2, bare_copy_to=repos / "a.git")
    refs_b = make_repo(tmp_path / "b", commits=1, bare_copy_to=repos / "b.git")
    keys = tmp_path / "keys"
    _, pub_push = gen_keypair(keys / "id_push")
    _, pub_read = gen_keypair(keys / "id_read")
    authorized = [
        AuthorizedKey(pub_push, repos, only_repo="a.git", name="deploy-push", push=True),
        AuthorizedKey(pub_read, repos, only_repo="a.git", name="deploy-read"),
    ]
    assert not authorized[1].push  # fetch-only is the default
    work = _work_clone(repos / "a.git", tmp_path / "work", client_env)
    new = _commit(work, client_env, "pushed")

    with SshServer(tmp_path / "sshd", authorized) as sshd:
        known_hosts = sshd.write_known_hosts(tmp_path / "known_hosts")

        def git_as(key: str, *args: str) -> subprocess.CompletedProcess[str]:
            ssh = shlex.join(ssh_command(keys / key, known_hosts))
            env = {**client_env, "GIT_SSH_COMMAND": ssh}
            return run_git(list(args), env=env, cwd=work, check=False)

        read_only = git_as("id_read", "push", sshd.url_for("a.git"), "HEAD:refs/heads/main")
        assert read_only.returncode != 0
        assert "command not allowed" in read_only.stderr
        other = git_as("id_push", "push", sshd.url_for("b.git"), "HEAD:refs/heads/main")
        assert other.returncode != 0
        assert "deploy-push is not allowed to write 'b.git'" in other.stderr
        assert _main_of(repos / "a.git", client_env) == refs_a["refs/heads/main"]
        assert _main_of(repos / "b.git", client_env) == refs_b["refs/heads/main"]

        pushed = git_as("id_push", "push", sshd.url_for("a.git"), "HEAD:refs/heads/main")
        assert pushed.returncode == 0, pushed.stderr
        assert _main_of(repos / "a.git", client_env) == new
        # Both keys still fetch, and see the new commit.
        for key in ("id_push", "id_read"):
            listed = git_as(key, "ls-remote", sshd.url_for("a.git"), "main")
            assert listed.returncode == 0, listed.stderr
            assert listed.stdout.split() == [new, "refs/heads/main"]

        seen = [(e.key, e.command.split()[0], e.repo, e.allowed) for e in sshd.access_log()]
        assert seen == [
            ("deploy-read", "git-receive-pack", "", False),
            ("deploy-push", "git-receive-pack", "b.git", False),
            ("deploy-push", "git-receive-pack", "a.git", True),
            ("deploy-push", "git-upload-pack", "a.git", True),
            ("deploy-read", "git-upload-pack", "a.git", True),
        ]


# --------------------------------------------------------------------------------------------
# OCI registry
# --------------------------------------------------------------------------------------------


def test_registry_checks_passwords_and_takes_a_push(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry", {"pusher": "pw-push", "reader": "pw-read"}) as reg:
        assert reg.host == f"127.0.0.1:{reg.port}"
        assert reg.url == f"https://{reg.host}"
        assert reg.check_auth("pusher", "pw-push") == 200
        assert reg.check_auth("reader", "pw-read") == 200
        assert reg.check_auth("pusher", "wrong") == 401
        assert reg.check_auth("stranger", "pw-push") == 401

        digest = reg.push_test_image("team/app", "v1", "pusher", "pw-push")
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
        # The layout is deterministic and skopeo pushed it unchanged: same digest as built.
        assert digest == write_oci_layout(tmp_path / "layout", "v1")
        assert reg.manifest_digest("team/app", "v1", "reader", "pw-read") == digest
        with pytest.raises(RuntimeError, match="skopeo copy"):
            reg.push_test_image("team/app", "v2", "pusher", "wrong")

        # The CA is the only trust: a default client context must reject the certificate.
        token = base64.b64encode(b"pusher:pw-push").decode()
        request = urllib.request.Request(  # noqa: S310 - always https://127.0.0.1
            reg.url + "/v2/", headers={"Authorization": f"Basic {token}"}
        )
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)


# --------------------------------------------------------------------------------------------
# non-root user
# --------------------------------------------------------------------------------------------


def test_run_as_nobody_runs_ssh_with_a_home_of_its_own(tmp_path: Path) -> None:
    repos = tmp_path / "repos"
    refs = make_repo(tmp_path / "a", commits=2, bare_copy_to=repos / "a.git")
    _, pub = gen_keypair(tmp_path / "keys" / "id")

    made = nonroot_dir(tmp_path)
    try:
        # pytest's tmp_path is under a 0700 directory, so the helper falls back to /tmp.
        assert made.parent == Path("/tmp")
        assert made.stat().st_uid == NOBODY
        assert stat.S_IMODE(made.stat().st_mode) == 0o755
    finally:
        shutil.rmtree(made)

    with (
        SshServer(tmp_path / "sshd", [AuthorizedKey(pub, repos, name="nobody-key")]) as sshd,
        NonRootUser() as user,
    ):
        made_for = user.path("work")
        ids = [user.run(["id", flag]).stdout.split() for flag in ("-u", "-g", "-G")]
        # -G lists supplementary groups too: only nobody's own group proves extra_groups=[].
        assert ids == [[str(NOBODY)]] * 3
        assert user.run(["ls", str(tmp_path)]).returncode != 0  # really not root
        direct = run_as(
            NOBODY, NOBODY, ["touch", "made-by-nobody"], {"PATH": "/usr/bin:/bin"}, made_for
        )
        assert direct.returncode == 0, direct.stderr
        assert (made_for / "made-by-nobody").stat().st_uid == NOBODY

        ssh_dir = user.path("home/.ssh")
        shutil.copyfile(tmp_path / "keys" / "id", ssh_dir / "id")
        user.give(ssh_dir / "id", 0o600)
        user.give(sshd.write_known_hosts(ssh_dir / "known_hosts"))
        config = ssh_dir / "config"
        config.write_text(
            "Host gitserver\n"
            "  HostName 127.0.0.1\n"
            f"  Port {sshd.port}\n"
            "  User root\n"
            f"  IdentityFile {ssh_dir / 'id'}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
        )
        user.give(config, 0o600)
        # ssh looks for ~ in the passwd entry (/nonexistent for nobody), not in $HOME, so the
        # config has to be named with -F.
        env = git_env(user.home, {"GIT_SSH_COMMAND": shlex.join(["ssh", "-F", str(config)])})
        listed = user.run(["git", "ls-remote", "ssh://gitserver/a.git", "main"], env=env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split() == [refs["refs/heads/main"], "refs/heads/main"]
        assert [e.allowed for e in sshd.access_log()] == [True]


# --------------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------------


def test_flaky_proxy_drops_then_forwards_and_can_stall(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    srv = tmp_path / "srv"
    refs = make_repo(tmp_path / "src", commits=1, bare_copy_to=srv / "x.git")
    with GitHttpServer(srv, {"": ("u", "p")}) as server:
        with FlakyProxy("127.0.0.1", server.port, drop_first=2) as proxy:
            url = f"http://{proxy.host}/x.git/info/refs?service=git-upload-pack"
            for _ in range(2):
                with pytest.raises((urllib.error.URLError, ConnectionError)) as info:
                    _open(url, timeout=10)
                assert not isinstance(info.value, urllib.error.HTTPError)
            assert _open(url, timeout=10) == 401  # forwarded: the server's own answer
            assert (proxy.accepted, proxy.dropped) == (3, 2)

        with FlakyProxy("127.0.0.1", server.port, drop_first=1, reset=True) as proxy:
            store = _store(tmp_path / "store", f"http://u:p@{proxy.host}")
            url = f"http://{proxy.host}/x.git"
            args = ["-c", "credential.helper=", "-c", f"credential.helper=store --file={store}"]
            first = run_git([*args, "ls-remote", url], env=client_env, check=False)
            assert first.returncode != 0
            second = run_git([*args, "ls-remote", url, "main"], env=client_env, check=False)
            assert second.returncode == 0, second.stderr
            assert second.stdout.split() == [refs["refs/heads/main"], "refs/heads/main"]

        with FlakyProxy("127.0.0.1", server.port, stall=True) as proxy:
            url = f"http://{proxy.host}/x.git/info/refs?service=git-upload-pack"
            with pytest.raises((TimeoutError, urllib.error.URLError, http.client.HTTPException)):
                _open(url, timeout=0.5)
            # The kernel completes the handshake before accept(): give a busy machine time.
            deadline = time.monotonic() + 10
            while proxy.accepted < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (proxy.accepted, proxy.dropped) == (1, 0)


def test_flaky_proxy_latency_delays_each_way_and_keeps_every_byte(
    tmp_path: Path, client_env: dict[str, str]
) -> None:
    """The benches' distant peer: a clone through it is intact, and no exchange beats 2*latency."""
    srv = tmp_path / "srv"
    refs = make_repo(tmp_path / "src", commits=3, bare_copy_to=srv / "x.git")
    latency = 0.05
    with (
        GitHttpServer(srv, {}) as server,
        FlakyProxy("127.0.0.1", server.port, latency=latency) as proxy,
    ):
        url = f"http://{proxy.host}/x.git/info/refs?service=git-upload-pack"
        started = time.monotonic()
        assert _open(url, timeout=10) == 200
        # A lower bound only (the proxy cannot deliver early); never an upper one.
        assert time.monotonic() - started >= 2 * latency
        dest = tmp_path / "clone"
        done = run_git(["clone", "-q", f"http://{proxy.host}/x.git", str(dest)], env=client_env)
        assert done.returncode == 0
        head = run_git(["-C", str(dest), "rev-parse", "HEAD"], env=client_env).stdout.strip()
        assert head == refs["refs/heads/main"]
    with pytest.raises(ValueError):
        FlakyProxy("127.0.0.1", 1, latency=-1)


# --------------------------------------------------------------------------------------------
# start-up failures are reported with the server's own words
# --------------------------------------------------------------------------------------------


class _BrokenSshServer(SshServer):
    def _config(self, host_key: Path, authorized_keys: Path) -> str:
        return super()._config(host_key, authorized_keys) + "NoSuchOption yes\n"


class _BrokenRegistry(Registry):
    def _write_config(self, htpasswd: Path) -> Path:
        path = super()._write_config(htpasswd)
        path.write_text("version: 0.1\nhttp:\n  addr: 127.0.0.1:1\n")  # and no storage
        return path


def test_start_up_failures_show_the_log_tail(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match=r"(?s)sshd exited.*log tail.*NoSuchOption"),
        _BrokenSshServer(tmp_path / "sshd", []),
    ):
        pass
    with (
        pytest.raises(RuntimeError, match=r"(?s)docker-registry exited.*log tail.*storage"),
        _BrokenRegistry(tmp_path / "registry", {"u": "p"}),
    ):
        pass
    with pytest.raises(RuntimeError, match="not a directory"), GitHttpServer(tmp_path / "no", {}):
        pass


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """A git client environment with a HOME of its own and no system/global config."""
    home = tmp_path / "client-home"
    home.mkdir()
    return git_env(home)
