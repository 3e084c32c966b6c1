"""A passwd entry for a UID that has none (OpenShift-style arbitrary UIDs), for the programs that insist on one.

OpenSSH exits with "No user exists for uid N" when getpwuid() finds nothing, and a
container run under an arbitrary UID has no line in /etc/passwd (a read-only root can't
gain one). nss_wrapper answers those look-ups from files of our own, for the child
processes we start, when the library is installed (Debian: libnss-wrapper).
"""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path

log = logging.getLogger(__name__)

_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so",
    "/usr/lib/aarch64-linux-gnu/libnss_wrapper.so",
    "/usr/lib64/libnss_wrapper.so",
    "/usr/lib/libnss_wrapper.so",
)
USER_NAME = "builder"


def _read(path: str) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return text if not text or text.endswith("\n") else text + "\n"


def passwd_env(home: str, scratch: Path) -> dict[str, str]:
    """Environment that gives this UID a passwd entry (home = $HOME); empty when it has one.

    scratch is a private directory that outlives the child processes.
    """
    uid, gid = os.getuid(), os.getgid()
    try:
        pwd.getpwuid(uid)
        return {}
    except KeyError:
        pass
    library = next((p for p in _LIBRARIES if os.path.exists(p)), None)
    if library is None:
        log.warning(
            "UID %d has no passwd entry and libnss_wrapper is not installed: ssh will refuse to run",
            uid,
        )
        return {}
    passwd = scratch / "passwd"
    group = scratch / "group"
    passwd.write_text(
        _read("/etc/passwd") + f"{USER_NAME}:x:{uid}:{gid}:stepkit build user:{home}:/bin/sh\n"
    )
    groups = _read("/etc/group")
    if not any(line.split(":")[2:3] == [str(gid)] for line in groups.splitlines()):
        groups += f"{USER_NAME}:x:{gid}:\n"
    group.write_text(groups)
    preload = os.environ.get("LD_PRELOAD", "")
    return {
        "LD_PRELOAD": f"{library} {preload}".strip(),
        "NSS_WRAPPER_PASSWD": str(passwd),
        "NSS_WRAPPER_GROUP": str(group),
    }
