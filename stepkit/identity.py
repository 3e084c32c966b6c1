"""A passwd entry whose home is $HOME, for the programs that take home from passwd: OpenSSH.

OpenSSH exits with "No user exists for uid N" when getpwuid() finds nothing, and a
container run under an arbitrary UID has no line in /etc/passwd (a read-only root can't
gain one). And where the entry exists, ssh reads `~/.ssh` from its home, not from $HOME: a
step with HOME=/home/git (Tekton's git-clone Task) or a root step with HOME=/builder/home
would not see the keys and known_hosts put in $HOME/.ssh. nss_wrapper answers those
look-ups from files of our own, for the child processes we start, when the library is
installed (Debian: libnss-wrapper).
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
    """Environment that gives this UID a passwd entry with home = $HOME; empty when not needed.

    Needed when the UID has no entry, or when its entry names another home while
    $HOME/.ssh exists (keys and known_hosts put there for ssh to find). An existing entry
    keeps its name, so ssh's default login name does not change. scratch is a private
    directory that outlives the child processes.
    """
    uid, gid = os.getuid(), os.getgid()
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    if entry is not None and (
        os.path.normpath(entry.pw_dir) == os.path.normpath(home)
        or not os.path.isdir(os.path.join(home, ".ssh"))
    ):
        return {}
    library = next((p for p in _LIBRARIES if os.path.exists(p)), None)
    if library is None:
        if entry is None:
            log.warning(
                "UID %d has no passwd entry and libnss_wrapper is not installed: "
                "ssh will refuse to run",
                uid,
            )
        else:
            log.warning(
                "ssh reads ~/.ssh from %s (UID %d's passwd entry), not from $HOME=%s, and "
                "libnss_wrapper is not installed to change that",
                entry.pw_dir,
                uid,
                home,
            )
        return {}
    passwd = scratch / "passwd"
    group = scratch / "group"
    name, gecos = (USER_NAME, "stepkit build user") if entry is None else (entry.pw_name, "")
    shell = "/bin/sh" if entry is None else entry.pw_shell
    # The UID's own line is replaced, so no look-up can find its old home.
    others = [
        line
        for line in _read("/etc/passwd").splitlines(keepends=True)
        if line.split(":")[2:3] != [str(uid)]
    ]
    _write(passwd, "".join(others) + f"{name}:x:{uid}:{gid}:{gecos}:{home}:{shell}\n")
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
