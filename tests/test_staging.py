"""stepkit.staging: a run's locked staging directory, removed on every exit and by the next run after a SIGKILL."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepkit.errors import DeniedError, StepkitError
from stepkit.staging import LOCK, remove_tree, staging_dir
from tests.peers import NonRootUser

PREFIX = "stepkit-test-"
ROOT = Path(__file__).resolve().parent.parent

# A run in a process of its own, so the test can SIGKILL it: it makes its staging directory,
# writes a file into it, says where, and waits.
_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from stepkit.staging import staging_dir

    parent, prefix, options = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    with staging_dir(parent, prefix, flag="--staging", create_parent="c" in options,
                     remove_empty_parent="e" in options) as staging:
        (staging.path / "work").write_text("partial")
        print(staging.path, flush=True)
        time.sleep(600)
    """
)


class Run:
    def __init__(self, proc: subprocess.Popen[str], path: Path) -> None:
        self.proc = proc
        self.path = path

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost node does: no handler, no finally runs."""
        self.proc.kill()
        self.proc.wait(timeout=30)


@contextlib.contextmanager
def other_run(parent: Path, prefix: str = PREFIX, options: str = "") -> Iterator[Run]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(parent), prefix, options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line, proc.communicate(timeout=30)[1]
        yield Run(proc, Path(line))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def listing(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        elif path.is_file():
            out[rel] = path.read_text()
        else:
            out[rel] = "other"
    return out


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    (path / "sentinel").write_text("mine\n")
    return path


def test_a_killed_runs_staging_is_removed_by_the_next(
    parent: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with other_run(parent) as dead:
        dead.kill()
    assert (dead.path / "work").read_text() == "partial"
    assert (dead.path / LOCK).is_file()
    with caplog.at_level(logging.WARNING), staging_dir(parent, PREFIX, flag="--x") as staging:
        assert not dead.path.exists()
        assert staging.path.parent == parent and staging.path.name.startswith(PREFIX)
        assert (staging.path / LOCK).is_file()
    assert listing(parent) == {"sentinel": "mine\n"}
    assert f"removed {dead.path}, the staging directory left by an earlier run" in caplog.text


def test_a_live_runs_staging_survives_and_goes_when_it_is_interrupted(parent: Path) -> None:
    with other_run(parent) as live:
        with staging_dir(parent, PREFIX, flag="--x"):
            pass
        assert live.proc.poll() is None
        assert (live.path / "work").read_text() == "partial"
        # Ctrl-C: the run's own exit removes it.
        live.proc.send_signal(signal.SIGINT)
        live.proc.wait(timeout=30)
    assert listing(parent) == {"sentinel": "mine\n"}


def test_another_tools_dead_staging_is_left_to_it(parent: Path) -> None:
    with other_run(parent, prefix="stepkit-other-") as dead:
        dead.kill()
    with staging_dir(parent, PREFIX, flag="--x"):
        pass
    assert (dead.path / "work").read_text() == "partial"


def test_a_kept_directory_is_not_taken_for_a_dead_runs(parent: Path) -> None:
    with staging_dir(parent, PREFIX, flag="--x") as staging:
        (staging.path / "source.zip").write_text("zip")
        staging.keep()
    kept = staging.path
    assert listing(kept) == {"source.zip": "zip"}
    with staging_dir(parent, PREFIX, flag="--x"):
        pass
    assert listing(parent) == {
        "sentinel": "mine\n",
        kept.name: "dir",
        f"{kept.name}/source.zip": "zip",
    }


def test_only_a_dead_runs_own_directory_is_removed(tmp_path: Path, parent: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched\n")
    (parent / f"{PREFIX}linkaway").symlink_to(outside)
    (parent / f"{PREFIX}afile123").write_text("a file\n")
    (parent / f"{PREFIX}longer-name").mkdir()
    (parent / f"{PREFIX}longer-name" / LOCK).write_text("")
    (parent / f"{PREFIX}lockaway").mkdir()
    (parent / f"{PREFIX}lockaway" / LOCK).symlink_to(outside / "sentinel")
    (parent / f"{PREFIX}nolock12").mkdir()
    (parent / f"{PREFIX}nolock12" / "x").write_text("x\n")
    # A FIFO as the lock: opened without blocking, then refused for not being a file.
    (parent / f"{PREFIX}lockfifo").mkdir()
    os.mkfifo(parent / f"{PREFIX}lockfifo" / LOCK)
    (parent / f"{PREFIX}lockdir1").mkdir()
    (parent / f"{PREFIX}lockdir1" / LOCK).mkdir()
    if os.geteuid() == 0:  # files of another user can be made only as root
        foreign = parent / f"{PREFIX}foreign1"
        foreign.mkdir()
        (foreign / LOCK).write_text("")
        os.chown(foreign / LOCK, 65534, 65534)
        os.chown(foreign, 65534, 65534)
        theirs = parent / f"{PREFIX}foreign2"
        theirs.mkdir()
        (theirs / LOCK).write_text("")
        os.chown(theirs / LOCK, 65534, 65534)
    before = listing(parent)
    with staging_dir(parent, PREFIX, flag="--x"):
        pass
    assert listing(parent) == before
    assert listing(outside) == {"sentinel": "untouched\n"}


def test_a_parent_the_run_made_goes_when_empty(tmp_path: Path) -> None:
    parent = tmp_path / "a" / "b"
    with staging_dir(parent, PREFIX, flag="--x", create_parent=True) as staging:
        assert staging.path.parent == parent
    assert not (tmp_path / "a").exists()
    # Not when it holds something else, nor a parent that was there before.
    (tmp_path / "a").mkdir()
    with staging_dir(parent, PREFIX, flag="--x", create_parent=True):
        (parent / "other").write_text("x")
    assert listing(tmp_path / "a") == {"b": "dir", "b/other": "x"}
    os.unlink(parent / "other")
    with staging_dir(parent, PREFIX, flag="--x", create_parent=True):
        pass
    assert listing(tmp_path / "a") == {"b": "dir"}


def test_remove_empty_parent_takes_a_folder_a_killed_run_made(tmp_path: Path) -> None:
    parent = tmp_path / "dest" / ".download"
    (tmp_path / "dest").mkdir()
    with other_run(parent, options="ce") as dead:
        dead.kill()
    assert dead.path.parent == parent
    with staging_dir(parent, PREFIX, flag="--x", create_parent=True, remove_empty_parent=True):
        pass
    assert listing(tmp_path / "dest") == {}
    # Never while another run's staging is in it, nor a kept directory.
    with other_run(parent, options="ce") as live:
        with staging_dir(parent, PREFIX, flag="--x", create_parent=True, remove_empty_parent=True):
            pass
        assert (live.path / "work").exists()
    with staging_dir(
        parent, PREFIX, flag="--x", create_parent=True, remove_empty_parent=True
    ) as staging:
        staging.keep()
    assert listing(parent) == {staging.path.name: "dir"}


def test_the_staging_goes_on_an_exception(parent: Path) -> None:
    with pytest.raises(RuntimeError), staging_dir(parent, PREFIX, flag="--x") as staging:
        (staging.path / "sub").mkdir()
        raise RuntimeError("boom")
    assert listing(parent) == {"sentinel": "mine\n"}


def test_errors_name_the_flag(parent: Path) -> None:
    (parent / "file").write_text("")
    below_a_file = parent / "file" / "x"
    with pytest.raises(StepkitError, match=r"^--staging_folder: cannot create .*file/x"):
        staging_dir(below_a_file, PREFIX, flag="--staging_folder", create_parent=True).__enter__()
    with pytest.raises(StepkitError, match=r"^--dest_dir: cannot create a staging directory in"):
        staging_dir(parent / "missing", PREFIX, flag="--dest_dir").__enter__()
    assert listing(parent) == {"file": "", "sentinel": "mine\n"}


def test_a_parent_the_runner_cannot_write_is_a_denial(tmp_path: Path) -> None:
    """Exit code 3 (DeniedError), naming the flag; run as UID 65534, since root may write anywhere."""
    with NonRootUser() as user:
        lib = user.path("lib")
        shutil.copytree(
            ROOT / "stepkit", lib / "stepkit", ignore=shutil.ignore_patterns("__pycache__")
        )
        readonly = user.path("readonly")
        readonly.chmod(0o555)
        code = textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(lib)!r})
            from stepkit.staging import staging_dir
            try:
                with staging_dir(__import__("pathlib").Path({str(readonly)!r}) / ".download",
                                 "p-", flag="--staging_folder", create_parent=True):
                    pass
            except Exception as exc:
                print(type(exc).__name__, exc.exit_code, exc)
            """
        )
        result = user.run(["/usr/bin/python3", "-I", "-c", code])
        assert result.returncode == 0, result.stderr
        name, exit_code, message = result.stdout.strip().split(" ", 2)
        assert (name, exit_code) == (DeniedError.__name__, "3")
        assert message.startswith("--staging_folder: cannot create"), message
        assert "Permission denied" in message
        assert list(readonly.iterdir()) == []


def test_remove_tree_of_read_only_directories(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    (root / "a" / "b" / "f").chmod(0o444)
    (root / "a" / "b").chmod(0o555)
    (root / "a").chmod(0o500)
    remove_tree(root)
    assert not root.exists()


def test_remove_tree_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched\n")
    outside.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not link.is_symlink()
    assert listing(outside) == {"sentinel": "untouched\n"}
    assert stat.S_IMODE(outside.stat().st_mode) == 0o755
    # Nothing there: nothing to do, no error, and the directory above keeps its mode.
    outside.chmod(0o555)
    remove_tree(outside / "missing")
    assert stat.S_IMODE(outside.stat().st_mode) == 0o555
