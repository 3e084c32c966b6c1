"""`stepkit gcs-uploader`: cloud-builders gcs-uploader's flags, in every spelling Go's flag package accepts."""

from __future__ import annotations

import click

from stepkit.clickutil import (
    CONTEXT_SETTINGS,
    GoCommand,
    common_options,
    go_option,
    result_options,
    retries_option,
    seconds_option,
    workers_option,
)


@click.command(
    "gcs-uploader",
    cls=GoCommand,
    context_settings=CONTEXT_SETTINGS,
    help="""Upload a directory to Google Cloud Storage as a source manifest for gcs-fetcher.

Each file becomes an object named by the SHA-1 of its content (in the manifest's bucket,
under --object-prefix), uploaded only when no object of that name exists yet; then the
manifest, which maps each path to its object pinned to a generation, is written to
--location, last. Symlinks are kept as symlinks when they point inside --dir (the object
holds the link target); files keep their permission bits. Empty directories cannot be
represented in a manifest and are skipped with a warning; named pipes, sockets and
devices are refused. The manifest's gs://...#generation is written as the result
"manifest". Credentials: application default credentials, anonymous when there are none;
STORAGE_EMULATOR_HOST is honoured.""",
)
@go_option(
    "dir",
    envvar="STEPKIT_GCS_UPLOAD_DIR",
    default=".",
    show_default=True,
    metavar="DIR",
    help="Directory of files to upload.",
)
@go_option(
    "location",
    envvar="STEPKIT_GCS_UPLOAD_LOCATION",
    default="",
    metavar="URL",
    help="Where to write the manifest: gs://BUCKET/path/manifest.json (no #generation). Required.",
)
@go_option(
    "object-prefix",
    envvar="STEPKIT_GCS_UPLOAD_OBJECT_PREFIX",
    default="",
    metavar="PREFIX",
    help="Prefix of the content objects' names, e.g. 'sources/'. [default: none, objects at the "
    "bucket's root as cloud-builders' gcs-uploader names them]",
)
@workers_option(
    envvar="STEPKIT_GCS_UPLOAD_WORKERS",
    help="Objects uploaded in parallel (threads sharing one client and connection pool).",
)
@retries_option(
    envvar="STEPKIT_GCS_UPLOAD_RETRIES",
    maximum=20,
    help="Retries of a request that failed with 408, 429, 5xx, a reset or a corrupted transfer.",
)
@seconds_option(
    "backoff",
    envvar="STEPKIT_GCS_UPLOAD_BACKOFF",
    default=0.1,
    minimum=0,
    help="Seconds before the first retry; doubled each time, with jitter.",
)
@seconds_option(
    "timeout",
    envvar="STEPKIT_GCS_UPLOAD_TIMEOUT",
    default=120.0,
    minimum=1,
    help="Seconds one request may take.",
)
@result_options("the result `manifest` (gs://BUCKET/OBJECT#GENERATION)")
@common_options
def command(
    dir: str,
    location: str,
    object_prefix: str,
    workers: int,
    retries: int,
    backoff: float,
    timeout: float,
    terminationmessagepath: str | None,
    results_dir: str | None,
) -> int:
    from builders.gcsupload import spec as specmod
    from builders.gcsupload.upload import run

    spec = specmod.UploadSpec(
        dir=specmod.resolve_dir(dir),
        manifest=specmod.parse_manifest_location(location),
        prefix=specmod.parse_prefix(object_prefix),
        workers=workers,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        termination_path=terminationmessagepath,
        results_dir=results_dir,
    )
    return run(spec)
