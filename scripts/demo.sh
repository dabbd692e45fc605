#!/usr/bin/env bash
# The main job without Docker, on the embedded default model:
#   1. a venv with splitdnn (train extra: the default bundle is exported from committed weights),
#   2. `splitdnn export default` into splitdnn/assets/default-bundle (again after a change),
#   3. tail and device (gateway + head in one process) on 127.0.0.1 (`splitdnn serve all`),
#   4. examples/cat.jpg classified in local, offload, split and auto mode, answers printed,
#   5. the services stopped again.
# Keep them running instead with: splitdnn serve all
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[train,serve]"

BUNDLE=splitdnn/assets/default-bundle
# Exported again when the code or the committed assets changed since (after a pull): a kept
# bundle would serve the old weights and wire settings.
if [ ! -f "$BUNDLE/manifest.json" ] \
  || [ -n "$(find splitdnn -path "$BUNDLE" -prune -o -type f -newer "$BUNDLE/manifest.json" \
               \( -name '*.py' -o -path 'splitdnn/assets/default/*' \) -print -quit)" ]; then
  echo "==> exporting the default bundle to $BUNDLE"
  splitdnn export default --out "$BUNDLE"
fi

echo "==> starting tail :8001, device (gateway + head) :8000"
splitdnn serve all --bundle "$BUNDLE" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
python - <<'PY'
import json, sys, time
import httpx

deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        if httpx.get("http://127.0.0.1:8000/v2/health/ready", timeout=2).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(1)
else:
    sys.exit("the services did not become ready within 300 s")

image = open("examples/cat.jpg", "rb").read()
for task in ("imagenet", "caltech101"):
    for mode in ("local", "offload", "split", "auto"):
        r = httpx.post(
            f"http://127.0.0.1:8000/classify?mode={mode}&task={task}",
            files={"image": ("cat.jpg", image, "image/jpeg")},
            timeout=60,
        )
        body = r.json()
        if r.status_code != 200:
            print(f"{task:10} {mode:7} -> HTTP {r.status_code}: {json.dumps(body)}")
            continue
        best = body["top_k"][0]
        t = body["timings_ms"]
        print(
            f"{task:10} {mode:7} -> {best['label']!r} ({best['score']:.3f}), mode used "
            f"{body['mode']}, {body['bytes_sent']} bytes sent, total {t['total']:.1f} ms"
        )
print("\nOne full answer (split):")
r = httpx.post("http://127.0.0.1:8000/classify?mode=split",
               files={"image": ("cat.jpg", image, "image/jpeg")}, timeout=60)
print(json.dumps(r.json(), indent=2))
PY
