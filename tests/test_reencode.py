"""Fair offload: the re-encoded photo shows the edge the same view, in fewer bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from splitdnn import reencode
from splitdnn.errors import ConfigError
from splitdnn.imaging import Preprocessing, decode_image, preprocess

SPEC = Preprocessing(size=64, resize=72)


def photo(width: int = 400, height: int = 300) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", reencode.FORMATS)
def test_reencoded_image_is_the_resize_square_and_smaller(fmt: str) -> None:
    raw = photo()
    data = reencode.reencode(raw, SPEC, reencode.Reencoding(fmt, 90))
    image = decode_image(data)
    assert image.size == (SPEC.resize, SPEC.resize)
    assert len(data) < len(raw)


def test_the_edge_sees_nearly_the_same_pixels_as_from_the_original() -> None:
    raw = photo()
    direct = preprocess(decode_image(raw), SPEC)
    via = preprocess(
        decode_image(reencode.reencode(raw, SPEC, reencode.Reencoding("webp", 95))), SPEC
    )
    assert direct.shape == via.shape
    assert np.abs(direct - via).mean() < 0.05  # normalised units (pixel/128)


def test_choice_round_trips_beside_a_bundle(tmp_path) -> None:
    assert reencode.load_choice(tmp_path) is None
    setting = reencode.Reencoding("webp", 95, top1=88.8, raw_top1=89.2, images=300)
    reencode.save_choice(tmp_path, setting)
    assert reencode.load_choice(tmp_path) == setting


def test_parse_and_bad_settings() -> None:
    assert reencode.parse("webp:95") == reencode.Reencoding("webp", 95)
    assert reencode.parse("JPEG:q85") == reencode.Reencoding("jpeg", 85)
    with pytest.raises(ConfigError):
        reencode.parse("gif:50")
    with pytest.raises(ConfigError):
        reencode.Reencoding("jpeg", 0)


def test_a_photo_already_near_the_input_size_is_not_worth_reencoding() -> None:
    assert reencode.worth_it(photo(400, 300), SPEC)  # short side 300 > 1.25 x 72
    assert not reencode.worth_it(photo(100, 80), SPEC)  # short side 80 <= 90
    png = io.BytesIO()
    Image.new("RGB", (80, 80)).save(png, "PNG")
    assert reencode.worth_it(png.getvalue(), SPEC)  # lossless formats are always re-encoded
    assert reencode.worth_it(b"not an image", SPEC)
