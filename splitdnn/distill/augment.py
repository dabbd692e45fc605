"""Training-time views of the cached crops, drawn from a seeded generator: random resized
crops and mixed pairs of images.

The cached crops are the centre crops inference sees; a random resized crop (torchvision's
``RandomResizedCrop``: a box of ``min_scale``..1 of the area, aspect ``1/max_aspect`` ..
``max_aspect``, resized back to the crop's size) shows the student objects at other scales
and positions. Boxes come from a numpy ``Generator`` the trainer seeds with
``(seed, epoch, step)``, not torch's global RNG, so a run resumed mid-epoch draws the same
boxes it would have drawn without the interruption.

Resizing uses torch alone (bilinear with antialias, what torchvision's ``resized_crop`` does
on tensors): the bundle-export image has torch but no torchvision and imports the trainer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F


def random_box(
    height: int, width: int, rng: np.random.Generator, min_scale: float, max_aspect: float
) -> tuple[int, int, int, int]:
    """``(top, left, box_height, box_width)`` inside a ``height`` × ``width`` image."""
    area = height * width
    log_ratio = (-math.log(max_aspect), math.log(max_aspect))
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return 0, 0, height, width  # as torchvision falls back: the whole image


def random_resized_crops(
    x: torch.Tensor,
    rng: np.random.Generator,
    min_scale: float,
    max_aspect: float,
    flip: np.ndarray | None = None,
) -> torch.Tensor:
    """One random resized crop of every image of an NCHW batch (same size out), then a
    horizontal flip of the rows where ``flip`` is true."""
    n, _, height, width = x.shape
    views = []
    for i in range(n):
        top, left, h, w = random_box(height, width, rng, min_scale, max_aspect)
        box = x[i : i + 1, :, top : top + h, left : left + w]
        view = F.interpolate(
            box, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if flip is not None and flip[i]:
            view = view.flip(2)
        views.append(view)
    return torch.stack(views).contiguous(memory_format=torch.channels_last)


def mix_pairs(
    x: torch.Tensor,
    partner: torch.Tensor,
    rng: np.random.Generator,
    mode: str,
    alpha: float,
) -> torch.Tensor:
    """Each image of an NCHW batch mixed with the same row of ``partner``: ``mixup`` blends
    the two with a Beta(alpha, alpha) weight, ``cutmix`` pastes a box of the partner whose
    area share is 1 - weight (Zhang et al. 2018; Yun et al. 2019)."""
    out = x.clone()
    n, _, height, width = x.shape
    for i in range(n):
        weight = float(rng.beta(alpha, alpha))
        if mode == "mixup":
            out[i] = weight * x[i] + (1.0 - weight) * partner[i]
            continue
        box_h, box_w = round(height * math.sqrt(1 - weight)), round(width * math.sqrt(1 - weight))
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, left = max(cy - box_h // 2, 0), max(cx - box_w // 2, 0)
        bottom, right = min(top + box_h, height), min(left + box_w, width)
        out[i, :, top:bottom, left:right] = partner[i, :, top:bottom, left:right]
    return out.contiguous(memory_format=torch.channels_last)
