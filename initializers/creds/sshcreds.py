"""ssh's side of creds-init: keys, `~/.ssh/config`, `known_hosts`, and the git settings that make ssh use them.

OpenSSH finds `~` in the passwd entry, not in $HOME, so a step running under another UID
(or one without a passwd entry) would never read `$HOME/.ssh`. `core.sshCommand` in
`.gitconfig` points ssh at our config explicitly, and the config names the known_hosts
file and each key by absolute path: every later step's git uses them, whatever its UID.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from initializers.creds.spec import SshGit
from stepkit.validate import host_for_url

log = logging.getLogger(__name__)

HEADER = "# Written by stepkit creds-init. git uses it through core.sshCommand in ~/.gitconfig.\n"


@dataclass(frozen=True)
class SshFiles:
    config: str
    known_hosts: str
    keys: dict[str, str]  # file name under ~/.ssh -> key text
    git_sections: str  # core.sshCommand and url.insteadOf sections for .gitconfig


def _alias(entry: SshGit) -> str:
    host = entry.host.replace(":", "_")
    return f"stepkit--{entry.secret}--{host}--{entry.port}"


def _host_pattern(entry: SshGit) -> str:
    return entry.host


def _block(pattern: str, entry: SshGit, key_path: Path, checking: str, known: Path) -> str:
    lines = [
        f"Host {pattern}",
        f"    HostName {entry.host}",
        f"    Port {entry.port}",
    ]
    if entry.user:
        lines.append(f"    User {entry.user}")
    lines += [
        f"    IdentityFile {key_path}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {known}",
        f"    StrictHostKeyChecking {checking}",
        "    BatchMode yes",
    ]
    return "\n".join(lines) + "\n"


def _instead_of(entry: SshGit, alias: str) -> str:
    """git url rewrites that send this repository's urls to the alias that holds its key."""
    h = host_for_url(entry.host)
    port = "" if entry.port == 22 else f":{entry.port}"
    users = [entry.user] if entry.user else ["git", ""]
    out: list[str] = []
    for user in users:
        at = f"{user}@" if user else ""
        target = f"ssh://{at}{alias}/{entry.path}"
        sources = [f"ssh://{at}{h}{port}/{entry.path}"]
        if entry.port == 22 and ":" not in entry.host:
            sources.append(f"{at}{h}:{entry.path}")
        out.append(f'[url "{target}"]\n' + "".join(f"\tinsteadOf = {s}\n" for s in sources))
    return "".join(out)


def build(
    entries: Sequence[SshGit],
    keys: Mapping[str, str],
    known_hosts: Mapping[str, str],
    home: Path,
) -> SshFiles:
    """keys and known_hosts map secret name -> text; a secret without known_hosts is in neither."""
    ssh_dir = home / ".ssh"
    known = ssh_dir / "known_hosts"
    blocks: list[str] = []
    host_blocks: list[str] = []
    rewrites: list[str] = []
    for entry in entries:
        checking = "yes" if entry.secret in known_hosts else "accept-new"
        key_path = ssh_dir / f"id_{entry.secret}"
        if entry.path:
            alias = _alias(entry)
            blocks.append(_block(alias, entry, key_path, checking, known))
            rewrites.append(_instead_of(entry, alias))
        else:
            host_blocks.append(_block(_host_pattern(entry), entry, key_path, checking, known))
    # ssh takes the first value it finds for each keyword: repository aliases, then
    # hosts, then the defaults for everything else.
    defaults = f"Host *\n    UserKnownHostsFile {known}\n"
    config = HEADER + "".join(blocks + host_blocks) + defaults
    joined = "".join(
        text if text.endswith("\n") else text + "\n" for text in known_hosts.values() if text
    )
    git = f"[core]\n\tsshCommand = ssh -F {ssh_dir / 'config'}\n" + "".join(rewrites)
    return SshFiles(
        config=config,
        known_hosts=joined,
        keys={f"id_{name}": text for name, text in keys.items()},
        git_sections=git,
    )
