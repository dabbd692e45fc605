#!/usr/bin/env bash
# Reproduce the NoNN figures (issue #14): K = 2 and the K = 1 control on one shared cache.
#   scripts/train_nonn.sh [K ...]      (default: 2 1)
# Resumable: rerun after a kill and each run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
ks=("$@"); [ ${#ks[@]} -eq 0 ] && ks=(2 1)
for k in "${ks[@]}"; do
  if [ -e "runs/nonn-k$k/last.pt" ]; then resume=--resume; else resume=--force; fi
  nice -n 5 $PY -m splitdnn.cli distill "configs/nonn/lite2-caltech101-k$k.yaml" \
    --run-dir "runs/nonn-k$k" $resume --quiet
done
