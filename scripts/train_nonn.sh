#!/usr/bin/env bash
# Reproduce the NoNN figures on one shared cache: K = 2 and the K = 1 control (issue #14), the
# members narrow from the stem (issue #24: 2-narrow, 4-narrow).
#   scripts/train_nonn.sh [K ...]      (default: 2 1; each names configs/nonn/lite2-caltech101-kK.yaml)
# Resumable: rerun after a kill and each run continues where it stopped. The log of each run is
# runs/nonn-kK/train.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
ks=("$@"); [ ${#ks[@]} -eq 0 ] && ks=(2 1)
for k in "${ks[@]}"; do
  if [ -e "runs/nonn-k$k/last.pt" ]; then resume=--resume; else resume=--force; fi
  mkdir -p "runs/nonn-k$k"
  nice -n 10 $PY -m splitdnn.cli distill "configs/nonn/lite2-caltech101-k$k.yaml" \
    --run-dir "runs/nonn-k$k" $resume --quiet >>"runs/nonn-k$k/train.log" 2>&1
done
