#!/usr/bin/env bash
# Install, with apt-get, the system commands that scripts/system-tools.txt lists for one
# installer, where any of them is missing. Idempotent; says what it does.
#   bash scripts/system-tools.sh test      # scripts/test.sh, before pytest
#   bash scripts/system-tools.sh docker    # scripts/ci-docker-setup.sh
# Exits 1 naming the packages when they are missing and cannot be installed (not root, no
# apt-get, the install failed): the tests that need them then skip and name the package
# (benchmarks/system_tools.py reads the same list).
set -uo pipefail
cd "$(dirname "$0")/.."
who=${1:?usage: bash scripts/system-tools.sh test|docker|opt-in}
log() { echo "[system-tools] $*"; }

missing_packages() {
  awk -v who="$who" '!/^[[:space:]]*#/ && NF >= 3 && $3 == who { print $1, $2 }' \
    scripts/system-tools.txt |
    while read -r tool package; do
      command -v "$tool" >/dev/null 2>&1 || echo "$package"
    done | sort -u
}

mapfile -t packages < <(missing_packages)
if [ ${#packages[@]} -eq 0 ]; then
  log "$who: every listed command is installed"
  exit 0
fi
[ "$(id -u)" = 0 ] || { log "not root: cannot install ${packages[*]}"; exit 1; }
command -v apt-get >/dev/null 2>&1 || { log "no apt-get to install ${packages[*]}"; exit 1; }
log "apt-get install ${packages[*]}"
if ! { apt-get update -q >/dev/null &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
         "${packages[@]}" >/dev/null; }; then
  log "apt-get install ${packages[*]} failed"
  exit 1
fi
mapfile -t packages < <(missing_packages)
if [ ${#packages[@]} -gt 0 ]; then
  log "installed, but still not on PATH ($PATH): ${packages[*]}"
  exit 1
fi
log "$who: every listed command is installed"
