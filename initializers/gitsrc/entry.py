"""git-init's entry without click: the command's body, and a parser for its usual command lines.

A pod runs git-init with a handful of Go-style flags (`-url=... -revision=... -path=...`,
Tekton's `-sslVerify=true -depth=1 ...`). Importing click and building the command costs
tens of ms of every build's start-up, so `stepkit git-init` first tries `parse` here: it
accepts only command lines whose meaning is certain and hands every other one (help,
unknown or repeated-in-doubt flags, odd values, any environment variable of the command,
anything that is an error) to the click command, which stays the reference.
tests/test_gitinit_fastargs.py proves both give the same values and the same errors.
"""

from __future__ import annotations

import os

# Environment variables the click command reads; with any of them set, click parses.
ENVVARS = (
    "STEPKIT_GIT_URL",
    "STEPKIT_GIT_REVISION",
    "STEPKIT_GIT_PATH",
    "STEPKIT_GIT_REFSPEC",
    "STEPKIT_GIT_DEPTH",
    "STEPKIT_GIT_SUBMODULES",
    "STEPKIT_GIT_SSL_VERIFY",
    "STEPKIT_GIT_SPARSE_DIRS",
    "STEPKIT_RESULTS_DIR",
    "STEPKIT_TERMINATION_MESSAGE_PATH",
    "STEPKIT_WORKSPACE",
    "STEPKIT_GIT_RETRIES",
    "STEPKIT_GIT_RETRY_BACKOFF",
    "STEPKIT_GIT_TIMEOUT",
    "STEPKIT_GIT_ALLOW_HTTP",
    "STEPKIT_GIT_ALLOW_LOCAL",
    "STEPKIT_GIT_FORCE",
    "STEPKIT_LOG_FORMAT",
    "STEPKIT_DEBUG",
)

# flag name (without dashes) -> (parameter, kind)
_FLAGS: dict[str, tuple[str, str]] = {
    "url": ("url", "str"),
    "revision": ("revision", "str"),
    "path": ("path", "str"),
    "refspec": ("refspec", "str"),
    "depth": ("depth", "depth"),
    "submodules": ("submodules", "bool"),
    "sslVerify": ("sslverify", "bool"),
    "sparseCheckoutDirectories": ("sparsecheckoutdirectories", "str"),
    "results-dir": ("results_dir", "str"),
    "termination-message-path": ("terminationmessagepath", "str"),
    "terminationMessagePath": ("terminationmessagepath", "str"),
    "workspace": ("workspace", "str"),
    "retries": ("retries", "retries"),
    "retry-backoff": ("retry_backoff", "backoff"),
    "timeout": ("timeout", "timeout"),
    "allow-http": ("allow_http", "bool"),
    "allow-local": ("allow_local", "bool"),
    "force": ("force", "bool"),
    "log-format": ("log_format", "logfmt"),
    "debug": ("debug", "switch"),
}

_DEFAULTS: dict[str, object] = {
    "revision": "",
    "path": "",
    "refspec": "",
    "depth": 1,
    "submodules": True,
    "sslverify": True,
    "sparsecheckoutdirectories": "",
    "terminationmessagepath": None,
    "results_dir": None,
    "workspace": None,
    "retries": 3,
    "retry_backoff": 1.0,
    "timeout": 600.0,
    "allow_http": False,
    "allow_local": False,
    "force": False,
    "log_format": "text",
    "debug": False,
}

# Go's strconv.ParseBool words, as the click command's GoBool reads them.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _digits(value: str) -> bool:
    """1 to 9 ASCII digits (str.isdigit alone takes other scripts' digits too)."""
    return 0 < len(value) < 10 and value.isascii() and value.isdigit()


# Parsed, or the sentinel: not certain, let click parse it.
_UNSURE = object()


def _convert(kind: str, value: str) -> object:
    if kind == "str":
        return value
    if kind == "bool":
        return True if value in _TRUE else False if value in _FALSE else _UNSURE
    if kind == "logfmt":
        return value if value in ("text", "json") else _UNSURE
    if kind in ("depth", "retries"):
        if not _digits(value):
            return _UNSURE
        number = int(value)
        return number if kind == "depth" or number <= 20 else _UNSURE
    if kind in ("backoff", "timeout"):
        whole, dot, fraction = value.partition(".")
        if not _digits(whole) or (dot and not _digits(fraction)):
            return _UNSURE
        seconds = float(value)
        return seconds if kind == "backoff" or seconds >= 1 else _UNSURE
    return _UNSURE


def parse(args: list[str], environ: dict[str, str] | os._Environ[str]) -> dict[str, object] | None:
    """The command's parameters (as the click command would pass them), or None when unsure."""
    if any(name in environ for name in ENVVARS):
        return None
    values: dict[str, object] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg.startswith("--"):
            word = arg[2:]
        elif arg.startswith("-"):
            word = arg[1:]
        else:
            return None  # a positional argument: an error, click words it
        name, eq, value = word.partition("=")
        entry = _FLAGS.get(name)
        if entry is None:
            return None
        param, kind = entry
        if kind == "switch":
            if eq:
                return None
            values[param] = True
            continue
        if kind == "bool":
            if not eq:
                # Alone it is true; the next word must clearly be another flag (or none).
                if index < len(args) and not args[index].startswith("-"):
                    return None
                values[param] = True
                continue
        elif not eq:
            if index >= len(args) or args[index].startswith("-"):
                return None
            value = args[index]
            index += 1
        converted = _convert(kind, value)
        if converted is _UNSURE:
            return None
        values[param] = converted
    if "url" not in values:
        return None  # required: click says so
    return {**_DEFAULTS, **values}


def run_command(
    url: str,
    revision: str,
    path: str,
    refspec: str,
    depth: int,
    submodules: bool,
    sslverify: bool,
    sparsecheckoutdirectories: str,
    terminationmessagepath: str | None,
    results_dir: str | None,
    workspace: str | None,
    retries: int,
    retry_backoff: float,
    timeout: float,
    allow_http: bool,
    allow_local: bool,
    force: bool,
) -> int:
    """git-init's body, whichever parser read its flags."""
    import logging
    from pathlib import Path

    from initializers.gitsrc import spec as specmod
    from initializers.gitsrc.fetch import run

    log = logging.getLogger("initializers.gitsrc.cli")
    repo = specmod.parse_url(url, allow_http=allow_http, allow_local=allow_local)
    if repo.password is not None:
        log.warning(
            "-url holds credentials; they are used for this fetch only, never stored or shown"
        )
    if not sslverify:
        log.warning("-sslVerify=false: the server's TLS certificate is not checked")
    ws = Path(workspace or os.getcwd())
    schemes = (
        {"https", "ssh", "git"}
        | ({"http"} if allow_http else set())
        | ({"file"} if allow_local else set())
    )
    spec = specmod.FetchSpec(
        url=repo,
        revision=specmod.parse_revision(revision),
        refspecs=specmod.parse_refspecs(refspec) if refspec else (),
        dest=specmod.resolve_dest(ws, path),
        workspace=ws,
        depth=depth,
        submodules=submodules,
        ssl_verify=sslverify,
        sparse_dirs=specmod.parse_sparse(sparsecheckoutdirectories),
        termination_path=terminationmessagepath,
        results_dir=results_dir,
        retries=retries,
        backoff=retry_backoff,
        timeout=timeout,
        force=force,
        allowed_schemes=frozenset(schemes),
    )
    return run(spec)


def main(args: list[str]) -> int | None:
    """Run git-init when `parse` is certain of args; None to have click parse them instead."""
    params = parse(args, os.environ)
    if params is None:
        return None
    from stepkit import contract, log

    log.setup("git-init", str(params.pop("log_format")), bool(params.pop("debug")))
    if params["terminationmessagepath"] is None:
        params["terminationmessagepath"] = contract.default_termination_path()
    return run_command(**params)  # type: ignore[arg-type]
