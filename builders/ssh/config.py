"""What creds-init's ssh config says about one host and port: key, known_hosts, checking, user.

creds-init writes `$HOME/.ssh/config` as `Host` blocks, one per ssh secret (SPEC §1):

    Host 127.0.0.1
        HostName 127.0.0.1
        Port 2222
        IdentityFile /builder/home/.ssh/id_deploy
        UserKnownHostsFile /builder/home/.ssh/known_hosts
        StrictHostKeyChecking yes

and a final `Host *` with the known_hosts file. OpenSSH matches `Host` against the name
only, so two secrets for one host on two ports would give both the first block's key; we
read a block with a `Port` as meant for that port alone, which is what creds-init means.
As in OpenSSH, the first value found for a keyword wins.
"""

from __future__ import annotations

import fnmatch
import shlex
from dataclasses import dataclass
from pathlib import Path

from stepkit.errors import InputError

# The keywords we read; everything else in the file is left alone.
_KEYS = {
    "hostname",
    "port",
    "user",
    "identityfile",
    "userknownhostsfile",
    "stricthostkeychecking",
}


@dataclass(frozen=True)
class HostConfig:
    """The settings for one destination, with None where the config says nothing."""

    port: int | None
    user: str | None
    identity_file: Path | None
    known_hosts: Path | None
    checking: str | None  # yes, accept-new, no, ... as written (lower case)


@dataclass(frozen=True)
class _Block:
    patterns: tuple[str, ...]
    settings: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.settings if k == key), None)

    def matches(self, host: str) -> bool:
        """OpenSSH's pattern list: any positive match, and no negated one."""
        hit = False
        for pattern in self.patterns:
            if pattern.startswith("!"):
                if fnmatch.fnmatchcase(host, pattern[1:].lower()):
                    return False
            elif fnmatch.fnmatchcase(host, pattern.lower()):
                hit = True
        return hit


def _parse(text: str, where: Path) -> list[_Block]:
    blocks: list[_Block] = []
    patterns: tuple[str, ...] = ("*",)  # settings before the first Host apply to all
    settings: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.replace("=", " ", 1).partition(" ")
        key = key.lower()
        try:
            words = shlex.split(rest.strip(), comments=True)
        except ValueError:
            raise InputError(f"{where}:{number}: cannot parse this line") from None
        if key in ("host", "match"):
            blocks.append(_Block(patterns, tuple(settings)))
            # A Match block is not creds-init's; its settings apply to no host we look up.
            patterns = tuple(words) if key == "host" else ()
            settings = []
        elif key in _KEYS and words:
            settings.append((key, words[0]))
    blocks.append(_Block(patterns, tuple(settings)))
    return blocks


def lookup(path: Path, host: str, port: int | None, home: Path) -> HostConfig:
    """The settings for host (lower case) and port (None: whatever the config gives) in the config at path.

    `~/` in a file name is home ($HOME, not the passwd entry's: a pod's UID may have none).

    A missing file gives no settings: the builder then needs -key and -user, and a known_hosts
    file, since it checks host keys strictly.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return HostConfig(None, None, None, None, None)
    except OSError as exc:
        raise InputError(f"cannot read the ssh config {path}: {exc.strerror}") from None
    found: dict[str, str] = {}
    for block in _parse(text, path):
        if not block.matches(host):
            continue
        block_port = block.get("port")
        if port is not None and block_port is not None and block_port != str(port):
            continue  # another secret's block for this host, on another port
        for key, value in block.settings:
            found.setdefault(key, value)
    chosen_port: int | None = None
    if port is None and "port" in found:
        text_port = found["port"]
        if not text_port.isdigit() or not 1 <= int(text_port) <= 65535:
            raise InputError(f"{path}: Port {text_port!r} for {host} is not a port number")
        chosen_port = int(text_port)

    def file(key: str) -> Path | None:
        value = found.get(key)
        if value is None or value.lower() == "none":
            return None
        return Path(home / value[2:]) if value.startswith("~/") else Path(value)

    return HostConfig(
        port=chosen_port,
        user=found.get("user"),
        identity_file=file("identityfile"),
        known_hosts=file("userknownhostsfile"),
        checking=found["stricthostkeychecking"].lower()
        if "stricthostkeychecking" in found
        else None,
    )
