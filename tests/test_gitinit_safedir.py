"""git-init names its checkout a safe.directory in $HOME/.gitconfig by appending to the file
itself (no git process); git must read back exactly the paths, whatever the file held."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_stepkit
from tests.peers import GitDaemon, make_bare, make_repo


def listed(config: Path) -> list[str]:
    return subprocess.run(
        ["git", "config", "--file", str(config), "--get-all", "safe.directory"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


@pytest.mark.parametrize(
    ("before", "path"),
    [
        (None, "src"),  # no .gitconfig yet
        ("[user]\n\tname = T", "src"),  # a last line without its newline
        ("[safe]\n\tdirectory = /elsewhere\n", 'a#b;"c"\\d'),  # quoting
        ("link", "src"),  # a symlinked .gitconfig: git writes it, as before
    ],
    ids=["none", "no-newline", "quoting", "symlink"],
)
def test_the_checkout_is_listed_exactly_once(tmp_path: Path, before: str | None, path: str) -> None:
    src = tmp_path / "src-repo"
    make_repo(src, commits=1)
    make_bare(src, tmp_path / "srv" / "r.git")
    config = Path(os.environ["HOME"]) / ".gitconfig"
    others = []
    if before == "link":
        target = tmp_path / "real-gitconfig"
        target.write_text("[user]\n\tname = T\n")
        config.symlink_to(target)
    elif before is not None:
        config.write_text(before)
        others = listed(config) if "safe" in before else []
    workspace = tmp_path / "workspace"
    with GitDaemon(tmp_path / "srv") as daemon:
        for _ in range(2):  # a re-run adds nothing
            res = run_stepkit(
                "git-init", f"-url={daemon.url_for('r.git')}", f"--workspace={workspace}",
                f"-path={path}", "-terminationMessagePath=",
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
    assert listed(config) == [*others, str(workspace / path)]
    if before and before.startswith("[user]"):
        assert subprocess.run(
            ["git", "config", "--file", str(config), "user.name"],
            capture_output=True, text=True, check=True,
        ).stdout.strip() == "T"  # fmt: skip
