#!/bin/sh
# `make image`: build Dockerfile.transformer with the first working builder (docker, podman, buildah),
# tagged NAME:VERSION-COMMIT and NAME:VERSION; the reference built is written to .image-ref.
#
# Environment (all optional):
#   IMAGE_NAME       image name (default sentiment-transformer)
#   IMAGE_BUILDER    docker | podman | buildah (default: the first that works here)
#   BASE_IMAGE       base of both stages (default python:3.11.13-slim-bookworm; where it cannot be
#                    pulled, a local base made once from Debian's packages, scripts/image-base.sh)
#   INDEX_URL, EXTRA_INDEX_URL   package index for pip inside the build (build args of the builder stage)
#   PIP_CA           CA bundle pip trusts inside the build (a secret mount; default: the host's pip
#                    `cert`, else /etc/ssl/certs/ca-certificates.crt when present)
# None of the build-time settings end up in the image (tests/deploy/test_container_image.py).
set -eu
cd "$(dirname "$0")/.."

name=${IMAGE_NAME:-sentiment-transformer}
default_base=python:3.11.13-slim-bookworm
local_base=localhost/sentiment-python-base:3.11-bookworm

works() {
  case $1 in
    docker) command -v docker >/dev/null && docker info >/dev/null 2>&1 ;;
    podman) command -v podman >/dev/null && podman info >/dev/null 2>&1 ;;
    buildah) command -v buildah >/dev/null && buildah version >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}
builder=${IMAGE_BUILDER:-}
if [ -z "$builder" ]; then
  for candidate in docker podman buildah; do
    if works "$candidate"; then builder=$candidate; break; fi
  done
fi
if [ -z "$builder" ] || ! works "$builder"; then
  echo "error: no working image builder${builder:+ ($builder does not work here)}: install one of docker (with a" >&2
  echo "running daemon), podman or buildah, e.g. apt-get install -y buildah podman runc (.ci/run does this)" >&2
  exit 3
fi

has_image() {
  if [ "$builder" = buildah ]; then buildah inspect --type image "$1" >/dev/null 2>&1
  else "$builder" image inspect "$1" >/dev/null 2>&1; fi
}
base=${BASE_IMAGE:-$default_base}
if ! has_image "$base" && ! timeout 60 "$builder" pull -q "$base" >/dev/null 2>&1; then
  if [ -n "${BASE_IMAGE:-}" ]; then
    echo "error: BASE_IMAGE=$base is neither here nor pullable" >&2
    exit 1
  fi
  echo "image base: $default_base cannot be pulled here (no registry reachable)"
  scripts/image-base.sh "$builder" "$local_base"
  base=$local_base
fi

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit-dirty"; fi
ref="$name:$version-$commit"

set -- --file Dockerfile.transformer --tag "$ref" --tag "$name:$version" \
  --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" --build-arg "REVISION=$commit"
[ -z "${INDEX_URL:-}" ] || set -- "$@" --build-arg "INDEX_URL=$INDEX_URL"
[ -z "${EXTRA_INDEX_URL:-}" ] || set -- "$@" --build-arg "EXTRA_INDEX_URL=$EXTRA_INDEX_URL"
ca=${PIP_CA:-${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}}
[ -n "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt
[ ! -s "$ca" ] || set -- "$@" --secret "id=pip-ca,src=$ca"

echo "image: building $ref with $builder on $base"
started=$(date +%s)
case $builder in
  docker) DOCKER_BUILDKIT=1 docker build "$@" . ;;
  podman) podman build --isolation chroot --layers "$@" . ;;
  buildah) buildah bud --isolation chroot --layers "$@" . ;;
esac
echo "$ref" > .image-ref
echo "image: built $ref in $(( $(date +%s) - started )) s"
