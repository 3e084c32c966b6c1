"""`stepkit ssh`: run commands on a remote host and upload files, with the key and host keys creds-init wrote.

A builder of the SDK (stepkit.builder): the SDK parses params and environment variables,
masks all output and handles exit codes and results; builders.ssh.session talks to the
host.
"""

from __future__ import annotations

import logging

from stepkit.builder import Context, Param, Result, builder, fail, group, mask
from stepkit.errors import InputError
from stepkit.validate import has_control, parse_duration, shown
from stepkit.validate import host as valid_host

HELP = """Run commands on a remote host over ssh and upload files to it over SFTP.

The key and the host keys are those creds-init wrote for the host (its ssh config's
IdentityFile and UserKnownHostsFile, in $HOME/.ssh/config): when the ssh secret had a
known_hosts, the host key must be in it; without one, an unknown host is accepted on first
use with a warning and recorded. A changed host key is refused (exit 3), as is a key the
host does not accept. Uploads run first, then the commands, in order, each stopping the
step at its first failure; the step's exit code is the failing command's remote exit
status. All output is relayed as it arrives, with secrets masked. Nothing runs through a
local shell; each command is run by the remote user's shell."""

# A result holds at most this much of a command's output (a termination message is 4 KiB).
MAX_OUTPUT = 3 * 1024


def _host(value: str) -> str:
    if value.startswith("["):
        return valid_host(value, "--host")
    if ":" in value:  # a bare IPv6 address
        return valid_host(f"[{value}]", "--host")
    return valid_host(value, "--host")


def _user(value: str) -> str:
    if not value or has_control(value) or value.startswith("-") or any(c in value for c in " @"):
        raise InputError(f"--user: {shown(value)} is not a user name")
    return value


def ssh(ctx: Context) -> None:
    from builders.ssh import config, session, upload

    p = ctx.params
    host = _host(p.host)
    timeout = parse_duration(p.timeout, flag="--timeout")
    if timeout <= 0:
        raise InputError("--timeout: must be more than 0")
    commands: list[str] = list(p.command)
    for index, command in enumerate(commands, 1):
        if not command.strip():
            raise InputError(f"--command #{index}: empty command")
        if "\x00" in command:
            raise InputError(f"--command #{index}: NUL character")
    uploads = [upload.parse(value, ctx.workspace) for value in p.upload]
    if not commands and not uploads:
        raise InputError("nothing to do: give --command or --upload (or both)")
    if p.output and not commands:
        raise InputError("--output: there is no command whose output to record")
    plans = [upload.plan(u) for u in uploads]  # every refusal before anything is sent

    ssh_config = ctx.home / ".ssh" / "config"
    found = config.lookup(ssh_config, host, p.port, ctx.home)
    port = p.port or found.port or 22
    if not (p.user or found.user):
        raise InputError(f"--user: required (creds-init's ssh config names no User for {host})")
    user = _user(p.user or found.user or "")
    text = ""
    if found.identity_file is not None:
        try:
            text = found.identity_file.read_text(encoding="utf-8")
        except OSError as exc:
            if not p.key:
                raise InputError(
                    f"cannot read the key {found.identity_file} that {ssh_config} names for "
                    f"{host}: {exc.strerror}"
                ) from None
        # Masked even when -key overrides it: a remote command must not echo it either.
        mask(text)
    if p.key:
        # The SDK masks the value as given; a file holds it with a final newline, whose
        # base64 differs: mask that form too.
        mask(p.key.rstrip("\n") + "\n")
        key = session.load_key(p.key, "--key")
        key_source = "--key"
    elif found.identity_file is not None:
        key = session.load_key(text, str(found.identity_file))
        key_source = str(found.identity_file)
    else:
        raise InputError(
            f"--key: required (no IdentityFile for {host} port {port} in {ssh_config}: "
            "did creds-init get an ssh secret annotated with this host?)"
        )
    checking = found.checking or "yes"
    if checking not in ("yes", "accept-new", "no", "off"):
        checking = "yes"
    strict = checking == "yes"
    if checking in ("no", "off"):
        ctx.log.warning(
            "%s says StrictHostKeyChecking %s for %s; checking as accept-new instead "
            "(a changed key is still refused)",
            ssh_config,
            checking,
            host,
        )
    target = session.Target(
        host=host,
        port=port,
        user=user,
        key=key,
        key_source=key_source,
        known_hosts=found.known_hosts or (ctx.home / ".ssh" / "known_hosts"),
        strict=strict,
        timeout=timeout,
    )
    if not ctx.debug:
        # paramiko's transport thread logs each failure with a traceback at ERROR; the
        # step says what went wrong in one line of its own.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)
    ctx.log.info("connecting to %s (key %s)", target.shown, key_source)
    with session.connect(target) as client:
        for given, entries in zip(uploads, plans, strict=True):
            with group(f"upload {given.given} -> {given.dest}"):
                size = session.upload(client, entries, timeout=timeout)
                files = sum(1 for e in entries if e.kind == "file")
                ctx.log.info("%d file(s), %d byte(s)", files, size)
        for index, command in enumerate(commands, 1):
            ctx.log.info("$ %s", command)
            last = index == len(commands)
            status, out = session.run_command(
                client, command, timeout=timeout, capture=bool(p.output) and last
            )
            if status != 0:
                if status < 0:
                    fail(f"command #{index}: the remote host sent no exit status", 255)
                fail(f"command #{index} exited {status} on {host}", status)
            if p.output and last:
                text = out.decode("utf-8", "replace")
                if len(text.encode()) > MAX_OUTPUT:
                    fail(
                        f"--output: the last command printed {len(text.encode())} bytes; a "
                        f"result holds at most {MAX_OUTPUT}"
                    )
                ctx.set_result("output", text)


command = builder(
    name="ssh",
    help=HELP,
    params=[
        Param("host", help="The remote host: a DNS name or an IP address."),
        Param(
            "port",
            type=int,
            required=False,
            minimum=1,
            maximum=65535,
            help="The ssh port [default: the Port creds-init's ssh config gives the host, else 22].",
        ),
        Param(
            "user",
            required=False,
            help="The remote user [default: the User creds-init's ssh config gives the host].",
        ),
        Param(
            "command",
            type=list,
            required=False,
            help="A command to run remotely, by the remote user's shell; repeat it (or give one "
            "per line) for several, run in order until one fails.",
        ),
        Param(
            "upload",
            type=list,
            required=False,
            metavar="SRC=DEST",
            help="Upload SRC (a file or directory in the workspace) to DEST on the host over "
            "SFTP, before the commands run; repeatable. Directories go with their tree and "
            "modes; a symbolic link out of SRC refuses the upload. DEST ending in '/' takes "
            "a file under its own name; a relative DEST is from the remote user's home.",
        ),
        Param(
            "timeout",
            default="10m",
            help="Bound on connecting, on each command and on each upload's progress: seconds "
            "or a Go duration (30s, 10m).",
        ),
        Param(
            "key",
            secret=True,
            required=False,
            help="The private key [default: the IdentityFile creds-init's ssh config gives the "
            "host].",
        ),
        Param(
            "output",
            type=bool,
            default=False,
            help="Record the last command's standard output (at most 3 KiB) as the result "
            "`output`; it is still printed.",
        ),
    ],
    results=[Result("output", help="The last command's output, with -output.", optional=True)],
)(ssh)
