"""`stepkit image-fetcher`: its flags in every spelling Go's flag package accepts, each with an env var."""

from __future__ import annotations

import click

from stepkit.clickutil import (
    CONTEXT_SETTINGS,
    GoCommand,
    common_options,
    duration_option,
    go_bool_option,
    go_option,
    result_options,
    retries_option,
)


@click.command(
    "image-fetcher",
    cls=GoCommand,
    context_settings=CONTEXT_SETTINGS,
    help="""Extract files from a container image in a registry into the destination directory.

-image is a tag or digest reference; Docker Hub short names resolve as docker does
(alpine -> docker.io/library/alpine:latest). Docker schema 2 and OCI manifests, manifest
lists and indexes are read (the -platform entry chosen as containerd chooses it: the same
platform first, else the newest older variant it runs, arm/v7 taking arm/v6 or v5, arm64
arm/v8 and below, amd64 386; default the running platform).
Every manifest and layer is checked against its digest and size while it streams; layers
are applied in order in a private staging directory with whiteouts and opaque
directories as the OCI image spec defines, one layer file on disk at a time; then only
-path is moved into the destination, which shows the whole result or nothing new.
Symlinks of the image are copied as symlinks, never followed on the host.

Credentials: $HOME/.docker/config.json as creds-init writes it (auths, credHelpers,
credsStore), Basic or bearer tokens; anonymous otherwise. A token service gets them only
over HTTPS on the registry's host, a parent domain of it, or a -token-realm-host. TLS is always verified
(-ca-file adds a CA); plain HTTP only for registries named by -insecure-registry.
Results: `digest` (the manifest fetched) and `image` (registry/repository@digest).
Exit codes: 0 done, 1 failed, 2 bad input (flags, reference, hostile image), 3 access
denied, 130 interrupted.""",
)
@go_option(
    "image",
    envvar="STEPKIT_IMAGE_IMAGE",
    required=True,
    metavar="REF",
    help="Image reference: [REGISTRY/]REPOSITORY[:TAG][@DIGEST].",
)
@go_option(
    "path",
    envvar="STEPKIT_IMAGE_PATH",
    default="/",
    show_default=True,
    metavar="/IN/IMAGE",
    help="Directory or file of the image to extract (its contents for a directory).",
)
@go_option(
    "dest_dir",
    envvar="STEPKIT_IMAGE_DEST_DIR",
    default=None,
    metavar="DIR",
    help="Directory to extract into (created if missing). [default: the working directory]",
)
@go_option(
    "platform",
    envvar="STEPKIT_IMAGE_PLATFORM",
    default=None,
    metavar="OS/ARCH[/VARIANT]",
    help="Platform to pick from a multi-platform image (aarch64, x86_64, armhf, armel are "
    "read as containerd reads them). [default: the running platform]",
)
@go_option(
    "insecure-registry",
    envvar="STEPKIT_IMAGE_INSECURE_REGISTRY",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Registry reached over plain HTTP; repeatable (the variable: comma-separated).",
)
@go_option(
    "token-realm-host",
    envvar="STEPKIT_IMAGE_TOKEN_REALM_HOST",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Token service host that may receive the registry's credentials although it is not "
    "the registry's host or a parent domain of it (self-hosted GitLab: its own host); HTTPS "
    "only, never after a redirect; repeatable (the variable: comma-separated).",
)
@go_option(
    "ca-file",
    envvar="STEPKIT_IMAGE_CA_FILE",
    default=None,
    metavar="FILE",
    help="PEM certificates trusted beside the system's for registry TLS.",
)
@retries_option(
    envvar="STEPKIT_IMAGE_RETRIES",
    maximum=100,
    help="Retries of a request that failed transiently (5xx, 429, reset, timeout, cut body).",
)
@duration_option(
    "timeout",
    envvar="STEPKIT_IMAGE_TIMEOUT",
    default="5m",
    help="Time one request may wait for the registry (Go duration: 30s, 5m).",
)
@go_bool_option(
    "allow-git",
    envvar="STEPKIT_IMAGE_ALLOW_GIT",
    default=False,
    help="Extract a .git directory of the image (its config and hooks run with git).",
)
@result_options("the results `digest` and `image`")
@common_options
def command(
    image: str,
    path: str,
    dest_dir: str | None,
    platform: str | None,
    insecure_registry: tuple[str, ...],
    token_realm_host: tuple[str, ...],
    ca_file: str | None,
    retries: int,
    timeout: str,
    allow_git: bool,
    terminationmessagepath: str | None,
    results_dir: str | None,
) -> int:
    from initializers.imagesrc import spec as specmod
    from initializers.imagesrc.fetch import run

    spec = specmod.build(
        image=image,
        path=path,
        dest_dir=dest_dir,
        platform=platform,
        insecure_registry=insecure_registry,
        ca_file=ca_file,
        retries=retries,
        timeout=timeout,
        allow_git=allow_git,
        termination_path=terminationmessagepath,
        results_dir=results_dir,
        token_realm_host=token_realm_host,
    )
    return run(spec)
