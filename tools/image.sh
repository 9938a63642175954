#!/bin/sh
# Builds the cserve container image (deploy/container/Containerfile) with podman on a machine
# that cannot reach a registry (make image).
#
#   sh tools/image.sh [--force] [--print-hash]
#
# Environment:
#   IMAGE       tag to build (default localhost/cserve:latest)
#   MODEL_DIR   a model directory to bake into the image (target "baked"); unset: no model
#               (the image then serves distilgpt2 from the Hugging Face cache volume at /models)
#   BASE        base image of the build stage; unset: localhost/debian:bookworm, made once per
#               machine with debootstrap from the apt mirror this machine uses and kept in
#               podman's storage (later builds reuse it)
#   DEBIAN_MIRROR  mirror for debootstrap (default: the first bookworm URI in /etc/apt/sources*)
#
# The image is rebuilt only when its inputs changed: the hash of the files the build reads
# (Makefile, src/, tools/, deploy/container/, the baked model's listing) and of the base image
# is stored in the label io.cserve.source-hash; --force builds anyway, --print-hash prints the
# hash and exits. Needs podman, and debootstrap when the base must be made (root).
set -e
if [ -n "$MODEL_DIR" ]; then MODEL_DIR=$(cd "$MODEL_DIR" && pwd) || exit 1; fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/deploy/container/containers.conf}"
IMAGE=${IMAGE:-localhost/cserve:latest}
force=0
print_hash=0
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        --print-hash) print_hash=1 ;;
        *) echo "usage: sh tools/image.sh [--force] [--print-hash]" >&2; exit 2 ;;
    esac
done
command -v podman >/dev/null 2>&1 || { echo "image: podman not found (sh tools/deps.sh installs it)" >&2; exit 1; }

# The bookworm mirror apt uses here, from one-line (*.list) or deb822 (*.sources) entries.
mirror() {
    if [ -n "$DEBIAN_MIRROR" ]; then echo "$DEBIAN_MIRROR"; return; fi
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /^(https?|file):/ && $(i+1) == "bookworm") { print $i; exit } }')
    [ -z "$m" ] && m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") { print u; exit } } /^$/ { u = "" }')
    echo "${m:-http://deb.debian.org/debian}"
}

# A Debian bookworm base in podman's storage, made once per machine (~70 s, ~200 MB).
make_base() {
    podman image exists localhost/debian:bookworm && return 0
    command -v debootstrap >/dev/null 2>&1 || { echo "image: debootstrap not found (sh tools/deps.sh installs it)" >&2; exit 1; }
    url=$(mirror)
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/cserve-base.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "image: making localhost/debian:bookworm with debootstrap from $url"
    debootstrap --variant=minbase bookworm "$rootfs" "$url" >"$rootfs.log" 2>&1 ||
        { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    # Security updates too, when this machine's apt has them.
    sec=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
          awk '/^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm-security") { print u; exit } } /^$/ { u = "" }')
    if [ -n "$sec" ]; then echo "deb $sec bookworm-security main" >>"$rootfs/etc/apt/sources.list"; fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - localhost/debian:bookworm >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
}

# Hash of everything the build reads: a change in any of them means a new image.
source_hash() {
    {
        find Makefile src tools deploy/container -type f ! -name '*.pyc' -print | LC_ALL=C sort |
            xargs -d '\n' sha256sum
        if [ -n "$MODEL_DIR" ]; then (cd "$MODEL_DIR" && find . -type f -printf '%p %s %T@\n' | LC_ALL=C sort); fi
        echo "base=$1 model=${MODEL_DIR:+baked}"
    } | sha256sum | cut -c1-16
}

if [ -z "$BASE" ]; then
    [ "$print_hash" = 1 ] || make_base
    BASE=localhost/debian:bookworm
fi
base_id=$(podman image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || echo none)
hash=$(source_hash "$base_id")
if [ "$print_hash" = 1 ]; then echo "$hash"; exit 0; fi
if [ "$force" = 0 ] && [ "$(podman image inspect --format '{{index .Labels "io.cserve.source-hash"}}' "$IMAGE" 2>/dev/null)" = "$hash" ]; then
    echo "image: $IMAGE is up to date ($hash)"
    exit 0
fi

set -- --target runtime
if [ -n "$MODEL_DIR" ]; then
    [ -f "$MODEL_DIR/config.json" ] || { echo "image: MODEL_DIR=$MODEL_DIR has no config.json" >&2; exit 1; }
    set -- --target baked --build-context "model=$MODEL_DIR"
fi
start=$(date +%s)
# --network host: the build stage's apt-get reaches the mirror as this machine does.
# --format docker: OCI images cannot carry HEALTHCHECK.
build() {
    podman build --pull=never --network host --format docker \
        --ignorefile deploy/container/Containerfile.dockerignore \
        --build-arg "BASE=$BASE" -f deploy/container/Containerfile "$@" .
}
build "$@" --build-arg "SOURCE_HASH=$hash" -t "$IMAGE"
# Every source change leaves the previous build behind (~60 MB of build-stage layers, ~22 MB of
# image): keep the newest build stage under a tag (its layers are the next build's cache, the
# package layer above all; all cached here, so this takes seconds) and remove the untagged rest.
build --target build -t localhost/cserve-build:cache >/dev/null
podman image prune -f --filter label=io.cserve.stage >/dev/null || true
podman image prune -f --filter label=io.cserve.source-hash >/dev/null || true
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "image: built $IMAGE in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
