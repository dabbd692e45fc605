#!/bin/sh
# Rate-limit the device->edge link of the compose stack, then wait; undo it on stop.
#
# The stack uses host networking, so head, tail and gateway talk over the host's loopback
# and there is no per-container link to shape. This shapes what crosses the device->edge
# link instead: every packet to the tail's port (the uplink: bottleneck tensors in split
# mode, images in offload mode) and every packet from it (the downlink: the answers), each
# direction at LINK_RATE. Other loopback traffic is not touched.
#
#   LINK_RATE   tc rate, e.g. 10mbit, 1mbit, 500kbit; empty: shape nothing (the default)
#   LINK_DELAY  one-way delay, e.g. 20ms; needs the kernel's netem qdisc (sch_netem)
#   LINK_PORT   the tail's port (8001)
#   LINK_DEV    the device to shape (lo)
#
# Qdiscs: root `htb default 0`, so unclassified packets pass unshaped; u32 filters put the
# tail's port in class 1 (up) and class 2 (down), whose leaf qdiscs do the shaping: `netem
# rate LINK_RATE delay LINK_DELAY` where the kernel has netem, else `tbf rate LINK_RATE`
# (then no delay). Loopback TCP segments are up to 64 KiB, which a token bucket lets through
# whole: an iptables TCPMSS rule clamps the MSS of connections to and from the tail's port
# to 1448 bytes, so tbf shapes 1.5 KB packets with a small burst (LINK_BURST, default the
# larger of 3000 bytes and 2 ms at LINK_RATE). Without iptables it warns and uses 96 KiB.
# Needs CAP_NET_ADMIN (compose: cap_add NET_ADMIN; the image gives tc that capability).
set -eu

DEV="${LINK_DEV:-lo}"
PORT="${LINK_PORT:-8001}"
RATE="${LINK_RATE:-}"
DELAY="${LINK_DELAY:-}"
BURST="${LINK_BURST:-}"
MSS=1448
STATE=/tmp/link-state

say() { echo "link: $*"; }

if [ "${1:-}" = --check ]; then  # the healthcheck: shaping in place, or none asked for
  read -r kind _ < "$STATE" || exit 1
  [ "$kind" = none ] || tc qdisc show dev "$DEV" root | grep -q '^qdisc htb 5ead:'
  exit
fi

wait_forever() {  # until TERM/INT; the EXIT trap, if any, cleans up
  trap 'say "stopping"; exit 0' TERM INT
  while :; do sleep 3600 & wait $! || true; done
}

ours() { tc qdisc show dev "$DEV" root | grep -q '^qdisc htb 5ead:'; }

mss_rules() {  # mss_rules -A|-D: the MSS clamp of connections to and from the tail's port
  for dir in --dport --sport; do
    iptables -w 5 -t mangle "$1" OUTPUT -o "$DEV" -p tcp "$dir" "$PORT" \
      --tcp-flags SYN,RST SYN -j TCPMSS --set-mss "$MSS" 2>/dev/null || return 1
  done
}

unshape() {
  if ours; then tc qdisc del dev "$DEV" root && say "removed the shaping on $DEV"; fi
  while mss_rules -D; do :; done
  rm -f "$STATE"
}

burst_for() {  # bytes: max(3000, 2 ms at the rate); rate like 10mbit, 500kbit, 1gbit, 2mbps
  echo "$1" | awk '{
    r = tolower($0); n = r + 0; u = r; sub(/^[0-9.]+/, "", u)
    m = 1
    if (u ~ /^k/) m = 1e3; else if (u ~ /^m/) m = 1e6; else if (u ~ /^g/) m = 1e9
    bytes = (u ~ /bps$/) ? n * m : n * m / 8
    b = bytes * 0.002; if (b < 3000) b = 3000
    printf "%d\n", b }'
}

leaf() {  # leaf PARENT HANDLE: the shaping qdisc of one direction
  if [ "$KIND" = netem ]; then
    tc qdisc add dev "$DEV" parent "$1" handle "$2" netem rate "$RATE" ${DELAY:+delay "$DELAY"} limit 10000
  else
    tc qdisc add dev "$DEV" parent "$1" handle "$2" tbf rate "$RATE" burst "$BURST" limit 1mb
  fi
}

if [ -z "$RATE" ]; then
  say "LINK_RATE is empty: the device->edge link is not shaped"
  echo none > "$STATE"
  wait_forever
fi

# A qdisc of ours left behind by a killed container is replaced; anyone else's is kept.
if ours; then unshape; fi
if tc qdisc show dev "$DEV" root | grep -q -v -E '^qdisc (noqueue|pfifo_fast|fq_codel|mq) '; then
  say "refusing: $DEV already has a root qdisc: $(tc qdisc show dev "$DEV" root)" >&2
  exit 1
fi

trap unshape EXIT  # also when a step below fails: leave the host's loopback as it was
if mss_rules -A; then
  [ -n "$BURST" ] || BURST="$(burst_for "$RATE")"
else
  while mss_rules -D; do :; done
  say "no iptables TCPMSS: requests under 64 KiB may pass unshaped" >&2
  [ -n "$BURST" ] || BURST=96kb
fi
tc qdisc add dev "$DEV" root handle 5ead: htb default 0
for class in 1 2; do  # the classes only classify: their leaves shape
  tc class add dev "$DEV" parent 5ead: classid "5ead:$class" htb rate 10gbit quantum 65536
done
KIND=netem
if ! tc qdisc add dev "$DEV" parent 5ead:1 handle 5eb1: netem rate "$RATE" ${DELAY:+delay "$DELAY"} limit 10000 2>/dev/null; then
  KIND=tbf
  [ -z "$DELAY" ] || say "this kernel has no netem qdisc: LINK_DELAY=$DELAY is not applied" >&2
  leaf 5ead:1 5eb1:
fi
leaf 5ead:2 5eb2:
for proto in ip ipv6; do
  match=ip prio=1; [ "$proto" = ipv6 ] && match=ip6 prio=2
  tc filter add dev "$DEV" parent 5ead: protocol "$proto" prio "$prio" u32 \
    match "$match" dport "$PORT" 0xffff flowid 5ead:1
  tc filter add dev "$DEV" parent 5ead: protocol "$proto" prio "$prio" u32 \
    match "$match" sport "$PORT" 0xffff flowid 5ead:2
done
echo "$KIND $RATE" > "$STATE"
[ "$KIND" = netem ] || DELAY=
say "shaping $DEV port $PORT at $RATE each way with $KIND${DELAY:+, delay $DELAY}"
tc qdisc show dev "$DEV"
wait_forever
