#!/usr/bin/env bash
# Start a Docker engine in the background if none answers, and wait for its socket.
# Idempotent: exits 0 at once when `docker info` already works. Exits 1 when no engine
# can be started here (no dockerd, not root, the daemon dies); the log says why.
#
#   scripts/start-dockerd.sh            # wait up to 60 s
#   DOCKERD_WAIT=120 scripts/start-dockerd.sh
#
# The daemon's log: ${DOCKERD_LOG:-/var/log/splitdnn-dockerd.log}.
set -uo pipefail

WAIT="${DOCKERD_WAIT:-60}"
LOG="${DOCKERD_LOG:-/var/log/splitdnn-dockerd.log}"
log() { echo "[start-dockerd] $*"; }

if docker info >/dev/null 2>&1; then
  log "a Docker engine is already running"
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  log "dockerd is not installed (apt-get install docker.io)"
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  log "not root: cannot start dockerd"
  exit 1
fi

# cgroup v1 hosts without the hierarchy mounted (some containers, minimal VMs).
if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ -z "$(ls -A /sys/fs/cgroup 2>/dev/null)" ] \
    && command -v cgroupfs-mount >/dev/null 2>&1; then
  log "mounting the cgroup hierarchy"
  cgroupfs-mount || true
fi

start() {
  log "starting dockerd $* (log: $LOG)"
  # setsid: the daemon outlives this script and the shell that ran it.
  setsid nohup dockerd "$@" >>"$LOG" 2>&1 < /dev/null &
  local pid=$!
  for _ in $(seq "$WAIT"); do
    if docker info >/dev/null 2>&1; then
      log "engine ready: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "dockerd exited; last lines of $LOG:"
      tail -n 5 "$LOG" | sed 's/^/    /'
      return 1
    fi
    sleep 1
  done
  log "no engine after ${WAIT}s; stopping dockerd $pid"
  kill "$pid" 2>/dev/null
  return 1
}

# A stale pid file from a killed daemon blocks a new one.
for pidfile in /var/run/docker.pid /run/docker.pid; do
  if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    rm -f "$pidfile"
  fi
done

start && exit 0
# Second try for kernels without the bridge/iptables support: the stack and the builds
# use host networking only, so no bridge is needed.
start --iptables=false --bridge=none && exit 0
exit 1
