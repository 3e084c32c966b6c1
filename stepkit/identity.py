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
import sys
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


def _write(path: Path, text: str) -> None:
    """Replace path atomically: a concurrent reader (parallel ssh) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


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
    _write(
        passwd,
        _read("/etc/passwd") + f"{USER_NAME}:x:{uid}:{gid}:stepkit build user:{home}:/bin/sh\n",
    )
    groups = _read("/etc/group")
    if not any(line.split(":")[2:3] == [str(gid)] for line in groups.splitlines()):
        groups += f"{USER_NAME}:x:{gid}:\n"
    _write(group, groups)
    preload = os.environ.get("LD_PRELOAD", "")
    return {
        "LD_PRELOAD": f"{library} {preload}".strip(),
        "NSS_WRAPPER_PASSWD": str(passwd),
        "NSS_WRAPPER_GROUP": str(group),
    }


def exec_with_passwd(argv: list[str]) -> int:
    """exec argv with a passwd entry for this UID: what images/ssh runs for a UID without one.

    The files go to $HOME/.stepkit/nss-UID-GID (rewritten, atomically, on every call; the
    directory outlives the exec'd program), or to a new scratch directory when $HOME is not
    writable.
    """
    if not argv or not os.path.isabs(argv[0]):
        print("usage: python -m stepkit.identity /absolute/program [ARG...]", file=sys.stderr)
        return 2
    home = os.environ.get("HOME") or "/"
    scratch = Path(home, ".stepkit", f"nss-{os.getuid()}-{os.getgid()}")
    try:
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        from stepkit import fsutil

        scratch = fsutil.scratch_dir("stepkit-nss-")
    env = {**os.environ, **passwd_env(home, scratch)}
    try:
        os.execve(argv[0], argv, env)  # noqa: S606 -- exec, not a shell: the point here
    except OSError as exc:
        print(f"error: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(exec_with_passwd(sys.argv[1:]))
