"""The builder SDK (stepkit.builder, SPEC §6.2): params, results, masking, run(), signals, exit codes.

Most tests run the builders of tests/sdk_builders.py in process with stepkit.testing; the ones
about signals, exec and the process's own streams run them as real processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepkit import secret
from stepkit.builder import Context, Param, Result, builder, run
from stepkit.testing import BuilderRun, assert_no_secret, read_termination, run_builder
from tests.sdk_builders import actions, types

TOKEN = "tok-S3cret/é+=value"
SCRIPT = Path(__file__).with_name("sdk_builders.py")


def params_of(res: BuilderRun) -> dict[str, object]:
    assert res.exit_code == 0, res.output
    line = next(line for line in res.stdout.splitlines() if line.startswith("{"))
    values: dict[str, object] = json.loads(line)
    return values


def error_lines(res: BuilderRun) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.strip()]


# -- params ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["-text=v"], ["-text", "v"], ["--text=v"], ["--text", "v"]],
    ids=["-f=v", "-f_v", "--f=v", "--f_v"],
)
def test_every_go_flag_spelling(args: list[str]) -> None:
    assert params_of(run_builder(types, [*args, "-files=a"]))["text"] == "v"


def test_args_then_stepkit_env_then_param_env_then_default() -> None:
    env = {"STEPKIT_TEXT": "from-stepkit", "PARAM_TEXT": "from-param", "PARAM_COUNT": "7"}
    assert params_of(run_builder(types, ["-text=arg", "-files=a"], env=env))["text"] == "arg"
    got = params_of(run_builder(types, ["-files=a"], env=env))
    assert (got["text"], got["count"]) == ("from-stepkit", 7)
    got = params_of(run_builder(types, ["-files=a"], env={"PARAM_TEXT": "from-param"}))
    assert got["text"] == "from-param"
    assert params_of(run_builder(types, ["-files=a"]))["text"] == "d"
    # An empty variable is unset: Tekton sets one for every param, the empty ones too.
    assert params_of(run_builder(types, ["-files=a"], env={"STEPKIT_TEXT": ""}))["text"] == "d"
    # `-` `.` and spaces become `_`; an env override replaces the default names.
    got = params_of(
        run_builder(
            types,
            ["-files=a"],
            env={"PARAM_BUILD_ARG_NAME": "dotted", "STEPKIT_RENAMED": "no", "OTHER_RENAMED": "yes"},
        )
    )
    assert (got["build_arg_name"], got["renamed"]) == ("dotted", "yes")


def test_types(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    res = run_builder(
        types,
        [
            "-count=10",
            "-ratio=1e-3",
            "-push",
            "-files=a,b",
            "-files",
            "c\nd",
            "-labels=k=v=w",
            "--labels",
            "x=",
            "-src=sub/../dir",
            "-out=/elsewhere",
        ],
        workspace=workspace,
    )
    got = params_of(res)
    assert got["count"] == 10 and got["ratio"] == 0.001 and got["push"] is True
    assert got["files"] == ["a,b", "c", "d"], "lists never split on commas; one value per line"
    assert got["labels"] == {"k": "v=w", "x": ""}
    assert got["src"] == str(workspace / "dir")
    assert got["out"] == "/elsewhere"
    env = {"STEPKIT_FILES": "one\ntwo\n", "STEPKIT_LABELS": "a=1\r\nb=2", "STEPKIT_PUSH": "F"}
    got = params_of(run_builder(types, [], env=env))
    assert (got["files"], got["labels"], got["push"]) == (
        ["one", "two"],
        {"a": "1", "b": "2"},
        False,
    )
    assert res.results == {"seen": "11"}


@pytest.mark.parametrize("word", ["1", "t", "T", "TRUE", "true", "True"])
def test_go_true_words(word: str) -> None:
    assert params_of(run_builder(types, [f"-push={word}", "-files=a"]))["push"] is True


@pytest.mark.parametrize("word", ["0", "f", "F", "FALSE", "false", "False"])
def test_go_false_words(word: str) -> None:
    assert params_of(run_builder(types, [f"-push={word}", "-files=a"]))["push"] is False


def _fifo_secret(ws: Path) -> list[str]:
    os.mkfifo(ws / "fifo")
    return [f"-token=@{ws / 'fifo'}"]


def _directory_secret(ws: Path) -> list[str]:
    return [f"-token=@{ws}"]


def _escape_link(ws: Path) -> list[str]:
    (ws / "link").symlink_to("/etc")
    return ["-src=link/passwd"]


BAD_INPUT = [
    (["-text=a", "-text=b"], "--text is given 2 times"),
    (["--count", "1", "-count=2"], "--count is given 2 times"),
    (["-no-such-flag=1"], "no-such-flag"),
    (["-push=yes"], "--push: 'yes' is not a bool"),
    (["-push=on"], "--push: 'on' is not a bool"),
    (["-count=1.5"], "--count: '1.5' is not an integer"),
    (["-count=0x10"], "--count: '0x10' is not an integer"),
    (["-count= 1"], "--count: ' 1' is not an integer"),
    (["-count=11"], "--count: 11 is more than 10"),
    (["-ratio=nan"], "--ratio: 'nan' is not a number"),
    (["-labels=novalue"], "--labels: 'novalue' is not KEY=VALUE"),
    (["-labels=a=1", "-labels=a=2"], "--labels: key 'a' is given twice"),
    (["-src=../outside"], "--src: '../outside' is outside the workspace"),
    (["-src=/etc"], "--src: '/etc' is outside the workspace"),
    (["-src=a\x1b]0;title\x07"], "--src: control characters in 'a\\x1b]0;title\\x07'"),
    ("escape-link", "--src: 'link/passwd' is outside the workspace"),
    ("fifo-secret", "is not a regular file"),
    ("directory-secret", "Is a directory"),
    (["-token=@/nonexistent/token"], "--token: cannot read the secret file '/nonexistent/token'"),
    (["unexpected"], "unexpected extra argument"),
]


@pytest.mark.parametrize(("args", "named"), BAD_INPUT, ids=[b[1][:40] for b in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_and_runs_nothing(
    tmp_path: Path, args: list[str] | str, named: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    planted = {
        "escape-link": _escape_link,
        "fifo-secret": _fifo_secret,
        "directory-secret": _directory_secret,
    }
    argv = planted[args](ws) if isinstance(args, str) else list(args)
    res = run_builder(types, [*argv, "-files=a"], workspace=ws)
    assert res.exit_code == 2, res.output
    [line] = error_lines(res)
    assert named in line, line
    assert not (ws / "ran").exists(), "the builder ran"
    assert res.results == {} and not any(res.paths.results.iterdir())


def test_missing_required_param_names_its_env_too() -> None:
    res = run_builder(types, [])
    assert res.exit_code == 2
    assert error_lines(res) == [
        "types: error: --files is required (or set STEPKIT_FILES or PARAM_FILES)"
    ]
    res = run_builder(types, [], env={"STEPKIT_COUNT": "many", "STEPKIT_FILES": "a"})
    assert error_lines(res) == [
        "types: error: --count (from STEPKIT_COUNT): 'many' is not an integer"
    ]


def test_secret_from_a_file_or_a_value(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as `echo` leaves it: the newline is not the secret's
    res = run_builder(actions, ["-action=print", f"-token=@{token_file}"])
    assert res.exit_code == 0, res.output
    assert f"print {secret.REDACTED}" in res.output
    assert_no_secret(res.output, TOKEN)
    res = run_builder(actions, ["-action=mask", "-value=x", "-token=@@literal-at-value"])
    assert res.exit_code == 0
    # run_builder's secrets= writes a file and hands it over as @FILE.
    res = run_builder(actions, ["-action=print"], secrets={"token": TOKEN})
    assert f"stderr {secret.REDACTED}" in res.output
    assert_no_secret(res.output, TOKEN)


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="debug"):
        Param("debug")
    with pytest.raises(ValueError, match="letters"):
        Param("-x")
    with pytest.raises(TypeError, match="secret"):
        Param("n", type=int, secret=True)
    with pytest.raises(ValueError, match="collide"):
        builder(params=[Param("a-b"), Param("a_b")])(lambda ctx: None)
    with pytest.raises(ValueError, match="Result name"):
        Result("bad name")


# -- masking -----------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_everything_the_builder_prints_is_masked(log_format: str) -> None:
    res = run_builder(
        actions, ["-action=print", f"--log-format={log_format}"], secrets={"token": TOKEN}
    )
    assert res.exit_code == 0, res.output
    assert_no_secret(res.output, TOKEN)
    for expected in ("print ***", "partial ***", "binary ***", "stderr ***", "log ***"):
        assert expected in res.output, expected
    if log_format == "json":
        logged = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
        assert {"log ***", "warn '***'"} <= {entry["message"] for entry in logged}


def test_a_secret_cut_in_two_by_the_pipe_is_masked() -> None:
    res = run_builder(actions, ["-action=split-child"], secrets={"token": TOKEN})
    assert res.exit_code == 0, res.output
    assert_no_secret(res.output, TOKEN)
    assert "before [***] after\n" in res.stdout
    assert "before [***] after\n" in res.stderr


def test_encoded_forms_in_child_output_are_masked() -> None:
    res = run_builder(actions, ["-action=child-forms"], secrets={"token": TOKEN})
    assert res.exit_code == 0, res.output
    assert_no_secret(res.output, TOKEN)
    assert "b64 ***" in res.stdout and "url ***" in res.stdout and "raw ***" in res.stderr
    assert "$ " + sys.executable in res.stderr, "run() echoes the command line"


def test_mask_hides_a_value_from_then_on() -> None:
    res = run_builder(actions, ["-action=mask", "-value=dynamic-token-42"])
    assert res.exit_code == 0, res.output
    assert "dynamic-token-42" not in res.output
    assert "masked ***" in res.stdout and "child ***" in res.stdout


def test_short_values_are_not_masked() -> None:
    res = run_builder(actions, ["-action=mask", "-value=abc"])
    assert "masked abc" in res.stdout


@pytest.mark.parametrize("action", ["exception", "fail"])
def test_error_lines_and_debug_tracebacks_are_masked(action: str) -> None:
    res = run_builder(actions, [f"-action={action}", "--debug"], secrets={"token": TOKEN})
    assert res.exit_code == 1
    assert_no_secret(res.output, TOKEN)
    if action == "exception":
        assert "Traceback" in res.stderr and "ValueError: broken with ***" in res.stderr
        plain = run_builder(actions, [f"-action={action}"], secrets={"token": TOKEN})
        assert error_lines(plain) == ["actions: error: internal error: ValueError: broken with ***"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="*"), min_size=4, max_size=20
    ),
    st.lists(st.integers(0, 40), max_size=6),
)
def test_prints_cut_anywhere_never_leak(value: str, cuts: list[int]) -> None:
    """The builder prints a secret in pieces, each flushed: stdout still never shows it."""
    text = f"<{value}>\n"
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]

    @builder(name="printer", params=[Param("token", secret=True)])
    def printer(ctx: Context) -> None:
        for piece in pieces:
            print(piece, end="", flush=True)

    literal = "@" + value if value.startswith("@") else value  # @x would name a file
    res = run_builder(printer, [f"-token={literal}"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "<***>\n"


# -- results -----------------------------------------------------------------------------------


def test_results_go_to_the_termination_message_the_results_dir_and_tekton() -> None:
    res = run_builder(actions, ["-action=capture", "-token=t0k-value"], tekton=True)
    assert res.exit_code == 0, res.output
    expected = {"digest": "sha256:0123", "other": "out ***"}
    assert res.results == expected
    assert {p.name: p.read_bytes() for p in res.paths.results.iterdir()} == {
        k: v.encode() for k, v in expected.items()
    }, "exact bytes, no newline added"
    assert res.paths.tekton_results is not None
    assert {p.name: p.read_text() for p in res.paths.tekton_results.iterdir()} == expected
    assert "err" in res.stderr, "stderr of a captured command is still relayed"


def test_results_merge_into_an_existing_termination_message(tmp_path: Path) -> None:
    term = tmp_path / "termination"
    term.write_text(json.dumps([{"key": "from-earlier", "value": "kept"}]))
    res = run_builder(actions, ["-action=ok"], env={"STEPKIT_TERMINATION_MESSAGE_PATH": str(term)})
    assert res.exit_code == 0, res.output
    assert read_termination(term) == {"from-earlier": "kept", "digest": "sha256:0123"}


@pytest.mark.parametrize(
    ("action", "code"),
    [("fail", 4), ("exception", 1), ("child-exit", 9), ("input-error", 2), ("sys-exit", 6)],
)
def test_results_survive_failure(action: str, code: int) -> None:
    res = run_builder(actions, [f"-action={action}", f"-code={code}"])
    assert res.exit_code == code, res.output
    assert res.results == {"digest": "sha256:0123"}
    assert (res.paths.results / "digest").read_text() == "sha256:0123"


def test_an_undeclared_result_is_an_error_naming_it() -> None:
    res = run_builder(actions, ["-action=undeclared"])
    assert res.exit_code == 1
    assert (
        error_lines(res)[-1]
        == "actions: error: result 'nope' is not declared (declared: digest, other)"
    )
    assert res.results == {"digest": "sha256:0123"}


def test_a_declared_result_never_set_is_a_warning() -> None:
    res = run_builder(actions, ["-action=ok"])
    assert res.exit_code == 0
    assert error_lines(res) == ["actions: warning: result 'other' was declared but never set"]


@builder(
    name="optional",
    params=[Param("record", type=bool, default=False)],
    results=[Result("always"), Result("maybe", help="Only with -record.", optional=True)],
)
def _optional_result(ctx: Context) -> None:
    ctx.set_result("always", "yes")
    if ctx.params.record:
        ctx.set_result("maybe", "recorded")


def test_an_optional_result_never_set_is_no_warning() -> None:
    res = run_builder(_optional_result, [])
    assert res.exit_code == 0, res.output
    assert error_lines(res) == []
    assert res.results == {"always": "yes"}
    res = run_builder(_optional_result, ["-record"])
    assert res.results == {"always": "yes", "maybe": "recorded"}


def test_results_over_4096_bytes_are_a_clear_error() -> None:
    res = run_builder(actions, ["-action=big"])
    assert res.exit_code == 1
    assert "4096" in error_lines(res)[-1] and "'other'" in error_lines(res)[-1]
    assert res.results == {"digest": "sha256:0123"}


def test_a_secret_never_reaches_a_result() -> None:
    res = run_builder(actions, ["-action=secret-result"], secrets={"token": TOKEN})
    assert res.results["other"] == "token=***"
    assert "'other' holds a secret" in res.stderr


# -- run() and the exit code table -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "code", "line"),
    [
        ("ok", 0, None),
        ("fail", 5, "actions: error: it failed, token ***"),
        ("input-error", 2, "actions: error: --value is bad"),
        ("denied", 3, "actions: error: the registry refused the credentials"),
        ("exception", 1, "actions: error: internal error: ValueError: broken with ***"),
        ("sys-exit", 4, None),
        ("return", 3, None),
        ("child-exit", 7, f"actions: error: {sys.executable} exited 7"),
        ("child-signal", 137, f"actions: error: {sys.executable} was killed by SIGKILL (exit 137)"),
        ("missing", 127, "actions: error: cannot run 'no-such-program-stepkit': not found"),
        ("not-executable", 126, "permission denied"),
    ],
)
def test_exit_codes(action: str, code: int, line: str | None) -> None:
    res = run_builder(actions, [f"-action={action}", f"-code={code}"], secrets={"token": TOKEN})
    assert res.exit_code == code, res.output
    if line is not None and line.startswith("actions: "):
        assert error_lines(res)[-1] == line
    elif line is not None:
        assert line in error_lines(res)[-1]


def test_unchecked_runs_return_the_exit_code() -> None:
    res = run_builder(actions, ["-action=child-exit-unchecked"])
    assert (res.exit_code, res.results["other"]) == (0, "7")
    res = run_builder(actions, ["-action=missing-unchecked"])
    assert (res.exit_code, res.results["other"]) == (0, "127")
    assert "cannot run 'no-such-program-stepkit': not found" in res.stderr


def test_a_process_left_behind_does_not_hold_the_builder() -> None:
    res = run_builder(actions, ["-action=background"])
    assert res.exit_code == 0, res.output
    pid = int(res.results["other"])
    try:
        os.kill(pid, 0)  # still running: run() returned without waiting for it
    finally:
        os.kill(pid, signal.SIGKILL)


def test_programs_run_in_the_workspace_with_the_environment_given(tmp_path: Path) -> None:
    res = run_builder(actions, ["-action=cwd"], workspace=tmp_path)
    assert res.results["other"] == str(tmp_path)
    res = run_builder(actions, ["-action=env"])
    assert res.results["other"] == "yes gone"


def test_group_prints_start_and_end_with_the_duration() -> None:
    res = run_builder(actions, ["-action=group", "-code=6"])
    assert res.exit_code == 6
    lines = error_lines(res)
    assert lines[0] == "actions: ==> stage one"
    assert lines[1].startswith("actions: <== stage one: done in ") and lines[1].endswith(" s")
    assert lines[2] == "actions: ==> stage two"
    assert lines[3].startswith("actions: <== stage two: failed after ")
    assert lines[4] == "actions: error: broken inside"


def test_context_paths(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    res = run_builder(actions, ["-action=paths"], workspace=tmp_path, home=home)
    assert json.loads(res.results["other"]) == {
        "workspace": str(tmp_path),
        "home": str(home),
        "docker_config": str(home / ".docker"),
    }
    res = run_builder(actions, ["-action=paths"], env={"DOCKER_CONFIG": "/cfg/docker"})
    assert json.loads(res.results["other"])["docker_config"] == "/cfg/docker"


def test_a_home_that_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    res = run_builder(actions, ["-action=ok"], home=tmp_path / "not-there")
    assert res.exit_code == 0
    assert any("HOME=" in line and "not writable" in line for line in error_lines(res))


def test_help_lists_params_with_env_type_default_and_results() -> None:
    res = run_builder(types, ["--help"])
    assert res.exit_code == 0
    help_text = " ".join(res.stdout.split())
    for fact in (
        "-count, --count INT [env: STEPKIT_COUNT, PARAM_COUNT; integer; 0 <= x <= 10; default: 1]",
        "-push, --push BOOL [env: STEPKIT_PUSH, PARAM_PUSH; bool; default: false]",
        "-files, --files VALUE Files. [env: STEPKIT_FILES, PARAM_FILES; list, repeatable; required]",
        "-token, --token VALUE|@FILE [env: STEPKIT_TOKEN, PARAM_TOKEN; secret: the value, or @FILE]",
        "-renamed, --renamed TEXT [env: MY_RENAMED, OTHER_RENAMED; string; default: x]",
        "Results: seen How many params it saw.",
        "--log-format",
        "--results-dir",
        "-terminationMessagePath",
    ):
        assert fact in help_text, fact


def test_run_builder_puts_everything_back(tmp_path: Path) -> None:
    before = (
        dict(os.environ),
        os.getcwd(),
        secret.snapshot(),
        list(logging.getLogger().handlers),
        signal.getsignal(signal.SIGTERM),
        sys.stdout,
    )
    res = run_builder(actions, ["-action=mask", "-value=registered-in-run"], env={"X_Y": "1"})
    assert res.exit_code == 0
    after = (
        dict(os.environ),
        os.getcwd(),
        secret.snapshot(),
        list(logging.getLogger().handlers),
        signal.getsignal(signal.SIGTERM),
        sys.stdout,
    )
    assert after == before


# -- as real processes: signals, exec, the process's own streams -------------------------------


def start(
    name: str, args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), name, *args],
        cwd=tmp_path,
        env={
            **os.environ,
            "STEPKIT_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination"),
            **(env or {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded_to_the_child_then_the_builder_exits_128_plus_n(
    tmp_path: Path, signum: signal.Signals
) -> None:
    marker = tmp_path / "child-got"
    proc = start("actions", ["-action=signal-child", f"-value={marker}"], tmp_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "child ready\n"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == signum.name, "the child got the same signal"
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == f"actions: error: interrupted by {signum.name}"
    assert read_termination(tmp_path / "termination") == {"digest": "sha256:0123"}


def test_a_signal_without_a_child_stops_the_builder(tmp_path: Path) -> None:
    proc = start("actions", ["-action=sleep"], tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "sleeping\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert read_termination(tmp_path / "termination") == {"digest": "sha256:0123"}


def test_exec_tool_writes_results_then_becomes_the_tool(tmp_path: Path) -> None:
    proc = start("actions", ["-action=exec", f"-token={TOKEN}"], tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert out == f"tool says {TOKEN}\n", "after exec the tool's output is its own, unmasked"
    assert read_termination(tmp_path / "termination") == {"digest": "sha256:0123"}
    proc = start("actions", ["-action=exec-missing"], tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 127
    assert err.strip().splitlines()[-1] == (
        "actions: error: cannot run 'no-such-program-stepkit': not found"
    )


def test_exec_tool_under_the_test_kit_runs_the_tool() -> None:
    res = run_builder(actions, ["-action=exec"], secrets={"token": TOKEN})
    assert res.exit_code == 5
    assert "tool says ***" in res.stdout


def test_a_real_process_masks_its_streams_and_library_logs(tmp_path: Path) -> None:
    proc = start("actions", ["-action=print"], tmp_path, env={"STEPKIT_TOKEN": TOKEN})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_no_secret(out + err, TOKEN)
    assert out == "print ***\npartial ***\nbinary ***\n"
    proc = start(
        "actions", ["-action=logging", "--log-format=json"], tmp_path, env={"STEPKIT_TOKEN": TOKEN}
    )
    out, err = proc.communicate(timeout=60)
    entries = [json.loads(line) for line in err.splitlines()]
    assert {"logger": "some.library", "message": "library line with ***"}.items() <= entries[
        0
    ].items()


def test_run_works_outside_a_builder(capfd: pytest.CaptureFixture[str]) -> None:
    saved = secret.snapshot()
    try:
        secret.register("outside-secret")
        result = run([sys.executable, "-c", "print('x outside-secret y')"])
    finally:
        secret.restore(saved)
    assert result.returncode == 0
    assert capfd.readouterr().out == "x *** y\n"


# -- the stepkit command runs its SDK builders ---------------------------------------------------


def test_gcs_uploader_is_a_builder_reached_both_ways(tmp_path: Path) -> None:
    from builders.gcsupload.cli import command
    from stepkit.builder import Builder
    from tests.conftest import run_stepkit

    assert isinstance(command, Builder)
    direct = run_stepkit("gcs-uploader", "-workers=1", "--workers", "2", "-location=gs://b-ok/m")
    assert direct.returncode == 2
    assert direct.stderr.splitlines() == [
        "stepkit gcs-uploader: error: --workers is given 2 times; it takes one value"
    ]
    # Through the group, its --log-format and --debug reach the builder.
    grouped = run_stepkit("--log-format", "json", "gcs-uploader", "-workers=0")
    assert grouped.returncode == 2
    [line] = grouped.stderr.splitlines()
    assert json.loads(line)["message"] == "--workers: 0 is less than 1"
    helped = run_stepkit("gcs-uploader", "--help")
    assert helped.returncode == 0
    assert "STEPKIT_GCS_UPLOAD_WORKERS" in helped.stdout and "manifest" in helped.stdout


# -- property tests of param parsing ------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20)
_SPELLINGS = st.sampled_from(["-{}={}", "--{}={}", "-{} {}", "--{} {}"])


def _flag(spelling: str, name: str, value: str) -> list[str]:
    if " " in spelling:
        dashes = spelling.split("{")[0]
        return [f"{dashes}{name}", value]
    return [spelling.format(name, value)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT, _SPELLINGS)
def test_any_text_arrives_unchanged_in_any_spelling(value: str, spelling: str) -> None:
    res = run_builder(types, [*_flag(spelling, "text", value), "-files=a"])
    assert params_of(res)["text"] == value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10), _SPELLINGS, st.sampled_from(["", "+", "0", "00"]))
def test_any_decimal_int_in_range_is_read(number: int, spelling: str, prefix: str) -> None:
    res = run_builder(types, [*_flag(spelling, "count", f"{prefix}{number}"), "-files=a"])
    assert params_of(res)["count"] == number


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
def test_anything_else_is_not_an_int(value: str) -> None:
    if value.strip("+-").isascii() and value.lstrip("+-").isdigit() and value[:1] != "-":
        return  # a decimal integer after all: the test above
    res = run_builder(types, [f"-count={value}", "-files=a"])
    assert res.exit_code == 2, res.output
    [line] = error_lines(res)
    assert line.startswith("types: error: --count")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=10), min_size=1, max_size=5
    )
)
def test_a_repeated_list_flag_keeps_every_value_in_order(values: list[str]) -> None:
    args = [f"-files={v}" for v in values]
    assert params_of(run_builder(types, args))["files"] == values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT, _TEXT)
def test_a_non_list_param_given_twice_is_refused_whatever_the_values(a: str, b: str) -> None:
    res = run_builder(types, [f"-text={a}", f"--text={b}", "-files=x"])
    assert res.exit_code == 2
    assert error_lines(res) == ["types: error: --text is given 2 times; it takes one value"]


def test_one_letter_flags_read_as_go_reads_them() -> None:
    @builder(name="one", params=[Param("v", default="d"), Param("text", default="")])
    def one(ctx: Context) -> None:
        print(f"{ctx.params.v}|{ctx.params.text}")

    for args in (["-v=x"], ["-v", "x"], ["--v=x"], ["--v", "x"]):
        assert run_builder(one, args).stdout == "x|\n", args
    assert run_builder(one, ["-text", "-v=x"]).stdout == "d|-v=x\n", "a value stays a value"


def test_what_the_builder_printed_comes_before_the_programs_output() -> None:
    @builder(name="order")
    def order(ctx: Context) -> None:
        print("step: ", end="")
        run([sys.executable, "-c", "print('tool output')"])

    assert run_builder(order).stdout == "step: tool output\n"


def test_the_kits_directories_go_where_asked_or_at_exit(tmp_path: Path) -> None:
    res = run_builder(actions, ["-action=ok"], root=tmp_path)
    assert res.paths.root.parent == tmp_path and res.paths.workspace.is_dir()
    code = (
        "from tests.sdk_builders import actions\n"
        "from stepkit.testing import run_builder\n"
        "res = run_builder(actions, ['-action=ok'])\n"
        "assert res.paths.workspace.is_dir()\n"
        "print(res.paths.root)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=SCRIPT.parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert not Path(proc.stdout.strip()).exists(), "removed when the interpreter exited"
