"""Fair offload: the head re-encodes the photo at the teacher's input size when told to."""

from __future__ import annotations

import io

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import FakeTail, infer
from PIL import Image

from services.head.app import create_app
from services.head.settings import HeadSettings
from splitdnn import reencode
from splitdnn.bundle import load_bundle


@pytest.fixture
def bundle(toy_bundle_dir):
    return load_bundle(toy_bundle_dir)


def _head(bundle_dir, tail: FakeTail, setting: str) -> TestClient:
    settings = HeadSettings(bundle=bundle_dir, tail_url="http://tail.test",
                            load_in_background=False, offload_reencode=setting)  # fmt: skip
    return TestClient(create_app(settings, httpx.MockTransport(tail)))


def test_offload_sends_a_webp_at_the_input_view_when_set(toy_bundle_dir, bundle, cat_jpeg):
    tail = FakeTail(bundle)
    with _head(toy_bundle_dir, tail, "webp:90") as head:
        answer = infer(head, "offload", cat_jpeg).json()
        sent = tail.last("POST").content
        image = Image.open(io.BytesIO(sent))
        assert image.format == "WEBP"
        side = bundle.preprocessing.resize
        assert image.size == (side, side)
        assert answer["bytes_sent"] == len(sent) < len(cat_jpeg)
        assert answer["timings_ms"]["head"] > 0  # the re-encode is device time
        raw = infer(head, "offload", cat_jpeg, reencode="false").json()
        assert raw["bytes_sent"] == len(cat_jpeg) == len(tail.last("POST").content)


def test_the_measured_choice_beside_the_bundle_is_the_default(tmp_path, toy_bundle_dir, bundle,
                                                              cat_jpeg):  # fmt: skip
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(toy_bundle_dir, copy)
    reencode.save_choice(copy, reencode.Reencoding("jpeg", 80))
    tail = FakeTail(bundle)
    with _head(copy, tail, "bundle") as head:
        infer(head, "offload", cat_jpeg)
        assert Image.open(io.BytesIO(tail.last("POST").content)).format == "JPEG"
    with _head(copy, tail, "none") as head:
        infer(head, "offload", cat_jpeg)
        assert tail.last("POST").content == cat_jpeg
