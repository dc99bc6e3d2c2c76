#!/usr/bin/env bash
# Build the fedscore image with this host's package sources:
#   BASE      the base image (default: localhost/fedscore-base:bookworm when it exists,
#             as deploy/base-image.sh makes it, else python:3.11-slim-bookworm)
#   WHEELS    a local wheel folder (default /opt/wheels when it exists), mounted at build
#             time; when it holds a +cpu torch wheel, torch comes from it
#   LOCAL_INDEXES  local PEP 503 index folders (file://), mounted and added as extra indexes
#   PIP_CERT  a CA bundle pip must trust (an intercepting proxy's), mounted for the build
#   IMAGE     the tag (default localhost/fedscore:latest); ENGINE podman (or docker)
# Nothing of these is left in the image: they are build-time mounts and arguments.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-podman}
IMAGE=${IMAGE:-${FEDSCORE_IMAGE:-localhost/fedscore:latest}}
if [[ -z "${BASE:-}" ]]; then
    BASE=python:3.11-slim-bookworm
    $ENGINE image exists localhost/fedscore-base:bookworm 2>/dev/null && BASE=localhost/fedscore-base:bookworm
fi
args=(--build-arg "BASE=$BASE")
WHEELS=${WHEELS:-/opt/wheels}
if [[ -d "$WHEELS" ]]; then
    args+=(-v "$WHEELS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
    compgen -G "$WHEELS/torch-2.13.0+cpu-*.whl" > /dev/null && args+=(--build-arg TORCH_INDEX=)
fi
extra=()
n=0
for index in ${LOCAL_INDEXES-/opt/pypi/simple /opt/pypi-more/simple}; do
    [[ -d "$index" ]] || continue   # its pages link ../files/...: mount the folder above it
    n=$((n + 1)); args+=(-v "$(dirname "$index"):/indexes/$n:ro")
    extra+=("file:///indexes/$n/$(basename "$index")")
done
[[ ${#extra[@]} -gt 0 ]] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra[*]}")
if [[ -n "${PIP_CERT:-}" && -f "$PIP_CERT" ]]; then
    args+=(-v "$PIP_CERT:/build-ca.crt:ro" --build-arg PIP_CERT=/build-ca.crt)
fi
echo "building $IMAGE from $BASE"
# Docker's image format: the OCI format has no HEALTHCHECK.
[[ "$ENGINE" == podman ]] && args+=(--format docker)
$ENGINE build -f Containerfile "${args[@]}" -t "$IMAGE" .
