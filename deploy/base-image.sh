#!/usr/bin/env bash
# Build the image's base from Debian's packages, for hosts that reach Debian's archive and
# PyPI but no image registry: debootstrap a minimal bookworm with its python3 (3.11, the
# same Python as python:3.11-slim-bookworm), then `podman import` it as IMAGE.
# The Containerfile takes it with `--build-arg BASE=IMAGE`. Skipped when IMAGE exists
# (FORCE=1 rebuilds). Needs root (debootstrap), podman and debootstrap.
#   deploy/base-image.sh [IMAGE]        default: localhost/fedscore-base:bookworm
set -euo pipefail
IMAGE=${1:-localhost/fedscore-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ENGINE=${ENGINE:-podman}
if [[ "${FORCE:-0}" != 1 ]] && $ENGINE image exists "$IMAGE"; then
    echo "base image $IMAGE exists (FORCE=1 to rebuild)"
    exit 0
fi
for tool in debootstrap "$ENGINE"; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is required" >&2; exit 1; }
done
root=$(mktemp -d /var/tmp/fedscore-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" "$MIRROR"
# What python:3.11-slim leaves out: apt's lists and caches, docs, man pages.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
tar --numeric-owner -C "$root" -c . | $ENGINE import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$IMAGE"
echo "base image $IMAGE built from Debian bookworm ($MIRROR)"
