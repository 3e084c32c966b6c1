"""creds-init's work: read and check every secret first, then write all files, each atomically."""

from __future__ import annotations

import json
import logging

from initializers.creds import gitcreds, sshcreds, sshkey
from initializers.creds.dockercreds import DockerConfig
from initializers.creds.secretfs import SecretDir
from initializers.creds.spec import CredsSpec
from stepkit.errors import InputError
from stepkit.fsutil import SafeTree

log = logging.getLogger(__name__)

GITCONFIG = ".gitconfig"
GIT_CREDENTIALS = ".git-credentials"
SSH_CONFIG = ".ssh/config"
KNOWN_HOSTS = ".ssh/known_hosts"
DOCKER_CONFIG = ".docker/config.json"


def run(spec: CredsSpec) -> int:
    secrets = SecretDir(spec.secrets_dir)

    logins: list[gitcreds.GitLogin] = []
    for entry in spec.basic_git:
        flag = f"-basic-git {entry.secret}"
        user = secrets.credential(entry.secret, "username", flag=flag, hidden=False)
        password = secrets.credential(entry.secret, "password", flag=flag)
        logins.append(gitcreds.GitLogin(entry, user, password))

    keys: dict[str, str] = {}
    known: dict[str, str] = {}
    for ssh in spec.ssh_git:
        if ssh.secret in keys:
            continue
        flag = f"-ssh-git {ssh.secret}"
        raw = secrets.read_text(ssh.secret, "ssh-privatekey", flag=flag)
        assert raw is not None
        keys[ssh.secret] = sshkey.check(raw, flag)
        hosts = secrets.read_text(ssh.secret, "known_hosts", flag=flag, required=False)
        if hosts is not None and hosts.strip():
            if "\x00" in hosts:
                raise InputError(f"{flag}: known_hosts holds a NUL byte")
            known[ssh.secret] = hosts.replace("\r\n", "\n")
        elif spec.require_known_hosts:
            raise InputError(
                f"{flag}: secret has no known_hosts and --require-known-hosts is set; "
                "add the server's host key to the secret under 'known_hosts'"
            )
        else:
            log.warning(
                "%s: secret has no known_hosts; ssh will accept the host key the server "
                "first shows (accept-new), for this secret's hosts only",
                flag,
            )

    ssh_files = sshcreds.build(spec.ssh_git, keys, known, spec.home)
    gitconfig, git_credentials, repo_credentials = gitcreds.build(
        logins, spec.home, ssh_files.git_sections
    )

    with SafeTree(spec.home, label="$HOME") as home:
        existing_raw = home.read(DOCKER_CONFIG)
        existing = None
        if existing_raw is not None and existing_raw.strip():
            try:
                existing = json.loads(existing_raw)
            except ValueError:
                raise InputError("$HOME/.docker/config.json exists but is not valid JSON") from None
            if not isinstance(existing, dict):
                raise InputError("$HOME/.docker/config.json exists but is not a JSON object")
        docker = DockerConfig(existing, spec.cred_helpers)
        for name in spec.docker_cfg:
            source = f"-docker-cfg {name}"
            text = secrets.read_text(name, ".dockercfg", flag=source)
            assert text is not None
            docker.add_json(text, source, legacy=True)
        for name in spec.docker_config:
            source = f"-docker-config {name}"
            text = secrets.read_text(name, ".dockerconfigjson", flag=source)
            assert text is not None
            docker.add_json(text, source, legacy=False)
        for basic in spec.basic_docker:
            source = f"-basic-docker {basic.secret}"
            user = secrets.credential(basic.secret, "username", flag=source, hidden=False)
            password = secrets.credential(basic.secret, "password", flag=source)
            docker.add_basic(basic.registry, user, password, source)

        files: list[tuple[str, bytes]] = [
            (GITCONFIG, gitconfig.encode()),
            (GIT_CREDENTIALS, git_credentials.encode()),
            (gitcreds.REPO_CREDENTIALS, repo_credentials.encode()),
            *((f".ssh/{name}", text.encode()) for name, text in ssh_files.keys.items()),
            (SSH_CONFIG, ssh_files.config.encode()),
            (KNOWN_HOSTS, ssh_files.known_hosts.encode()),
            (DOCKER_CONFIG, docker.render().encode()),
        ]
        # Every target is checked before the first is written: a refused symlink must not
        # leave half of the credentials behind.
        for rel, _ in files:
            home.check_writable(rel)
        for rel, data in files:
            home.write(rel, data, mode=0o600, dir_mode=0o700)

    log.info(
        "wrote credentials to %s: git %d, ssh %d, docker %d",
        spec.home,
        len(logins),
        len(spec.ssh_git),
        len(docker.auths),
    )
    return 0
