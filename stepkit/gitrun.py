"""Running git safely: scrubbed env, protective settings, bounded and retried network calls, clear failures.

Shared by git-init and the git-push builder.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

from stepkit import fsutil, gitenv, identity, subproc
from stepkit.errors import CommandError, DeniedError, StepkitError
from stepkit.giturl import RepoUrl
from stepkit.log import printable


class GitTarget(Protocol):
    """What Git needs to know of a run: the repository and how to talk to it (git-init's FetchSpec is one)."""

    @property
    def url(self) -> RepoUrl: ...
    @property
    def ssl_verify(self) -> bool: ...
    @property
    def retries(self) -> int: ...
    @property
    def backoff(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def allowed_schemes(self) -> frozenset[str]: ...


log = logging.getLogger(__name__)

_AUTH = re.compile(
    r"Authentication failed|could not read (Username|Password)|Permission denied \(publickey|"
    r"HTTP Basic: Access denied|returned error: 40[13]|The requested URL returned error: 40[13]|"
    r"Invalid username or password"
)
# The url git was refused at, when it names one ("could not read Username for" names only
# the server): a submodule's is not -url. No url git sees holds credentials.
_FOR_URL = re.compile(r"clone of '([^'\s]+)' into submodule|Authentication failed for '([^'\s]+)'")
_HOSTKEY = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED")
# A missing repository, however the transport words it: checked before _TRANSIENT, because
# over ssh and git:// git follows it with "Could not read from remote repository" or "hung up".
_NO_REPO = re.compile(
    r"[Rr]epository '?[^']*'? not found|does not appear to be a git repository|returned error: 404|"
    r"[Nn]o such repository"
)
_NOT_FOUND = re.compile(r"No such file or directory|access denied or repository not exported")
_NO_REF = re.compile(r"couldn't find remote ref|not our ref|no such remote ref")
# Protocol v0 only (v2 serves any object the server has): the server advertised no
# SHA-in-want, so git would not even ask for a commit by id.
_SHA_REFUSED = re.compile(r"does not allow request for unadvertised object")
_NO_SHALLOW = re.compile(r"does not support shallow")
_RESOLVE = re.compile(
    r"Could not resolve host|Name or service not known|Temporary failure in name resolution"
)
_TRANSIENT = re.compile(
    r"Connection refused|Connection timed out|Operation timed out|Network is unreachable|"
    r"No route to host|Failed to connect|Connection reset|early EOF|hung up unexpectedly|"
    r"RPC failed|returned error: 5\d\d|HTTP 5\d\d|unexpected disconnect|transfer closed|"
    r"kex_exchange_identification|Connection closed by|SSL_ERROR_SYSCALL|gnutls_handshake|"
    r"unable to access|Could not read from remote repository|index-pack failed|"
    r"protocol error: bad pack header|the remote end hung up"
)


class UnknownRevision(StepkitError):
    """The server has no such branch, tag, ref or commit (or will not hand it out by SHA)."""


class ShaRefused(UnknownRevision):
    """A protocol v0 server without SHA-in-want: it hands out neither commits nor blobs by id."""


class NoShallow(StepkitError):
    """The server cannot serve a shallow fetch (a dumb or very old server)."""


class TransientError(StepkitError):
    """A network failure worth another try."""


class Git:
    """git in one working directory, with scrubbed env and protective settings on every call."""

    def __init__(self, spec: GitTarget, cwd: Path) -> None:
        self.spec = spec
        self.cwd = cwd
        settings = list(gitenv.SAFE_CONFIG)
        # A pod's /workspace is a root-owned emptyDir: a step under another UID would hit
        # git's "dubious ownership" refusal for the repository git-init itself creates.
        settings.append(("safe.directory", str(cwd)))
        if not spec.ssl_verify:
            settings.append(("http.sslVerify", "false"))
        # A private scratch directory for this run (0700), removed on exit.
        self._scratch = str(fsutil.scratch_dir("stepkit-git-"))
        self._extra = identity.passwd_env(os.environ.get("HOME", "/"), Path(self._scratch))
        # Credentials from urls (-url's, a submodule's), each for its own server only.
        self._logins: dict[str, tuple[str, str]] = {}
        self.env = gitenv.scrubbed_env(spec.allowed_schemes, extra=self._extra)
        self.add_login(spec.url)
        self.config = gitenv.config_args(settings)
        self.committer_dates: dict[str, str] = {}

    def add_login(self, url: RepoUrl) -> None:
        """Use the credentials url came with for url's server from the next git call on.

        They reach git through the environment only: never a command line, .git/config, a
        credential store or a file at all.
        """
        if url.password is None:
            return
        self._logins[url.url] = (url.username or "", url.password.reveal())
        extra = self._extra | gitenv.credential_env(self._logins)
        self.env = gitenv.scrubbed_env(self.spec.allowed_schemes, extra=extra)

    def __enter__(self) -> Git:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)

    def run(self, *args: str, cwd: Path | None = None, timeout: float | None = 120) -> str:
        """A local git command; its output, stripped."""
        return self._call(args, cwd=cwd, timeout=timeout).stdout.strip()

    def _call(
        self, args: Sequence[str], *, cwd: Path | None, timeout: float | None
    ) -> subprocess.CompletedProcess[str]:
        return subproc.run(
            ["git", *self.config, *args], env=self.env, cwd=cwd or self.cwd, timeout=timeout
        )

    def output_or_none(self, *args: str, cwd: Path | None = None) -> str | None:
        """A local command's output, or None when it exits non-zero (a question, not a failure)."""
        proc = subproc.run(
            ["git", *self.config, *args],
            env=self.env,
            cwd=cwd or self.cwd,
            timeout=120,
            check=False,
        )
        return proc.stdout.strip() if proc.returncode == 0 else None

    def net(
        self, args: Sequence[str], *, what: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command that talks to the server: bounded in time, retried when the network failed.

        Returns the finished process: git reports what it worked around (a filter the server
        ignored, say) only as a warning on stderr.
        """
        attempts = self.spec.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._call(args, cwd=cwd, timeout=self.spec.timeout)
            except CommandError as exc:
                error = self.classify(exc, what)
            if not isinstance(error, TransientError) or attempt == attempts:
                raise error
            delay = min(30.0, self.spec.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)  # noqa: S311
            log.warning(
                "%s; retrying in %.1f s (attempt %d of %d)",
                error.message,
                delay,
                attempt + 1,
                attempts,
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def classify(self, exc: CommandError, what: str) -> StepkitError:
        """Turn git's stderr into one line in the user's terms."""
        out = exc.output
        url = self.spec.url.url
        # Name git's last fatal/error line, not the advice that follows it.
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
        last = printable((errors or lines or [exc.message])[-1])
        if exc.returncode == -1:
            return TransientError(
                f"{what}: no answer from {url} within {self.spec.timeout:g} s (timed out)"
            )
        if _HOSTKEY.search(out):
            return DeniedError(
                f"{what}: host key verification failed for {self.spec.url.host}: its key is not the one "
                "in known_hosts (give the right key in the ssh secret's known_hosts)"
            )
        if _AUTH.search(out):
            # A submodule's server is not -url's: name the one git names.
            named = _FOR_URL.search(out)
            where = printable((named.group(1) or named.group(2)).rstrip("/")) if named else url
            return DeniedError(
                f"{what}: authentication failed for {where}: check the credentials creds-init "
                "wrote (-basic-git / -ssh-git), or the url's, and their access to this repository"
            )
        if _SHA_REFUSED.search(out):
            return ShaRefused(f"{what}: the server does not hand out commits by id")
        if _NO_SHALLOW.search(out):
            return NoShallow(f"{what}: the server does not support shallow fetches")
        if _NO_REF.search(out):
            return UnknownRevision(f"{what}: not found in {url}")
        if _NO_REPO.search(out) or (_NOT_FOUND.search(out) and not _TRANSIENT.search(out)):
            return StepkitError(
                f"repository {url} not found (or not visible with these credentials)"
            )
        if _RESOLVE.search(out):
            return TransientError(
                f"{what}: cannot resolve host {self.spec.url.host} (network unreachable)"
            )
        if _TRANSIENT.search(out):
            return TransientError(f"{what}: network error talking to {url}: {last}")
        return StepkitError(f"{what}: git failed: {last}")


def remove_path(path: Path) -> None:
    """Remove a file, symlink or directory tree without following a symlink."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
