"""Builders the SDK's tests run, in process (stepkit.testing.run_builder) and as real processes:

python tests/sdk_builders.py types|actions [ARG...]
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: make `tests` importable like under pytest
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stepkit.builder import (
    Context,
    Param,
    Result,
    builder,
    exec_tool,
    fail,
    group,
    mask,
    run,
)
from stepkit.errors import DeniedError, InputError

PY = sys.executable


@builder(
    name="types",
    help="Print the params it got as JSON.",
    params=[
        Param("text", default="d", help="Some text."),
        Param("count", type=int, default=1, minimum=0, maximum=10),
        Param("ratio", type=float, default=0.5),
        Param("push", type=bool, default=False),
        Param("files", type=list, help="Files."),
        Param("labels", type=dict, default={"a": "1"}),
        Param("src", type=Path, default="."),
        Param("out", type=Path, outside_workspace=True, required=False),
        Param("token", secret=True, required=False),
        Param("build.arg-name", default=""),
        Param("renamed", default="x", env=["MY_RENAMED", "OTHER_RENAMED"]),
    ],
    results=[Result("seen", help="How many params it saw.")],
)
def types(ctx: Context) -> None:
    (ctx.workspace / "ran").write_text("yes")
    values = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in ctx.params.as_dict().items()
        if k != "token"
    }
    values["token?"] = ctx.params.token is not None
    print(json.dumps(values, sort_keys=True))
    ctx.set_result("seen", str(len(values)))


def _child(code: str) -> list[str]:
    return [PY, "-c", code]


# A child that writes its argument in two halves, flushed apart, so the builder reads them
# separately: a secret cut in two by the pipe.
SPLIT_WRITER = (
    "import sys, time\n"
    "data = sys.argv[1]\n"
    "half = len(data) // 2\n"
    "stream = sys.stderr if len(sys.argv) > 2 else sys.stdout\n"
    "stream.write('before ' + data[:half]); stream.flush(); time.sleep(0.4)\n"
    "stream.write(data[half:] + ' after\\n'); stream.flush()\n"
)

# A child that records the signal it gets, then exits 0 (a tool that stops cleanly).
SIGNAL_CHILD = (
    "import signal, sys, time\n"
    "marker = sys.argv[1]\n"
    "def on(signum, frame):\n"
    "    open(marker, 'w').write(signal.Signals(signum).name)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, on)\n"
    "signal.signal(signal.SIGINT, on)\n"
    "print('child ready', flush=True)\n"
    "time.sleep(60)\n"
)


@builder(
    name="actions",
    help="Do one thing the tests ask for.",
    params=[
        Param("action", help="What to do."),
        Param("token", secret=True, required=False),
        Param("code", type=int, default=1),
        Param("value", default=""),
    ],
    results=[Result("digest"), Result("other")],
)
def actions(ctx: Context) -> int | None:
    action, token = ctx.params.action, ctx.params.token or ""
    ctx.set_result("digest", "sha256:0123")
    if action == "ok":
        return None
    if action == "fail":
        fail(f"it failed, token {token}", code=ctx.params.code)
    if action == "input-error":
        raise InputError("--value is bad")
    if action == "denied":
        raise DeniedError("the registry refused the credentials")
    if action == "exception":
        raise ValueError(f"broken with {token}")
    if action == "sys-exit":
        sys.exit(ctx.params.code)
    if action == "return":
        return int(ctx.params.code)
    if action == "child-exit":
        run(_child(f"import sys; sys.exit({ctx.params.code})"))
    if action == "child-exit-unchecked":
        result = run(_child("import sys; sys.exit(7)"), check=False)
        ctx.set_result("other", str(result.returncode))
    if action == "child-signal":
        run(_child("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    if action == "missing":
        run(["no-such-program-stepkit", "--flag"])
    if action == "not-executable":
        script = ctx.workspace / "script.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o644)
        run([str(script)])
    if action == "missing-unchecked":
        ctx.set_result("other", str(run(["no-such-program-stepkit"], check=False).returncode))
    if action == "print":
        print("print", token)
        sys.stdout.write(f"partial {token}")
        sys.stdout.flush()
        sys.stdout.buffer.write(f"\nbinary {token}\n".encode())
        print("stderr", token, file=sys.stderr)
        ctx.log.info("log %s", token)
        ctx.log.warning("warn %r", token)
    if action == "split-child":
        run([*_child(SPLIT_WRITER), f"[{token}]"])
        run([*_child(SPLIT_WRITER), f"[{token}]", "stderr"])
    if action == "child-forms":
        code = (
            "import base64, sys, urllib.parse\n"
            "t = sys.argv[1]\n"
            "print('b64', base64.b64encode(t.encode()).decode())\n"
            "print('url', urllib.parse.quote(t, safe=''))\n"
            "print('raw', t, file=sys.stderr)\n"
        )
        run([*_child(code), token])
    if action == "mask":
        value = mask(ctx.params.value)
        print("masked", value)
        run([*_child("import sys; print('child', sys.argv[1])"), value])
    if action == "capture":
        result = run(
            [
                *_child("import sys; print('out', sys.argv[1]); print('err', file=sys.stderr)"),
                token,
            ],
            capture=True,
        )
        ctx.set_result("other", result.stdout.strip())
    if action == "cwd":
        ctx.set_result(
            "other", run(_child("import os; print(os.getcwd())"), capture=True).stdout.strip()
        )
    if action == "env":
        result = run(
            _child("import os; print(os.environ.get('ADDED'), os.environ.get('HOME', 'gone'))"),
            env={"ADDED": "yes", "HOME": None},
            capture=True,
        )
        ctx.set_result("other", result.stdout.strip())
    if action == "background":
        # The program leaves a process behind that holds its stdout and stderr open.
        result = run(["sh", "-c", "sleep 60 & echo $!"], capture=True)
        ctx.set_result("other", result.stdout.strip())
    if action == "undeclared":
        ctx.set_result("nope", "x")
    if action == "big":
        ctx.set_result("other", "x" * 5000)
    if action == "secret-result":
        ctx.set_result("other", f"token={token}")
    if action == "group":
        with group("stage one"):
            print("inside")
        with group("stage two"):
            fail("broken inside", code=ctx.params.code)
    if action == "paths":
        info = {
            "workspace": str(ctx.workspace),
            "home": str(ctx.home),
            "docker_config": str(ctx.docker_config),
        }
        ctx.set_result("other", json.dumps(info, sort_keys=True))
    if action == "signal-child":
        # value: the marker file the child writes when it gets a signal.
        run([*_child(SIGNAL_CHILD), ctx.params.value])
        ctx.set_result("other", "not reached")
    if action == "sleep":
        print("sleeping", flush=True)
        time.sleep(60)
    if action == "exec":
        exec_tool([*_child("import sys; print('tool says', sys.argv[1]); sys.exit(5)"), token])
    if action == "exec-missing":
        exec_tool(["no-such-program-stepkit"])
    if action == "logging":
        logging.getLogger("some.library").info("library line with %s", token)
    return None


if __name__ == "__main__":
    name = sys.argv.pop(1)
    {"types": types, "actions": actions}[name]()
