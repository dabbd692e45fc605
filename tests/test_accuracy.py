"""EfficientNet-Lite0 with the library's preprocessing scores as published on the ImageNet
sample (88 % on these 1,000 easy images): a wrong resize, crop or normalisation costs points
long before it breaks any shape test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.data

DATA = Path(
    os.environ.get("SPLITDNN_DATA", Path(__file__).resolve().parents[1].parent / "shared/data")
)
SAMPLE = DATA / "imagenet-sample"


@pytest.mark.skipif(
    not (SAMPLE / "labels.csv").is_file(),
    reason=f"{SAMPLE} is absent (set SPLITDNN_DATA to the folder holding imagenet-sample/)",
)
def test_lite0_top1_on_the_imagenet_sample() -> None:
    from splitdnn.data import load_crops, load_dataset
    from splitdnn.models import get_teacher
    from splitdnn.teacher import normalise_batch

    spec = get_teacher("efficientnet_lite0")
    model = spec.build(True)
    dataset = load_dataset(SAMPLE)
    assert len(dataset) == 1000 and dataset.label_space == "imagenet"
    hits = 0
    with torch.no_grad():
        for i in range(0, len(dataset), 50):
            chunk = dataset.samples[i : i + 50]
            x = normalise_batch(load_crops(chunk, spec.preprocessing), spec.preprocessing)
            predicted = model(x).argmax(1).numpy()
            hits += int(np.sum(predicted == np.array([s.label for s in chunk])))
    top1 = 100.0 * hits / len(dataset)
    print(f"EfficientNet-Lite0 top-1 on the ImageNet sample: {top1:.1f} %")
    assert top1 >= 87.0
