"""`stepkit gcs-uploader`: cloud-builders gcs-uploader's flags, in every spelling Go's flag package accepts.

A builder of the SDK (stepkit.builder): the SDK parses the flags and environment variables,
masks output and writes the result `manifest`; this module only says what they are and
hands them to builders.gcsupload.upload.
"""

from __future__ import annotations

from stepkit.builder import Context, Param, Result, builder

HELP = """Upload a directory to Google Cloud Storage as a source manifest for gcs-fetcher.

Each file becomes an object named by the SHA-1 of its content (in the manifest's bucket,
under --object-prefix), uploaded only when no object of that name exists yet; then the
manifest, which maps each path to its object pinned to a generation, is written to
--location, last. Symlinks are kept as symlinks when they point inside --dir (the object
holds the link target); files keep their permission bits. Empty directories cannot be
represented in a manifest and are skipped with a warning; named pipes, sockets and
devices are refused. The manifest's gs://...#generation is written as the result
"manifest". Credentials: application default credentials, anonymous when there are none;
STORAGE_EMULATOR_HOST is honoured."""


def upload(ctx: Context) -> None:
    from builders.gcsupload import spec as specmod
    from builders.gcsupload.upload import upload as upload_tree

    p = ctx.params
    spec = specmod.UploadSpec(
        dir=specmod.resolve_dir(p.dir),
        manifest=specmod.parse_manifest_location(p.location),
        prefix=specmod.parse_prefix(p.object_prefix),
        workers=p.workers,
        retries=p.retries,
        backoff=p.backoff,
        timeout=p.timeout,
        termination_path=None,  # the SDK writes the results
        results_dir=None,
    )
    ctx.set_result("manifest", upload_tree(spec).url())


command = builder(
    name="gcs-uploader",
    help=HELP,
    params=[
        Param(
            "dir",
            default=".",
            env="STEPKIT_GCS_UPLOAD_DIR",
            metavar="DIR",
            help="Directory of files to upload.",
        ),
        Param(
            "location",
            default="",
            env="STEPKIT_GCS_UPLOAD_LOCATION",
            metavar="URL",
            help="Where to write the manifest: gs://BUCKET/path/manifest.json (no #generation). "
            "Required.",
        ),
        Param(
            "object-prefix",
            default="",
            env="STEPKIT_GCS_UPLOAD_OBJECT_PREFIX",
            metavar="PREFIX",
            help="Prefix of the content objects' names, e.g. 'sources/'; none puts them at the "
            "bucket's root, as cloud-builders' gcs-uploader names them.",
        ),
        Param(
            "workers",
            type=int,
            default=200,
            minimum=1,
            maximum=1000,
            env="STEPKIT_GCS_UPLOAD_WORKERS",
            help="Objects uploaded in parallel (threads sharing one client and connection pool).",
        ),
        Param(
            "retries",
            type=int,
            default=3,
            minimum=0,
            maximum=20,
            env="STEPKIT_GCS_UPLOAD_RETRIES",
            help="Retries of a request that failed with 408, 429, 5xx, a reset or a corrupted "
            "transfer.",
        ),
        Param(
            "backoff",
            type=float,
            default=0.1,
            minimum=0,
            env="STEPKIT_GCS_UPLOAD_BACKOFF",
            help="Seconds before the first retry; doubled each time, with jitter.",
        ),
        Param(
            "timeout",
            type=float,
            default=120.0,
            minimum=1,
            env="STEPKIT_GCS_UPLOAD_TIMEOUT",
            help="Seconds one request may take.",
        ),
    ],
    results=[Result("manifest", help="gs://BUCKET/OBJECT#GENERATION of the manifest written.")],
)(upload)
