"""git-init's object-store reader (initializers/gitsrc/objects.py) against `git log` itself.

The reader saves git-init a git process per run; it may say "unsure" (None) but must never
give another commit or date than git would. Real repositories made by git: loose objects,
packs (with deltified objects and annotated tags, chains of them too), SHA-256.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from initializers.gitsrc.objects import committer_date


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=full, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def make_history(repo: Path, commits: int, object_format: str = "sha1") -> None:
    git(repo.parent, "init", "-q", f"--object-format={object_format}", "-b", "main", str(repo))
    for i in range(commits):
        (repo / f"f{i % 3}").write_text(f"version {i}\n" * (i + 1))
        git(repo, "add", "-A")
        # Distinct committer dates, and messages alike enough for pack-objects to deltify.
        stamp = f"{1_600_000_000 + i * 3600} +0200"
        env = {"GIT_COMMITTER_DATE": stamp, "GIT_AUTHOR_DATE": stamp}
        git(repo, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m",
            "a long commit message that repeats itself " * 20 + str(i), env=env)  # fmt: skip
        if i % 4 == 0:
            git(repo, "-c", "user.name=T", "-c", "user.email=t@e", "tag", "-a", f"v{i}",
                "-m", f"release {i}", env=env)  # fmt: skip
    # A tag of a tag: peeled twice.
    git(repo, "-c", "user.name=T", "-c", "user.email=t@e", "tag", "-a", "outer", "-m", "o", "v0")


def names(repo: Path) -> list[str]:
    """Every commit and annotated tag object in the repository."""
    out = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname) %(objecttype)")
    return [line.split()[0] for line in out.splitlines() if line.split()[1] in ("commit", "tag")]


def gits_answer(repo: Path, sha: str) -> tuple[str, str]:
    commit, date = git(
        repo, "log", "-1", "--no-walk", "--format=%H %ct", f"{sha}^{{commit}}"
    ).split()
    return commit, date


@pytest.mark.parametrize("object_format", ["sha1", "sha256"])
@pytest.mark.parametrize("layout", ["loose", "packed", "deltified"])
def test_reader_agrees_with_git_or_defers(tmp_path: Path, layout: str, object_format: str) -> None:
    repo = tmp_path / "repo"
    make_history(repo, 12, object_format)
    if layout == "packed":
        git(repo, "repack", "-a", "-d", "-q", "--window=0")  # whole objects only
    elif layout == "deltified":
        git(repo, "repack", "-a", "-d", "-f", "-q", "--window=250", "--depth=50")
    answered = 0
    for sha in names(repo):
        found = committer_date(repo / ".git", sha)
        if found is not None:
            assert found == gits_answer(repo, sha), sha
            answered += 1
    if layout != "deltified":
        assert answered == len(names(repo))  # whole objects are all read, tags peeled


def test_reader_defers_on_what_it_cannot_know(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_history(repo, 2)
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    git_dir = repo / ".git"
    assert committer_date(git_dir, tree) is None  # not a commit
    assert committer_date(git_dir, "0" * 40) is None  # absent
    assert committer_date(git_dir, "HEAD") is None  # not an object id
    assert committer_date(git_dir, git(repo, "rev-parse", "HEAD")[:7]) is None  # short
    # A damaged loose object is not believed.
    head = git(repo, "rev-parse", "HEAD")
    loose = git_dir / "objects" / head[:2] / head[2:]
    loose.chmod(0o644)
    loose.write_bytes(b"not zlib")
    assert committer_date(git_dir, head) is None
