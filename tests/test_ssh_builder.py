"""The ssh builder against OpenSSH's sshd on loopback, with the key and known_hosts creds-init wrote.

The server logs clients in as root on this machine (tests/peers.py SshServer, login=True
keys), so "the remote host" is this machine's filesystem: every remote path is under the
test's tmp_path, never root's home.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builders.ssh.cli import command as ssh
from stepkit.testing import BuilderRun, run_builder
from tests.conftest import Secrets, assert_no_leak, run_stepkit
from tests.peers import AuthorizedKey, SshServer, gen_keypair


@dataclass
class Host:
    server: SshServer
    private_key: str
    public_key: str
    remote: Path  # a directory the tests' remote commands and uploads use


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    private, public = gen_keypair(tmp_path / "keys" / "deploy")
    remote = tmp_path / "remote"
    remote.mkdir()
    with SshServer(tmp_path / "sshd", [AuthorizedKey(public, remote, login=True)]) as server:
        yield Host(server, private, public, remote)


def creds_init(
    home: Path, secrets: Secrets, host: Host, *, known_hosts: str | None, key: str | None = None
) -> None:
    """What creds-init writes for an ssh-auth secret annotated with 127.0.0.1:PORT."""
    keys = {"ssh-privatekey": key or host.private_key}
    if known_hosts is not None:
        keys["known_hosts"] = known_hosts
    secrets.add("deploy", keys)
    res = run_stepkit(
        "creds-init",
        f"-ssh-git=deploy=127.0.0.1:{host.server.port}",
        "--secrets-dir",
        str(secrets.root),
        env={"HOME": str(home)},
    )
    assert res.returncode == 0, res.stderr


def run_ssh(tmp_path: Path, home: Path, *args: str, **kwargs: object) -> BuilderRun:
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    return run_builder(
        ssh,
        ["-host=127.0.0.1", "-user=root", *args],
        workspace=workspace,
        home=home,
        root=tmp_path / "runs",
        **kwargs,  # type: ignore[arg-type]
    )


def error_lines(run: BuilderRun) -> list[str]:
    return [line for line in run.stderr.splitlines() if ": error: " in line]


def test_commands_run_with_creds_init_key_and_known_hosts(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    before = (isolated_env / ".ssh" / "known_hosts").read_text()
    marker = host.remote / "deployed"
    run = run_ssh(
        tmp_path,
        isolated_env,
        # No -port: the Port creds-init wrote for the host.
        "-command=echo hello from $(id -un); echo to-stderr >&2",
        f"-command=printf v1 > {marker}",
        f"-command=cat {marker}",
        "-output",
    )
    assert run.exit_code == 0, run.output
    assert "hello from root\n" in run.stdout
    assert "to-stderr\n" in run.stderr
    assert marker.read_text() == "v1"
    assert run.results == {"output": "v1"}
    # Checked strictly against the secret's known_hosts: nothing was added to it.
    assert (isolated_env / ".ssh" / "known_hosts").read_text() == before
    assert "not in known_hosts" not in run.stderr
    assert_no_leak(run.output, secrets.values)


def test_no_result_unless_asked(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    run = run_ssh(tmp_path, isolated_env, "-command=echo quiet")
    assert run.exit_code == 0, run.output
    assert run.results == {}
    assert "warning" not in run.stderr


def test_failing_command_is_the_step_exit_status_and_stops_the_rest(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    marker = host.remote / "after-failure"
    run = run_ssh(
        tmp_path,
        isolated_env,
        "-command=echo first",
        "-command=echo failing >&2; exit 7",
        f"-command=touch {marker}",
    )
    assert run.exit_code == 7, run.output
    assert "first\n" in run.stdout
    assert "failing\n" in run.stderr
    assert error_lines(run) == ["ssh: error: command #2 exited 7 on 127.0.0.1"]
    assert not marker.exists()


def test_changed_host_key_fails_with_exit_3(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    """known_hosts holds another server's key for this host and port: a man in the middle."""
    marker = host.remote / "must-not-run"
    _, other_public = gen_keypair(tmp_path / "keys" / "other")
    with SshServer(tmp_path / "other-sshd", [AuthorizedKey(other_public, host.remote)]) as other:
        stale = f"[127.0.0.1]:{host.server.port} {other.host_key_line.split(' ', 1)[1]}"
        creds_init(isolated_env, secrets, host, known_hosts=stale)
        run = run_ssh(tmp_path, isolated_env, f"-command=touch {marker}")
    assert run.exit_code == 3, run.output
    (line,) = error_lines(run)
    assert f"the host key of [127.0.0.1]:{host.server.port} has CHANGED" in line
    assert "refusing to connect" in line
    assert not marker.exists()
    assert_no_leak(run.output, secrets.values)


def test_unknown_host_is_refused_when_known_hosts_was_given(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    marker = host.remote / "must-not-run"
    creds_init(isolated_env, secrets, host, known_hosts="[127.0.0.1]:1 " + host.public_key)
    run = run_ssh(tmp_path, isolated_env, f"-command=touch {marker}")
    assert run.exit_code == 3, run.output
    (line,) = error_lines(run)
    assert "is not in" in line and "strict checking" in line
    assert not marker.exists()


def test_without_known_hosts_the_host_is_accepted_once_with_a_warning(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=None)
    known = isolated_env / ".ssh" / "known_hosts"
    run = run_ssh(tmp_path, isolated_env, "-command=echo ok")
    assert run.exit_code == 0, run.output
    assert "accepting it on first use" in run.stderr
    # Recorded as OpenSSH's accept-new does: the next connection is checked against it.
    assert host.server.host_key_line in known.read_text().splitlines()
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    again = run_ssh(tmp_path, isolated_env, "-command=echo ok")
    assert again.exit_code == 0, again.output
    assert "accepting it on first use" not in again.stderr


def test_a_key_the_host_refuses_is_exit_3(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    wrong, _ = gen_keypair(tmp_path / "keys" / "wrong")
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line, key=wrong)
    run = run_ssh(tmp_path, isolated_env, "-command=true")
    assert run.exit_code == 3, run.output
    (line,) = error_lines(run)
    assert f"root@127.0.0.1:{host.server.port} refused the key from" in line
    assert_no_leak(run.output, [*secrets.values, wrong])


def test_the_key_param_overrides_and_is_masked_with_the_config_key(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    """A remote command that prints the key (here: a copy of it on the host) shows ***."""
    wrong, _ = gen_keypair(tmp_path / "keys" / "wrong")
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line, key=wrong)
    given, other = host.remote / "given.txt", host.remote / "other.txt"
    given.write_text(host.private_key)
    other.write_text(wrong)
    run = run_ssh(
        tmp_path,
        isolated_env,
        f"-command=cat {given} {other}; base64 -w0 {given}; echo; base64 -w0 {other}; echo",
        secrets={"key": host.private_key},
    )
    assert run.exit_code == 0, run.output
    assert "***" in run.stdout
    # Both the -key value and the IdentityFile's key are masked, with their encoded forms.
    assert_no_leak(run.output, [host.private_key, wrong])


def _tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, content or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), "")
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_text())
    return out


def _make_app(workspace: Path) -> Path:
    app = workspace / "app"
    (app / "bin").mkdir(parents=True)
    (app / "conf" / "deep" / "er").mkdir(parents=True)
    (app / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (app / "bin" / "run.sh").chmod(0o755)
    (app / "conf" / "settings").write_text("secret-ish\n")
    (app / "conf" / "settings").chmod(0o640)
    (app / "conf" / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    (app / "conf" / "deep" / "er" / "leaf.txt").chmod(0o600)
    (app / "conf" / "deep").chmod(0o750)
    (app / "current").symlink_to("bin/run.sh")  # inside the tree: kept as a link
    (app / "empty").mkdir(mode=0o700)
    (app / "empty").chmod(0o700)
    return app


def test_uploads_keep_modes_nested_dirs_and_inner_links(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    workspace = tmp_path / "workspace"
    app = _make_app(workspace)
    (workspace / "one.txt").write_text("one\n")
    (workspace / "one.txt").chmod(0o604)
    dest = host.remote / "srv"
    run = run_ssh(
        tmp_path,
        isolated_env,
        f"-upload=app={dest}/app",
        f"-upload=one.txt={dest}/files/",  # a missing parent is made; the name is kept
        f"-command={dest}/app/current",
    )
    assert run.exit_code == 0, run.output
    assert "run\n" in run.stdout  # uploads come first, and the executable bit came along
    assert _tree(dest / "app") == _tree(app)
    assert stat.S_IMODE((dest / "app").stat().st_mode) == stat.S_IMODE(app.stat().st_mode)
    assert (dest / "files" / "one.txt").read_text() == "one\n"
    assert stat.S_IMODE((dest / "files" / "one.txt").stat().st_mode) == 0o604
    # Written under temporary names and renamed: none is left over.
    assert not [p for p in dest.rglob("*") if ".stepkit-" in p.name]


def test_an_upload_replaces_what_was_there(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "v").write_text("new\n")
    target = host.remote / "v"
    target.write_text("old, and longer than the new one\n")
    target.chmod(0o666)
    run = run_ssh(tmp_path, isolated_env, f"-upload=v={target}")
    assert run.exit_code == 0, run.output
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE((workspace / "v").stat().st_mode)


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("up-and-out", "../../home/.ssh"),  # the keys creds-init wrote, relative
        ("absolute", "/etc/passwd"),
        ("via-inner-link", "current/../../../home"),  # through a link that is itself inside
    ],
)
def test_upload_refuses_symlinks_leading_out_of_the_source(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host, name: str, target: str
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    workspace = tmp_path / "workspace"
    app = _make_app(workspace)
    (app / "conf" / name).symlink_to(target)
    marker = host.remote / "must-not-run"
    dest = host.remote / "srv"
    run = run_ssh(tmp_path, isolated_env, f"-upload=app={dest}", f"-command=touch {marker}")
    assert run.exit_code == 2, run.output
    (line,) = error_lines(run)
    assert f"conf/{name}" in line and "refusing to upload it" in line
    assert not dest.exists()  # nothing was sent: every source is checked first
    assert not marker.exists()
    assert_no_leak(run.output, secrets.values)


@pytest.mark.parametrize("source", ["../home/.ssh/id_deploy", "keys/id_deploy", "/etc/hostname"])
def test_upload_sources_outside_the_workspace_are_refused(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host, source: str
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "keys").symlink_to(isolated_env / ".ssh")
    home = isolated_env
    run = run_builder(
        ssh,
        ["-host=127.0.0.1", "-user=root", f"-upload={source}={host.remote}/stolen"],
        workspace=workspace,
        home=home,
        root=tmp_path / "runs",
        env={"STEPKIT_WORKSPACE": str(workspace)},
    )
    # ../home is relative to the workspace: tmp_path/home is the HOME creds-init wrote.
    assert run.exit_code == 2, run.output
    (line,) = error_lines(run)
    assert "--upload" in line
    assert not (host.remote / "stolen").exists()


def test_a_hanging_command_is_bounded_by_the_timeout(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    pidfile = host.remote / "pid"
    run = run_ssh(
        tmp_path,
        isolated_env,
        "-timeout=2s",
        f"-command=echo started; echo $$ > {pidfile}; exec sleep 300",
    )
    assert run.exit_code == 1, run.output
    # Relayed as it came, before the command ended (it never did).
    assert "started\n" in run.stdout
    (line,) = error_lines(run)
    assert "did not finish within 2 s" in line
    pid = int(pidfile.read_text())
    try:
        # SIGTERM was asked for (RFC 4254 "signal"). sshd passes it on for ordinary users;
        # for root logins, the only kind this test server has, it refuses and says so,
        # which shows the request arrived. Then the session was closed.
        for _ in range(100):
            log = host.server.log_path.read_text()
            if "Close session: user root" in log:
                break
            time.sleep(0.1)
        assert "session_signal_req" in log
        assert "Close session: user root" in log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # the test's own remote `sleep`


def test_multi_line_output_and_masking_of_a_mask_value_on_the_remote(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    """Output across many lines and reads arrives whole; a registered secret is masked even
    when the remote side prints it split over two writes."""
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    key_line = host.private_key.splitlines()[1]
    half = len(key_line) // 2
    run = run_ssh(
        tmp_path,
        isolated_env,
        f"-command=seq 1 20000; printf '%s' '{key_line[:half]}'; sleep 0.3; "
        f"printf '%s\\n' '{key_line[half:]}'",
    )
    assert run.exit_code == 0, run.output
    numbers = [line for line in run.stdout.splitlines() if line.isdigit()]
    assert numbers == [str(n) for n in range(1, 20001)]
    assert "***" in run.stdout
    assert key_line not in run.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ([], "--host"),
        (["-host=-oProxyCommand=touch /tmp/PWNED", "-command=true"], "--host"),
        (["-host=example.com\n    ProxyCommand touch /tmp/PWNED", "-command=true"], "--host"),
        (["-host=*", "-command=true"], "--host"),
        (["-host=127.0.0.1", "-port=0", "-command=true"], "--port"),
        (["-host=127.0.0.1", "-port=99999", "-command=true"], "--port"),
        (["-host=127.0.0.1", "-port=22x", "-command=true"], "--port"),
        (["-host=127.0.0.1", "-timeout=soon", "-command=true"], "--timeout"),
        (["-host=127.0.0.1", "-timeout=0", "-command=true"], "--timeout"),
        (["-host=127.0.0.1", "-user=-oProxyCommand=x", "-command=true"], "--user"),
        (["-host=127.0.0.1", "-upload=no-equals-sign"], "--upload"),
        (["-host=127.0.0.1", "-upload=missing=/tmp/x"], "--upload"),
        (["-host=127.0.0.1"], "--command or --upload"),
        (["-host=127.0.0.1", "-command=true", "-command=true", "-output=maybe"], "--output"),
        (["-host=127.0.0.1", "-command=true", "-no-such-flag=1"], "no-such-flag"),
        (["-host=127.0.0.1", "-command=true", "-key=not a key"], "--key"),
    ],
)
def test_bad_params_exit_2_naming_the_param(
    tmp_path: Path,
    isolated_env: Path,
    secrets: Secrets,
    host: Host,
    args: list[str],
    named: str,
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    run = run_builder(
        ssh,
        [*args, "-user=root"] if args else [],
        home=isolated_env,
        root=tmp_path / "runs",
    )
    assert run.exit_code == 2, run.output
    (line,) = error_lines(run)
    assert named in line
    assert not Path("/tmp/PWNED").exists()
    assert "not a key" not in run.output
    assert run.results == {}
    assert_no_leak(run.output, secrets.values)


def test_user_is_required_without_one_in_the_config(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    run = run_builder(
        ssh, ["-host=127.0.0.1", "-command=true"], home=isolated_env, root=tmp_path / "runs"
    )
    assert run.exit_code == 2, run.output
    assert error_lines(run) == [
        "ssh: error: --user: required (creds-init's ssh config names no User for 127.0.0.1)"
    ]


def test_no_credentials_at_all_is_a_clear_error(tmp_path: Path, isolated_env: Path) -> None:
    run = run_builder(
        ssh,
        ["-host=127.0.0.1", "-user=root", "-command=true"],
        home=isolated_env,
        root=tmp_path / "runs",
    )
    assert run.exit_code == 2, run.output
    (line,) = error_lines(run)
    assert line.startswith("ssh: error: --key: required (no IdentityFile for 127.0.0.1 port 22")


def test_stepkit_ssh_subcommand_reads_params_from_the_environment(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    """The console script's `stepkit ssh`, params as a Tekton catalog step sets them."""
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    res = run_stepkit(
        "ssh",
        env={
            "HOME": str(isolated_env),
            "PARAM_HOST": "127.0.0.1",
            "PARAM_USER": "root",
            "STEPKIT_COMMAND": "echo one\necho two",  # one command per line
        },
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "one\ntwo\n"
    assert_no_leak(res.stdout + res.stderr, secrets.values)


def test_accept_new_never_writes_through_a_symlinked_known_hosts(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    """A step before this one replaced known_hosts with a link to another file."""
    creds_init(isolated_env, secrets, host, known_hosts=None)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    known = isolated_env / ".ssh" / "known_hosts"
    known.unlink(missing_ok=True)
    known.symlink_to(victim)
    run = run_ssh(tmp_path, isolated_env, "-command=echo ok")
    assert run.exit_code == 0, run.output
    assert "cannot record the host key" in run.stderr
    assert victim.read_text() == "untouched\n"


def test_a_server_that_never_answers_is_bounded_by_the_timeout(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    """A listener that accepts and stays silent (no sshd can be made to do that: a socket of
    the test's own), in place of the host creds-init knows."""
    import socket

    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        run = run_ssh(
            tmp_path,
            isolated_env,
            f"-port={port}",
            "-timeout=1s",
            "-command=true",
            secrets={"key": host.private_key},  # creds-init's key is for the other port
        )
    assert run.exit_code == 1, run.output
    lines = error_lines(run)
    assert len(lines) == 1, run.output
    assert f"127.0.0.1:{port}" in lines[0]


def test_a_key_param_with_crlf_and_no_final_newline_loads(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    """As a Secret made on Windows, or with `echo -n`, holds it."""
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    mangled = host.private_key.strip().replace("\n", "\r\n")
    run = run_ssh(tmp_path, isolated_env, "-command=echo ok", secrets={"key": mangled})
    assert run.exit_code == 0, run.output
    assert run.stdout == "ok\n"
    assert_no_leak(run.output, [host.private_key])


def test_upload_refuses_a_fifo_and_drops_setuid(
    tmp_path: Path, isolated_env: Path, secrets: Secrets, host: Host
) -> None:
    creds_init(isolated_env, secrets, host, known_hosts=host.server.host_key_line)
    workspace = tmp_path / "workspace"
    (workspace / "tool").mkdir(parents=True)
    (workspace / "tool" / "su").write_text("#!/bin/sh\n")
    (workspace / "tool" / "su").chmod(0o4755)
    dest = host.remote / "tool"
    run = run_ssh(tmp_path, isolated_env, f"-upload=tool={dest}")
    assert run.exit_code == 0, run.output
    assert stat.S_IMODE((dest / "su").stat().st_mode) == 0o755

    os.mkfifo(workspace / "tool" / "pipe")
    again = host.remote / "again"
    run = run_ssh(tmp_path, isolated_env, f"-upload=tool={again}")
    assert run.exit_code == 2, run.output
    (line,) = error_lines(run)
    assert "'pipe' is not a regular file, directory or symbolic link" in line
    assert not again.exists()
