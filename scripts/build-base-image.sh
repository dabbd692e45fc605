#!/usr/bin/env bash
# Build a stand-in for python:3.11-slim-bookworm from Debian packages alone:
# debootstrap a minimal bookworm (python3, python3-venv, ca-certificates) and
# `docker import` it. This is what CI uses here (no image registry is reachable)
# and what an air-gapped site with a Debian mirror needs.
#
#   scripts/build-base-image.sh                 # amd64 -> splitdnn-base:bookworm
#   scripts/build-base-image.sh --arch arm64    # arm64 -> splitdnn-base:bookworm-arm64 (qemu)
#   scripts/build-base-image.sh --force         # rebuild even if the tag exists
#
# Environment: DEBIAN_MIRROR (default: this machine's own apt source for bookworm, read by
# scripts/package-sources.py; no mirror is written in this repository), WORKDIR (scratch
# space, default a temp dir). Needs root, debootstrap and docker; the arm64 build on an
# amd64 host also needs qemu-user-static and binfmt-support (installed when missing).
# Then build the images with:  --build-arg BASE_IMAGE=splitdnn-base:bookworm
set -euo pipefail

ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
TAG=""
FORCE=0
SUITE=bookworm
HERE="$(cd "$(dirname "$0")" && pwd)"

while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

HOST_ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
if [ -z "$TAG" ]; then
  if [ "$ARCH" = "$HOST_ARCH" ]; then TAG="splitdnn-base:$SUITE"; else TAG="splitdnn-base:$SUITE-$ARCH"; fi
fi

log() { echo "[build-base-image] $*"; }

if [ "$FORCE" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  log "$TAG already exists (use --force to rebuild)"
  exit 0
fi

need_pkgs=()
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
if [ "$ARCH" != "$HOST_ARCH" ]; then
  [ -x /usr/bin/qemu-aarch64-static ] || need_pkgs+=(qemu-user-static binfmt-support)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}"
fi

MIRROR="$(python3 "$HERE/package-sources.py" apt-mirror "$SUITE")" || exit 1
SECURITY="$(python3 "$HERE/package-sources.py" apt-security "$SUITE" || true)"

WORK="${WORKDIR:-$(mktemp -d /var/tmp/splitdnn-base.XXXXXX)}"
ROOTFS="$WORK/rootfs"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$ROOTFS"

INCLUDE=python3,python3-venv,ca-certificates,tzdata
if [ "$ARCH" = "$HOST_ARCH" ]; then
  log "debootstrap $SUITE ($ARCH) from $MIRROR"
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR"
else
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    log "mounting binfmt_misc"
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  update-binfmts --enable >/dev/null 2>&1 || true
  QEMU="/usr/bin/qemu-$( [ "$ARCH" = arm64 ] && echo aarch64 || echo "$ARCH")-static"
  log "debootstrap --foreign $SUITE ($ARCH) from $MIRROR, second stage under $QEMU"
  debootstrap --variant=minbase --foreign --arch="$ARCH" --include="$INCLUDE" \
    "$SUITE" "$ROOTFS" "$MIRROR"
  cp "$QEMU" "$ROOTFS/usr/bin/"
  chroot "$ROOTFS" /debootstrap/debootstrap --second-stage
  rm -f "$ROOTFS/usr/bin/$(basename "$QEMU")"
fi

log "slimming the root filesystem"
cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
SOURCES
if [ -n "$SECURITY" ]; then
  echo "deb $SECURITY $SUITE-security main" >> "$ROOTFS/etc/apt/sources.list"
fi
chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get clean || true
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/tmp/* "$ROOTFS"/debootstrap
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
# /usr/bin/python, as the official image has it.
ln -sf python3 "$ROOTFS/usr/bin/python"

log "docker load -> $TAG (linux/$ARCH)"
# Not `docker import`: engines before 23 record their own architecture there.
tar --numeric-owner -C "$ROOTFS" -c . | python3 "$HERE/rootfs-image.py" \
  --tag "$TAG" --arch "$ARCH" \
  --env LANG=C.UTF-8 \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --cmd python3 \
  --comment "debootstrap $SUITE $ARCH (python3, python3-venv, ca-certificates)" \
  | docker load
docker run --rm --platform "linux/$ARCH" "$TAG" python3 -c \
  'import platform, ssl, venv; print("base ok:", platform.machine(), platform.python_version())'
docker image ls "$TAG"
