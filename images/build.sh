#!/bin/sh
# Build stepkit-base, then one image per helper FROM it; with buildah when present, else docker.
#
#   images/build.sh CONTEXT
#
# CONTEXT is what `python images/wheels.py context` made. Environment: BASE_IMAGE,
# IMAGE_REPO (localhost/stepkit), VERSION, REVISION, SOURCE, HELPERS, STORAGE_DRIVER (vfs),
# IMAGE_BUILDER (buildah or docker; default: whichever is installed, buildah first),
# LAYERS (buildah only. 1: --layers, every step cached; 0: one layer per stage; default 0 on
# vfs, where each cached step costs a copy of the whole root: a cold build took 50 s, not 95 s).
#
# An image whose inputs (Containerfile, build arguments, parent image, context files) are
# those of its last build here is not built again: with the vfs driver even a fully cached
# `buildah bud` copies the whole root filesystem once per instruction.
set -eu

context=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
stamps=$(dirname "$context")/built
repo=${IMAGE_REPO:-localhost/stepkit}
version=${VERSION:?VERSION is not set}
helpers=${HELPERS:-nop creds-init git-init gcs-fetcher image-fetcher ssh git-push docker}
driver=${STORAGE_DRIVER:-vfs}
builder=${IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
    if command -v buildah >/dev/null 2>&1; then builder=buildah
    elif command -v docker >/dev/null 2>&1; then builder=docker
    else echo "error: neither buildah nor docker is installed (make image-deps installs buildah)" >&2; exit 1
    fi
fi
case $builder in
    buildah)
        [ "$driver" = vfs ] && layers=${LAYERS:-0} || layers=${LAYERS:-1}
        [ "$layers" = 1 ] && layers=--layers || layers=--layers=false ;;
    docker) ;;
    *) echo "error: IMAGE_BUILDER must be buildah or docker, not $builder" >&2; exit 1 ;;
esac

# image_id NAME: the local image's ID, empty when there is none.
image_id() {
    case $builder in
        buildah) buildah --storage-driver "$driver" inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true ;;
        docker) docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true ;;
    esac
}

# build NAME FILE PARENT BUILD-OPTION...: images/FILE.Containerfile -> $repo-NAME:$version and :latest
build() {
    name=$1 file=$here/$2.Containerfile parent=$3
    shift 3
    tag=$repo-$name:$version
    parent_id=$(image_id "$parent")
    key=$({
        echo "$builder $driver ${layers:-} $parent $parent_id $*"
        cat "$file"
        # Images that COPY the context (base, and gcs-fetcher for its own wheels) depend on it.
        ! grep -q '^COPY \. ' "$file" || (cd "$context" && sha256sum -- *)
    } | sha256sum | cut -d' ' -f1)
    if [ -n "$parent_id" ] && [ -f "$stamps/$name" ] \
        && [ "$(cat "$stamps/$name")" = "$key $(image_id "$tag")" ]; then
        echo "== $tag is up to date"
        return
    fi
    echo "== $tag ($builder)"
    set -- --file "$file" --tag "$tag" --tag "$repo-$name:latest" "$@"
    case $builder in
        buildah) buildah --storage-driver "$driver" bud --isolation chroot $layers --force-rm --quiet "$@" "$context" ;;
        docker) docker build --force-rm --quiet "$@" "$context" ;;
    esac
    mkdir -p "$stamps"
    echo "$key $(image_id "$tag")" >"$stamps/$name"
}

base_image=${BASE_IMAGE:-docker.io/library/python:3.11-slim}
build base base "$base_image" \
    --build-arg "BASE_IMAGE=$base_image" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=${REVISION:-unknown}" \
    --build-arg "SOURCE=${SOURCE:-}"
for helper in $helpers; do
    from="--build-arg STEPKIT_BASE=$repo-base:$version"
    case $helper in
        # The helpers that need an extra: one Containerfile, a stage per helper.
        gcs-fetcher)
            build "$helper" extra "$repo-base:$version" $from --target "$helper" \
                --build-arg EXTRA=gcs --build-arg "CHECK_IMPORT=google.cloud.storage, backports.zstd, initializers.gcs.cli" ;;
        image-fetcher)
            build "$helper" extra "$repo-base:$version" $from --target "$helper" \
                --build-arg EXTRA=oci --build-arg "CHECK_IMPORT=urllib3, backports.zstd, initializers.imagesrc.cli" ;;
        docker)
            build "$helper" extra "$repo-base:$version" $from --target "$helper" \
                --build-arg EXTRA=docker --build-arg "CHECK_IMPORT=docker, builders.dockerbuild.builder" ;;
        *) build "$helper" "$helper" "$repo-base:$version" $from ;;
    esac
done
