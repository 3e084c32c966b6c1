"""`stepkit git-init`: Knative's and Tekton's git-init flags, in every spelling Go's flag package accepts."""

from __future__ import annotations

import click

from stepkit.clickutil import (
    CONTEXT_SETTINGS,
    GoCommand,
    common_options,
    go_bool_option,
    go_flag_option,
    go_option,
    result_options,
    retries_option,
    seconds_option,
)


@click.command(
    "git-init",
    cls=GoCommand,
    context_settings=CONTEXT_SETTINGS,
    help="""Fetch one revision of a git repository into the workspace.

Fetches only what the revision needs (a shallow fetch, or history without file contents
when the server won't hand out an old commit by itself), checks it out, and writes the
results commit, url and committer-date. Credentials come from what creds-init wrote into
$HOME. Exits non-zero with one line saying what went wrong; network failures are retried.""",
)
@go_option(
    "url",
    envvar="STEPKIT_GIT_URL",
    required=True,
    metavar="URL",
    help="Repository url (https, ssh, git; scp-like user@host:path).",
)
@go_option(
    "revision",
    envvar="STEPKIT_GIT_REVISION",
    default="",
    metavar="REV",
    help="Branch, tag, full or short SHA, pull/N/head or refs/...; empty for the default branch.",
)
@go_option(
    "path",
    envvar="STEPKIT_GIT_PATH",
    default="",
    metavar="DIR",
    help="Directory under the workspace to check out into.",
)
@go_option(
    "refspec",
    envvar="STEPKIT_GIT_REFSPEC",
    default="",
    metavar="REFSPECS",
    help="Space-separated refspecs to fetch instead of the revision (Tekton).",
)
@go_option(
    "depth",
    envvar="STEPKIT_GIT_DEPTH",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="History depth to fetch; 0 for all of it.",
)
@go_bool_option(
    "submodules",
    envvar="STEPKIT_GIT_SUBMODULES",
    default=True,
    help="Fetch submodules, with the same depth and credentials.",
)
@go_bool_option(
    "sslVerify",
    envvar="STEPKIT_GIT_SSL_VERIFY",
    default=True,
    help="Verify the server's TLS certificate.",
)
@go_option(
    "sparseCheckoutDirectories",
    envvar="STEPKIT_GIT_SPARSE_DIRS",
    default="",
    metavar="DIRS",
    help="Comma-separated directories to check out (sparse, cone mode).",
)
@result_options()
@go_option(
    "workspace",
    envvar="STEPKIT_WORKSPACE",
    default=None,
    metavar="DIR",
    help="The workspace -path is relative to. [default: the working directory]",
)
@retries_option(envvar="STEPKIT_GIT_RETRIES", maximum=20, help="Retries of a network failure.")
@seconds_option(
    "retry-backoff",
    envvar="STEPKIT_GIT_RETRY_BACKOFF",
    default=1.0,
    minimum=0,
    help="Seconds before the first retry; doubled each time, with jitter.",
)
@seconds_option(
    "timeout",
    envvar="STEPKIT_GIT_TIMEOUT",
    default=600.0,
    minimum=1,
    help="Seconds one network operation may take.",
)
@go_flag_option(
    "allow-http",
    envvar="STEPKIT_GIT_ALLOW_HTTP",
    help="Allow plain http:// urls (unencrypted).",
)
@go_flag_option(
    "allow-local",
    envvar="STEPKIT_GIT_ALLOW_LOCAL",
    help="Allow file:// urls and local paths.",
)
@go_flag_option(
    "force",
    envvar="STEPKIT_GIT_FORCE",
    help="Fetch into a non-empty directory that is not a previous checkout.",
)
@common_options
def command(
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
    from initializers.gitsrc.entry import run_command

    return run_command(
        url=url,
        revision=revision,
        path=path,
        refspec=refspec,
        depth=depth,
        submodules=submodules,
        sslverify=sslverify,
        sparsecheckoutdirectories=sparsecheckoutdirectories,
        terminationmessagepath=terminationmessagepath,
        results_dir=results_dir,
        workspace=workspace,
        retries=retries,
        retry_backoff=retry_backoff,
        timeout=timeout,
        allow_http=allow_http,
        allow_local=allow_local,
        force=force,
    )
