"""git-init's click-free parser (initializers/gitsrc/entry.py) against the click command it bypasses.

The fast parser must give exactly the click command's parameters on every command line it
accepts, and accept none that click refuses: then every error comes from click, worded and
exited as before. Proven three ways: the usual Knative and Tekton command lines (which must
take the fast path), generated command lines from every flag spelling and many values, and
whole runs of both entry points compared on their exit code and stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from initializers.gitsrc import entry
from initializers.gitsrc.cli import command
from stepkit import contract
from tests.conftest import STEPKIT

URL = "https://git.example.com/org/repo.git"


def click_params(args: list[str]) -> dict[str, object] | None:
    """What the click command would run with (parameters, log format, debug), or None on an error."""
    try:
        ctx = command.make_context("git-init", list(args))
    except (click.ClickException, click.exceptions.Exit):
        return None
    meta = ctx.find_root().meta
    return {
        **ctx.params,
        "log_format": meta.get("stepkit.log_format") or "text",
        "debug": bool(meta.get("stepkit.debug")),
    }


def fast_params(args: list[str]) -> dict[str, object] | None:
    params = entry.parse(list(args), {})
    if params is not None and params["terminationmessagepath"] is None:
        params["terminationmessagepath"] = contract.default_termination_path()
    return params


USUAL = [
    # Knative Build's git source
    ["-url", URL, "-revision", "main"],
    ["-url", URL, "-revision", "0123abc", "-path", "src"],
    # Tekton's git-clone task and PipelineResource
    [
        "-url", URL, "-revision", "v1.2.3", "-refspec", "", "-path", "/workspace/output/",
        "-sslVerify=true", "-submodules=true", "-depth", "1", "-sparseCheckoutDirectories", "",
    ],
    ["-url", URL, "-revision", "main", "-path", "/workspace/src", "-submodules=false",
     "-depth=0", "-sslVerify=false", "-terminationMessagePath=/tekton/termination"],
    # stepkit's own spellings
    ["--url=" + URL, "--revision=main", "--path=src", "--workspace=/ws", "--results-dir=/r",
     "--termination-message-path=/t", "--retries=5", "--retry-backoff=0.5", "--timeout=30",
     "--log-format=json", "--debug", "--allow-http", "--allow-local=true", "--force=false"],
    ["-url=" + URL, "-log-format", "json", "-debug", "-force"],
    ["-url=" + URL, "-submodules", "-sslVerify", "-allow-http"],
]  # fmt: skip


@pytest.mark.parametrize("args", USUAL, ids=lambda a: " ".join(a)[:60])
def test_usual_command_lines_take_the_fast_path_with_clicks_values(args: list[str]) -> None:
    fast = fast_params(args)
    assert fast is not None, "a usual command line must not need click"
    assert fast == click_params(args)


FLAG_NAMES = [*entry._FLAGS, "nosuch", "h", "help", "u", "Url", "sslverify", "no-force", ""]
VALUES = [
    "", "x", "main", URL, "ftp://h/r", "0", "1", "3", "20", "21", "007", "-1", "+1", " 1", "1_0",
    "1.5", "0.0", "1.", ".5", "1e3", "nan", "inf", "true", "false", "True", "TRUE", "t", "F",
    "yes", "no", "on", "off", "text", "json", "JSON", "-x", "--", "a=b", "-url", "1 2", "\uff11",
    "\u0663", "1.\u0663", "1234567890", "2.5.1",
]  # fmt: skip


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    args: list[str] = []
    if draw(st.booleans()):
        args.append(f"-url={URL}")
    for _ in range(draw(st.integers(0, 6))):
        dashes = draw(st.sampled_from(["-", "--", "---", ""]))
        name = draw(st.sampled_from(FLAG_NAMES))
        form = draw(st.sampled_from(["=", " ", "alone"]))
        value = draw(st.sampled_from(VALUES))
        if form == "=":
            args.append(f"{dashes}{name}={value}")
        elif form == " ":
            args += [f"{dashes}{name}", value]
        else:
            args.append(f"{dashes}{name}")
    return args


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_the_fast_parser_never_differs_from_click(args: list[str]) -> None:
    fast = fast_params(args)
    if fast is None:
        return  # click parses it, and words any error: nothing to compare
    assert fast == click_params(args), args


def test_any_of_the_commands_environment_variables_hands_parsing_to_click() -> None:
    for name in entry.ENVVARS:
        assert entry.parse([f"-url={URL}"], {name: ""}) is None, name
    assert entry.parse([f"-url={URL}"], {"STEPKIT_OTHER": "1"}) is not None


# Whole runs: `stepkit git-init` (fast path first) against the click command alone.
CLICK_ONLY = (
    "import sys\n"
    "from stepkit.cli import run_click\n"
    "from initializers.gitsrc.cli import command\n"
    "sys.exit(run_click(command, sys.argv[1:], prog_name='stepkit git-init', name='git-init'))\n"
)
FAST_PROBE = (
    "import sys\n"
    "from stepkit.cli import main\n"
    "code = main(['git-init', *sys.argv[1:]])\n"
    "sys.stdout.write('click imported' if 'click' in sys.modules else 'no click')\n"
    "sys.exit(code)\n"
)

ERRORS = [
    [],  # -url is required
    ["-revision=main"],
    [f"-url={URL}", "extra"],
    [f"-url={URL}", "-nosuch"],
    [f"-url={URL}", "-no-such-flag=1"],
    [f"-url={URL}", "-depth=-1"],
    [f"-url={URL}", "-depth=x"],
    [f"-url={URL}", "-retries=21"],
    [f"-url={URL}", "-timeout=0.5"],
    [f"-url={URL}", "-retry-backoff=-1"],
    [f"-url={URL}", "-submodules=maybe"],
    [f"-url={URL}", "-sslVerify=yes"],
    [f"-url={URL}", "-force=perhaps"],
    [f"-url={URL}", "-log-format=xml"],
    [f"-url={URL}", "-debug=true"],
    [f"-url={URL}", "-url"],
    [f"-url={URL}", "-path"],
    # errors of the values themselves, raised by the shared body after either parser
    ["-url=ftp://h/r.git"],
    ["-url=http://h/r.git"],
    ["-url=/srv/r.git"],
    ["-url=https://user:s3cret@/r.git"],
    ["-url=--upload-pack=touch /tmp/x"],
    [f"-url={URL}", "-revision=--upload-pack=x"],
    [f"-url={URL}", "-revision=main..dev"],
    [f"-url={URL}", "-path=../../etc"],
    [f"-url={URL}", "-refspec=--exec=x"],
    [f"-url={URL}", "-sparseCheckoutDirectories=../x"],
    [f"-url={URL}", "-log-format=json", "-path=/etc"],
]


def untimed(stderr: str) -> str:
    """stderr without the JSON log lines' timestamps (the one thing two runs cannot share)."""
    return re.sub(r'"time": "[^"]*"', '"time": ""', stderr)


def run_py(code: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=dict(os.environ),
        check=False,
    )


@pytest.mark.parametrize("args", ERRORS, ids=lambda a: " ".join(a)[:60] or "no-args")
def test_every_error_is_worded_and_exited_as_the_click_path_does(
    tmp_path: Path, args: list[str]
) -> None:
    cwd = tmp_path / "cwd"  # the default workspace
    cwd.mkdir()
    fast = run_py(FAST_PROBE, args, cwd)
    slow = run_py(CLICK_ONLY, args, cwd)
    assert fast.returncode == slow.returncode != 0, (fast.stderr, slow.stderr)
    assert fast.returncode in (1, 2)
    assert untimed(fast.stderr) == untimed(slow.stderr)
    assert fast.stderr.count("\n") == 1, fast.stderr  # one line
    assert "s3cret" not in fast.stderr
    # Errors the parser would have to word itself go to click; value errors never load it.
    parsed = entry.parse(args, {})
    assert fast.stdout == ("no click" if parsed is not None else "click imported")
    assert not os.listdir(cwd)  # nothing half-written


def test_help_is_clicks(tmp_path: Path) -> None:
    for flag in ("-h", "--help", "-help"):
        res = subprocess.run(
            [STEPKIT, "git-init", flag], capture_output=True, text=True, timeout=60, check=False
        )
        assert res.returncode == 0
        assert "-sparseCheckoutDirectories" in res.stdout
        assert "STEPKIT_GIT_URL" in res.stdout
