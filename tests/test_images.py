"""The shared image decoder: pixel budget from the header, EXIF orientation, every mode to RGB."""

from __future__ import annotations

import io
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from agrnet.images import DEFAULT_MAX_PIXELS, ImageError, PixelBudgetError, decode_image, image_size


def _png_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` grey pixels with (almost) no data: a header-level bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("L", (13000, 13000)).save(path, optimize=False)
    return path


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns at open; we refuse
def test_pixel_bomb_is_refused_from_the_header_quickly_and_without_allocating(bomb: Path) -> None:
    assert bomb.stat().st_size < 1_000_000  # a few hundred KB on disk, 169 megapixels declared
    assert image_size(bomb) == (13000, 13000)
    rss_before, start = _max_rss_bytes(), time.perf_counter()
    with pytest.raises(PixelBudgetError) as caught:
        decode_image(bomb)
    elapsed, growth = time.perf_counter() - start, _max_rss_bytes() - rss_before
    assert elapsed < 2.0
    assert growth < 64 * 2**20  # decoding would need 169 MB grey + 507 MB RGB
    message = str(caught.value)
    assert message.startswith(f"{bomb}: 13000×13000 = 169000000 pixels exceeds the pixel budget")
    assert f"max_pixels={DEFAULT_MAX_PIXELS}" in message and "downscale the image or raise the limit" in message
    assert "\n" not in message


def test_budget_is_configurable_and_names_the_source() -> None:
    data = _png_bytes(Image.new("RGB", (40, 30)))
    assert decode_image(data, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ImageError, match=r"^photo\.png: 40×30 = 1200 pixels exceeds the pixel budget of 1199"):
        decode_image(data, max_pixels=1199, name="photo.png")


def test_pillow_decompression_bomb_error_becomes_the_budget_line() -> None:
    data = _png_header_only(20000, 20000)  # over 2 x Pillow's MAX_IMAGE_PIXELS: Pillow refuses at open
    budget_line = r"^upload: 400000000 pixels exceeds the pixel budget of \d+ .*raise the limit"
    with pytest.raises(PixelBudgetError, match=budget_line):
        decode_image(data, max_pixels=10**10)


@pytest.mark.parametrize("size", [(32767, 1), (1, 40000)])
def test_sides_opencv_cannot_take_are_refused(size: tuple[int, int]) -> None:
    with pytest.raises(PixelBudgetError, match="side over 32766 pixels"):
        decode_image(_png_header_only(*size), max_pixels=10**10)


def test_exif_orientation_is_applied() -> None:
    stored = np.zeros((30, 40, 3), dtype=np.uint8)
    stored[0, 0] = (255, 0, 0)  # stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    upright = decode_image(_png_bytes(Image.fromarray(stored), exif=exif))
    assert upright.shape == (40, 30, 3)
    assert tuple(upright[0, 29]) == (255, 0, 0)  # now at the top-right
    assert upright.sum() == 255


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_max_side_shrinks_after_orientation(fmt: str) -> None:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (1600, 900), (200, 100, 50)).save(buffer, format=fmt, exif=exif)
    shrunk = decode_image(buffer.getvalue(), max_side=400)
    assert shrunk.shape == (400, 225, 3)
    assert np.abs(shrunk.astype(int) - (200, 100, 50)).max() <= 3
    assert decode_image(buffer.getvalue(), max_side=5000).shape == (1600, 900, 3)


def test_messages_for_empty_unknown_missing_and_truncated(tmp_path: Path) -> None:
    empty, text, truncated = tmp_path / "empty.png", tmp_path / "notes.png", tmp_path / "cut.png"
    empty.write_bytes(b"")
    text.write_bytes(b"not an image at all")
    full = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match=r"empty\.png: cannot read image \(empty file\); remove or replace"):
        decode_image(empty)
    with pytest.raises(ImageError, match=r"notes\.png: cannot read image \(unknown format\)"):
        decode_image(text)
    with pytest.raises(ImageError, match=r"cut\.png: cannot read image \(.*truncated"):
        decode_image(truncated)
    with pytest.raises(ImageError, match="missing.png: no such file"):
        decode_image(tmp_path / "missing.png")


def test_sixteen_bit_grey_is_scaled_to_eight_bits() -> None:
    grey = np.array([[0, 257, 65535]], dtype=np.uint16)
    decoded = decode_image(_png_bytes(Image.fromarray(grey)))
    assert decoded.shape == (1, 3, 3) and decoded[0, :, 0].tolist() == [0, 1, 255]


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 24), st.integers(1, 24), st.sampled_from([1, 3, 4])),
    )
)
def test_png_round_trip(array: np.ndarray) -> None:
    image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    decoded = decode_image(_png_bytes(image))
    expected = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3]
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400))
def test_any_bytes_decode_or_raise_image_error(garbage: bytes, cut: int) -> None:
    valid = _png_bytes(Image.new("RGB", (8, 8), (10, 20, 30)))
    for data in (garbage, valid[:cut], valid[:cut] + garbage):
        try:
            decoded = decode_image(data)
        except ImageError as error:
            assert "\n" not in str(error)
        else:
            assert decoded.ndim == 3 and decoded.shape[2] == 3 and decoded.dtype == np.uint8
