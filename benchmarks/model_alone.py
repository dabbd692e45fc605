"""A bundle's whole-image models timed alone, as the device would run them: the teacher
(``offload``) and the local model, one photo at a time, in the process's own CPU share.

The NoNN latency benchmark (issue #24) sets its members beside the teacher and the local model
on the same device profile. The teacher never runs on the device in any mode, so its time
there is measured here: started inside a profile's cgroup (``CpuGroup.wrap``), the runners
size their ONNX Runtime threads to the quota as a served model does
(:class:`splitdnn.runtime.ImageClassifier`, threads auto), each photo is decoded and cropped
for each model outside the clock, and the roles alternate per photo, so a burst of other load
hits both alike. Prints JSON: per role the model's milliseconds per photo and its thread plan.

    python -m benchmarks.model_alone BUNDLE PHOTO [PHOTO ...] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from splitdnn.bundle import load_bundle
from splitdnn.runtime import ImageClassifier, warm_up

ROLES = ("offload", "local")


def time_models(bundle_dir: Path, photos: list[Path], warmup: int = 2) -> dict[str, Any]:
    """Per role, the model's time for each photo (ms, preprocessing excluded)."""
    bundle = load_bundle(bundle_dir)
    models = {role: ImageClassifier(bundle, role) for role in ROLES}
    inputs = {role: [m.preprocess(p.read_bytes()) for p in photos] for role, m in models.items()}
    times: dict[str, list[float]] = {role: [] for role in ROLES}
    for role, model in models.items():
        warm_up(model.run, inputs[role][0], warmup)
    for i in range(len(photos)):
        for role, model in models.items():
            start = time.perf_counter()
            model.run(inputs[role][i])
            times[role].append(round((time.perf_counter() - start) * 1e3, 3))
    return {
        role: {"model_ms": times[role], "threads": models[role].model.threads.describe()}
        for role in ROLES
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(time_models(args.bundle, args.photos, args.warmup)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
