"""Inputs the benchmarks and the tests both use: a PNG header that declares any size, the
cat photo as JPEG, a free port on 127.0.0.1. The tests import them from here (a benchmark
never imports a test module), so a hostile case and the test that pins its answer send the
same bytes.
"""

from __future__ import annotations

import io
import socket
import struct
import zlib


def png_declaring(width: int, height: int, pixels: bool = False) -> bytes:
    """A PNG whose header declares ``width`` x ``height``: with 64 bytes of data (a bomb's
    header), or with every (black) pixel when ``pixels`` (a real, decodable image)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes((1 + 3 * width) * height if pixels else 64)))
        + chunk(b"IEND", b"")
    )


def cat_jpeg() -> bytes:
    """A real photo: scikit-image's Chelsea the cat (451x300), as JPEG bytes (quality 90)."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
