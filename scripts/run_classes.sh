#!/bin/sh
# Issue #14 item 2: the application-specific student and its general control of the same size,
# one after the other (a shared machine: one thread each, niced), then the evaluation.
# Resumable: run again after an interruption.
set -e
cd "$(dirname "$0")/.."
splitdnn() { "${PYTHON:-python}" -m splitdnn.cli "$@"; }
resume() { if [ -f "$1/last.pt" ]; then echo --resume; fi; }
splitdnn distill configs/classes/lite0-112-caltech101-5.yaml --run-dir runs/classes-5 $(resume runs/classes-5)
mkdir -p runs/classes-general/cache
cp -n runs/classes-5/cache/efficientnet_lite0-*efficientnet_lite0_112_tail-*.npy runs/classes-general/cache/ 2>/dev/null || true
splitdnn distill configs/classes/lite0-112-caltech101-general.yaml --run-dir runs/classes-general $(resume runs/classes-general)
