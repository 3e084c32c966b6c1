"""git's side of creds-init: `.gitconfig` and `.git-credentials` for the store helper (SPEC §1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from initializers.creds.spec import BasicGit

HEADER = "# Written by stepkit creds-init. Every step of the build reads it through $HOME.\n"


@dataclass(frozen=True)
class GitLogin:
    entry: BasicGit
    username: str
    password: str


def quote_value(value: str) -> str:
    """A git config value in double quotes, so '#', ';' and spaces stay part of it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _store_line(login: GitLogin, path: str) -> str:
    # git url-decodes user and password from this file: encode every reserved byte so
    # '@ : / % # ? +', spaces and non-ASCII come back exactly.
    user = quote(login.username, safe="")
    password = quote(login.password, safe="")
    e = login.entry
    return f"{e.scheme}://{user}:{password}@{e.netloc}{path}\n"


def build(logins: Sequence[GitLogin], extra_sections: str = "") -> tuple[str, str]:
    """Return (.gitconfig, .git-credentials) for the given logins, in command-line order.

    A login whose url has a path serves only that repository: its section sets
    useHttpPath, so git hands the path to the store helper, which then matches only the
    line with that exact path (".git" spelling included). Host-wide lines come first in
    the store, because a request without a path takes the first line of its host. A host
    that has only repository-scoped logins gets no helper at host level, so a token for
    one repository is never offered to another.
    """
    config = [HEADER, "[credential]\n", "\thelper = store\n"]
    host_wide = {(g.entry.scheme, g.entry.netloc) for g in logins if not g.entry.path}
    store_host: list[str] = []
    store_repo: list[str] = []
    reset_done: set[tuple[str, str]] = set()
    for login in logins:
        e = login.entry
        if not e.path:
            config.append(f'[credential "{e.url}"]\n\tusername = {quote_value(login.username)}\n')
            store_host.append(_store_line(login, ""))
            continue
        host_key = (e.scheme, e.netloc)
        scoped_only = host_key not in host_wide
        if scoped_only and host_key not in reset_done:
            # An empty helper value resets the list for this host (git >= 2.9).
            config.append(f'[credential "{e.scheme}://{e.netloc}"]\n\thelper =\n')
            reset_done.add(host_key)
        for path in (e.path, e.path + ".git"):
            section = f'[credential "{e.scheme}://{e.netloc}{path}"]\n'
            section += f"\tusername = {quote_value(login.username)}\n\tuseHttpPath = true\n"
            if scoped_only:
                section += "\thelper =\n\thelper = store\n"
            config.append(section)
            store_repo.append(_store_line(login, path))
    config.append(extra_sections)
    return "".join(config), "".join(store_host + store_repo)
