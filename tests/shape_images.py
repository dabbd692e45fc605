"""Generated image data sets for training tests: random-colour shapes, one class per shape.

Real photos are not needed to test that training, resuming and caching work; these images
are tiny, deterministic for a seed, and let a pretrained backbone tell the classes apart.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


def make_shape_dataset(root: Path, per_class: int = 6, size: int = 64, seed: int = 0) -> Path:
    """Write ``root/<shape>/<i>.jpg`` (a class-folder layout) and return ``root``."""
    rng = random.Random(seed)
    for shape in SHAPES:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            background = tuple(rng.randrange(256) for _ in range(3))
            colour = tuple(255 - c for c in background)
            image = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(image)
            r = rng.randrange(size // 5, size // 3)
            cx, cy = rng.randrange(r, size - r), rng.randrange(r, size - r)
            box = (cx - r, cy - r, cx + r, cy + r)
            if shape == "circle":
                draw.ellipse(box, fill=colour)
            elif shape == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            image.save(folder / f"{i}.jpg", "JPEG", quality=90)
    return root
