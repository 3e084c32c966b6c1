"""`stepkit creds-init`: the flags of Knative's credential initializer, in every spelling Go accepts."""

from __future__ import annotations

import os
from pathlib import Path

import click

from initializers.creds import spec as specmod
from stepkit import contract
from stepkit.clickutil import (
    CONTEXT_SETTINGS,
    GoCommand,
    common_options,
    go_flag_option,
    go_option,
)


@click.command(
    "creds-init",
    cls=GoCommand,
    context_settings=CONTEXT_SETTINGS,
    help="""Write git, ssh and docker credentials from mounted secrets into $HOME.

Reads each named secret from <secrets-dir>/<secret>/<key> and writes ~/.gitconfig,
~/.git-credentials, ~/.ssh/ and ~/.docker/config.json, so that every later step of the
build, under any UID, finds them. Flags take Go's spellings too: -basic-git=a=b,
--basic-git a=b.""",
)
@go_option(
    "basic-git",
    envvar="STEPKIT_BASIC_GIT",
    multiple=True,
    metavar="SECRET=URL",
    help="basic-auth secret (username, password) for a git server url; a url with a path "
    "serves only that repository.",
)
@go_option(
    "ssh-git",
    envvar="STEPKIT_SSH_GIT",
    multiple=True,
    metavar="SECRET=HOST[:PORT]",
    help="ssh-auth secret (ssh-privatekey, known_hosts) for a git host; "
    "ssh://[user@]host[:port]/org/repo serves only that repository.",
)
@go_option(
    "basic-docker",
    envvar="STEPKIT_BASIC_DOCKER",
    multiple=True,
    metavar="SECRET=REGISTRY",
    help="basic-auth secret (username, password) for a docker registry.",
)
@go_option(
    "docker-config",
    envvar="STEPKIT_DOCKER_CONFIG_SECRETS",
    multiple=True,
    metavar="SECRET",
    help="dockerconfigjson secret (.dockerconfigjson) to merge into ~/.docker/config.json.",
)
@go_option(
    "docker-cfg",
    envvar="STEPKIT_DOCKER_CFG_SECRETS",
    multiple=True,
    metavar="SECRET",
    help="legacy dockercfg secret (.dockercfg) to merge into ~/.docker/config.json.",
)
@go_option(
    "secrets-dir",
    envvar="STEPKIT_SECRETS_DIR",
    default=None,
    metavar="DIR",
    help=f"Where secrets are mounted. [default: {contract.KNATIVE_SECRETS_DIR}, or "
    f"{contract.TEKTON_SECRETS_DIR} when only that exists]",
)
@go_flag_option(
    "require-known-hosts",
    envvar="STEPKIT_REQUIRE_KNOWN_HOSTS",
    help="Fail when an ssh secret has no known_hosts, instead of accepting the first host key.",
)
@go_option(
    "allow-cred-helper",
    envvar="STEPKIT_ALLOW_CRED_HELPERS",
    multiple=True,
    metavar="NAME",
    help="Docker credential helper a secret may name in credsStore/credHelpers, beside "
    f"{', '.join(specmod.DEFAULT_CRED_HELPERS)}.",
)
@common_options
def command(
    basic_git: tuple[str, ...],
    ssh_git: tuple[str, ...],
    basic_docker: tuple[str, ...],
    docker_config: tuple[str, ...],
    docker_cfg: tuple[str, ...],
    secrets_dir: str | None,
    require_known_hosts: bool,
    allow_cred_helper: tuple[str, ...],
) -> int:
    from initializers.creds.run import run
    from stepkit import validate

    git = tuple(specmod.parse_basic_git(v) for v in basic_git)
    specmod.unique("-basic-git", [(g.url, g.secret) for g in git])
    ssh = tuple(specmod.parse_ssh_git(v) for v in ssh_git)
    specmod.unique("-ssh-git", [(f"{s.host}:{s.port}/{s.path}", s.secret) for s in ssh])
    docker = tuple(specmod.parse_basic_docker(v) for v in basic_docker)
    specmod.unique("-basic-docker", [(d.registry, d.secret) for d in docker])
    for name in docker_config:
        validate.secret_name(name, "-docker-config")
    for name in docker_cfg:
        validate.secret_name(name, "-docker-cfg")
    spec = specmod.CredsSpec(
        home=contract.home(),
        secrets_dir=Path(
            secrets_dir or os.environ.get("STEPKIT_SECRETS_DIR") or contract.default_secrets_dir()
        ),
        basic_git=git,
        ssh_git=ssh,
        basic_docker=docker,
        docker_config=tuple(docker_config),
        docker_cfg=tuple(docker_cfg),
        require_known_hosts=require_known_hosts,
        cred_helpers=frozenset(specmod.DEFAULT_CRED_HELPERS) | frozenset(allow_cred_helper),
    )
    return run(spec)
