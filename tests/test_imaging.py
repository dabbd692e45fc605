"""Uploaded bytes -> input arrays, with one named error per kind of bad upload."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.inputs import png_declaring
from splitdnn.errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from splitdnn.imaging import Preprocessing, decode_image, load_input, normalise, preprocess


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_photo_becomes_a_normalised_nchw_batch(cat_jpeg: bytes) -> None:
    spec = Preprocessing(size=260, resize=292)
    x = load_input(cat_jpeg, spec)
    assert x.shape == (1, 3, 260, 260) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 128 / 128


def test_normalisation_uses_the_spec() -> None:
    image = Image.new("RGB", (4, 4), (127, 255, 0))
    x = normalise(image, Preprocessing(size=4, resize=4))
    np.testing.assert_allclose(x[:, 0, 0], [0.0, 1.0, -127 / 128])
    tv = Preprocessing.torchvision(224)
    assert tv.resize == 256 and tv.interpolation == "bilinear"
    y = normalise(image, tv)
    np.testing.assert_allclose(y[0, 0, 0], (127 / 255 - 0.485) / 0.229, rtol=1e-5)


def test_resize_then_centre_crop_keeps_the_short_side() -> None:
    wide = Image.new("RGB", (400, 100))
    assert preprocess(wide, Preprocessing(size=32, resize=40)).shape == (3, 32, 32)


def test_spec_round_trips_through_a_dict() -> None:
    spec = Preprocessing.torchvision(240)
    assert Preprocessing.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("data", [b"", b"hello world", b"%PDF-1.4 not an image"])
def test_non_images_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImageError):
        decode_image(data)


def test_truncated_jpeg_is_corrupt(cat_jpeg: bytes) -> None:
    with pytest.raises(CorruptImageError):
        decode_image(cat_jpeg[: len(cat_jpeg) // 2])


def test_too_many_pixels_is_too_large() -> None:
    data = encode(Image.new("RGB", (200, 200)))
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=100 * 100)


def test_grey_and_rgba_images_become_rgb() -> None:
    for mode in ("L", "RGBA", "P"):
        assert decode_image(encode(Image.new(mode, (8, 8)))).mode == "RGB"


# --- hostile uploads --------------------------------------------------------------------


@pytest.mark.parametrize("side", [20_000, 60_000])
def test_a_header_declaring_a_bomb_is_too_large_before_decoding(side: int) -> None:
    # 60000x60000 is above Pillow's own DecompressionBombError threshold (Image.open raises)
    with pytest.raises(ImageTooLargeError):
        decode_image(png_declaring(side, side))


def test_an_extreme_aspect_ratio_is_refused_not_resized() -> None:
    strip = encode(Image.new("RGB", (60_000, 1)))
    with pytest.raises(ImageTooLargeError, match="aspect"):
        load_input(strip, Preprocessing(size=260, resize=292))


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_only_jpeg_png_and_webp_decoders_are_reachable(fmt: str) -> None:
    with pytest.raises(UnsupportedImageError):
        decode_image(encode(Image.new("RGB", (16, 16)), fmt))


def test_webp_is_accepted() -> None:
    assert decode_image(encode(Image.new("RGB", (16, 8)), "WEBP")).size == (16, 8)
