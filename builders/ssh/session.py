"""The remote side: connect with paramiko, check the host key as creds-init's config says,
run commands with their output relayed live, and upload over SFTP.

No local shell and no ssh binary are involved: the commands go to the remote user's shell
as the ssh protocol's `exec` request, exactly as given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import paramiko

from builders.ssh.upload import Entry
from stepkit.errors import DeniedError, InputError, StepkitError

log = logging.getLogger("ssh")

_READ = 32 * 1024
# After a command's exit status came, how long to wait for the end of its output: a
# process it left in the background may hold the channel open.
_LINGER = 2.0
_KEY_TYPES: tuple[type[paramiko.PKey], ...] = (
    paramiko.Ed25519Key,
    paramiko.ECDSAKey,
    paramiko.RSAKey,
)


@dataclass(frozen=True)
class Target:
    """Where to connect and how to trust it."""

    host: str
    port: int
    user: str
    key: paramiko.PKey
    key_source: str  # for messages: "-key" or the IdentityFile's path
    known_hosts: Path | None
    strict: bool  # True: an unknown host is refused; False: accept-new
    timeout: float

    @property
    def name(self) -> str:
        """The host as known_hosts names it."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def shown(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def load_key(text: str, source: str) -> paramiko.PKey:
    """A private key from its text (OpenSSH or PEM), without echoing any of it in an error."""
    import io

    text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    for kind in _KEY_TYPES:
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            raise InputError(
                f"the private key from {source} is encrypted; give a key without a passphrase"
            ) from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise InputError(f"the private key from {source} is not an ed25519, ECDSA or RSA private key")


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's `StrictHostKeyChecking accept-new`: a host not in known_hosts is trusted and
    recorded there (so later steps check it); a known host with another key is refused by
    paramiko before this is asked."""

    def __init__(self, known_hosts: Path | None) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        log.warning(
            "the host key of %s is not in known_hosts; accepting it on first use (%s) as "
            "creds-init's ssh config says (StrictHostKeyChecking accept-new): give the ssh "
            "secret a known_hosts key to have it checked",
            hostname,
            _fingerprint(key),
        )
        if self.known_hosts is not None:
            _append_known_host(
                self.known_hosts, f"{hostname} {key.get_name()} {key.get_base64()}\n"
            )


class _Unknown(Exception):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class _Strict(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _Unknown(hostname, key)


def _append_known_host(path: Path, line: str) -> None:
    """Add one line to known_hosts: never through a symlink, created 0600."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        log.warning("cannot record the host key in %s: %s", path, exc.strerror)
        return
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(line)


@contextlib.contextmanager
def connect(target: Target) -> Iterator[paramiko.SSHClient]:
    """An authenticated connection; exit 3 for a changed or unknown host key and a refused key."""
    client = paramiko.SSHClient()
    if target.known_hosts is not None and target.known_hosts.exists():
        try:
            client.load_host_keys(str(target.known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise StepkitError(f"cannot read known_hosts {target.known_hosts}: {exc}") from None
    client.set_missing_host_key_policy(
        _Strict() if target.strict else _AcceptNew(target.known_hosts)
    )
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            pkey=target.key,
            allow_agent=False,
            look_for_keys=False,
            timeout=target.timeout,
            banner_timeout=target.timeout,
            auth_timeout=target.timeout,
            channel_timeout=target.timeout,
        )
    except _Unknown as exc:
        where = target.known_hosts or "no known_hosts file"
        raise DeniedError(
            f"the host key of {exc.hostname} ({_fingerprint(exc.key)}) is not in {where}, and "
            "creds-init's ssh config asks for strict checking: add the host's key to the ssh "
            "secret's known_hosts"
        ) from None
    except paramiko.BadHostKeyException as exc:
        raise DeniedError(
            f"the host key of {target.name} has CHANGED: known_hosts {target.known_hosts} has "
            f"{_fingerprint(exc.expected_key)}, the server offered {_fingerprint(exc.key)}. "
            "Someone may be intercepting the connection, or the host was reinstalled; "
            "refusing to connect"
        ) from None
    except paramiko.AuthenticationException:
        raise DeniedError(
            f"{target.shown} refused the key from {target.key_source} "
            f"({target.key.get_name()} {target.key.fingerprint})"
        ) from None
    except TimeoutError:
        raise StepkitError(
            f"cannot connect to {target.host}:{target.port}: no answer within {target.timeout:g} s"
        ) from None
    except paramiko.SSHException as exc:
        raise StepkitError(f"ssh to {target.host}:{target.port} failed: {exc}") from None
    except OSError as exc:
        raise StepkitError(
            f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}"
        ) from None
    try:
        yield client
    finally:
        client.close()


def _write(stream: IO[str], data: bytes) -> None:
    stream.buffer.write(data)  # type: ignore[attr-defined]  # the SDK's masked streams have one
    stream.flush()


def run_command(
    client: paramiko.SSHClient, command: str, *, timeout: float, capture: bool
) -> tuple[int, bytes]:
    """Run one command remotely, relaying stdout and stderr as they arrive; (exit status, stdout if captured).

    Past the timeout the remote command is sent SIGTERM, then the channel is closed (sshd
    then ends the session), and the step fails.
    """
    transport = client.get_transport()
    assert transport is not None
    chan = transport.open_session(timeout=timeout)
    captured = bytearray()
    try:
        chan.exec_command(command)
        chan.shutdown_write()  # an empty stdin: a builder never prompts
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                _signal(chan, "TERM")
                raise StepkitError(
                    f"the command did not finish within {timeout:g} s; it was sent SIGTERM and "
                    "the session closed"
                )
            select.select([chan], [], [], min(0.2, deadline - now))
            while chan.recv_stderr_ready():
                _write(sys.stderr, chan.recv_stderr(_READ))
            if chan.recv_ready():
                data = chan.recv(_READ)
                if capture:
                    captured += data
                _write(sys.stdout, data)
                continue
            if chan.exit_status_ready():
                if chan.eof_received and not chan.recv_stderr_ready():
                    break
                exited_at = exited_at or now
                if now - exited_at >= _LINGER:
                    break
            elif chan.closed:
                break
        status = chan.recv_exit_status() if chan.exit_status_ready() else -1
    finally:
        chan.close()
    return status, bytes(captured)


def _signal(chan: paramiko.Channel, name: str) -> None:
    """RFC 4254 §6.9 "signal" request (OpenSSH's sshd delivers it since 7.9).

    paramiko has no method for it, so the message is built here.
    """
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(chan.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string(name)
    with contextlib.suppress(Exception):
        chan.transport._send_user_message(message)  # type: ignore[union-attr]


def upload(client: paramiko.SSHClient, entries: Sequence[Entry], *, timeout: float) -> int:
    """Create the entries remotely in order; returns the bytes sent."""
    sftp = client.open_sftp()
    sent = 0
    current = ""
    try:
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(timeout)
        for entry in entries:
            current = entry.dest
            if entry.kind == "parent":
                _ensure_dir(sftp, entry.dest, None)
            elif entry.kind == "dir":
                _ensure_dir(sftp, entry.dest, entry.mode)
            elif entry.kind == "link":
                with contextlib.suppress(FileNotFoundError):
                    attrs = sftp.lstat(entry.dest)
                    if attrs.st_mode is not None and (attrs.st_mode & 0o170000) == 0o040000:
                        raise StepkitError(
                            f"cannot upload the symbolic link {entry.dest}: a directory is there"
                        )
                    sftp.remove(entry.dest)
                sftp.symlink(entry.target, entry.dest)
            else:
                assert entry.local is not None
                sent += _put(sftp, entry.local, entry.dest, entry.mode)
    except TimeoutError:
        raise StepkitError(f"the upload did not progress within {timeout:g} s") from None
    except PermissionError as exc:
        raise DeniedError(f"the remote host refused to write {current}: {exc.strerror}") from None
    except OSError as exc:
        raise StepkitError(f"the upload of {current} failed: {exc.strerror or exc}") from None
    finally:
        sftp.close()
    return sent


def _ensure_dir(sftp: paramiko.SFTPClient, path: str, mode: int | None) -> None:
    """mkdir -p, then the mode (also of a directory that was there: the mode is the source's).

    mode None: a parent, made 0755 when missing and left alone when there.
    """
    try:
        attrs = sftp.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path.rstrip("/"))
        if parent and parent != path:
            with contextlib.suppress(OSError):
                sftp.stat(parent)
                parent = ""
            if parent:
                _ensure_dir(sftp, parent, None)
        sftp.mkdir(path, 0o755 if mode is None else mode)
        if mode is None:
            return
    else:
        if attrs.st_mode is not None and (attrs.st_mode & 0o170000) != 0o040000:
            raise StepkitError(f"cannot upload into {path}: it exists and is not a directory")
        if mode is None:
            return
    sftp.chmod(path, mode)  # mkdir's mode is cut by the server's umask


def _put(sftp: paramiko.SFTPClient, local: Path, dest: str, mode: int) -> int:
    """Write to a temporary name beside dest, set the mode, rename over dest."""
    head, tail = os.path.split(dest)
    temp = os.path.join(head, f".{tail}.stepkit-{uuid.uuid4().hex[:12]}")
    try:
        with local.open("rb") as source, sftp.open(temp, "wb") as remote:
            remote.set_pipelined(True)
            size = 0
            for block in iter(lambda: source.read(_READ), b""):
                remote.write(block)
                size += len(block)
        sftp.chmod(temp, mode)
        sftp.posix_rename(temp, dest)
    except BaseException:
        with contextlib.suppress(Exception):
            sftp.remove(temp)
        raise
    return size
