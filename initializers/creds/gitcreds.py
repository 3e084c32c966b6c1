"""git's side of creds-init: `.gitconfig` and `.git-credentials`, read through git's store helper (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from shlex import quote as sh_quote
from urllib.parse import quote

from initializers.creds.spec import BasicGit
from stepkit.gitenv import config_value

HEADER = "# Written by stepkit creds-init. Every step of the build reads it through $HOME.\n"


@dataclass(frozen=True)
class GitLogin:
    entry: BasicGit
    username: str
    password: str


def _store_line(login: GitLogin, path: str) -> str:
    # git url-decodes user and password from this file: encode every reserved byte so
    # '@ : / % # ? +', spaces and non-ASCII come back exactly.
    user = quote(login.username, safe="")
    password = quote(login.password, safe="")
    e = login.entry
    return f"{e.scheme}://{user}:{password}@{e.netloc}{path}\n"


REPO_CREDENTIALS = ".git-credentials-repos"


def read_only_helper(store: Path | None = None) -> str:
    """A credential.helper value: git's store helper, asked only to look credentials up.

    git tells every helper to `erase` a credential the server answered 401 to, and the
    store helper deletes it: one refused fetch (a repository the token cannot read, a
    server refusing for a moment) would leave every later step without it. This shell
    function passes `get` to the store helper and ignores `store` and `erase`, so the file
    stays as creds-init wrote it. It needs only git and sh, which git runs every helper
    through anyway, so it works in any step image.
    """
    store_args = f"--file={sh_quote(str(store))} " if store is not None else ""
    snippet = f'f() {{ if [ "$1" = get ]; then exec git credential-store {store_args}get; fi; }}; f'
    return config_value("!" + snippet)


def build(logins: Sequence[GitLogin], home: Path, extra_sections: str = "") -> tuple[str, str, str]:
    """Return (.gitconfig, .git-credentials, .git-credentials-repos), in command-line order.

    A login whose url has a path serves only that repository: its section sets
    useHttpPath, so git hands the path to the store helper, which matches only the line
    with that exact path (".git" spelling included). Those lines live in a store of their
    own, which that section alone names after resetting the helper list: a request
    without a path matches every line of its host, whatever its path, so one shared file
    would offer a repository's token to the whole host.
    """
    repo_store = home / REPO_CREDENTIALS
    config = [HEADER, "[credential]\n", f"\thelper = {read_only_helper()}\n"]
    store_host: list[str] = []
    store_repo: list[str] = []
    for login in logins:
        e = login.entry
        if not e.path:
            config.append(f'[credential "{e.url}"]\n\tusername = {config_value(login.username)}\n')
            store_host.append(_store_line(login, ""))
            continue
        for path in (e.path, e.path + ".git"):
            # git matches these sections against the url it builds with every byte but the
            # unreserved ones and '/' percent-encoded, and compares a reserved byte's escape
            # literally: a path with '=' only matches if written as '%3D' here too.
            section = f'[credential "{e.scheme}://{e.netloc}{quote(path)}"]\n'
            section += f"\tusername = {config_value(login.username)}\n\tuseHttpPath = true\n"
            # An empty value resets the helper list (git >= 2.9).
            section += f"\thelper =\n\thelper = {read_only_helper(repo_store)}\n"
            config.append(section)
            store_repo.append(_store_line(login, path))
    config.append(extra_sections)
    return "".join(config), "".join(store_host), "".join(store_repo)
