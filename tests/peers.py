"""Real loopback test peers (git over HTTP and ssh, an OCI registry, a faulty proxy) and helpers."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import hmac
import http.client
import io
import json
import os
import queue
import re
import select
import shlex
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import trustme

LOOPBACK = "127.0.0.1"
NOBODY = 65534
DEFAULT_START_TIMEOUT = 30.0

# A fixed epoch for commit, author and tagger dates, so every SHA that make_repo creates is the
# same on every machine and every run.
_EPOCH = 1_700_000_000


# --------------------------------------------------------------------------------------------
# Shared process and port plumbing
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _wait_until_listening(
    port: int,
    *,
    what: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll 127.0.0.1:port until it accepts, failing fast if the server process died."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = _tail(log) if log else ""
            raise RuntimeError(
                f"{what} exited with status {proc.returncode} before accepting connections "
                f"on {LOOPBACK}:{port}; log tail:\n{tail}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = _tail(log) if log else ""
            raise RuntimeError(
                f"{what} did not accept connections on {LOOPBACK}:{port} within "
                f"{timeout:.0f}s; log tail:\n{tail}"
            )
        time.sleep(0.05)


def _stop_process(proc: subprocess.Popen[bytes] | None, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after a grace period; always reap so no zombie is left."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
            proc.wait(timeout=5)


def _address_in_use(log: Path) -> bool:
    return "address already in use" in _tail(log, 50).lower()


class _PortServer:
    """A server process on a free loopback port, as a context manager.

    __enter__ picks a port, has the subclass write its config and name its command, starts it
    in its own process group (so __exit__ ends whatever it forked too), waits until it
    listens (a start-up error carries the log tail) and retries when the port was taken in
    between; __exit__ kills the group. Subclasses supply _argv and _env, and may override
    _free_port, _prepare, _cwd, _wait_ready and _start_failed.
    """

    #: The server's name in start-up errors.
    what = "server"

    def __init__(self, log_path: Path, *, timeout: float) -> None:
        self.log_path = log_path
        self.timeout = timeout
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._port

    def _free_port(self) -> int:
        return free_port()

    def _prepare(self) -> None:
        """Once, before the first attempt: write whatever does not depend on the port."""

    def _argv(self, port: int) -> list[str]:
        """The command that serves on `port` (writing any config that names the port)."""
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        raise NotImplementedError

    def _cwd(self) -> Path | None:
        return None

    def _wait_ready(self, start: int) -> None:
        """Return once the server serves; `start` is where this attempt's log begins."""
        _wait_until_listening(
            self._port, what=self.what, timeout=self.timeout, proc=self._proc, log=self.log_path
        )

    def _wait_for_log(self, start: int, ready: Callable[[bytes], bool]) -> None:
        """Poll until ready(the log from `start` on) is true, for servers a probe connection
        would disturb; fail with the log tail if the server exits, says its address is in use
        (some only log that and keep running) or is not ready within the timeout."""
        assert self._proc is not None
        deadline = time.monotonic() + self.timeout
        where = f"on {LOOPBACK}:{self._port}"
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.what} exited with status {self._proc.returncode} before accepting "
                    f"connections {where}; log tail:\n{_tail(self.log_path)}"
                )
            log = self.log_path.read_bytes()[start:]
            if b"address already in use" in log.lower():
                raise RuntimeError(
                    f"{self.what} {where}: address already in use; "
                    f"log tail:\n{_tail(self.log_path)}"
                )
            if ready(log):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.what} did not accept connections {where} within "
                    f"{self.timeout:.0f}s; log tail:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def _start_failed(self) -> None:
        """Called when __enter__ gives up, after the process is stopped."""

    def __enter__(self) -> Self:
        self._prepare()
        # The port is picked by binding 0 and handed to the server, so another process could
        # take it in between: retry a few times when that is what went wrong.
        for attempt in range(3):
            self._port = self._free_port()
            argv = self._argv(self._port)
            with self.log_path.open("ab") as log:
                start = log.tell()
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    cwd=self._cwd(),
                    # Own process group, so __exit__ can signal the server and what it forked.
                    start_new_session=True,
                )
            try:
                self._wait_ready(start)
                return self
            except BaseException as exc:
                # Whatever went wrong (even Ctrl-C), leave no server behind.
                _stop_process(self._proc, group=True)
                self._proc = None
                retry = isinstance(exc, RuntimeError) and attempt < 2
                if not (retry and _address_in_use(self.log_path)):
                    self._start_failed()
                    raise
        raise AssertionError("unreachable")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _stop_process(self._proc, group=True)
        self._proc = None


def _base_env(home: Path) -> dict[str, str]:
    # Built from scratch rather than copied from os.environ, so a developer's proxies, GIT_DIR,
    # REGISTRY_* overrides and so on can never leak into a peer or a client.
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LC_ALL": "C",
        "TZ": "UTC",
    }


def _no_proxy_opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    # An empty ProxyHandler makes urllib ignore http_proxy/https_proxy from the environment:
    # every peer is on loopback and a proxy could only get in the way.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def git_processes_for(port: int) -> list[str]:
    """Command lines of git (with its transport helpers) and ssh processes naming `port`.

    For tests that a client stopped by a time-out or a signal leaves nothing running behind.
    The port must stand as a whole number: a longer one that merely contains it is another
    server's.
    """
    pattern = re.compile(rf"(?<!\d){port}(?!\d)")
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        program = Path(cmdline.split(" ", 1)[0]).name
        if pattern.search(cmdline) and program.startswith(("git", "ssh")):
            found.append(cmdline)
    return found


# --------------------------------------------------------------------------------------------
# git repositories
# --------------------------------------------------------------------------------------------


def git_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for running git isolated from system/global config, with HOME=home."""
    env = _base_env(home)
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            # A test must fail, never hang waiting for a password on a terminal.
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Stepkit Test",
            "GIT_AUTHOR_EMAIL": "test@stepkit.invalid",
            "GIT_COMMITTER_NAME": "Stepkit Test",
            "GIT_COMMITTER_EMAIL": "test@stepkit.invalid",
        }
    )
    if extra:
        env.update(extra)
    return env


def run_git(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 60.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `git ARGS`; with check, raise RuntimeError carrying git's stderr on failure."""
    proc = subprocess.run(
        ["git", *args],
        env=dict(env),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"git {' '.join(args)} failed with status {proc.returncode}:\n{proc.stderr.strip()}"
        )
    return proc


def _stamp(tick: int) -> str:
    return f"{_EPOCH + tick * 60} +0000"


def make_repo(
    path: Path,
    *,
    commits: int = 3,
    branches: Sequence[str] = (),
    tags: Sequence[str] = (),
    bare_copy_to: Path | None = None,
) -> dict[str, str]:
    """Create a non-bare repo with deterministic SHAs; return {ref: sha} (see below).

    Layout: `main` has `commits` commits ("commit 1".."commit N", each rewriting README.md);
    every name in `branches` forks from main's tip with one commit of its own; tag `tags[i]` is
    an annotated tag on commit i+1 of main (the tip when there are fewer commits than tags).

    The result maps every ref as `git show-ref --head -d` prints it (HEAD, refs/heads/...,
    refs/tags/T -> tag object, refs/tags/T^{} -> tagged commit) plus "HEAD~k" for each commit
    of main (HEAD~0 is the tip).
    """
    if commits < 1:
        raise ValueError("make_repo needs at least one commit")
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stepkit-git-home-") as home:
        base = git_env(Path(home))
        tick = 0

        def git(*args: str) -> str:
            nonlocal tick
            tick += 1
            env = {**base, "GIT_AUTHOR_DATE": _stamp(tick), "GIT_COMMITTER_DATE": _stamp(tick)}
            return run_git(args, env=env, cwd=path).stdout.strip()

        git("init", "-q", "-b", "main")
        main_commits: list[str] = []
        for i in range(1, commits + 1):
            (path / "README.md").write_text(f"commit {i}\n")
            git("add", "README.md")
            git("commit", "-q", "-m", f"commit {i}")
            main_commits.append(git("rev-parse", "HEAD"))
        for index, branch in enumerate(branches):
            git("checkout", "-q", "-b", branch, "main")
            # An index-based file name keeps branch names with slashes from needing directories.
            (path / f"branch-{index}.txt").write_text(f"{branch}\n")
            git("add", f"branch-{index}.txt")
            git("commit", "-q", "-m", f"branch {branch}")
            git("checkout", "-q", "main")
        for index, tag in enumerate(tags):
            target = main_commits[min(index, len(main_commits) - 1)]
            git("tag", "-a", "-m", f"tag {tag}", tag, target)

        refs: dict[str, str] = {}
        for line in git("show-ref", "--head", "-d").splitlines():
            sha, ref = line.split(" ", 1)
            refs[ref] = sha
        for k, sha in enumerate(reversed(main_commits)):
            refs[f"HEAD~{k}"] = sha
    if bare_copy_to is not None:
        make_bare(path, bare_copy_to)
    return refs


def make_bare(src: Path, dest: Path, *, config: Mapping[str, str] | None = None) -> Path:
    """`git clone --bare src dest`, then set optional server-side config (e.g. uploadpack.*)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stepkit-git-home-") as home:
        env = git_env(Path(home))
        run_git(["clone", "-q", "--bare", str(src), str(dest)], env=env)
        for key, value in (config or {}).items():
            run_git(["config", key, value], env=env, cwd=dest)
    return dest


# --------------------------------------------------------------------------------------------
# Threaded HTTP servers on loopback: the plumbing every HTTP peer below shares
# --------------------------------------------------------------------------------------------


def _read_http_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Read a request body, Content-Length or chunked (git chunks bodies over http.postBuffer)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        out = bytearray()
        while True:
            size_line = handler.rfile.readline(1024)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers, which git never sends
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline(1024)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


class _LoopbackHttpd(ThreadingHTTPServer):
    # Non-daemon handler threads are joined by server_close(), so __exit__ really ends them.
    daemon_threads = False

    def __init__(self, peer: _HttpPeer, handler: type[BaseHTTPRequestHandler]) -> None:
        self.peer = peer
        super().__init__((LOOPBACK, 0), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall
        # for seconds on a machine without network; the name is never needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name = LOOPBACK
        self.server_port = self.server_address[1]


class _PeerHandler(BaseHTTPRequestHandler):
    """Base handler of every _HttpPeer: connection tracking, logging, small replies."""

    protocol_version = "HTTP/1.1"
    server_version = "stepkit-test-http/1"

    @property
    def peer(self) -> _HttpPeer:
        assert isinstance(self.server, _LoopbackHttpd)
        return self.server.peer

    def setup(self) -> None:
        super().setup()
        self.peer._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.peer._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        self.peer._log(f"{self.address_string()} {format % args}")

    def _plain(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        """One chunk of a chunked body; an empty one is the terminator."""
        self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.wfile.flush()


class _HttpPeer:
    """Start and stop plumbing shared by the threaded HTTP peers (GitHttpServer and others).

    A subclass names its handler class in `_handler`; the handler reaches the peer as
    `self.peer`. Subclasses that start work of their own per request (processes) end it in
    `_abort_requests`, which __exit__ calls once the server no longer accepts.
    """

    _handler: type[BaseHTTPRequestHandler] = _PeerHandler

    def __init__(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        self.timeout = timeout
        self.log_lines: list[str] = []
        self._httpd: _LoopbackHttpd | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        # Set by __exit__: every endless loop in a handler waits on it, so stopping is prompt.
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._httpd.server_port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url_for(self, repo: str) -> str:
        return f"{self.url}/{repo.lstrip('/')}"

    def _log(self, line: str) -> None:
        with self._lock:
            self.log_lines.append(line)

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _abort_requests(self) -> None:
        """Hook for __exit__: end whatever in-flight requests still run (nothing by default)."""

    def __enter__(self) -> Self:
        self._stop.clear()
        self._httpd = _LoopbackHttpd(self, self._handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{type(self).__name__}-{self.port}",
        )
        self._thread.start()
        try:
            _wait_until_listening(self.port, what=type(self).__name__, timeout=self.timeout)
        except RuntimeError as exc:
            self.__exit__(None, None, None)
            raise RuntimeError(f"{exc}\n" + "\n".join(self.log_lines[-30:])) from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            # Keep-alive connections block their handler threads in a read: shut them so the
            # threads see EOF and server_close() can join them.
            with self._lock:
                conns = list(self._conns)
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self._abort_requests()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


# --------------------------------------------------------------------------------------------
# git smart HTTP with Basic auth
# --------------------------------------------------------------------------------------------

_GIT_PATH = re.compile(
    r"^/(?P<repo>.+?)/(?P<rest>info/refs|git-upload-pack|git-receive-pack|HEAD|objects/.+)$"
)


@dataclass(frozen=True)
class HttpRequestRecord:
    """One request GitHttpServer answered (for tests that check protocol details)."""

    method: str
    path: str
    git_protocol: str
    content_encoding: str
    transfer_encoding: str
    status: int


def _norm_repo(path: str) -> str:
    # "org/repo-a.git", "/org/repo-a.git/" and "org/repo-a" all name one repository.
    return path.strip("/").removesuffix(".git")


class _GitHandler(_PeerHandler):
    server_version = "stepkit-test-git/1"

    @property
    def peer(self) -> GitHttpServer:
        peer = super().peer
        assert isinstance(peer, GitHttpServer)
        return peer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    # -- request plumbing ---------------------------------------------------------------

    def _basic_auth(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return user, password

    def _record(self, path: str, status: int) -> None:
        self.peer.request_log.append(
            HttpRequestRecord(
                method=self.command,
                path=path,
                git_protocol=self.headers.get("Git-Protocol", ""),
                content_encoding=self.headers.get("Content-Encoding", ""),
                transfer_encoding=self.headers.get("Transfer-Encoding", ""),
                status=status,
            )
        )

    def _handle(self) -> None:
        peer = self.peer
        split = urllib.parse.urlsplit(self.path)
        path_info = urllib.parse.unquote(split.path)
        # Read the body first, whatever the verdict, so a keep-alive connection stays in step.
        body = _read_http_body(self)
        match = _GIT_PATH.match(path_info)
        if match is None or ".." in path_info.split("/"):
            self._record(path_info, 404)
            self._plain(404, "not a git repository path")
            return
        repo = match["repo"]
        push = match["rest"] == "git-receive-pack" or "service=git-receive-pack" in split.query
        if push and not peer.push:
            self._record(path_info, 403)
            self._plain(403, "push is not served by this test server")
            return

        required = peer.credential_for(repo)
        presented = self._basic_auth()
        if presented is not None:
            peer.auth_log.append((repo, presented[0]))
        user = ""
        if required is not None:
            ok = presented is not None and (
                # Evaluate both comparisons (no short circuit) as a real server would.
                hmac.compare_digest(presented[0].encode(), required[0].encode())
                & hmac.compare_digest(presented[1].encode(), required[1].encode())
            )
            if not ok or presented is None:
                self._record(path_info, 401)
                self._plain(
                    401, "authentication required", {"WWW-Authenticate": 'Basic realm="git"'}
                )
                return
            user = presented[0]
            peer.granted.append((repo, user))

        if self.headers.get("Content-Encoding", "").lower() in ("gzip", "x-gzip"):
            # git gzips upload-pack requests over 1 KiB; http-backend gets the plain bytes.
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as exc:
                self._record(path_info, 400)
                self._plain(400, f"bad gzip body: {exc}")
                return
        self._run_backend(path_info, split.query, body, user, push=push)

    def _run_backend(
        self, path_info: str, query: str, body: bytes, user: str, *, push: bool
    ) -> None:
        peer = self.peer
        env = git_env(peer._home)
        env.update(
            {
                "GIT_PROJECT_ROOT": str(peer.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                # http-backend enables receive-pack whenever REMOTE_USER is set, and with
                # http.receivepack=true even without it. Say which, per request: on only for a
                # push that _handle let through (push=True peer, auth already checked), off for
                # everything else, as well as refusing push URLs on a fetch-only peer above.
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.receivepack",
                "GIT_CONFIG_VALUE_0": "true" if push else "false",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "SERVER_PROTOCOL": "HTTP/1.1",
                "SERVER_SOFTWARE": self.server_version,
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path_info,
                "QUERY_STRING": query,
                "REMOTE_ADDR": self.client_address[0],
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            }
        )
        if self.command == "POST":
            env["CONTENT_LENGTH"] = str(len(body))
        if user:
            env["REMOTE_USER"] = user
        protocol = self.headers.get("Git-Protocol")
        if protocol:
            # http-backend turns HTTP_GIT_PROTOCOL into GIT_PROTOCOL: this is what makes v2 work.
            env["HTTP_GIT_PROTOCOL"] = protocol

        proc = subprocess.Popen(
            ["git", "http-backend"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        peer._track_proc(proc, add=True)
        stderr_chunks: list[bytes] = []
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        def feed() -> None:
            # A thread of its own: a backend that answers before reading all of its input must
            # not deadlock against us writing the rest of it.
            with contextlib.suppress(BrokenPipeError, OSError):
                stdin.write(body)
            with contextlib.suppress(BrokenPipeError, OSError):
                stdin.close()

        def drain_stderr() -> None:
            stderr_chunks.append(stderr.read())

        threads = [threading.Thread(target=feed), threading.Thread(target=drain_stderr)]
        for thread in threads:
            thread.start()
        status = 200
        try:
            status = self._relay(stdout, path_info)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            proc.kill()
        finally:
            stdout.close()
            proc.wait()
            for thread in threads:
                thread.join()
            peer._track_proc(proc, add=False)
            err = b"".join(stderr_chunks).decode(errors="replace").strip()
            if err:
                peer._log(f"http-backend {path_info}: {err}")
        self._record(path_info, status)

    def _relay(self, stdout: IO[bytes], path_info: str) -> int:
        """Turn http-backend's CGI output into an HTTP response, streaming the body."""
        status, reason = 200, "OK"
        headers: list[tuple[str, str]] = []
        while True:
            line = stdout.readline(8192)
            if not line:
                self._plain(502, f"git http-backend gave no response for {path_info}")
                self.close_connection = True
                return 502
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            name, _, value = text.partition(":")
            value = value.strip()
            if name.lower() == "status":
                code, _, reason = value.partition(" ")
                status = int(code)
            else:
                headers.append((name, value))
        self.send_response(status, reason or None)
        chunked = not any(name.lower() == "content-length" for name, _ in headers)
        for name, value in headers:
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        read = getattr(stdout, "read1", stdout.read)
        while True:
            data: bytes = read(65536)
            if not data:
                break
            if chunked:
                self._chunk(data)
            else:
                self.wfile.write(data)
        if chunked:
            self._chunk(b"")
        return status


class GitHttpServer(_HttpPeer):
    """Serve the bare repos under `root` over smart HTTP (git http-backend) with Basic auth.

    `credentials` maps a repository path prefix ("" = every repo, "org", "org/repo-a.git") to
    (username, password); the longest matching prefix decides. A repo no prefix matches is
    served anonymously. Prefixes match whole path segments, and ".git" is optional on both sides.

    Fetch only by default: every git-receive-pack request (info/refs?service=git-receive-pack
    and POST git-receive-pack) is answered 403 before any auth. With push=True, receive-pack
    is served too, under exactly the same auth as a fetch (the longest prefix's credential, or
    none for a public repo), so `git push` with the right password moves the bare repo's refs.
    """

    _handler = _GitHandler

    def __init__(
        self,
        root: Path,
        credentials: Mapping[str, tuple[str, str]],
        *,
        push: bool = False,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(timeout=timeout)
        self.root = root
        self.credentials = dict(credentials)
        self.push = push
        # (repo path, username presented) for every request that carried Basic auth, right or
        # wrong; `granted` holds only the accepted ones.
        self.auth_log: list[tuple[str, str]] = []
        self.granted: list[tuple[str, str]] = []
        self.request_log: list[HttpRequestRecord] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._home = Path("/nonexistent")
        self._procs: set[subprocess.Popen[bytes]] = set()

    def credential_for(self, repo: str) -> tuple[str, str] | None:
        """The (username, password) the longest matching prefix demands, or None (public)."""
        target = _norm_repo(repo)
        best: tuple[str, str] | None = None
        best_len = -1
        for prefix, cred in self.credentials.items():
            norm = _norm_repo(prefix)
            matches = norm == "" or target == norm or target.startswith(norm + "/")
            if matches and len(norm) > best_len:
                best, best_len = cred, len(norm)
        return best

    def _track_proc(self, proc: subprocess.Popen[bytes], *, add: bool) -> None:
        with self._lock:
            if add:
                self._procs.add(proc)
            else:
                self._procs.discard(proc)

    def _abort_requests(self) -> None:
        # A backend still streaming a pack to a client that went away would keep its handler
        # thread (and so server_close) waiting.
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def __enter__(self) -> Self:
        if not self.root.is_dir():
            raise RuntimeError(f"GitHttpServer root {self.root} is not a directory")
        self._tmp = tempfile.TemporaryDirectory(prefix="stepkit-githttp-")
        self._home = Path(self._tmp.name)
        # On a failed start, _HttpPeer.__enter__ calls our __exit__, which removes _tmp again.
        return super().__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# --------------------------------------------------------------------------------------------
# ssh
# --------------------------------------------------------------------------------------------


def gen_keypair(
    path: Path, kind: str = "ed25519", *, pem: bool = False, comment: str = "stepkit-test"
) -> tuple[str, str]:
    """ssh-keygen -N "" a key at `path` (+ .pub); return (private key text, public key line).

    kind is "ed25519" or "rsa"; pem=True asks for the legacy PEM encoding (`-m PEM`), the
    "-----BEGIN RSA PRIVATE KEY-----" form some tools still hand over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)  # ssh-keygen would ask whether to overwrite
    argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)]
    if kind == "rsa":
        argv[4:4] = ["-b", "2048"]  # smaller than the default: fast, and fine for a test
    if pem:
        argv += ["-m", "PEM"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"ssh-keygen failed: {proc.stderr.strip()}")
    return path.read_text(), path.with_name(path.name + ".pub").read_text().strip()


def ssh_command(identity: Path, known_hosts: Path, *, config: Path | None = None) -> list[str]:
    """argv for an ssh client that uses only this identity and known_hosts (batch mode)."""
    return [
        "ssh",
        # -F /dev/null: neither /etc/ssh/ssh_config nor ~/.ssh/config of whoever runs tests.
        "-F",
        str(config) if config is not None else "/dev/null",
        "-i",
        str(identity),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
    ]


@dataclass(frozen=True)
class AuthorizedKey:
    """A public key SshServer accepts, limited to git-upload-pack under repo_root.

    With only_repo set (a path relative to repo_root, e.g. "org/a.git") the key opens that
    one repository and nothing else: a deploy key. `name` labels it in the access log. With
    push=True the key may also run git-receive-pack on the same repositories (a deploy key
    with write access); without it, receive-pack is "command not allowed" like any other.
    """

    public_key: str
    repo_root: Path
    only_repo: str | None = None
    name: str = ""
    push: bool = False
    # A login key: any command as root, and the sftp subsystem (tests of the ssh builder).
    login: bool = False


@dataclass(frozen=True)
class SshAccess:
    """One line of SshServer's access log: which key asked for which repo, and the verdict."""

    key: str
    command: str
    repo: str
    allowed: bool
    reason: str
    git_protocol: str


# The forced command every authorized key runs. It is a file of its own (not inline in
# authorized_keys) so it can be read and tested, and it runs with `python -I` so neither
# PYTHON* variables nor a user site can change it.
_GIT_SHELL = r'''
"""Forced command for SshServer keys: allow only git-upload-pack (and, for a key that may
push, git-receive-pack) of permitted repos."""

import json
import os
import shlex
import sys
from pathlib import Path


def main() -> None:
    name, root_arg, only, log, mode = sys.argv[1:6]
    services = ("upload-pack", "receive-pack") if mode == "push" else ("upload-pack",)
    root = Path(root_arg).resolve()
    original = os.environ.get("SSH_ORIGINAL_COMMAND", "")

    def record(allowed: bool, repo: str, reason: str) -> None:
        entry = {
            "key": name,
            "command": original,
            "repo": repo,
            "allowed": allowed,
            "reason": reason,
            "git_protocol": os.environ.get("GIT_PROTOCOL", ""),
        }
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def deny(reason: str, repo: str = "") -> None:
        record(False, repo, reason)
        sys.stderr.write(f"stepkit-test-sshd: {reason}\n")
        sys.exit(1)

    try:
        words = shlex.split(original)
    except ValueError:
        deny("unparsable command")
    if len(words) == 2 and words[0].startswith("git-") and words[0][4:] in services:
        service, requested = words[0][4:], words[1]
    elif len(words) == 3 and words[0] == "git" and words[1] in services:
        service, requested = words[1], words[2]
    else:
        deny(f"command not allowed: {original!r}")
    rel = requested.strip("/")
    if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
        deny(f"bad repository path {requested!r}", rel)
    target = None
    # Like git itself, accept "org/a" for "org/a.git".
    for candidate in (root / rel, root / (rel + ".git")):
        if candidate.is_dir():
            target = candidate.resolve()
            break
    if target is None or not target.is_relative_to(root):
        deny(f"no such repository {rel!r}", rel)
    if only and target != (root / only.strip("/")).resolve():
        verb = "write" if service == "receive-pack" else "read"
        deny(f"key {name} is not allowed to {verb} {rel!r}", rel)
    record(True, rel, "ok")
    sys.stdout.flush()
    env = dict(os.environ)
    # Root's own git config must not change what the server side of a test does.
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"})
    os.execvpe("git", ["git", service, str(target)], env)


main()
'''


class SshServer(_PortServer):
    """OpenSSH sshd on 127.0.0.1 serving git-upload-pack (receive-pack too for keys with
    push=True) to the keys in `authorized`.

    Clients log in as root. sshd only lets an account with a real shell and home log in;
    here that is root alone (nobody's shell is nologin), and adding a user would change the
    machine's /etc/passwd for good. What a key may do is limited by its forced command anyway.
    Note that ssh finds ~ through the passwd entry, not $HOME: clients should pass -F/-i.
    """

    what = "sshd"

    def __init__(
        self,
        workdir: Path,
        authorized: Sequence[AuthorizedKey],
        *,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(workdir / "sshd.log", timeout=timeout)
        self.workdir = workdir
        self.authorized = list(authorized)
        self.access_log_path = workdir / "access.log"
        self._host_key_line = ""

    @property
    def host_key_line(self) -> str:
        """The known_hosts line for this server: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`."""
        return f"[{LOOPBACK}]:{self.port} {self._host_key_line}"

    def url_for(self, repo: str) -> str:
        return f"ssh://root@{LOOPBACK}:{self.port}/{repo.lstrip('/')}"

    def write_known_hosts(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.host_key_line + "\n")
        return path

    def access_log(self) -> list[SshAccess]:
        """Every forced-command decision so far, oldest first."""
        if not self.access_log_path.exists():
            return []
        entries = []
        for line in self.access_log_path.read_text().splitlines():
            raw = json.loads(line)
            entries.append(
                SshAccess(
                    key=str(raw["key"]),
                    command=str(raw["command"]),
                    repo=str(raw["repo"]),
                    allowed=bool(raw["allowed"]),
                    reason=str(raw["reason"]),
                    git_protocol=str(raw["git_protocol"]),
                )
            )
        return entries

    def _authorized_keys(self, script: Path) -> str:
        lines = []
        for index, key in enumerate(self.authorized):
            name = key.name or f"key{index}"
            if key.login:
                lines.append(key.public_key.strip())
                continue
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
                raise ValueError(f"key name {name!r}: use letters, digits, '.', '_' or '-'")
            command = shlex.join(
                [
                    sys.executable,
                    "-I",
                    str(script),
                    name,
                    str(key.repo_root),
                    key.only_repo or "",
                    str(self.access_log_path),
                    "push" if key.push else "fetch",
                ]
            )
            # The value sits in double quotes inside authorized_keys, which has no way to
            # escape them that every sshd agrees on; refuse rather than write a broken line.
            if '"' in command or "\n" in command:
                raise ValueError(f"cannot put {command!r} in a command= option")
            lines.append(f'restrict,command="{command}" {key.public_key.strip()}')
        return "\n".join(lines) + "\n"

    def _config(self, host_key: Path, authorized_keys: Path) -> str:
        def q(path: Path) -> str:
            return f'"{path}"'

        return "\n".join(
            [
                f"ListenAddress {LOOPBACK}",
                f"HostKey {q(host_key)}",
                f"PidFile {q(self.workdir / 'sshd.pid')}",
                f"AuthorizedKeysFile {q(authorized_keys)}",
                # The test's temp dirs are not laid out the way StrictModes wants.
                "StrictModes no",
                # Without PAM, sshd checks keys itself and needs no PAM stack for root.
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "AllowUsers root",
                # git sends GIT_PROTOCOL=version=2 with SendEnv; without this, v2 is v0 on ssh.
                "AcceptEnv GIT_PROTOCOL",
                "PermitUserEnvironment no",
                "PrintMotd no",
                "UseDNS no",
                "MaxStartups 100",
                "LogLevel VERBOSE",
                # For login=True keys; a key with a forced command gets that command instead.
                "Subsystem sftp internal-sftp",
                "",
            ]
        )

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # sshd refuses to start without its privilege-separation directory.
        run_sshd = Path("/run/sshd")
        run_sshd.mkdir(mode=0o755, parents=True, exist_ok=True)
        host_key = self.workdir / "ssh_host_ed25519_key"
        _, host_pub = gen_keypair(host_key, "ed25519", comment="stepkit-test-host")
        self._host_key_line = " ".join(host_pub.split()[:2])
        script = self.workdir / "git-shell.py"
        script.write_text(_GIT_SHELL)
        authorized_keys = self.workdir / "authorized_keys"
        authorized_keys.write_text(self._authorized_keys(script))
        authorized_keys.chmod(0o600)
        self._config_path.write_text(self._config(host_key, authorized_keys))

    @property
    def _config_path(self) -> Path:
        return self.workdir / "sshd_config"

    def _argv(self, port: int) -> list[str]:
        return ["/usr/sbin/sshd", "-D", "-e", "-f", str(self._config_path), "-p", str(port)]

    def _env(self) -> dict[str, str]:
        return _base_env(self.workdir)


# --------------------------------------------------------------------------------------------
# OCI registry
# --------------------------------------------------------------------------------------------

# Media types, shared by every registry peer (ocipeers, hostile_registry).
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_layout(layout: Path, tag: str, *, text: str = "hello from stepkit\n") -> str:
    """Write a one-layer OCI image layout at `layout` tagged `tag`; return the manifest digest.

    Every byte is deterministic (fixed mtimes, owners, gzip header), so the digest is too.
    """
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mtime, info.mode = len(data), _EPOCH, 0o644
        tar.addfile(info, io.BytesIO(data))
    layer_tar = tar_buf.getvalue()
    gz_buf = io.BytesIO()
    with gzip.GzipFile(fileobj=gz_buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(layer_tar)
    layer = gz_buf.getvalue()

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha256(layer_tar)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": _sha256(layer), "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for blob in (layer, config, manifest):
        (blobs / hashlib.sha256(blob).hexdigest()).write_bytes(blob)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": _sha256(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return _sha256(manifest)


class Registry(_PortServer):
    """Debian docker-registry (distribution 2.8) on 127.0.0.1 with TLS and htpasswd users."""

    what = "docker-registry"

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        *,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(workdir / "registry.log", timeout=timeout)
        self.workdir = workdir
        self.users = dict(users)
        self.ca_pem = workdir / "ca.pem"
        self.cert_dir = workdir / "certs.d"  # the layout containers/image's --cert-dir reads
        self._context: ssl.SSLContext | None = None
        self._pushes = 0
        self._htpasswd = workdir / "htpasswd"

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only this registry's CA."""
        if self._context is None:
            self._context = ssl.create_default_context(cafile=str(self.ca_pem))
        return self._context

    def _get(
        self, path: str, username: str, password: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Mapping[str, str]]:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        # S310: the URL is always https://127.0.0.1:PORT, built here.
        request = urllib.request.Request(  # noqa: S310
            self.url + path, headers={"Authorization": f"Basic {token}", **(headers or {})}
        )
        opener = _no_proxy_opener(self.ssl_context())
        try:
            with opener.open(request, timeout=10) as resp:
                resp.read()
                return int(resp.status), dict(resp.headers.items())
        except urllib.error.HTTPError as exc:
            exc.read()
            return exc.code, dict(exc.headers.items())

    def check_auth(self, username: str, password: str) -> int:
        """GET /v2/ with Basic auth over TLS (trusting the test CA); return the HTTP status."""
        return self._get("/v2/", username, password)[0]

    def manifest_digest(self, repo: str, tag: str, username: str, password: str) -> str:
        """The Docker-Content-Digest the registry reports for repo:tag ("" if absent)."""
        status, headers = self._get(
            f"/v2/{repo}/manifests/{tag}", username, password, {"Accept": OCI_MANIFEST}
        )
        if status != 200:
            raise RuntimeError(f"GET manifest {repo}:{tag} answered {status}")
        return next((v for k, v in headers.items() if k.lower() == "docker-content-digest"), "")

    def push_test_image(self, repo: str, tag: str, username: str, password: str) -> str:
        """Write a minimal OCI layout and `skopeo copy` it to HOST/repo:tag; return its digest."""
        self._pushes += 1
        work = self.workdir / f"push-{self._pushes}"
        layout = work / "layout"
        write_oci_layout(layout, tag)
        # Credentials go in an auth file, not on skopeo's argv where `ps` would show them.
        authfile = work / "auth.json"
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        authfile.write_text(json.dumps({"auths": {self.host: {"auth": token}}}))
        authfile.chmod(0o600)
        # Our own policy, so the machine's /etc/containers/policy.json cannot refuse the copy.
        policy = work / "policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        digest_file = work / "digest"
        tmp = work / "tmp"
        tmp.mkdir()
        env = _base_env(work)
        env["TMPDIR"] = str(tmp)
        proc = subprocess.run(
            [
                "skopeo",
                "--policy",
                str(policy),
                "copy",
                "--quiet",
                "--dest-authfile",
                str(authfile),
                "--dest-cert-dir",
                str(self.cert_dir),
                "--digestfile",
                str(digest_file),
                f"oci:{layout}:{tag}",
                f"docker://{self.host}/{repo}:{tag}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"skopeo copy to {self.host}/{repo}:{tag} failed ({proc.returncode}):\n"
                f"{proc.stderr.strip()}\nregistry log tail:\n{_tail(self.log_path)}"
            )
        return digest_file.read_text().strip()

    def _write_files(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        cert = ca.issue_cert(LOOPBACK, "localhost")
        ca.cert_pem.write_to_path(str(self.ca_pem))
        server_cert = self.workdir / "server.pem"
        server_key = self.workdir / "server-key.pem"
        server_cert.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(server_key))
        self.cert_dir.mkdir(exist_ok=True)
        shutil.copyfile(self.ca_pem, self.cert_dir / "ca.crt")

        entries = []
        for user, password in self.users.items():
            # -i reads the password from stdin, keeping it off htpasswd's argv.
            proc = subprocess.run(
                ["htpasswd", "-inB", user],
                input=password,
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"htpasswd failed for {user!r}: {proc.stderr.strip()}")
            entries.append(proc.stdout.strip())
        htpasswd = self.workdir / "htpasswd"
        htpasswd.write_text("\n".join(entries) + "\n")
        (self.workdir / "storage").mkdir(exist_ok=True)
        return htpasswd

    def _write_config(self, htpasswd: Path) -> Path:
        # JSON is valid YAML, so the config needs no YAML library.
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"{LOOPBACK}:{self._port}",
                "secret": base64.b64encode(os.urandom(24)).decode(),
                "tls": {
                    "certificate": str(self.workdir / "server.pem"),
                    "key": str(self.workdir / "server-key.pem"),
                },
            },
            "auth": {"htpasswd": {"realm": "stepkit-test", "path": str(htpasswd)}},
        }
        path = self.workdir / "config.yml"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _prepare(self) -> None:
        self._htpasswd = self._write_files()

    def _argv(self, port: int) -> list[str]:
        return ["docker-registry", "serve", str(self._write_config(self._htpasswd))]

    def _env(self) -> dict[str, str]:
        # A clean env: distribution lets REGISTRY_* variables override the config.
        return _base_env(self.workdir)

    def _wait_ready(self, start: int) -> None:
        super()._wait_ready(start)
        # Listening is not quite serving TLS with auth; one unauthenticated /v2/ proves it.
        try:
            status = self._get("/v2/", "", "")[0]
        except (OSError, urllib.error.URLError) as exc:
            raise RuntimeError(
                f"docker-registry accepted a connection but GET /v2/ failed ({exc}); "
                f"log tail:\n{_tail(self.log_path)}"
            ) from exc
        if status != 401:
            raise RuntimeError(
                f"docker-registry answered {status} (expected 401) to an anonymous GET /v2/; "
                f"log tail:\n{_tail(self.log_path)}"
            )


# --------------------------------------------------------------------------------------------
# Running as a non-root user
# --------------------------------------------------------------------------------------------


def _reachable_by_others(path: Path) -> bool:
    """True when a user with no special rights can traverse every directory down to path."""
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


def nonroot_dir(base: Path, *, uid: int = NOBODY, gid: int = NOBODY) -> Path:
    """Make a fresh directory owned by uid:gid that uid can reach; the caller removes it.

    It goes under `base` when every directory down to base is traversable by others. pytest's
    tmp_path is not (its parents are 0700 for root), so then it goes under a new 0755
    directory in /tmp instead. Either way the result is mode 0755 and owned by uid:gid.
    """
    if base.is_dir() and _reachable_by_others(base):
        path = Path(tempfile.mkdtemp(prefix="nonroot-", dir=base))
    else:
        path = Path(tempfile.mkdtemp(prefix="stepkit-nonroot-", dir="/tmp"))
    path.chmod(0o755)
    os.chown(path, uid, gid)
    return path


def run_as(
    uid: int,
    gid: int,
    argv: list[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    timeout: float = 60.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv as uid:gid with no supplementary groups and exactly `env`; capture output."""
    return subprocess.run(
        argv,
        user=uid,
        group=gid,
        # extra_groups=[] drops root's supplementary groups: the child is really just uid:gid.
        extra_groups=[],
        env=dict(env),
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class NonRootUser:
    """A scratch HOME owned by uid:gid (default nobody) and a way to run commands as that user."""

    def __init__(self, uid: int = NOBODY, gid: int = NOBODY, *, base: Path | None = None) -> None:
        self.uid = uid
        self.gid = gid
        self._base = base or Path("/tmp")
        self._root: Path | None = None

    @property
    def home(self) -> Path:
        if self._root is None:
            raise RuntimeError("NonRootUser is not entered")
        return self._root / "home"

    def path(self, name: str) -> Path:
        """A directory `name` beside home, owned by the user."""
        if self._root is None:
            raise RuntimeError("NonRootUser is not entered")
        path = self._root / name
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        return path

    def give(self, path: Path, mode: int | None = None) -> Path:
        """chown path to the user (and chmod it when mode is given)."""
        os.chown(path, self.uid, self.gid)
        if mode is not None:
            path.chmod(mode)
        return path

    def run(
        self,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        *,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """run_as this user; env defaults to a clean one with HOME=home, cwd to home."""
        full = _base_env(self.home)
        full.update(env or {})
        return run_as(self.uid, self.gid, argv, full, cwd or self.home, timeout=timeout)

    def __enter__(self) -> Self:
        self._root = nonroot_dir(self._base, uid=self.uid, gid=self.gid)
        self.path("home")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


# --------------------------------------------------------------------------------------------
# Fault injection
# --------------------------------------------------------------------------------------------


class FlakyProxy:
    """A loopback TCP proxy: drops the first `drop_first` connections, forwards the rest.

    With stall=True the connections after the dropped ones are accepted and then never read
    or answered (the client sees a hang until its own timeout). With reset=True a dropped
    connection is closed with a TCP RST instead of a FIN.

    With latency=S every byte is delivered S seconds after the proxy read it, in each
    direction (and the end of a stream too), as across a network with an S one-way delay:
    a request and its answer take 2*S more, a new connection's first exchange too, while
    bytes keep flowing meanwhile (the delay is per chunk, not a bandwidth limit). The
    benchmarks measure fetchers against a peer this far away (bench/README.md).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        drop_first: int = 0,
        *,
        stall: bool = False,
        reset: bool = False,
        latency: float = 0.0,
    ) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        self.target_host = target_host
        self.target_port = target_port
        self.drop_first = drop_first
        self.stall = stall
        self.reset = reset
        self.latency = latency
        self.accepted = 0
        self.dropped = 0
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._acceptor: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("FlakyProxy is not running")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _keep(self, sock: socket.socket) -> bool:
        """Track sock for __exit__; once closing has begun, close it at once and say so."""
        with self._lock:
            if self._closing:
                sock.close()
                return False
            self._sockets.append(sock)
            return True

    def _spawn(self, target: Callable[..., object], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            # select with a timeout rather than a blocking accept(), so __exit__ can stop us.
            ready, _, _ = select.select([listener], [], [], 0.1)
            if not ready:
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drop_first:
                self.dropped += 1
                if self.reset:
                    # SO_LINGER with a zero timeout makes close() send RST.
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            if not self._keep(conn) or self.stall:
                continue  # when stalling: hold it open, never read, never answer
            self._spawn(self._forward, conn)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.target_host, self.target_port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        if not self._keep(upstream):
            return
        self._spawn(self._pump, upstream, client)
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        if self.latency:
            self._pump_delayed(src, dst)
            return
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        # Pass the half-close on, so request/response protocols see EOF where they expect it.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _pump_delayed(self, src: socket.socket, dst: socket.socket) -> None:
        """Like _pump, but each chunk (and the EOF, b"") leaves `latency` after it arrived."""
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def deliver() -> None:
            broken = False
            while True:
                due, data = chunks.get()
                if broken:
                    if not data:
                        return
                    continue  # keep draining, so the reader never blocks on a dead peer
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    broken = True
                    if not data:
                        return

        self._spawn(deliver)
        try:
            while True:
                data = src.recv(65536)
                chunks.put((time.monotonic() + self.latency, data))
                if not data:
                    return
        except OSError:
            chunks.put((time.monotonic() + self.latency, b""))

    def __enter__(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        # Once listen() returns the kernel queues connections, so there is nothing to wait
        # for; a probe connection would only be counted (and dropped) like a client's.
        listener.listen(64)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        # The accept loop notices _stop within one select() timeout.
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            self._closing = True
            threads = list(self._threads)
            sockets = list(self._sockets)
        for sock in sockets:
            # shutdown() wakes a pump blocked in recv(); close() alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# git protocol (git daemon)
# --------------------------------------------------------------------------------------------


class GitDaemon(_PortServer):
    """`git daemon` on 127.0.0.1 serving, read-only, every repository under `base_path`.

    What upload-pack offers (SHA-in-want, filters) comes from each repository's own config
    (tests/gitrepos.py set_server_caps); the daemon runs with no system or global git config,
    so the machine's config cannot change what a test sees. It logs verbosely, so requests()
    and protocols() can tell which repository was asked for and with which protocol version.
    """

    what = "git daemon"

    def __init__(self, base_path: Path, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        super().__init__(Path("/nonexistent"), timeout=timeout)
        self.base_path = base_path
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        # The log lives in a temp dir that __exit__ removes; keep its text for later asserts.
        self._final_log = ""

    @property
    def url(self) -> str:
        return f"git://{LOOPBACK}:{self.port}"

    def url_for(self, repo: str) -> str:
        """git://127.0.0.1:PORT/repo, where repo is a path under base_path."""
        return f"{self.url}/{repo.lstrip('/')}"

    def log_text(self) -> str:
        """The daemon's log so far (or as it was when the daemon stopped)."""
        if self._tmp is None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def requests(self) -> list[str]:
        """Repository paths clients asked upload-pack for, oldest first (e.g. "/x.git")."""
        return re.findall(r"Request upload-pack for '([^']*)'", self.log_text())

    def protocols(self) -> list[str]:
        """The protocol each client asked for in its request ("version=2"); v0 sends none."""
        return re.findall(r'Extended attribute "protocol": (\S+)', self.log_text())

    def _argv(self, port: int) -> list[str]:
        return [
            "git",
            "daemon",
            "--verbose",
            f"--listen={LOOPBACK}",
            f"--port={port}",
            f"--base-path={self.base_path.resolve()}",
            "--export-all",
            "--reuseaddr",
            # Send "no such repository: /x.git" to the client instead of a bare hang-up, so a
            # failing test says why.
            "--informative-errors",
            # upload-pack is on by default; say so, and nothing else (no receive-pack, no
            # upload-archive) is served.
            "--enable=upload-pack",
        ]

    def _wait_ready(self, start: int) -> None:
        """Wait until the daemon logs "Ready to rumble", which it does once it listens.

        The other peers probe with a connection instead; here that would leave a client that
        hung up ("fatal: the remote end hung up unexpectedly") in the log tests read.
        """
        self._wait_for_log(start, lambda log: b"Ready to rumble" in log)

    def _prepare(self) -> None:
        if not self.base_path.is_dir():
            raise RuntimeError(f"GitDaemon base path {self.base_path} is not a directory")
        self._tmp = tempfile.TemporaryDirectory(prefix="stepkit-gitdaemon-")
        self.log_path = Path(self._tmp.name) / "daemon.log"

    def _env(self) -> dict[str, str]:
        # The daemon forks an upload-pack per connection; its process group lets __exit__ end
        # those too.
        return git_env(self.log_path.parent)

    def _start_failed(self) -> None:
        self.__exit__(None, None, None)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        if self._tmp is not None:
            self._final_log = self.log_text()
            self._tmp.cleanup()
            self._tmp = None


# --------------------------------------------------------------------------------------------
# Small threaded HTTP peers: an endless git server and a proxy that fails the first requests
# --------------------------------------------------------------------------------------------

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        # BaseHTTPRequestHandler.send_response writes its own; two of each would be a lie.
        "server",
        "date",
    }
)


def pkt_line(data: bytes) -> bytes:
    """One git pkt-line: four hex digits of length (including themselves), then data."""
    return b"%04x%b" % (len(data) + 4, data)


# A made-up object name for the endless server's advertisement: no client ever gets to fetch it.
_ENDLESS_SHA = hashlib.sha1(b"stepkit endless git server", usedforsecurity=False).hexdigest()


class _EndlessHandler(_PeerHandler):
    @property
    def endless(self) -> EndlessGitHttpServer:
        peer = self.peer
        assert isinstance(peer, EndlessGitHttpServer)
        return peer

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # A stream that never ends cannot be followed by another request on this connection.
        self.close_connection = True

    def _trickle(self, make: Callable[[int], bytes]) -> None:
        peer = self.endless
        count = 0
        with contextlib.suppress(OSError):
            while not peer._stop.wait(peer.interval):
                count += 1
                self._chunk(make(count))
                with peer._lock:
                    peer.chunks_sent += 1

    def do_GET(self) -> None:
        peer = self.endless
        path, _, query = self.path.partition("?")
        with peer._lock:
            peer.requests.append(("GET", self.path))
        if not path.endswith("/info/refs") or "service=git-upload-pack" not in query:
            self._plain(404, "only info/refs?service=git-upload-pack is served")
            return
        self._start_stream("application/x-git-upload-pack-advertisement")
        caps = (
            "multi_ack_detailed side-band-64k thin-pack ofs-delta "
            "symref=HEAD:refs/heads/main object-format=sha1 agent=git/2.39.5"
        )
        head = pkt_line(f"{_ENDLESS_SHA} HEAD\0{caps}\n".encode())
        with contextlib.suppress(OSError):
            self._chunk(pkt_line(b"# service=git-upload-pack\n") + b"0000" + head)
        if peer.mode == "sideband":
            with contextlib.suppress(OSError):
                self._chunk(pkt_line(f"{_ENDLESS_SHA} refs/heads/main\n".encode()) + b"0000")
                self._chunk(b"")  # the chunked terminator: this answer is complete
            return
        # The flush that would end the ref list never comes, only more and more refs.
        self._trickle(lambda n: pkt_line(f"{_ENDLESS_SHA} refs/heads/trickle-{n:08d}\n".encode()))

    def do_POST(self) -> None:
        peer = self.endless
        _read_http_body(self)
        with peer._lock:
            peer.requests.append(("POST", self.path))
        if peer.mode != "sideband" or not self.path.endswith("/git-upload-pack"):
            self._plain(404, "not served")
            return
        self._start_stream("application/x-git-upload-pack-result")
        with contextlib.suppress(OSError):
            self._chunk(pkt_line(b"NAK\n"))
        # Band 2 is progress: the client prints "remote: ..." and keeps waiting for band 1.
        self._trickle(lambda n: pkt_line(b"\x02Counting objects: %d\r" % n))


class EndlessGitHttpServer(_HttpPeer):
    """A smart-HTTP git server that starts answering and never finishes (ADVERSARIAL item 16).

    mode="refs": GET <repo>/info/refs?service=git-upload-pack answers 200 with a valid-looking
    protocol v0 advertisement (service header, HEAD with capabilities) and then one more ref
    line every `interval` seconds, never the flush that ends the list: `git ls-remote`, clone
    and fetch all wait forever. mode="sideband": the advertisement is complete and valid (HEAD
    and main at a made-up SHA), so `git ls-remote` succeeds, but the POST git-upload-pack that
    a clone or fetch sends next answers NAK and then sideband progress ("remote: Counting
    objects: N") every `interval` seconds, never a pack. Any repository path is served. A stream
    ends only when the client goes away or the server stops (__exit__). Every request is in
    `requests` as (method, path); `chunks_sent` counts the trickled pieces.
    """

    _handler = _EndlessHandler

    def __init__(
        self,
        mode: str = "refs",
        *,
        interval: float = 0.05,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        if mode not in ("refs", "sideband"):
            raise ValueError(f"mode must be 'refs' or 'sideband', not {mode!r}")
        super().__init__(timeout=timeout)
        self.mode = mode
        self.interval = interval
        self.requests: list[tuple[str, str]] = []
        self.chunks_sent = 0


@dataclass(frozen=True)
class ProxiedRequest:
    """One request FailingHttpProxy saw: the status it answered, and whether it forwarded."""

    method: str
    path: str
    status: int
    forwarded: bool


class _FailingProxyHandler(_PeerHandler):
    @property
    def proxy(self) -> FailingHttpProxy:
        peer = self.peer
        assert isinstance(peer, FailingHttpProxy)
        return peer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _record(self, status: int, forwarded: bool) -> None:
        with self.proxy._lock:
            self.proxy.requests.append(ProxiedRequest(self.command, self.path, status, forwarded))

    def _handle(self) -> None:
        proxy = self.proxy
        # Read the body whatever the verdict, so a keep-alive connection stays in step.
        body = _read_http_body(self)
        with proxy._lock:
            proxy._seen += 1
            number = proxy._seen
        if number <= proxy.fail_first:
            self._record(proxy.status, False)
            self._plain(
                proxy.status,
                f"injected by FailingHttpProxy: request {number} of the first {proxy.fail_first}",
            )
            return
        try:
            status = self._forward(body)
        except (OSError, http.client.HTTPException) as exc:
            self._record(502, True)
            with contextlib.suppress(OSError):
                self._plain(502, f"FailingHttpProxy could not reach its upstream: {exc}")
            self.close_connection = True
            return
        self._record(status, True)

    def _forward(self, body: bytes) -> int:
        proxy = self.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if self.command != "GET":
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            # Re-chunk whatever came: simpler than mirroring each upstream framing, and git
            # accepts both.
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                data = resp.read1(65536)
                if not data:
                    break
                self._chunk(data)
            self._chunk(b"")
            return resp.status
        finally:
            conn.close()


class FailingHttpProxy(_HttpPeer):
    """An HTTP front for one server on loopback that fails its first requests (retry tests).

    The first `fail_first` requests, whatever their path, get `status` (503 by default) with a
    short text body, as an overloaded load balancer would answer. Every later request is
    forwarded to upstream_host:upstream_port and the answer streamed back, so a GitHttpServer
    behind it serves clones with its own auth. Clients talk to it as the origin (url_for), not
    as an http.proxy. `requests` records each request; TCP-level drops are FlakyProxy's job.
    """

    _handler = _FailingProxyHandler

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        fail_first: int = 1,
        *,
        status: int = 503,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(timeout=timeout)
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.fail_first = fail_first
        self.status = status
        self.requests: list[ProxiedRequest] = []
        self._seen = 0

    @property
    def failed(self) -> int:
        """How many requests got the injected status so far."""
        return sum(1 for r in self.requests if not r.forwarded)

    @property
    def forwarded(self) -> int:
        """How many requests reached the upstream so far."""
        return sum(1 for r in self.requests if r.forwarded)
