"""`stepkit git-push`: commit what the build changed in a checkout, optionally tag it, and push.

A push rejected because the branch moved meanwhile (non-fast-forward) is fetched, rebased
and pushed again, a bounded number of times; a rebase conflict stops with the files named and
nothing pushed. Credentials are creds-init's (the git credential store and ssh config in
$HOME); no user value ever reaches git as an option.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from builders.gitpush import spec as specmod
from stepkit import gitenv, subproc
from stepkit.builder import Context, Param, Result, builder, fail, group, mask
from stepkit.errors import CommandError, InputError, StepkitError
from stepkit.gitrun import Git, TransientError
from stepkit.giturl import parse_url
from stepkit.secret import redact
from stepkit.validate import shown

log = logging.getLogger(__name__)

DEFAULT_AUTHOR = specmod.Author("stepkit git-push", "git-push@stepkit.invalid")
_NON_FAST_FORWARD = ("fetch first", "non-fast-forward")


@dataclass(frozen=True)
class _Rejection:
    ref: str
    reason: str


class _Rejected(Exception):
    def __init__(self, rejections: list[_Rejection]) -> None:
        super().__init__("rejected")
        self.rejections = rejections


@builder(
    name="git-push",
    help="""Commit what changed in a git checkout, optionally tag it, and push it.

Works on what git-init checked out (shallow, detached HEAD) and on a fresh `git init`.
Nothing changed (and no tag asked for): nothing is pushed. A push rejected because the
branch moved meanwhile is fetched, rebased and retried; a conflict stops with nothing
pushed. Credentials come from what creds-init wrote into $HOME.""",
    params=[
        Param("path", type=Path, default=".", help="The checkout, relative to the workspace."),
        Param("message", default="Update from stepkit git-push", help="The commit message."),
        Param(
            "author",
            default="",
            help="The commit's author and committer, 'Name <email>' "
            "[default: git's user.name/user.email, else stepkit git-push]",
        ),
        Param(
            "branch",
            default="",
            help="Branch to push to [default: the checked-out branch; required on a detached HEAD]",
        ),
        Param("tag", default="", help="Tag the pushed commit with this annotated tag."),
        Param("remote", default="origin", help="The checkout's remote name, or a repository url."),
        Param(
            "add",
            type=list,
            required=False,
            help="Paths to commit (files or directories, literal) [default: every change]",
        ),
        Param(
            "retries",
            type=int,
            default=3,
            minimum=0,
            maximum=20,
            help="Times to fetch, rebase and push again after a rejection or network failure.",
        ),
        Param("retry-backoff", type=float, default=1.0, minimum=0, help="Seconds before a retry."),
        Param("timeout", type=float, default=600.0, minimum=1, help="Seconds one push may take."),
        Param("allow-http", type=bool, default=False, help="Allow plain http:// remotes."),
        Param("ssl-verify", type=bool, default=True, help="Verify the server's TLS certificate."),
    ],
    results=[
        Result("commit", help="The commit that is on the remote branch (or HEAD, if not pushed)."),
        Result("pushed", help="true when something was pushed, else false."),
    ],
)
def git_push(ctx: Context) -> None:
    p = ctx.params
    ctx.set_result("pushed", "false")
    checkout: Path = p.path
    message = specmod.parse_message(p.message)
    author = specmod.parse_author(p.author)
    branch = specmod.parse_ref("--branch", p.branch)
    tag = specmod.parse_ref("--tag", p.tag)
    name = specmod.remote_name(p.remote)
    pathspecs = specmod.parse_add(list(p.add), checkout)
    if not (checkout / ".git").exists():
        raise InputError(f"--path: {checkout} is not a git checkout (no .git)")
    schemes = {"https", "ssh", "git"} | ({"http"} if p.allow_http else set())
    if not p.ssl_verify:
        ctx.log.warning("--ssl-verify=false: the server's TLS certificate is not checked")

    # A first runner, to read the checkout's remote with the same protections as every call.
    probe = specmod.PushTarget(
        parse_url("https://stepkit.invalid/probe", allow_http=False, allow_local=False),
        p.ssl_verify,
        p.retries,
        p.retry_backoff,
        p.timeout,
        frozenset(schemes),
    )
    with Git(probe, checkout) as local:
        top = local.output_or_none("rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != checkout.resolve():
            raise InputError(f"--path: {checkout} is not the top of a git checkout")
        # A `.git` file (gitdir: ...) or symlink must not send git to a repository elsewhere.
        git_dir = Path(local.run("rev-parse", "--absolute-git-dir")).resolve()
        if not git_dir.is_relative_to(ctx.workspace.resolve()):
            raise InputError(f"--path: {checkout}'s git directory is outside the workspace")
        raw_url = p.remote
        if name is not None:
            found = local.output_or_none("config", "--get", f"remote.{name}.pushurl")
            found = found or local.output_or_none("config", "--get", f"remote.{name}.url")
            if not found:
                raise InputError(
                    f"--remote: the checkout has no remote named {shown(name)}; give its url"
                )
            raw_url = found
        url = specmod.parse_remote_url(
            raw_url, allow_http=p.allow_http, allow_local=False, flag="--remote"
        )
        global_ssh = local.output_or_none("config", "--global", "--get", "core.sshCommand")
    if url.password is not None:
        mask(url.password.reveal())
        ctx.log.warning("the remote url holds credentials; they are used for this push only")
    target = specmod.PushTarget(
        url, p.ssl_verify, p.retries, p.retry_backoff, p.timeout, frozenset(schemes)
    )
    with Git(target, checkout) as git:
        _harden(git, author or _configured_author(git), global_ssh)
        _push(ctx, git, message, branch, tag, pathspecs)


def _configured_author(git: Git) -> specmod.Author:
    name = git.output_or_none("config", "user.name")
    email = git.output_or_none("config", "user.email")
    return specmod.Author(name, email) if name and email else DEFAULT_AUTHOR


def _harden(git: Git, author: specmod.Author, global_ssh: str | None) -> None:
    """Settings only we choose: the checkout's own .git/config may have been written by any step."""
    git.config += gitenv.config_args(
        [
            # ssh as creds-init configured it in $HOME, never as the checkout's config says.
            ("core.sshCommand", global_ssh or "ssh"),
            ("commit.gpgSign", "false"),
            ("tag.gpgSign", "false"),
            ("rebase.autoStash", "false"),
            ("rebase.autoSquash", "false"),
            ("rebase.updateRefs", "false"),
            ("push.followTags", "false"),
            ("push.recurseSubmodules", "no"),
            ("push.gpgSign", "false"),
        ]
    )
    git.env |= {
        "GIT_AUTHOR_NAME": author.name,
        "GIT_AUTHOR_EMAIL": author.email,
        "GIT_COMMITTER_NAME": author.name,
        "GIT_COMMITTER_EMAIL": author.email,
    }


def _with_stdin(git: Git, args: list[str], text: str) -> None:
    subproc.run(["git", *git.config, *args], env=git.env, cwd=git.cwd, stdin=text, timeout=120)


def _push(
    ctx: Context, git: Git, message: str, branch: str, tag: str, pathspecs: tuple[str, ...]
) -> None:
    head_branch = git.output_or_none("symbolic-ref", "-q", "--short", "HEAD")
    branch = branch or (head_branch or "")
    base = git.output_or_none("rev-parse", "-q", "--verify", "HEAD^{commit}")
    paths = ("--", *(pathspecs or (".",)))
    if not branch and git.run("--literal-pathspecs", "status", "--porcelain", "-z", *paths):
        # Said before anything is staged or committed.
        raise InputError(
            "--branch is required: HEAD is detached (as git-init leaves a tag or "
            "commit checked out); name the branch to push to"
        )
    with group("commit"):
        git.run("--literal-pathspecs", "add", "--all", *paths)
        changed = [f for f in git.run("diff", "--cached", "--name-only", "-z").split("\0") if f]
        if changed:
            _with_stdin(git, ["commit", "--quiet", "--no-verify", "--file=-"], message)
            ctx.log.info("committed %d changed file(s)", len(changed))
        else:
            ctx.log.info("nothing changed in %s", git.cwd)
    head = git.output_or_none("rev-parse", "-q", "--verify", "HEAD^{commit}")
    if head:
        ctx.set_result("commit", head)
    if not changed and not tag:
        ctx.log.info("nothing to push")
        return
    if head is None:
        raise InputError("--tag: the checkout has no commit to tag")
    attempts = git.spec.retries + 1
    with group("push"):
        for attempt in range(1, attempts + 1):
            if tag:
                _with_stdin(
                    git,
                    ["tag", "--annotate", "--force", "--file=-", "--end-of-options", tag, head],
                    message,
                )
            refspecs = [f"{head}:refs/heads/{branch}"] if changed else []
            refspecs += [f"refs/tags/{tag}:refs/tags/{tag}"] if tag else []
            try:
                _try_push(git, refspecs)
            except _Rejected as exc:
                moved = [r for r in exc.rejections if r.reason in _NON_FAST_FORWARD]
                if not moved or not changed or attempt == attempts:
                    raise StepkitError(_rejection_message(exc.rejections, branch, tag)) from None
                ctx.log.warning(
                    "branch %s moved on the remote; fetching and rebasing (attempt %d of %d)",
                    branch,
                    attempt + 1,
                    attempts,
                )
                head = _rebase(git, branch, base)
                if head is None:
                    ctx.log.info("the remote branch already has this change")
                    head = git.run("rev-parse", "HEAD")
                    ctx.set_result("commit", head)
                    changed = []
                    if not tag:
                        return
                else:
                    ctx.set_result("commit", head)
                continue
            except TransientError as exc:
                if attempt == attempts:
                    raise
                _sleep(ctx, git, exc, attempt, attempts)
                continue
            what = " and ".join(
                ([f"branch {branch}"] if changed else []) + ([f"tag {tag}"] if tag else [])
            )
            ctx.log.info("pushed %s (%s) to %s", what, head, git.spec.url.url)
            ctx.set_result("pushed", "true")
            return


def _sleep(ctx: Context, git: Git, exc: StepkitError, attempt: int, attempts: int) -> None:
    delay = min(30.0, git.spec.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)  # noqa: S311
    ctx.log.warning(
        "%s; retrying in %.1f s (attempt %d of %d)", exc.message, delay, attempt + 1, attempts
    )
    time.sleep(delay)


def _try_push(git: Git, refspecs: list[str]) -> None:
    """One push, all refs or none; raises _Rejected with what the server refused."""
    args = ["push", "--porcelain", "--atomic", "--no-verify", "--", git.spec.url.url, *refspecs]
    try:
        proc = subproc.run(
            ["git", *git.config, *args],
            env=git.env,
            cwd=git.cwd,
            timeout=git.spec.timeout,
            check=False,
        )
    except CommandError as exc:  # timed out: raised even without check
        raise git.classify(exc, "push") from None
    if proc.returncode == 0:
        return
    rejections = []
    for line in proc.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0] == "!":
            summary = fields[2]
            reason = (
                summary[summary.find("(") + 1 : summary.rfind(")")] if "(" in summary else summary
            )
            rejections.append(_Rejection(fields[1].partition(":")[2], reason))
    if rejections:
        raise _Rejected(rejections)
    output = redact(proc.stderr or proc.stdout)
    error = CommandError(
        "git push failed", argv=["git", "push"], returncode=proc.returncode, output=output
    )
    raise git.classify(error, "push")


def _rejection_message(rejections: list[_Rejection], branch: str, tag: str) -> str:
    # With --atomic, the refs the server had nothing against say "atomic push failed".
    real = [r for r in rejections if "atomic" not in r.reason] or rejections
    first = real[0]
    if first.ref == f"refs/tags/{tag}" and "exists" in first.reason:
        return f"tag {tag} already exists on the remote; nothing was pushed"
    if first.reason in _NON_FAST_FORWARD:
        return (
            f"branch {branch} kept moving on the remote; gave up after the retries; "
            "nothing was pushed"
        )
    return f"the remote refused {first.ref}: {first.reason}; nothing was pushed"


def _rebase(git: Git, branch: str, base: str | None) -> str | None:
    """Put this checkout's commit on top of the remote branch; the new HEAD, or None when the
    remote already had the change."""
    fetch = ["fetch", "--no-tags", "--no-recurse-submodules", "--", git.spec.url.url]
    git.net([*fetch, f"refs/heads/{branch}"], what=f"fetch of branch {branch}")
    upstream = git.run("rev-parse", "--verify", "FETCH_HEAD^{commit}")
    if base is None:
        fail(
            f"branch {branch} already exists on the remote and this checkout's history has "
            "nothing in common with it (a fresh git init); nothing was pushed"
        )
    proc = subproc.run(
        ["git", *git.config, "rebase", "--quiet", "--no-verify", "--onto", upstream, base],
        env=git.env,
        cwd=git.cwd,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        conflicted = git.output_or_none("diff", "--name-only", "--diff-filter=U") or ""
        git.output_or_none("rebase", "--abort")
        files = ", ".join(shown(f) for f in conflicted.splitlines()) or "unknown files"
        fail(
            f"conflict: branch {branch} changed on the remote in the same places as this commit "
            f"({files}); nothing was pushed; resolve it and run the build again"
        )
    head = git.run("rev-parse", "HEAD")
    return None if head == upstream else head
