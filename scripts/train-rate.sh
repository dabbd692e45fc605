#!/usr/bin/env bash
# The rate ladder: entropy-coded bottleneck students at three rate weights, one after the
# other (one run at a time on a shared 2-core machine): beta 1e-4 for four epochs from the
# committed default student, then 3e-5 (more bytes) and 3e-4 (fewer), each one epoch from the first
# (configs/rate/lite2-rate-b*.yaml say how). Every run is resumable: run
# this script again and each finished run is skipped, an interrupted one continues from its
# last.pt. The runs share one cache of crops and teacher outputs (same images, same key):
# the first run builds it (~30 min on 2 free cores), the others link to it.
#   bash scripts/train-rate.sh                       # the whole ladder, beta 1e-4 first
#   RATE_BETAS="1e-4" bash scripts/train-rate.sh     # one rung
# Logs: runs/rate/lite2-rate-b<beta>/train.log. Needs ../shared/data/caltech101,
# ../shared/data/unlabelled-photos and ../shared/data/imagenet-sample; run inside the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
BETAS=${RATE_BETAS:-"1e-4 3e-5 3e-4"}
NICE=${RATE_NICE:-19}
RUNS=runs/rate
mkdir -p "$RUNS"
FIRST=lite2-rate-b1e-4   # the first rung: it builds the cache, the others start from it
for beta in $BETAS; do
  name="lite2-rate-b$beta"
  run="$RUNS/$name"
  mkdir -p "$run"
  if [ "$name" != "$FIRST" ] && [ ! -e "$run/cache" ]; then
    ln -s "../$FIRST/cache" "$run/cache"   # same images and teacher: one cache
  fi
  resume=()
  [ -f "$run/last.pt" ] && resume=(--resume)
  echo "== $name $(date -u +%FT%TZ)" | tee -a "$run/train.log"
  nice -n "$NICE" splitdnn distill "configs/rate/$name.yaml" --run-dir "$run" "${resume[@]}" \
    >>"$run/train.log" 2>&1
done
