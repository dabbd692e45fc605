"""A three-class photo folder and a fake split run, for the export, classes and rate tests
(import as ``from export_helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

TEACHER = "efficientnet_lite0"
BOTTLENECK = 6
CLASSES = ["cat", "cat_bw", "cat_flipped"]


def write_images(root: Path) -> None:
    """A three-class Caltech-style folder (list file of class/file.jpg) from one real photo."""
    from PIL import Image, ImageOps
    from skimage import data

    photo = Image.fromarray(data.chelsea())
    variants = {
        "cat": photo,
        "cat_bw": ImageOps.grayscale(photo).convert("RGB"),
        "cat_flipped": ImageOps.mirror(photo),
    }
    lines = []
    for name, image in variants.items():
        (root / "images" / name).mkdir(parents=True)
        for i, crop in enumerate([(0, 0, 451, 300), (40, 10, 420, 290)]):
            image.crop(crop).save(root / "images" / name / f"image_{i:04d}.jpg", quality=90)
            lines.append(f"{name}/image_{i:04d}.jpg")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def fake_run(run_dir: Path, data_root: Path) -> dict:
    """A best.pt as the trainer writes it, with a random student and probe."""
    from splitdnn.distill.config import parse_config
    from splitdnn.students import build_student

    torch.manual_seed(0)
    student = build_student(TEACHER, BOTTLENECK).to(memory_format=torch.channels_last)
    probe = nn.Linear(1280, len(CLASSES))
    config = parse_config(
        {
            "teacher": {"name": TEACHER, "classifier": "probe"},
            "student": {"bottleneck": BOTTLENECK},
            "data": {"root": str(data_root), "list": "train.txt", "val_fraction": 0.5},
            "seed": 3,
        }
    )
    payload = {
        "kind": "splitdnn-student",
        "teacher": TEACHER,
        "split_module": "_blocks.7",
        "bottleneck": BOTTLENECK,
        "variant": "caltech101",
        "student": student.state_dict(),
        "classifier": probe.state_dict(),
        "classes": CLASSES,
        "metrics": {"epoch": 1, "mimic_top1": 33.3},
        "config": config.model_dump(mode="json"),
    }
    run_dir.mkdir(parents=True)
    torch.save(payload, run_dir / "best.pt")
    return payload
