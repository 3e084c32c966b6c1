#!/bin/sh
# A local stand-in for python:3.11-slim where no registry is reachable: Debian with python3,
# git, ssh and nss_wrapper, bootstrapped from the Debian mirror and imported into containers
# storage. Does nothing when the image is already there; reuses the bootstrapped tree when
# only the import is missing.
#
#   images/base-image.sh NAME CACHE_DIR
#
# Environment: STORAGE_DRIVER (vfs), DEBIAN_SUITE (bookworm), DEBIAN_MIRROR, BASE_PACKAGES.
set -eu

name=$1
cache=$2
driver=${STORAGE_DRIVER:-vfs}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=${BASE_PACKAGES:-python3,python3-venv,git,openssh-client,ca-certificates,libnss-wrapper}
podman="podman --storage-driver $driver"

if $podman image exists "$name"; then
    echo "$name is present"
    exit 0
fi

rootfs=$cache/rootfs
if [ ! -e "$rootfs/.complete" ]; then
    rm -rf "$rootfs" "$rootfs.tmp"
    mkdir -p "$cache"
    echo "debootstrap $suite into $rootfs (about a minute)"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs.tmp" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 || {
        tail -n 20 "$cache/debootstrap.log" >&2
        echo "debootstrap failed; the whole log is $cache/debootstrap.log" >&2
        exit 1
    }
    # What a slim image leaves out too: downloaded packages, package lists, logs.
    rm -rf "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/cache/apt/*.bin \
        "$rootfs.tmp"/var/lib/apt/lists/* "$rootfs.tmp"/var/log/* "$rootfs.tmp"/tmp/* \
        "$rootfs.tmp"/var/cache/debconf/*-old "$rootfs.tmp"/var/lib/dpkg/*-old
    mv "$rootfs.tmp" "$rootfs"
    touch "$rootfs/.complete"
fi

echo "importing $rootfs as $name"
# The environment python:3.11-slim declares, so Containerfiles see the same PATH and locale.
tar --numeric-owner --exclude=./.complete -C "$rootfs" -c . | $podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=$packages $suite" \
    - "$name" >/dev/null
echo "$name imported"
