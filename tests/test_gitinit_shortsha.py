"""A short SHA that names two commits: git-init refuses it in one line and leaves nothing.

Knative's path (`git checkout SHORT` after pulling everything) fails on it too; the history
git-init fetches for a short SHA holds commits and trees only, and the prefix is resolved
among commits (`^{commit}`), so a blob sharing the prefix never makes it ambiguous.
"""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from pathlib import Path

from tests.conftest import run_stepkit
from tests.gitrepos import set_server_caps
from tests.peers import GitDaemon


def make_colliding_repo(bare: Path) -> tuple[str, list[str]]:
    """A bare repository of many tiny commits, two of whose ids share a 4-digit prefix.

    Returns the shared prefix and the commits it names. Written with one fast-import run.
    """
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True, env=env)
    stream = []
    for i in range(1, 1201):
        message = f"commit {i}\n".encode()
        stream.append(
            b"commit refs/heads/main\n"
            + f"mark :{i}\ncommitter T <t@e> {1_600_000_000 + i} +0000\n".encode()
            + f"data {len(message)}\n".encode()
            + message
            + f"M 644 inline file\ndata {len(str(i))}\n{i}\n".encode()
        )
    marks = bare / "marks"
    subprocess.run(
        ["git", "fast-import", "--quiet", f"--export-marks={marks}"],
        input=b"".join(stream),
        cwd=bare,
        env=env,
        check=True,
    )
    by_prefix: defaultdict[str, list[str]] = defaultdict(list)
    for line in marks.read_text().splitlines():
        sha = line.split()[1]
        by_prefix[sha[:4]].append(sha)
    marks.unlink()
    prefix, shas = next((p, s) for p, s in sorted(by_prefix.items()) if len(s) > 1)
    return prefix, shas


def test_an_ambiguous_short_sha_fails_cleanly_and_a_longer_one_works(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    prefix, shas = make_colliding_repo(srv / "r.git")
    set_server_caps(srv / "r.git", sha_in_want=False, filters=True)
    workspace = tmp_path / "workspace"
    with GitDaemon(srv) as daemon:

        def git_init(revision: str) -> subprocess.CompletedProcess[str]:
            res = run_stepkit(
                "git-init",
                f"-url={daemon.url_for('r.git')}",
                f"-revision={revision}",
                f"--workspace={workspace}",
                "-path=src",
                f"-terminationMessagePath={tmp_path / 'termination-log'}",
            )
            return subprocess.CompletedProcess([], res.returncode, res.stdout, res.stderr)

        res = git_init(prefix)
        assert res.returncode == 1, res.stderr
        errors = [line for line in res.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1 and prefix in errors[0], res.stderr
        assert not (workspace / "src").exists()  # nothing half-made for the next step
        assert not (tmp_path / "termination-log").exists()
        # The first digits that tell the commits apart name one of them.
        a, b = shas[0], shas[1]
        n = next(i for i in range(4, 40) if a[:i] != b[:i]) + 1
        res = git_init(a[:n])
        assert res.returncode == 0, res.stderr
        head = subprocess.run(
            ["git", "-C", str(workspace / "src"), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert head == a
        assert f'"value":"{a}"' in (tmp_path / "termination-log").read_text()
