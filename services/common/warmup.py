"""A synthetic photo for warm-up runs, so the first real request does not pay for it."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=1)
def warmup_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A noisy gradient JPEG of camera-like size (decode cost included in warm-up times)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.clip(ramp + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def time_ms(run: Callable[[], object], repeats: int = 3) -> float:
    """Best of ``repeats`` runs in milliseconds; the first run pays for lazy allocation."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000.0
