"""The core every helper stands on: secrets, logging, safe writes, results, validation, the CLI."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest

from stepkit import log as steplog
from stepkit import secret as secretreg
from stepkit import subproc, validate
from stepkit.errors import CommandError, InputError, StepkitError
from stepkit.fsutil import SafeTree
from stepkit.results import write_results
from stepkit.secret import Secret
from tests.conftest import STEPKIT, run_stepkit


def test_secret_never_shows_itself() -> None:
    s = Secret("hunter2-very-secret")
    assert str(s) == "***"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in f"{s} {s!s} {s!r}"
    assert s.reveal() == "hunter2-very-secret"


def test_redact_removes_encoded_forms() -> None:
    secretreg.register("p@ss:w/rd é")
    text = "raw p@ss:w/rd é, url p%40ss%3Aw%2Frd%20%C3%A9, b64 cEBzczp3L3JkIMOp"
    out = secretreg.redact(text)
    assert "p@ss" not in out and "p%40ss" not in out and "cEBzczp3L3JkIMOp" not in out
    assert out.count("***") == 3


def test_json_log_lines_are_objects_without_secrets() -> None:
    secretreg.register("tok-ABCDEF123")
    stream = StringIO()
    steplog.setup("test", "json", stream=stream)
    logging.getLogger("stepkit.x").warning("token is %s", "tok-ABCDEF123")
    line = stream.getvalue().strip()
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message"}
    assert entry["level"] == "warning" and entry["logger"] == "stepkit.x"
    assert "tok-ABCDEF123" not in line
    steplog.setup("test")


def test_text_log_escapes_control_characters() -> None:
    stream = StringIO()
    steplog.setup("test", "text", stream=stream)
    logging.getLogger("x").warning("value %s", "a\x1b]0;title\x07\nforged line")
    out = stream.getvalue()
    assert out.count("\n") == 1 and "\x1b" not in out and "\\x1b" in out
    steplog.setup("test")


def test_safe_tree_writes_final_mode_even_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with SafeTree(tmp_path / "h") as tree:
            tree.write(".ssh/config", b"x", mode=0o600, dir_mode=0o700)
    finally:
        os.umask(old)
    assert (tmp_path / "h/.ssh").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "h/.ssh/config").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (tmp_path / "h/.ssh").iterdir()) == ["config"]


def test_safe_tree_refuses_symlinks_and_leaves_victim(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config").write_text("original")
    home = tmp_path / "h"
    home.mkdir()
    (home / ".ssh").symlink_to(victim)
    (home / "file").symlink_to(victim / "config")
    with SafeTree(home) as tree:
        with pytest.raises(InputError, match="symbolic link"):
            tree.write(".ssh/config", b"evil")
        with pytest.raises(InputError, match="symbolic link"):
            tree.check_writable(".ssh/config")
        with pytest.raises(InputError, match="symbolic link"):
            tree.write("file", b"evil")
        with pytest.raises(InputError, match="symbolic link"):
            tree.read("file")
    assert (victim / "config").read_text() == "original"
    assert sorted(p.name for p in victim.iterdir()) == ["config"]


def test_safe_tree_replaces_atomically(tmp_path: Path) -> None:
    with SafeTree(tmp_path / "t") as tree:
        tree.write("a", b"one")
        tree.write("a", b"two")
    assert (tmp_path / "t/a").read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["a"]


def test_results_merge_into_termination_message(tmp_path: Path) -> None:
    term = tmp_path / "termination"
    term.write_text(
        json.dumps([{"key": "other", "value": "kept"}, {"key": "commit", "value": "old"}])
    )
    results_dir = tmp_path / "results"
    write_results(
        {"commit": "abc", "url": "https://h/r"},
        termination_path=str(term),
        results_dir=str(results_dir),
    )
    entries = json.loads(term.read_text())
    assert {e["key"]: e["value"] for e in entries} == {
        "other": "kept",
        "commit": "abc",
        "url": "https://h/r",
    }
    assert (results_dir / "commit").read_text() == "abc"
    assert (results_dir / "url").read_text() == "https://h/r"


def test_results_refuse_more_than_4096_bytes(tmp_path: Path) -> None:
    term = tmp_path / "termination"
    with pytest.raises(StepkitError, match="4096"):
        write_results({"big": "x" * 5000}, termination_path=str(term), results_dir=None)
    assert not term.exists() or term.read_text() == ""


def test_results_refuse_path_like_keys(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        write_results({"../x": "v"}, termination_path=None, results_dir=str(tmp_path))


@pytest.mark.parametrize(
    "value",
    ["*", "!x", "a.com b.com", "a.com,b.com", "host%", '"quoted"', "a\nb", "-oProxy", "é.com", ""],
)
def test_host_validation_rejects(value: str) -> None:
    with pytest.raises(InputError):
        validate.host(value, "-ssh-git s")


@pytest.mark.parametrize("value", ["0", "99999", "22x", "+22", "", "065536"])
def test_port_validation_rejects(value: str) -> None:
    with pytest.raises(InputError):
        validate.port(value, "-ssh-git s")


def test_host_validation_accepts() -> None:
    assert validate.host("GitHub.com", "w") == "github.com"
    assert validate.host("xn--bcher-kva.example", "w") == "xn--bcher-kva.example"
    assert validate.host("[::1]", "w") == "::1"
    assert validate.host("10.0.0.1", "w") == "10.0.0.1"


def test_cli_help_lists_commands_and_version() -> None:
    res = run_stepkit("--help")
    assert res.returncode == 0
    assert "creds-init" in res.stdout and "nop" in res.stdout
    ver = run_stepkit("--version")
    assert ver.returncode == 0 and ver.stdout.startswith("stepkit ")


def test_cli_unknown_option_is_one_line_exit_2() -> None:
    res = run_stepkit("creds-init", "-no-such-flag=1")
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "-no-such-flag" in lines[0]
    # A value that starts with '-' is still a value, as in Go's flag package.
    res = run_stepkit("creds-init", "-basic-git", "-x=https://h")
    assert res.returncode == 2 and "secret name '-x'" in res.stderr


def test_nop_prints_and_exits_zero() -> None:
    res = run_stepkit("nop")
    assert (res.returncode, res.stdout) == (0, "Build successful\n")


def test_nop_imports_no_click_or_third_party() -> None:
    code = (
        "import sys; from stepkit.cli import main; rc = main(['nop']); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('click', 'paramiko', 'git', 'docker', 'google', 'json', 'logging')]; "
        "print(bad, file=sys.stderr); sys.exit(1 if bad else rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_nop_run_indefinitely_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [STEPKIT, "nop", "tekton_run_indefinitely"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "Build successful\n"
    time.sleep(0.2)
    assert proc.poll() is None, "nop should keep running until signalled"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_command_error_names_the_fatal_line_not_the_advice_after_it(tmp_path: Path) -> None:
    """git prints hints after its fatal line (e.g. "dubious ownership" + how to fix it)."""
    script = (
        "echo 'fatal: detected dubious ownership' >&2; echo 'To add an exception:' >&2; exit 128"
    )
    with pytest.raises(CommandError) as caught:
        subproc.run(["sh", "-c", script], timeout=10)
    assert str(caught.value) == "sh exited 128: fatal: detected dubious ownership"
    with pytest.raises(CommandError) as caught:
        subproc.run(["sh", "-c", "echo one >&2; echo 'the last word' >&2; exit 1"], timeout=10)
    assert str(caught.value) == "sh exited 1: the last word"


def _fill(env: dict[str, str], url: str) -> tuple[str, str] | None:
    """What real git's credential machinery hands out for url, or None."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    query = f"protocol={parts.scheme}\nhost={parts.netloc}\npath={parts.path.lstrip('/')}\n\n"
    proc = subprocess.run(
        ["git", "credential", "fill"],
        input=query,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        return None
    got = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return got["username"], got["password"]


def test_credential_env_hands_each_login_to_its_own_server_only(
    tmp_path: Path, isolated_env: Path
) -> None:
    """git-init's url credentials, as git itself resolves them: a login serves its scheme,
    host and port; two logins on one server serve one path each; $HOME's helper is reset
    only where a login applies."""
    from stepkit.gitenv import credential_env

    home = isolated_env
    (home / ".git-credentials").write_text(
        "https://stale:stale-pw@a.example\nhttps://dan:dan-pw@d.example\n"
    )
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    logins = {
        "https://a.example/org/x.git": ("ann", "pw-a"),
        "https://b.example:8443/r": ("bob", "pw b'\"$(touch PWNED)"),
        "https://c.example/one": ("c1", "pw-c1"),
        "https://c.example/two=2.git": ("c2", "pw-c2"),
    }
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        **credential_env(logins),
    }
    assert not any(v for k, v in env.items() if k.startswith("GIT_CONFIG_") and "pw" in v)
    expected = {
        "https://a.example/org/x.git": ("ann", "pw-a"),
        "https://a.example/another/repo": ("ann", "pw-a"),
        "https://b.example:8443/elsewhere": ("bob", "pw b'\"$(touch PWNED)"),
        "https://b.example/r": None,
        "http://a.example/org/x.git": None,
        "https://c.example/one": ("c1", "pw-c1"),
        "https://c.example/two=2.git": ("c2", "pw-c2"),
        "https://c.example/three": None,
        "https://d.example/r": ("dan", "dan-pw"),
        "https://a.example.evil.net/org/x.git": None,
    }
    got = {url: _fill(env, url) for url in expected}
    assert got == expected
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
