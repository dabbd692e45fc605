#!/usr/bin/env bash
# Reproduce the NoNN figures (issue #14): K = 2 and the K = 1 control on one shared cache,
# then the held-out figures. Resumable: rerun after a kill and each run continues.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
for k in 2 1; do
  if [ -e "runs/nonn-k$k/last.pt" ]; then resume=--resume; else resume=--force; fi
  nice -n 5 $PY -m splitdnn.cli distill "configs/nonn/lite2-caltech101-k$k.yaml" \
    --run-dir "runs/nonn-k$k" $resume --quiet
done
