"""ADVERSARIAL.md items 1-16 against `stepkit git-init`, run as a user would against real git peers."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from initializers.gitsrc import fetch as fetchmod
from initializers.gitsrc import spec as specmod
from stepkit.errors import InputError, StepkitError
from tests.conftest import (
    STEPKIT,
    Run,
    Secrets,
    Snapshot,
    assert_no_leak,
    run_stepkit,
    snapshot,
)
from tests.gitrepos import (
    HostileRepo,
    Submodule,
    make_case_collision_repo,
    make_cr_path_repo,
    make_dash_url_repo,
    make_evil_name_repo,
    make_leaf_repo,
    make_newline_url_repo,
    make_submodule_repos,
    make_superproject,
    make_symlinked_path_repo,
)
from tests.peers import (
    LOOPBACK,
    AuthorizedKey,
    EndlessGitHttpServer,
    FlakyProxy,
    GitDaemon,
    GitHttpServer,
    SshServer,
    free_port,
    gen_keypair,
    git_env,
    git_processes_for,
    make_bare,
    make_repo,
    run_git,
)

REAL_GIT = shutil.which("git") or "/usr/bin/git"
# Bytes no line of stderr may carry raw: C0 (but the line feeds between lines), DEL and C1.
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
PLANTED_KEYS = ("core.fsmonitor", "core.hookspath", "core.sshcommand")


# --- peers and repositories ----------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """The repository every test fetches from, as a bare repo under a serving root."""

    root: Path
    bare: Path
    refs: dict[str, str]


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Origin:
    base = tmp_path_factory.mktemp("origin")
    refs = make_repo(base / "work", commits=3, branches=["feature/x"], tags=["v1.0"])
    bare = make_bare(base / "work", base / "srv" / "repo.git")
    return Origin(base / "srv", bare, refs)


@pytest.fixture
def http(origin: Origin) -> Iterator[GitHttpServer]:
    with GitHttpServer(origin.root, {}) as server:
        yield server


@dataclass
class Site:
    """One test's world: a workspace, result files, a marker, and a git that logs each run.

    `git` on PATH is a shim that appends its arguments to `git_log` and execs the real git,
    so a test can tell "rejected before git ran" from "git ran and failed".
    """

    tmp: Path
    ws: Path
    marker: Path
    term: Path
    results: Path
    git_log: Path
    env: dict[str, str]
    secrets: list[str] = field(default_factory=list)
    before: Snapshot = field(default_factory=dict)

    @property
    def dest(self) -> Path:
        return self.ws / "src"

    def run(
        self,
        *args: str,
        path: str | None = "src",
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> Run:
        """git-init in the workspace; the whole test tree is snapshotted first."""
        argv = ["git-init", *args]
        if path is not None:
            argv.append(f"-path={path}")
        argv += ["--terminationMessagePath", str(self.term), "--results-dir", str(self.results)]
        self.before = snapshot(self.tmp)
        result = run_stepkit(*argv, env={**self.env, **(env or {})}, cwd=self.ws, timeout=timeout)
        self.assert_no_leak(result)
        return result

    def assert_no_leak(self, result: Run) -> None:
        """No secret in any output: stdout, stderr, results, and every file of the checkout."""
        texts = [result.output]
        for path in (self.term, *self.results.glob("*")):
            if path.is_file():
                texts.append(path.read_text(errors="replace"))
        if self.dest.is_dir():
            for file in self.dest.rglob("*"):
                if file.is_file() and not file.is_symlink() and "objects" not in file.parts:
                    texts.append(file.read_bytes().decode(errors="replace"))
        assert_no_leak("\n".join(texts), self.secrets)

    def git_ran(self) -> list[str]:
        return self.git_log.read_text().splitlines() if self.git_log.exists() else []

    def assert_unchanged(self) -> None:
        """Nothing anywhere in the test's tree changed: no marker, no dest, no results."""
        after = snapshot(self.tmp)
        changed = sorted(set(after) ^ set(self.before)) or sorted(
            k for k in after if after[k] != self.before[k]
        )
        assert not changed, f"files changed: {changed[:10]}"

    def results_map(self) -> dict[str, str]:
        entries = json.loads(self.term.read_text())
        return {e["key"]: e["value"] for e in entries}


@pytest.fixture
def site(tmp_path: Path) -> Site:
    ws = tmp_path / "ws"
    ws.mkdir()
    # A file beside the destination: fetching into ws/src must leave it alone.
    (ws / "sentinel.txt").write_text("keep me\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git_log = tmp_path / "git-calls.log"
    shim = bin_dir / "git"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{git_log}"\nexec "{REAL_GIT}" "$@"\n')
    shim.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    return Site(
        tmp=tmp_path,
        ws=ws,
        marker=tmp_path / "PWNED",
        term=tmp_path / "termination-log",
        results=tmp_path / "results",
        git_log=git_log,
        env=env,
    )


@pytest.fixture
def outside(site: Site) -> Path:
    """A directory beside the workspace, standing for /etc."""
    path = site.tmp / "outside"
    path.mkdir()
    (path / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return path


def error_lines(result: Run) -> list[str]:
    return [line for line in result.stderr.splitlines() if ": error: " in line]


def assert_rejected(site: Site, result: Run, *names: str) -> str:
    """Invalid input: exit 2, one stderr line naming what is wrong, git never run, nothing changed."""
    assert result.returncode == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("stepkit git-init: error: "), lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    assert result.stdout == ""
    assert site.git_ran() == [], "git ran although the input was invalid"
    assert not site.marker.exists()
    assert not site.dest.exists()
    site.assert_unchanged()
    return lines[0]


def assert_failed(site: Site, result: Run, *names: str) -> str:
    """A failure after git ran: non-zero, one error line naming the cause, no dest left."""
    assert result.returncode not in (0, 2), result.output
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in errors[0], errors[0]
    assert not site.marker.exists(), "an injected command ran"
    assert not site.dest.exists(), "a half-made checkout was left behind"
    assert not site.term.exists()
    assert not site.results.exists()
    return errors[0]


def local_url(origin: Origin) -> str:
    """A local path: the transport where an injected --upload-pack really runs a program."""
    return str(origin.bare)


# --- 1-4: revisions that would be options ----------------------------------------------------


def _payloads(marker: Path) -> dict[str, str]:
    return {
        "short-u": f"-u{marker.parent}/evil",
        "abbreviated": f"--upl=touch {marker}",
        "output": f"--output={marker}",
    }


@pytest.mark.parametrize("spelling", ["go", "gnu", "separate", "env"])
def test_adv01_revision_upload_pack_is_rejected(site: Site, origin: Origin, spelling: str) -> None:
    payload = f"--upload-pack=touch {site.marker}"
    env: dict[str, str] = {}
    args: list[str] = [f"-url={local_url(origin)}", "--allow-local"]
    if spelling == "go":
        args.append(f"-revision={payload}")
    elif spelling == "gnu":
        args.append(f"--revision={payload}")
    elif spelling == "separate":
        args += ["-revision", payload]
    else:
        env["STEPKIT_GIT_REVISION"] = payload
    line = assert_rejected(site, site.run(*args, env=env), "-revision")
    assert "must not start with '-'" in line


def _unvalidated_spec(
    origin: Origin, dest: Path, revision: str, refspecs: Sequence[str]
) -> specmod.FetchSpec:
    """A FetchSpec built without parse_revision/parse_refspecs: what a validation bug would pass."""
    return specmod.FetchSpec(
        url=specmod.RepoUrl(str(origin.bare), "file", ""),
        revision=revision,
        refspecs=tuple(refspecs),
        dest=dest,
        workspace=dest.parent,
        depth=1,
        submodules=False,
        ssl_verify=True,
        sparse_dirs=(),
        termination_path=None,
        results_dir=None,
        retries=0,
        backoff=0.0,
        timeout=30.0,
        force=False,
        allowed_schemes=frozenset({"file"}),
    )


def test_adv01_argv_builder_puts_dashdash_before_the_revision(site: Site, origin: Origin) -> None:
    payload = f"--upload-pack=touch {site.marker}"
    spec = _unvalidated_spec(origin, site.dest, payload, [payload])
    for argv in (
        fetchmod._fetch_args(spec, payload),
        fetchmod._fetch_args(spec, payload, extra=("--depth=1",)),
        fetchmod._fetch_args(spec, *spec.refspecs, extra=("--filter=blob:none",)),
    ):
        assert argv.index("--") < argv.index(payload), argv
        assert all(not a.startswith("--upload-pack") for a in argv[: argv.index("--")])

    # The argv, given to the real git against a local remote: the payload is only a refspec.
    repo = site.tmp / "probe"
    env = git_env(site.tmp / "home")
    run_git(["init", "-q", str(repo)], env=env)
    run_git(["remote", "add", "origin", str(origin.bare)], env=env, cwd=repo)
    guarded = run_git(fetchmod._fetch_args(spec, payload), env=env, cwd=repo, check=False)
    assert guarded.returncode != 0
    assert not site.marker.exists()
    # The same words without "--" run the payload: the marker is a live one.
    naive = [a for a in fetchmod._fetch_args(spec, payload) if a != "--"]
    naive.remove("origin")
    run_git([*naive, "origin"], env=env, cwd=repo, check=False)
    assert site.marker.exists(), "control: without '--' git should have run the payload"


@pytest.mark.parametrize("field_name", ["revision", "refspecs"])
def test_adv01_fetch_with_validation_bypassed_runs_nothing(
    site: Site, origin: Origin, field_name: str
) -> None:
    payload = f"--upload-pack=touch {site.marker}"
    spec = _unvalidated_spec(
        origin,
        site.dest,
        payload if field_name == "revision" else "",
        [payload] if field_name == "refspecs" else [],
    )
    with pytest.raises(StepkitError):
        fetchmod.run(spec)
    assert not site.marker.exists()
    assert not site.dest.exists()


@pytest.mark.parametrize("which", ["short-u", "abbreviated"])
@pytest.mark.parametrize("flag", ["-revision", "-refspec"])
def test_adv02_short_and_abbreviated_options_are_rejected(
    site: Site, origin: Origin, which: str, flag: str
) -> None:
    payload = _payloads(site.marker)[which]
    result = site.run(f"-url={local_url(origin)}", "--allow-local", f"{flag}={payload}")
    line = assert_rejected(site, result, flag)
    assert "must not start with '-'" in line
    assert not (site.marker.parent / "evil").exists()


@pytest.mark.parametrize("flag", ["-revision", "-refspec"])
def test_adv03_output_option_writes_no_file(site: Site, origin: Origin, flag: str) -> None:
    payload = _payloads(site.marker)["output"]
    result = site.run(f"-url={local_url(origin)}", "--allow-local", f"{flag}={payload}")
    assert_rejected(site, result, flag)


@pytest.mark.parametrize(
    "revision",
    [
        "main --upload-pack=x",
        "main\n-x",
        "refs/heads/a..b",
        "@{-1}",
        "main@{1}",
        "main~1",
        "main^",
        "main:refs/heads/evil",
        "refs/heads/*",
        "main.lock",
        "refs/heads/.hidden",
        "main\t",
        "/main",
        "main/",
        "@",
    ],
)
def test_adv04_revision_that_is_not_one_ref_name_is_rejected(
    site: Site, origin: Origin, revision: str
) -> None:
    result = site.run(f"-url={local_url(origin)}", "--allow-local", f"-revision={revision}")
    assert_rejected(site, result, "-revision")


@pytest.mark.parametrize("refspec", ["main --upload-pack=x", "main\n-x", "refs/heads/a..b:x"])
def test_adv04_refspec_items_are_checked_one_by_one(
    site: Site, origin: Origin, refspec: str
) -> None:
    result = site.run(f"-url={local_url(origin)}", "--allow-local", f"-refspec={refspec}")
    assert_rejected(site, result, "-refspec")


def test_adv04_nul_in_revision_is_rejected_by_the_parser() -> None:
    # NUL cannot reach the CLI: neither an argv word nor an environment value may hold one.
    with pytest.raises(ValueError, match="null"):
        subprocess.run([STEPKIT, "git-init", "-revision=ma\x00in"], check=False)
    with pytest.raises(ValueError, match="null"):
        subprocess.run([STEPKIT, "git-init"], env={"STEPKIT_GIT_REVISION": "ma\x00in"}, check=False)
    for parse, flag in (
        (specmod.parse_revision, "-revision"),
        (specmod.parse_refspecs, "-refspec"),
    ):
        with pytest.raises(InputError) as caught:
            parse("ma\x00in")
        assert caught.value.exit_code == 2
        assert flag in caught.value.message
        assert "\x00" not in caught.value.message
    with pytest.raises(InputError, match="-url"):
        specmod.parse_url("https://example.com/ma\x00in", allow_http=False, allow_local=False)


@pytest.mark.parametrize("name", ["main", "refs/heads/main", "feature/x", "v1.0", "HEAD~1"])
def test_adv04_real_revisions_still_fetch(
    site: Site, origin: Origin, http: GitHttpServer, name: str
) -> None:
    """The control for 1-4: validation rejects the attacks above, not ordinary revisions."""
    want = origin.refs.get(f"refs/tags/{name}^{{}}") or origin.refs.get(name)
    revision = origin.refs[name] if name == "HEAD~1" else name
    if want is None:
        want = origin.refs[f"refs/heads/{name}"]
    result = site.run(f"-url={http.url_for('repo.git')}", "--allow-http", f"-revision={revision}")
    assert result.returncode == 0, result.output
    assert site.results_map()["commit"] == want
    assert (site.results / "commit").read_text().strip() == want
    assert (site.ws / "sentinel.txt").read_text() == "keep me\n"


# --- 5-8: urls that would be options, transports or local files ------------------------------


@pytest.mark.parametrize("spelling", ["go", "gnu", "separate", "env"])
def test_adv05_url_upload_pack_is_rejected(site: Site, spelling: str) -> None:
    payload = f"--upload-pack=touch {site.marker}"
    env: dict[str, str] = {}
    if spelling == "go":
        args = [f"-url={payload}"]
    elif spelling == "gnu":
        args = [f"--url={payload}"]
    elif spelling == "separate":
        args = ["-url", payload]
    else:
        args, env = [], {"STEPKIT_GIT_URL": payload}
    # The most permissive flags: not even local or plain-http urls let an option through.
    result = site.run(*args, "--allow-local", "--allow-http", env=env)
    assert_rejected(site, result, "-url")
    # Without spaces the url is checked for its leading dash, not for a space.
    line = assert_rejected(site, site.run("-url=--upload-pack=x", "--allow-local"), "-url")
    assert "must not start with '-'" in line


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% {marker}",
        "ext::sh",
        "EXT::sh",
        "fd::17",
        "fd::17/foo",
        "foo::bar",
        "git+ext::x",
        "https::example.com/r.git",
    ],
)
def test_adv06_remote_helper_urls_are_rejected(site: Site, url: str) -> None:
    value = url.format(marker=site.marker)
    result = site.run(f"-url={value}", "--allow-local", "--allow-http")
    assert_rejected(site, result, "-url")


@pytest.mark.parametrize(
    "url", ["file:///etc", "FILE:///etc", "/var/run/secrets/kubernetes.io", "../repo", ".", "~/x"]
)
def test_adv07_local_urls_are_rejected_by_default(site: Site, url: str) -> None:
    line = assert_rejected(site, site.run(f"-url={url}"), "-url")
    assert "--allow-local" in line


def test_adv07_allowed_local_url_that_is_no_repository_fails_cleanly(site: Site) -> None:
    """--allow-local opts in to local paths; /etc is then simply not a repository."""
    result = site.run("-url=file:///etc", "--allow-local", "--retries=0")
    assert_failed(site, result, "/etc")


@pytest.mark.parametrize(
    "url",
    [
        "ssh://-oProxyCommand=touch%20{marker}/x",
        "ssh://git@-oProxyCommand=touch%20{marker}/x",
        "-oProxyCommand=x:repo",
        "git@-oProxyCommand=x:repo",
        "-oProxyCommand=x@host:repo",
        "host:-oProxyCommand=x",
        "ssh://host/-oProxyCommand=x",
        "ssh://host:-22/x",
        "git+ssh://-oProxyCommand=x/y",
    ],
)
def test_adv08_ssh_option_injection_is_rejected_before_git(site: Site, url: str) -> None:
    value = url.format(marker=site.marker)
    assert_rejected(site, site.run(f"-url={value}"), "-url")


# --- 9-11: credentials and control characters in urls -----------------------------------------

PASSWORD = "S3CRET-p@ss/w:rd %#?+é"  # characters a url must percent-encode, and non-ASCII


@pytest.mark.parametrize("log_args", [(), ("--debug",), ("--log-format", "json")])
def test_adv09_url_password_is_used_and_never_shown_or_stored(
    site: Site, origin: Origin, log_args: tuple[str, ...]
) -> None:
    site.secrets.append(PASSWORD)
    tmpdir = site.tmp / "tmpdir"
    tmpdir.mkdir()
    with GitHttpServer(origin.root, {"": ("alice", PASSWORD)}) as server:
        url = f"http://alice:{quote(PASSWORD, safe='')}@{LOOPBACK}:{server.port}/repo.git"
        result = site.run(
            *log_args, f"-url={url}", "--allow-http", "-revision=main", env={"TMPDIR": str(tmpdir)}
        )
        assert result.returncode == 0, result.output
        assert ("repo.git", "alice") in server.granted
        clean_url = server.url_for("repo.git")
    results = site.results_map()
    assert results["commit"] == origin.refs["refs/heads/main"]
    assert results["url"] == clean_url
    assert (site.results / "url").read_text().strip() == clean_url
    stored = run_git(
        ["config", "--file", str(site.dest / ".git" / "config"), "--get", "remote.origin.url"],
        env=git_env(site.tmp / "home"),
    ).stdout.strip()
    assert stored == clean_url
    assert "@" not in stored and "alice" not in stored
    home = site.tmp / "home"
    assert not (home / ".git-credentials").exists()
    # .gitconfig holds only the checkout's safe.directory: no credential, no helper.
    assert (home / ".gitconfig").read_text() == f"[safe]\n\tdirectory = {site.dest}\n"
    assert list(tmpdir.iterdir()) == [], "git-init left files in TMPDIR"


def test_adv09_wrong_url_password_is_denied_without_showing_it(site: Site, origin: Origin) -> None:
    wrong = "WR0NG-" + PASSWORD
    site.secrets += [PASSWORD, wrong]
    with GitHttpServer(origin.root, {"": ("alice", PASSWORD)}) as server:
        url = f"http://alice:{quote(wrong, safe='')}@{LOOPBACK}:{server.port}/repo.git"
        result = site.run(f"-url={url}", "--allow-http", "--retries=0")
    assert result.returncode == 3, result.output
    assert_failed(site, result, "authentication failed")


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:{pw}@example.com/r .git",
        "https://alice:{pw}@example.com/r.git?x=1",
        "https://alice:{pw}@example.com/r.git#frag",
        "https://alice:{pw}@example.com:abc/r.git",
        "https://alice:{pw}@example.com:99999/r.git",
        "https://alice:{pw}@example.com/",
        "https://alice:{pw}@-example.com/r.git",
        "https://alice:{pw}@example.com/%0ar.git",
        "https://alice:{pw}%0d@example.com/r.git",
        "ssh://alice:{pw}@example.com/r.git",
        "foo://alice:{pw}@example.com/r.git",
        "file://alice:{pw}@/r.git",
        "https://alice:{raw}@example.com/r.git",
        "https://{pw}@example.com/r.git?",
        "https://alice:{pw}\x1b@example.com/r.git",
    ],
)
def test_adv09_rejected_url_never_shows_its_password(site: Site, url: str) -> None:
    secret = "S3CRET-" + "x" * 8
    site.secrets.append(secret)
    value = url.format(pw=secret, raw=secret + "/#?")
    if "{raw}" in url:
        site.secrets.append(secret + "/#?")
    result = site.run(f"-url={value}", "--allow-local")
    assert_rejected(site, result, "-url")


def with_login(url: str, user: str, password: str) -> str:
    return url.replace("://", f"://{user}:{quote(password, safe='')}@", 1)


def assert_password_nowhere(site: Site, result: Run, *passwords: str) -> None:
    """No password in any output, git command line, result, file of HOME or the checkout.

    The one exception is the repository's own content: a committed .gitmodules that spells
    a url with its credentials is checked out as committed (it is the source of the secret,
    not a copy). Objects are compressed and not searched.
    """
    texts = [result.output, *site.git_ran()]  # every command line git-init ran git with
    for path in (site.term, *site.results.glob("*")):
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
    home = Path(os.environ["HOME"])
    for tree in (site.dest, home):
        for file in tree.rglob("*") if tree.is_dir() else ():
            if not file.is_file() or file.is_symlink() or "objects" in file.parts:
                continue
            if file.name == ".gitmodules" and ".git" not in file.relative_to(tree).parts:
                committed = run_git(
                    ["show", "HEAD:.gitmodules"], env=git_env(home), cwd=file.parent
                ).stdout
                assert file.read_text() == committed, f"{file} is not as committed"
                continue
            texts.append(file.read_bytes().decode(errors="replace"))
    assert_no_leak("\n".join(texts), list(passwords))


def test_adv09_submodule_url_credentials_are_used_and_never_stored(site: Site) -> None:
    """A .gitmodules url with credentials (here two, for two repositories of one server, at
    two levels): each repository gets its own, and none reaches .git/config, the submodules'
    config under .git/modules, or any output (git-sync#851)."""
    main_root, other_root = site.tmp / "srv-main", site.tmp / "srv-other"
    main_root.mkdir()
    nested = make_leaf_repo(other_root / "nested.git", "nested\n")
    sub_pw, nested_pw = "SUB-T0KEN/:@%é", "NESTED-T0KEN#?+"
    other_creds = {"sub.git": ("bob", sub_pw), "nested.git": ("carol", nested_pw)}
    with (
        GitHttpServer(main_root, {}) as main,
        GitHttpServer(other_root, other_creds) as other,
    ):
        nested_url = with_login(other.url_for("nested.git"), "carol", nested_pw)
        sub = make_superproject(
            other_root / "sub.git", [Submodule("nested", "deps/nested", nested_url, nested)]
        )
        sub_url = with_login(other.url_for("sub.git"), "bob", sub_pw)
        top = make_superproject(
            main_root / "super.git", [Submodule("sub", "libs/sub", sub_url, sub)]
        )
        result = site.run(f"-url={main.url_for('super.git')}", "--allow-http")
        assert result.returncode == 0, result.output
        assert "submodule 'sub': its url holds credentials" in result.stderr
        assert set(other.auth_log) == {("sub.git", "bob"), ("nested.git", "carol")}
        assert {("sub.git", "bob"), ("nested.git", "carol")} <= set(other.granted)
        clean_sub = other.url_for("sub.git")
    assert site.results_map()["commit"] == top
    dest = site.dest
    assert (dest / "libs/sub/deps/nested/README.md").read_text() == "nested\n"
    env = git_env(site.tmp / "home")
    for repo, tip in (
        (dest, top),
        (dest / "libs/sub", sub),
        (dest / "libs/sub/deps/nested", nested),
    ):
        assert run_git(["rev-parse", "HEAD"], env=env, cwd=repo).stdout.strip() == tip
    assert run_git(["config", "submodule.sub.url"], env=env, cwd=dest).stdout.strip() == clean_sub
    assert_password_nowhere(site, result, sub_pw, nested_pw)


def test_adv09_url_credentials_are_not_offered_to_another_server(site: Site) -> None:
    """-url's credentials are for -url's server: a submodule on another one that asks for a
    password gets none of them, and the run fails naming that submodule's url."""
    main_root, other_root = site.tmp / "srv-main", site.tmp / "srv-other"
    main_root.mkdir()
    leaf = make_leaf_repo(other_root / "lib.git", "leaf\n")
    main_pw = "MAIN-T0KEN-" + PASSWORD
    with (
        GitHttpServer(main_root, {"": ("alice", main_pw)}) as main,
        GitHttpServer(other_root, {"": ("bob", "the-other-servers-token")}) as other,
    ):
        lib_url = other.url_for("lib.git")
        make_superproject(main_root / "super.git", [Submodule("lib", "deps/lib", lib_url, leaf)])
        url = with_login(main.url_for("super.git"), "alice", main_pw)
        result = site.run(f"-url={url}", "--allow-http", "--retries=0")
        assert ("super.git", "alice") in main.granted
        assert other.auth_log == [], "credentials were offered to another server"
        assert other.request_log, "the submodule was never asked for"
    assert result.returncode == 3, result.output
    line = assert_failed(site, result, "authentication failed", lib_url)
    assert "alice" not in line
    assert_password_nowhere(site, result, main_pw)


def test_adv09_url_credentials_reach_submodules_on_the_same_server(site: Site) -> None:
    """The control: relative submodule urls (same server) get -url's credentials, before a
    wrong password creds-init wrote for that server."""
    root = site.tmp / "srv"
    tips = make_submodule_repos(root)
    secrets = Secrets(site.tmp / "secrets")
    secrets.add("stale", {"username": "alice", "password": "a-stale-password"})
    with GitHttpServer(root, {"": ("alice", PASSWORD)}) as server:
        written = run_stepkit(
            "creds-init", f"-basic-git=stale={server.url}", f"--secrets-dir={secrets.root}"
        )
        assert written.returncode == 0, written.output
        result = site.run(
            f"-url={with_login(server.url_for('super.git'), 'alice', PASSWORD)}", "--allow-http"
        )
        assert result.returncode == 0, result.output
        assert set(server.auth_log) == {
            ("super.git", "alice"),
            ("sub.git", "alice"),
            ("nested.git", "alice"),
        }
        # Every credential presented was accepted: the stale one was never offered.
        assert sorted(server.auth_log) == sorted(server.granted)
    assert site.results_map()["commit"] == tips["super"]
    assert (site.dest / "libs/sub/deps/nested/NESTED.md").is_file()
    assert_password_nowhere(site, result, PASSWORD)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/%0ahost=evil.com/x",
        "https://example.com/r%0d",
        "https://example.com/r%0D%0A",
        "https://example.com/r%00",
        "https://example.com/r%5c..%5cx",
        "https://ex%0aample.com/r.git",
        "https:///evil.com/x",
        "https://example.com:abc/x",
        "https://example.com:/x",
        "https://example.com:0/x",
        "https://example.com:65536/x",
        "https://[::1/x",
        "https://u%0ahost=evil.com:pw@example.com/r.git",
        "https://u:pw%0d@example.com/r.git",
    ],
)
def test_adv10_malformed_urls_are_rejected(site: Site, url: str) -> None:
    assert_rejected(site, site.run(f"-url={url}"), "-url")


def test_adv10_http_port_that_is_no_number_is_named(site: Site) -> None:
    line = assert_rejected(site, site.run("-url=http://host:abc/x", "--allow-http"), "-url")
    assert "port" in line


# name: (raw, as the error line must show it)
CONTROLS = {
    "osc-title": ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    "csi": ("\x1b[2J", "\\x1b[2J"),
    "backspace": ("\x08\x08\x08", "\\x08\\x08\\x08"),
    "cr": ("\r", "\\r"),
    "del": ("\x7f", "\\x7f"),
    "c1-csi": ("\x9b31m", "\\x9b31m"),
    "vt": ("\x0b", "\\x0b"),
}


@pytest.mark.parametrize("where", ["-url", "-revision", "-path", "-refspec"])
@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_adv11_control_characters_are_shown_escaped(
    site: Site, origin: Origin, where: str, control: str
) -> None:
    raw, escaped = CONTROLS[control]
    bad = f"ma{raw}in"
    args = {
        "-url": [f"-url=https://example.com/{bad}.git"],
        "-revision": [f"-url={local_url(origin)}", "--allow-local", f"-revision={bad}"],
        "-path": [f"-url={local_url(origin)}", "--allow-local"],
        "-refspec": [f"-url={local_url(origin)}", "--allow-local", f"-refspec={bad}"],
    }[where]
    result = site.run(*args, path=bad if where == "-path" else "src")
    line = assert_rejected(site, result, where)
    assert not RAW_CONTROL.search(result.stderr), repr(result.stderr)
    if where != "-refspec":  # the refspec message says only that a control character is there
        assert f"ma{escaped}in" in line, line


def test_adv11_json_log_carries_no_raw_control_byte(site: Site, origin: Origin) -> None:
    result = site.run(
        "--log-format",
        "json",
        f"-url={local_url(origin)}",
        "--allow-local",
        "-revision=\x1b]0;pwned\x07",
    )
    assert result.returncode == 2
    assert not RAW_CONTROL.search(result.stderr)
    (entry,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert entry["level"] == "error"
    assert "-revision" in entry["message"] and "\\x1b" in entry["message"]


# --- 12-13: hostile submodules ------------------------------------------------------------------

HostileMaker = Callable[[Path, Path], HostileRepo]

HOSTILE: dict[str, tuple[HostileMaker, str]] = {
    # id: (maker, what the one error line must name)
    "evil-name": (make_evil_name_repo, "submodule '../../modules/evil'"),
    "dash-url": (make_dash_url_repo, "submodule 'sub'"),
    "dash-url-upload-pack": (
        functools.partial(make_dash_url_repo, url="-u./payload"),
        "submodule 'sub'",
    ),
    "newline-url": (make_newline_url_repo, "submodule 'sub'"),
    "cr-path": (make_cr_path_repo, "submodule 'sub'"),
}


def assert_payload_is_live(repo: HostileRepo, site: Site) -> None:
    """The control: the payload, run by hand, does create the marker the test watches."""
    if repo.payload_repo is None:
        return
    script = site.tmp / "payload.sh"
    env = git_env(site.tmp / "home")
    blob = run_git(
        ["--git-dir", str(repo.payload_repo), "show", f"main:{repo.payload_path}"], env=env
    ).stdout
    script.write_text(blob)
    subprocess.run(["sh", str(script)], check=True, timeout=30)
    assert site.marker.exists(), "control: the payload should create the marker"
    site.marker.unlink()


def plant_example_credentials(site: Site) -> None:
    """A stored password for example.com, which CVE-2020-5260's url tries to make git send."""
    password = "EXAMPLE-COM-PASSWORD"
    home = site.tmp / "home"
    (home / ".git-credentials").write_text(f"https://victim:{password}@example.com\n")
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    site.secrets.append(password)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_adv12_hostile_submodule_is_refused_by_name(site: Site, kind: str) -> None:
    maker, named = HOSTILE[kind]
    root = site.tmp / "srv"
    repo = maker(root, site.marker)
    plant_example_credentials(site)
    with GitHttpServer(root, {}) as server:
        result = site.run(f"-url={server.url_for(repo.name)}", "--allow-http", "--retries=0")
        assert server.auth_log == [], "a stored credential was sent"
    line = assert_failed(site, result, named)
    assert result.returncode == 1
    assert not [c for c in site.git_ran() if "submodule update" in c], "refused only after git ran"
    assert not RAW_CONTROL.search(line)
    assert_payload_is_live(repo, site)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_adv12_hostile_superproject_without_submodules_fetches_inertly(
    site: Site, kind: str
) -> None:
    maker, _ = HOSTILE[kind]
    root = site.tmp / "srv"
    repo = maker(root, site.marker)
    with GitHttpServer(root, {}) as server:
        result = site.run(f"-url={server.url_for(repo.name)}", "--allow-http", "-submodules=false")
    assert result.returncode == 0, result.output
    assert site.results_map()["commit"] == repo.commit
    assert (site.dest / ".gitmodules").read_bytes() == repo.gitmodules.encode()
    assert not (site.dest / ".git" / "modules").exists()
    assert not site.marker.exists()
    assert_payload_is_live(repo, site)


def make_gitmodules_repo(root: Path, work: Path, gitmodules: str, gitlink: str) -> str:
    """A superproject whose .gitmodules is given verbatim, with the gitlink sub -> gitlink."""
    env = git_env(work / "home")
    (work / "home").mkdir(parents=True)
    repo = work / "super"
    repo.mkdir()
    run_git(["init", "-q", "-b", "main"], env=env, cwd=repo)
    (repo / ".gitmodules").write_text(gitmodules)
    run_git(["add", ".gitmodules"], env=env, cwd=repo)
    run_git(["update-index", "--add", "--cacheinfo", f"160000,{gitlink},sub"], env=env, cwd=repo)
    run_git(["commit", "-q", "-m", "super"], env=env, cwd=repo)
    make_bare(repo, root / "super.git")
    return "super.git"


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% {marker}",
        "fd::17",
        "file:///etc",
        "/var/run/secrets/kubernetes.io",
        "ssh://-oProxyCommand=touch%20{marker}/x",
        "-oProxyCommand=touch%20{marker}:x",
        "http://example.com/plain.git",
        "https://example.com/%0d%0ahost=evil.com",
        "https://alice:S3CRET-SUBMODULE@example.com/r .git",
    ],
)
def test_adv12_submodule_url_is_checked_like_the_url_flag(
    site: Site, origin: Origin, url: str
) -> None:
    """A submodule url gets -url's checks and -url's allowances, nothing more (git:// here)."""
    site.secrets.append("S3CRET-SUBMODULE")
    root = site.tmp / "srv"
    gitmodules = f'[submodule "sub"]\n\tpath = sub\n\turl = {url.format(marker=site.marker)}\n'
    name = make_gitmodules_repo(root, site.tmp / "build", gitmodules, origin.refs["HEAD"])
    with GitDaemon(root) as daemon:
        result = site.run(f"-url={daemon.url_for(name)}", "--retries=0")
    assert_failed(site, result, "submodule 'sub'")
    assert not [c for c in site.git_ran() if "submodule update" in c]


def test_adv12_cr_path_error_shows_the_path_as_written(site: Site) -> None:
    """The one line names the entry as .gitmodules has it: 'sub\\r', not a mangled 'sub\\n'."""
    root = site.tmp / "srv"
    repo = make_cr_path_repo(root, site.marker)
    with GitHttpServer(root, {}) as server:
        result = site.run(f"-url={server.url_for(repo.name)}", "--allow-http", "--retries=0")
    line = assert_failed(site, result, "submodule 'sub'")
    assert "'sub\\r'" in line, line


def test_adv12_benign_submodules_are_fetched(site: Site) -> None:
    """The control for 12-13: the submodule code path does run, relative urls and nesting included."""
    root = site.tmp / "srv"
    tips = make_submodule_repos(root)
    with GitHttpServer(root, {}) as server:
        result = site.run(f"-url={server.url_for('super.git')}", "--allow-http")
    assert result.returncode == 0, result.output
    assert (site.dest / "libs" / "sub" / "SUB.md").is_file()
    assert (site.dest / "libs" / "sub" / "deps" / "nested" / "NESTED.md").is_file()
    assert site.results_map()["commit"] == tips["super"]


@pytest.mark.parametrize("maker", [make_case_collision_repo, make_symlinked_path_repo])
@pytest.mark.parametrize("submodules", ["true", "false"])
def test_adv13_symlinked_or_colliding_submodule_path_runs_no_hook(
    site: Site, maker: HostileMaker, submodules: str
) -> None:
    root = site.tmp / "srv"
    repo = maker(root, site.marker)
    with GitDaemon(root) as daemon:
        result = site.run(
            f"-url={daemon.url_for(repo.name)}", f"-submodules={submodules}", "--retries=0"
        )
    assert not site.marker.exists()
    if result.returncode != 0:
        # Refusing is fine, if the one line says which submodule.
        assert_failed(site, result, "submodule")
    else:
        assert site.results_map()["commit"] == repo.commit
        git_dir = site.dest / ".git"
        assert list(git_dir.rglob("post-checkout")) == [], "a hook landed in .git"
        for link in (site.dest / "a", site.dest / "A"):
            if link.is_symlink():
                # The symlink to .git is checked out as a link; nothing was written through it.
                assert os.readlink(link) == ".git"
    assert_payload_is_live(repo, site)


# --- 14: a destination that already holds a repository --------------------------------------------


def _hooks_dir(site: Site) -> Path:
    hooks = site.tmp / "outside-hooks"
    hooks.mkdir(exist_ok=True)
    for name in ("post-checkout", "pre-commit", "fsmonitor-watchman", "reference-transaction"):
        hook = hooks / name
        hook.write_text(f"#!/bin/sh\ntouch {site.marker}\n")
        hook.chmod(0o755)
    return hooks


def planted_settings(site: Site) -> dict[str, str]:
    """What a hostile step writes into .git/config: each runs the payload when git reads it."""
    return {
        "core.fsmonitor": f"touch {site.marker}; false",
        "core.hooksPath": str(_hooks_dir(site)),
        "core.sshCommand": f"touch {site.marker}; false",
    }


def planted_config(site: Site) -> str:
    lines = ["[core]", "\trepositoryformatversion = 0", "\tbare = false"]
    lines += [f'\t{k.split(".")[1]} = "{v}"' for k, v in planted_settings(site).items()]
    return "\n".join(lines) + "\n"


def plant_repo(site: Site, git_dir: Path, *, ours: bool = False) -> None:
    """A repository at git_dir whose config and hooks each run the payload."""
    env = git_env(site.tmp / "home")
    run_git(["init", "-q", "--bare", str(git_dir)], env=env)
    (git_dir / "config").write_text(planted_config(site))
    hooks = git_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    hook = hooks / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {site.marker}\n")
    hook.chmod(0o755)
    if ours:
        (git_dir / fetchmod.MARKER).write_text("http://example.invalid/old.git\n")


def assert_config_is_ours(dest: Path, url: str) -> None:
    text = (dest / ".git" / "config").read_text()
    keys = {
        line.split("=", 1)[0].lower()
        for line in run_git(
            ["config", "--file", str(dest / ".git" / "config"), "--list"],
            env=git_env(dest.parent),
        ).stdout.splitlines()
    }
    assert not keys & set(PLANTED_KEYS), keys
    assert "touch" not in text
    assert keys >= {"remote.origin.url", "core.bare"}, keys
    assert url in text


def assert_planted_config_is_live(site: Site) -> None:
    """The control: git itself, in a copy of the planted checkout, does run the payload."""
    copy = site.tmp / "control"
    shutil.copytree(site.dest, copy, symlinks=True)
    env = git_env(site.tmp / "home")
    run_git(["status"], env=env, cwd=copy, check=False)
    assert site.marker.exists(), "control: git status should run the planted fsmonitor"
    site.marker.unlink()
    shutil.rmtree(copy)


@pytest.mark.parametrize("shape", ["config", "hooks", "gitfile"])
def test_adv14_foreign_repository_in_dest_is_refused_without_force(
    site: Site, http: GitHttpServer, shape: str
) -> None:
    site.dest.mkdir()
    (site.dest / "tracked.txt").write_text("someone's file\n")
    if shape == "gitfile":
        elsewhere = site.tmp / "elsewhere.git"
        plant_repo(site, elsewhere)
        (site.dest / ".git").write_text(f"gitdir: {elsewhere}\n")
    else:
        plant_repo(site, site.dest / ".git")
        if shape == "hooks":
            (site.dest / ".git" / "config").write_text("[core]\n\tbare = false\n")
    if shape == "config":
        assert_planted_config_is_live(site)
    result = site.run(f"-url={http.url_for('repo.git')}", "--allow-http")
    assert result.returncode == 2, result.output
    (line,) = result.stderr.splitlines()
    assert "-path" in line and "--force" in line
    assert site.git_ran() == []
    assert not site.marker.exists()
    site.assert_unchanged()


@pytest.mark.parametrize("shape", ["config", "hooks", "gitfile"])
def test_adv14_foreign_repository_in_dest_is_neutralised_with_force(
    site: Site, http: GitHttpServer, origin: Origin, shape: str
) -> None:
    site.dest.mkdir()
    (site.dest / "tracked.txt").write_text("someone's file\n")
    elsewhere = site.tmp / "elsewhere.git"
    if shape == "gitfile":
        plant_repo(site, elsewhere)
        (site.dest / ".git").write_text(f"gitdir: {elsewhere}\n")
    else:
        plant_repo(site, site.dest / ".git")
        if shape == "hooks":
            (site.dest / ".git" / "config").write_text("[core]\n\tbare = false\n")
    outside = snapshot(elsewhere) if elsewhere.exists() else {}
    hooks = snapshot(_hooks_dir(site))
    result = site.run(f"-url={http.url_for('repo.git')}", "--allow-http", "--force")
    assert result.returncode == 0, result.output
    assert not site.marker.exists()
    assert site.results_map()["commit"] == origin.refs["refs/heads/main"]
    assert (site.dest / ".git").is_dir() and not (site.dest / ".git").is_symlink()
    assert not (site.dest / ".git" / "hooks").exists()
    assert_config_is_ours(site.dest, http.url_for("repo.git"))
    # The repository the gitfile named, and the hooks the config named, were not touched.
    assert (snapshot(elsewhere) if elsewhere.exists() else {}) == outside
    assert snapshot(_hooks_dir(site)) == hooks
    # Later git commands in the checkout (a build step's) run nothing planted either.
    run_git(["status"], env=git_env(site.tmp / "home"), cwd=site.dest)
    assert not site.marker.exists()


def test_adv14_foreign_repository_claiming_to_be_ours_is_neutralised(
    site: Site, http: GitHttpServer, origin: Origin
) -> None:
    """A step can plant git-init's own marker file: that skips --force, and must skip nothing else."""
    site.dest.mkdir()
    plant_repo(site, site.dest / ".git", ours=True)
    result = site.run(f"-url={http.url_for('repo.git')}", "--allow-http")
    assert result.returncode == 0, result.output
    assert not site.marker.exists()
    assert site.results_map()["commit"] == origin.refs["refs/heads/main"]
    assert not (site.dest / ".git" / "hooks").exists()
    assert_config_is_ours(site.dest, http.url_for("repo.git"))


def test_adv14_previous_checkout_with_planted_config_is_reused_safely(
    site: Site, http: GitHttpServer, origin: Origin
) -> None:
    """A step between two git-init runs rewrote .git/config: the re-run keeps none of it."""
    first = site.run(f"-url={http.url_for('repo.git')}", "--allow-http", "-revision=main")
    assert first.returncode == 0, first.output
    git_dir = site.dest / ".git"
    env = git_env(site.tmp / "home")
    for key, value in planted_settings(site).items():
        run_git(["config", "--file", str(git_dir / "config"), key, value], env=env)
    (git_dir / "hooks").mkdir(exist_ok=True)
    for name in ("post-checkout", "reference-transaction", "post-index-change"):
        hook = git_dir / "hooks" / name
        hook.write_text(f"#!/bin/sh\ntouch {site.marker}\n")
        hook.chmod(0o755)
    (git_dir / "info").mkdir(exist_ok=True)
    (git_dir / "info" / "attributes").write_text("* filter=evil\n")
    assert_planted_config_is_live(site)
    again = site.run(f"-url={http.url_for('repo.git')}", "--allow-http", "-revision=feature/x")
    assert again.returncode == 0, again.output
    assert not site.marker.exists()
    assert site.results_map()["commit"] == origin.refs["refs/heads/feature/x"]
    assert not (git_dir / "hooks").exists()
    assert not (git_dir / "info" / "attributes").exists()
    assert_config_is_ours(site.dest, http.url_for("repo.git"))
    run_git(["status"], env=git_env(site.tmp / "home"), cwd=site.dest)
    assert not site.marker.exists()


@pytest.mark.parametrize(
    "shape",
    ["fetch-head-symlink", "fetch-head-hardlink", "reflog-symlink", "commondir", "objects-dir"],
)
def test_adv14_previous_checkout_never_lets_git_write_outside_dest(
    site: Site, http: GitHttpServer, origin: Origin, outside: Path, shape: str
) -> None:
    """Links a step plants in a reused .git must not carry git's writes out of the destination.

    git writes FETCH_HEAD and reflogs in place (through a symlink or into a hard link's inode),
    follows commondir (`git init` then rewrites that repository's config) and puts new objects
    wherever objects leads.
    """
    url = http.url_for("repo.git")
    first = site.run(f"-url={url}", "--allow-http", "-revision=main")
    assert first.returncode == 0, first.output
    git_dir = site.dest / ".git"
    victim = outside / "victim"
    victim.write_text("victim\n")
    if shape == "fetch-head-symlink":
        (git_dir / "FETCH_HEAD").unlink()
        (git_dir / "FETCH_HEAD").symlink_to(victim)
    elif shape == "fetch-head-hardlink":
        (git_dir / "FETCH_HEAD").unlink()
        os.link(victim, git_dir / "FETCH_HEAD")
    elif shape == "reflog-symlink":
        (git_dir / "logs").mkdir(exist_ok=True)
        (git_dir / "logs" / "HEAD").symlink_to(victim)
    elif shape == "commondir":
        other = outside / "other.git"
        run_git(["init", "-q", "--bare", str(other)], env=git_env(site.tmp / "home"))
        (git_dir / "commondir").write_text(f"{other}\n")
    else:
        shutil.move(git_dir / "objects", outside / "objects")
        (git_dir / "objects").symlink_to(outside / "objects")
    kept = snapshot(outside)
    again = site.run(f"-url={url}", "--allow-http", "-revision=feature/x")
    assert snapshot(outside) == kept, "git wrote outside the destination"
    if again.returncode == 2:  # refusing the planted checkout is as good as neutralising it
        (line,) = again.stderr.splitlines()
        assert "-path" in line
    else:
        assert again.returncode == 0, again.output
        assert site.results_map()["commit"] == origin.refs["refs/heads/feature/x"]


def make_moving_submodule(root: Path, work: Path) -> dict[str, str]:
    """super.git whose branch `one` pins sub.git's first commit and `main` its second."""
    env = git_env(work / "home")
    (work / "home").mkdir(parents=True)

    def git(*args: str, cwd: Path) -> str:
        return run_git(args, env=env, cwd=cwd).stdout.strip()

    sub, sup = work / "sub", work / "super"
    shas: list[str] = []
    for repo in (sub, sup):
        repo.mkdir()
        git("init", "-q", "-b", "main", cwd=repo)
    for n in (1, 2):
        (sub / "file.txt").write_text(f"version {n}\n")
        git("add", "file.txt", cwd=sub)
        git("commit", "-q", "-m", f"sub {n}", cwd=sub)
        shas.append(git("rev-parse", "HEAD", cwd=sub))
    (sup / ".gitmodules").write_text('[submodule "sub"]\n\tpath = sub\n\turl = ../sub.git\n')
    git("add", ".gitmodules", cwd=sup)
    for n, sha in enumerate(shas, 1):
        git("update-index", "--add", "--cacheinfo", f"160000,{sha},sub", cwd=sup)
        git("commit", "-q", "-m", f"super {n}", cwd=sup)
        if n == 1:
            git("branch", "one", cwd=sup)
    make_bare(sub, root / "sub.git")
    make_bare(sup, root / "super.git")
    return {"one": shas[0], "main": shas[1]}


def test_adv14_previous_checkout_with_planted_submodule_config_runs_nothing(site: Site) -> None:
    """A step plants config in a submodule's git dir (.git/modules/sub): the re-run runs none of it.

    -c settings override core.fsmonitor and core.hooksPath in submodules too, but not, for one,
    a smudge filter: only dropping (or rewriting) .git/modules on reuse keeps it from running.
    """
    root = site.tmp / "srv"
    pins = make_moving_submodule(root, site.tmp / "build")
    with GitHttpServer(root, {}) as server:
        url = server.url_for("super.git")
        first = site.run(f"-url={url}", "--allow-http", "-revision=one")
        assert first.returncode == 0, first.output
        module = site.dest / ".git" / "modules" / "sub"
        env = git_env(site.tmp / "home")
        settings = {
            **planted_settings(site),
            "filter.evil.smudge": f"touch {site.marker}; cat",
            "filter.evil.clean": f"touch {site.marker}; cat",
            "credential.helper": f"!touch {site.marker}; true",
        }
        for key, value in settings.items():
            run_git(["config", "--file", str(module / "config"), key, value], env=env)
        (module / "info").mkdir(exist_ok=True)
        (module / "info" / "attributes").write_text("* filter=evil\n")
        (module / "hooks").mkdir(exist_ok=True)
        hook = module / "hooks" / "post-checkout"
        hook.write_text(f"#!/bin/sh\ntouch {site.marker}\n")
        hook.chmod(0o755)
        again = site.run(f"-url={url}", "--allow-http", "-revision=main")
    assert again.returncode == 0, again.output
    assert not site.marker.exists(), "a setting planted in .git/modules/sub ran"
    assert (site.dest / "sub" / "file.txt").read_text() == "version 2\n"
    head = run_git(["rev-parse", "HEAD"], env=git_env(site.tmp / "home"), cwd=site.dest / "sub")
    assert head.stdout.strip() == pins["main"]


def test_adv14_planted_ssh_command_is_never_used(
    site: Site, origin: Origin, secrets: Secrets
) -> None:
    """Over ssh, with creds-init's key: the fetch works and the planted sshCommand never runs."""
    key_dir = site.tmp / "keys"
    private, public = gen_keypair(key_dir / "id")
    site.secrets.append(private)
    site.dest.mkdir()
    plant_repo(site, site.dest / ".git")
    with SshServer(site.tmp / "sshd", [AuthorizedKey(public, origin.root)]) as sshd:
        secrets.add("deploy", {"ssh-privatekey": private, "known_hosts": sshd.host_key_line + "\n"})
        creds = run_stepkit(
            "creds-init",
            f"-ssh-git=deploy=127.0.0.1:{sshd.port}",
            "--secrets-dir",
            str(secrets.root),
        )
        assert creds.returncode == 0, creds.output
        assert_no_leak(creds.output, site.secrets)
        url = sshd.url_for("repo.git")
        refused = site.run(f"-url={url}")
        assert refused.returncode == 2, refused.output
        assert sshd.access_log() == []
        result = site.run(f"-url={url}", "--force", "--retries=0")
        assert result.returncode == 0, result.output
        assert [a.allowed for a in sshd.access_log()] == [True]
    assert not site.marker.exists()
    assert_config_is_ours(site.dest, url)


# --- 15: a destination outside the workspace ---------------------------------------------------


@pytest.mark.parametrize(
    "path", ["../../etc", "/etc", "../outside", "src/../../outside", "{outside}", "/"]
)
def test_adv15_path_outside_the_workspace_is_rejected(
    site: Site, http: GitHttpServer, outside: Path, path: str
) -> None:
    result = site.run(
        f"-url={http.url_for('repo.git')}", "--allow-http", path=path.format(outside=outside)
    )
    line = assert_rejected(site, result, "-path")
    assert "outside the workspace" in line


@pytest.mark.parametrize("shape", ["dest", "parent", "dangling", "env"])
@pytest.mark.parametrize("force", [False, True])
def test_adv15_symlink_in_the_path_is_rejected(
    site: Site, http: GitHttpServer, outside: Path, shape: str, force: bool
) -> None:
    env: dict[str, str] = {}
    path: str | None = "src"
    if shape == "dest":
        site.dest.symlink_to(outside)
    elif shape == "parent":
        (site.ws / "link").symlink_to(outside)
        path = "link/src"
    elif shape == "dangling":
        site.dest.symlink_to(outside / "new")
    else:
        site.dest.symlink_to(outside)
        env, path = {"STEPKIT_GIT_PATH": "src"}, None
    args = [f"-url={http.url_for('repo.git')}", "--allow-http", *(["--force"] if force else [])]
    result = site.run(*args, path=path, env=env)
    assert result.returncode == 2, result.output
    (line,) = result.stderr.splitlines()
    assert "-path" in line and "symbolic link" in line
    assert site.git_ran() == []
    assert not (outside / "new").exists()
    site.assert_unchanged()


# --- 16: servers that never finish --------------------------------------------------------------


def assert_timed_out(site: Site, result: Run, port: int) -> None:
    assert result.returncode == 1, result.output
    (line,) = error_lines(result)
    assert "timed out" in line, line
    assert not site.dest.exists()
    deadline = time.monotonic() + 5
    while git_processes_for(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert git_processes_for(port) == []


@pytest.mark.parametrize("scheme", ["http", "git", "ssh"])
def test_adv16_server_that_never_answers_times_out(site: Site, scheme: str) -> None:
    with FlakyProxy(LOOPBACK, free_port(), stall=True) as proxy:
        url = f"{scheme}://{LOOPBACK}:{proxy.port}/repo.git"
        # Bounded: run_stepkit fails the test if git-init is still running after 60 s.
        result = site.run(f"-url={url}", "--allow-http", "--timeout=3", "--retries=0", timeout=60)
        assert proxy.accepted >= 1, "git never reached the server"
        assert_timed_out(site, result, proxy.port)


@pytest.mark.parametrize("mode", ["refs", "sideband"])
def test_adv16_endless_server_times_out(site: Site, mode: str) -> None:
    with EndlessGitHttpServer(mode) as server:
        result = site.run(
            f"-url={server.url_for('repo.git')}",
            "--allow-http",
            # The endless server does not advertise "shallow": a depth-1 fetch would stop early.
            "-depth=0",
            "--timeout=3",
            "--retries=0",
            timeout=60,
        )
        assert server.chunks_sent > 0, "the server never got to trickle"
        if mode == "sideband":
            assert ("POST", "/repo.git/git-upload-pack") in server.requests
        assert_timed_out(site, result, server.port)
    # The progress it trickled is at most a tail in the error, never the whole stream.
    assert len(result.stderr) < 8192, len(result.stderr)


def test_adv16_timeouts_are_retried_then_reported(site: Site) -> None:
    """--retries counts: each attempt is bounded, the last one's time-out is the error."""
    with FlakyProxy(LOOPBACK, free_port(), stall=True) as proxy:
        result = site.run(
            f"-url=http://{LOOPBACK}:{proxy.port}/repo.git",
            "--allow-http",
            "--timeout=2",
            "--retries=1",
            "--retry-backoff=0",
            timeout=60,
        )
        assert proxy.accepted >= 2
        assert_timed_out(site, result, proxy.port)
    assert "retrying" in result.stderr
