"""A fair offload: the device re-encodes the photo at the teacher's input size before sending.

The SC2 benchmark (Matsubara et al., 2022) found that most split-computing methods barely
beat offloading the image *re-encoded at the model's input size*; the raw upload (a 3-12 MP
camera JPEG) is a straw man. :func:`reencode` resizes the short side to the teacher's
``resize`` and centre-crops a ``resize`` square, so the edge's own preprocessing
(:func:`splitdnn.imaging.resize_and_crop`: short side to ``resize``, centre crop ``size``)
sees the same view as from the original, then writes JPEG or WebP at a given quality.

Which format and quality to use is measured, not guessed (``benchmarks/reencode_sweep.py``):
the lowest quality that keeps the teacher's top-1 within 0.5 points of the raw upload on
held-out images. The choice is stored beside the bundle as ``reencode.json``
(:data:`CHOICE_FILE`) and read by :func:`load_choice`. Only Pillow: the device needs no torch.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from splitdnn.errors import ConfigError
from splitdnn.imaging import MAX_PIXELS, Preprocessing, decode_image

#: Formats the edge decodes (Pillow names).
FORMATS: tuple[str, ...] = ("jpeg", "webp")
#: Where a measured choice sits inside a bundle directory.
CHOICE_FILE = "reencode.json"


@dataclass(frozen=True)
class Reencoding:
    """One re-encoding setting: format, quality, and what it measured (optional)."""

    format: str = "webp"
    quality: int = 95
    #: Teacher top-1 on held-out images, re-encoded and raw, and the image count (measured).
    top1: float | None = None
    raw_top1: float | None = None
    images: int | None = None
    median_bytes: int | None = None
    raw_median_bytes: int | None = None
    #: The teacher it was measured with: the choice holds for any student of that teacher.
    teacher: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"re-encoding format must be one of {FORMATS}, not {self.format!r}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"re-encoding quality must be in 1..100, not {self.quality}")

    @property
    def label(self) -> str:
        return f"{self.format}:q{self.quality}"

    def to_dict(self) -> dict:
        return asdict(self)


def fit_view(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Short side to ``spec.resize``, centre ``resize`` square (the edge crops ``size``)."""
    width, height = image.size
    scale = spec.resize / min(width, height)
    if scale < 1 or (width, height) != (spec.resize, spec.resize):
        new_w = max(spec.resize, round(width * scale))
        new_h = max(spec.resize, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - spec.resize) // 2, (new_h - spec.resize) // 2
        image = image.crop((left, top, left + spec.resize, top + spec.resize))
    return image


def reencode_image(image: Image.Image, spec: Preprocessing, setting: Reencoding) -> bytes:
    """A decoded RGB image -> bytes at the teacher's input view."""
    buffer = io.BytesIO()
    view = fit_view(image, spec)
    if setting.format == "webp":
        view.save(buffer, "WEBP", quality=setting.quality, method=0)
    else:
        view.save(buffer, "JPEG", quality=setting.quality, optimize=False)
    return buffer.getvalue()


def reencode(
    data: bytes, spec: Preprocessing, setting: Reencoding, max_pixels: int = MAX_PIXELS
) -> bytes:
    """Uploaded bytes -> bytes at the teacher's input view."""
    return reencode_image(decode_image(data, max_pixels), spec, setting)


def worth_it(data: bytes, spec: Preprocessing, margin: float = 1.25) -> bool:
    """False when the upload is already a JPEG or WebP near the input size (short side at
    most ``margin`` x ``resize``): re-encoding would cost the device a decode and an encode
    (~50 ms on a Pi-class CPU) to save a few kB. Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ("JPEG", "WEBP"):
                return True
            return min(image.size) > margin * spec.resize
    except Exception:  # let the decoder report what is wrong with it
        return True


def load_choice(bundle_dir: str | Path) -> Reencoding | None:
    """The measured choice stored beside a bundle, or None if it has none."""
    path = Path(bundle_dir) / CHOICE_FILE
    if not path.is_file():
        return None
    try:
        return Reencoding(**json.loads(path.read_text()))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a re-encoding choice: {exc}") from exc


def save_choice(bundle_dir: str | Path, setting: Reencoding) -> Path:
    path = Path(bundle_dir) / CHOICE_FILE
    path.write_text(json.dumps(setting.to_dict(), indent=2) + "\n")
    return path


def parse(text: str) -> Reencoding:
    """``"webp:95"`` or ``"jpeg:85"`` -> a :class:`Reencoding`."""
    fmt, _, quality = text.partition(":")
    try:
        return Reencoding(fmt.strip().lower(), int(quality.strip().lstrip("q") or 95))
    except ValueError as exc:
        raise ConfigError(f"re-encoding must look like 'webp:95', not {text!r}") from exc
