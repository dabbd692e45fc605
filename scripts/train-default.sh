#!/usr/bin/env bash
# Retrain the embedded default from scratch on this machine's CPU (about 3.5 hours on 2 cores)
# and write its assets (splitdnn/assets/default) and bundle, then score the bundle:
#   stage 1  configs/lite2-caltech101.yaml         SSE on the teacher head output
#   stage 2  configs/lite2-caltech101-stage2.yaml  + pooled-feature term (half of each batch)
#   stage 3  configs/lite2-caltech101-stage3.yaml  + horizontal flips
#   stage 4  configs/lite2-caltech101-stage4.yaml  pooled-feature term on all images, x4
#   stage 5  configs/lite2-caltech101-stage5.yaml  + soft-target KL on the probe's logits
#   stage 7  configs/lite2-stage7-both-tasks.yaml  + unlabelled photos, + the ImageNet
#            classifier's soft targets (stage 6, configs/lite2-stage6-both-tasks.yaml, was
#            measured and not adopted)
# Every stage starts from the previous stage's best.pt (train.init_from) and keeps stage 1's
# Caltech-101 probe as its teacher (teacher.probe_from); each is resumable
# with `splitdnn distill CONFIG --run-dir DIR --resume`. Needs ../shared/data/caltech101,
# ../shared/data/unlabelled-photos and ../shared/data/imagenet-sample.
# Run inside the venv that scripts/demo.sh or scripts/test.sh creates.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=splitdnn/assets/default
splitdnn distill configs/lite2-caltech101.yaml --run-dir runs/lite2-caltech101-stage1
for stage in 2 3 4 5; do
  splitdnn distill "configs/lite2-caltech101-stage$stage.yaml" \
    --run-dir "runs/lite2-caltech101-stage$stage"
done
splitdnn distill configs/lite2-stage7-both-tasks.yaml --run-dir runs/lite2-stage7
# The local-mode model's Caltech-101 probe (EfficientNet-Lite0, same training images).
splitdnn probe configs/lite2-caltech101.yaml --teacher efficientnet_lite0 \
  --out "$ASSETS/lite0_caltech101_probe" --cache-dir runs/lite0-features
splitdnn export assets runs/lite2-stage7 --out "$ASSETS" \
  --local-probe "caltech101=$ASSETS/lite0_caltech101_probe.safetensors"
splitdnn export default
python -m benchmarks.accuracy_by_mode evaluate splitdnn/assets/default-bundle --name default
