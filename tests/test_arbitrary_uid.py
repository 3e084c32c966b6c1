"""An OpenShift-style arbitrary UID with no passwd entry: creds-init and git-init over ssh still work."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from tests.conftest import Secrets, assert_no_leak
from tests.peers import (
    NOBODY,
    AuthorizedKey,
    NonRootUser,
    SshServer,
    gen_keypair,
    make_bare,
    make_repo,
)
from tests.test_creds_peers import stepkit_for

ARBITRARY_UID = 1000630000  # the first UID of an OpenShift project's range; GID 0 as there


def test_git_init_over_ssh_as_a_uid_without_passwd_entry(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        pwd.getpwuid(ARBITRARY_UID)  # the point of the test: ssh alone would refuse this UID
    shas = make_repo(tmp_path / "src", commits=2)
    make_bare(tmp_path / "src", tmp_path / "srv" / "repo.git")
    private, public = gen_keypair(tmp_path / "deploy")
    with (
        NonRootUser(ARBITRARY_UID, 0) as user,
        SshServer(tmp_path / "sshd", [AuthorizedKey(public, tmp_path / "srv")]) as sshd,
    ):
        stepkit = stepkit_for(user)
        secrets = Secrets(user.path("secrets"))
        secrets.add("deploy", {"ssh-privatekey": private, "known_hosts": sshd.host_key_line + "\n"})
        for path in secrets.root.rglob("*"):
            os.lchown(path, user.uid, user.gid)
        home, workspace = user.path("builder-home"), user.path("workspace")
        env = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
        res = user.run(
            [
                stepkit,
                "creds-init",
                f"-ssh-git=deploy=127.0.0.1:{sshd.port}",
                f"--secrets-dir={secrets.root}",
            ],
            env,
            workspace,
        )
        assert res.returncode == 0, res.stderr
        res = user.run(
            [stepkit, "git-init", f"-url={sshd.url_for('repo.git')}", "-path=src"], env, workspace
        )
        assert res.returncode == 0, res.stderr
        assert_no_leak(res.stdout + res.stderr, secrets.values)
        head = user.run(["git", "-C", "src", "rev-parse", "HEAD"], env, workspace)
        assert head.stdout.strip() == shas["HEAD"]
        assert (workspace / "src").stat().st_uid == ARBITRARY_UID
        # Without the passwd entry stepkit gives ssh, the same clone fails: the test is live.
        plain = user.run(["git", "clone", "-q", sshd.url_for("repo.git"), "plain"], env, workspace)
        assert plain.returncode != 0 and "No user exists for uid" in plain.stderr


def test_git_init_over_ssh_takes_keys_from_home_not_the_passwd_home(tmp_path: Path) -> None:
    """Keys and known_hosts in $HOME/.ssh, no creds-init (Tekton's git-clone Task copies its
    ssh-directory workspace there): ssh finds them though the UID's passwd home is elsewhere."""
    shas = make_repo(tmp_path / "src", commits=2)
    make_bare(tmp_path / "src", tmp_path / "srv" / "repo.git")
    private, public = gen_keypair(tmp_path / "deploy")
    with (
        NonRootUser(NOBODY, NOBODY) as user,
        SshServer(tmp_path / "sshd", [AuthorizedKey(public, tmp_path / "srv")]) as sshd,
    ):
        stepkit = stepkit_for(user)
        home, workspace = user.path("git-home"), user.path("workspace")
        assert pwd.getpwuid(NOBODY).pw_dir != str(home)  # where ssh alone looks for ~/.ssh
        ssh_dir = user.path("git-home/.ssh")
        ssh_dir.chmod(0o700)
        for name, text in (("id_ed25519", private), ("known_hosts", sshd.host_key_line + "\n")):
            (ssh_dir / name).write_text(text)
            user.give(ssh_dir / name, 0o400)
        env = {"HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
        url = sshd.url_for("repo.git")
        res = user.run(
            [stepkit, "git-init", f"-url={url}", "-path=src", "-retries=0"], env, workspace
        )
        assert res.returncode == 0, res.stderr
        head = user.run(["git", "-C", "src", "rev-parse", "HEAD"], env, workspace)
        assert head.stdout.strip() == shas["HEAD"]
        # Plain git's ssh looks in the passwd entry's home and finds nothing: the test is live.
        plain = user.run(["git", "clone", "-q", url, "plain"], env, workspace)
        assert plain.returncode != 0 and "Host key verification failed" in plain.stderr
