#!/bin/sh
# Make a local Python 3.11 base image from Debian's packages, for machines that reach no container
# registry: debootstrap (minbase) + Python 3.11 + CA certificates, trimmed, imported into the
# engine's image store as NAME. Run once per machine: an existing NAME is reused.
#
#   scripts/image-base.sh ENGINE NAME        ENGINE: docker | podman | buildah
#
# DEBIAN_MIRROR overrides the mirror (default: deb.debian.org). Needs root (debootstrap chroots).
set -eu
engine=$1
name=$2
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if "$engine" image inspect "$name" >/dev/null 2>&1 || { [ "$engine" = buildah ] && buildah inspect --type image "$name" >/dev/null 2>&1; }; then
  echo "image base: $name (made once on this machine from Debian's packages; reused)"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: no registry base and no debootstrap to make one (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: making the local base needs root (debootstrap): run as root or set BASE_IMAGE to an image you can pull" >&2; exit 1; }

echo "image base: no registry base reachable; making $name from Debian bookworm's packages with debootstrap (once per machine, about 80 s)"
root=$(mktemp -d /var/tmp/sentiment-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
# python3.11-venv needs python3-distutils, which debootstrap does not resolve by itself.
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,ca-certificates \
  bookworm "$root" "$mirror" > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
       "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
case $engine in
  buildah)
    tar -C "$root" -c -f "$root.tar" .
    container=$(buildah from scratch)
    buildah add --quiet "$container" "$root.tar" / > /dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
      --cmd python3 "$container"
    buildah commit --quiet --rm "$container" "$name" > /dev/null
    rm -f "$root.tar" ;;
  *)
    tar -C "$root" -c . | "$engine" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$name" > /dev/null 2> "$root.import.log" \
      || { cat "$root.import.log" >&2; rm -f "$root.import.log"; exit 1; }
    rm -f "$root.import.log" ;;
esac
echo "image base: $name ready"
