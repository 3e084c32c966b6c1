"""git's side of creds-init: `.gitconfig` and `.git-credentials` for the store helper (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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


def build(logins: Sequence[GitLogin], home: Path, extra_sections: str = "") -> tuple[str, str, str]:
    """Return (.gitconfig, .git-credentials, .git-credentials-repos), in command-line order.

    A login whose url has a path serves only that repository: its section sets
    useHttpPath, so git hands the path to the store helper, which matches only the line
    with that exact path (".git" spelling included). Those lines live in a store of their
    own, which that section alone names after resetting the helper list: the store helper
    moves every credential it approves to the top of its file, and a request without a
    path takes the first line of its host, so one shared file would soon offer a
    repository's token to the whole host.
    """
    repo_store = home / REPO_CREDENTIALS
    config = [HEADER, "[credential]\n", "\thelper = store\n"]
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
            section += f"\thelper =\n\thelper = store --file={repo_store}\n"
            config.append(section)
            store_repo.append(_store_line(login, path))
    config.append(extra_sections)
    return "".join(config), "".join(store_host), "".join(store_repo)
