"""`stepkit gcs-fetcher`: cloud-builders gcs-fetcher's flags, in every spelling Go's flag package accepts."""

from __future__ import annotations

import click

from stepkit.clickutil import (
    CONTEXT_SETTINGS,
    GoBool,
    GoCommand,
    common_options,
    duration_option,
    go_bool_option,
    go_option,
    result_options,
    retries_option,
    workers_option,
)


@click.command(
    "gcs-fetcher",
    cls=GoCommand,
    context_settings=CONTEXT_SETTINGS,
    help="""Fetch a Build's GCS source into the destination directory.

-type ZipArchive or TarGzArchive downloads one archive and extracts it safely (nothing
outside the destination, no device files, no setuid, limits against bombs); -type
Manifest downloads every object a JSON manifest names, in parallel, checking each against
its sha1sum and applying its mode. TarGzArchive reads any tar: uncompressed, or compressed
with gzip, bzip2, xz or zstd (.tar.zst), told by the archive's first bytes rather than its
name, so no further type name is needed and Builds written for the reference keep working.
Every object is fetched at the generation asked for
(#GENERATION) and its bytes are checked against GCS's crc32c/md5. Everything lands in the
staging folder first and is moved into place only when complete, so the destination shows
the whole result or nothing new; the staging folder is removed on every exit unless
-keep_source. Statistics are printed at the end, on failure too.

Credentials: application default credentials, else anonymous (public buckets);
STORAGE_EMULATOR_HOST points at an emulator. Exit codes: 0 done, 1 failed, 2 bad input
(flags, manifest, hostile archive), 3 permission denied, 130 interrupted.""",
)
@go_option(
    "type",
    envvar="STEPKIT_GCS_TYPE",
    required=True,
    metavar="TYPE",
    help="ZipArchive, TarGzArchive (a tar: plain, gzip, bzip2, xz or zstd) or Manifest "
    "(Archive: deprecated name of ZipArchive).",
)
@go_option(
    "location",
    envvar="STEPKIT_GCS_LOCATION",
    required=True,
    metavar="URL",
    help="gs://BUCKET/OBJECT[#GENERATION] or https://storage.googleapis.com/BUCKET/OBJECT.",
)
@go_option(
    "dest_dir",
    envvar="STEPKIT_GCS_DEST_DIR",
    default=None,
    metavar="DIR",
    help="Directory to fetch into (created if missing). [default: the working directory]",
)
@workers_option(
    envvar="STEPKIT_GCS_WORKERS",
    help="Objects downloaded in parallel (one shared connection pool).",
)
@retries_option(
    envvar="STEPKIT_GCS_RETRIES",
    maximum=100,
    help="Retries of a failed download (5xx, 429, reset, timeout, truncated or corrupt body).",
)
@duration_option(
    "backoff",
    envvar="STEPKIT_GCS_BACKOFF",
    default="100ms",
    help="Wait before the first retry, doubled for each further one (Go duration: 100ms, 1s).",
)
@duration_option(
    "timeout",
    envvar="STEPKIT_GCS_TIMEOUT",
    default="10m",
    help="Time one download attempt may take; a slower attempt is cancelled and retried.",
)
@go_bool_option(
    "keep_source",
    envvar="STEPKIT_GCS_KEEP_SOURCE",
    default=False,
    help="Keep the downloaded archive or manifest in the staging folder.",
)
@go_option(
    "staging_folder",
    envvar="STEPKIT_GCS_STAGING_FOLDER",
    default=None,
    metavar="DIR",
    help="Where downloads are staged; relative to -dest_dir. [default: .download]",
)
@go_bool_option(
    "verbose",
    envvar="STEPKIT_GCS_VERBOSE",
    default=False,
    help="Log every object fetched and every failed attempt.",
)
@go_option(
    "allowed-buckets",
    envvar="STEPKIT_GCS_ALLOWED_BUCKETS",
    default="",
    metavar="B1,B2",
    help="Only these buckets may be read (the location and every manifest entry). [default: any]",
)
@go_bool_option(
    "allow-git",
    envvar="STEPKIT_GCS_ALLOW_GIT",
    default=False,
    help="Fetch archives and manifests that contain a .git directory (its config and hooks run with git).",
)
@result_options("the result `location` (gs://BUCKET/OBJECT#GENERATION as fetched)")
@click.option(
    "-timeout_gcs",
    "--timeout_gcs",
    type=GoBool(),
    is_flag=False,
    flag_value="true",
    default=True,
    hidden=True,
    expose_value=False,
    help="Accepted for compatibility with the reference and ignored: see -timeout.",
)
@common_options
def command(
    type: str,
    location: str,
    dest_dir: str | None,
    workers: int,
    retries: int,
    backoff: str,
    timeout: str,
    keep_source: bool,
    staging_folder: str | None,
    verbose: bool,
    allowed_buckets: str,
    allow_git: bool,
    terminationmessagepath: str | None,
    results_dir: str | None,
) -> int:
    from initializers.gcs import spec as specmod
    from initializers.gcs.fetch import run

    spec = specmod.build(
        type_value=type,
        location=location,
        dest_dir=dest_dir,
        workers=workers,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        keep_source=keep_source,
        staging_folder=staging_folder,
        verbose=verbose,
        allowed_buckets=allowed_buckets,
        allow_git=allow_git,
        termination_path=terminationmessagepath,
        results_dir=results_dir,
    )
    return run(spec)
