"""One image decoder for every entry point (training reads, ``predict``, ``visualize``, ``serve``).

Photos are decoded the way a viewer shows them (EXIF orientation applied) into (H, W, 3) uint8 RGB,
after the pixel count has been checked from the header alone: a small file that declares a huge
canvas (a "pixel bomb", e.g. a 520 KB PNG of 13000 x 13000) is refused before any pixel memory is
allocated.

``DEFAULT_MAX_PIXELS`` is 40 megapixels: above the photos phones and most cameras save (12-24 MP;
a 45 MP full-frame photo must be downscaled or the limit raised), while the decoded RGB array stays
around 120 MB, so one image cannot exhaust a small server. Sides of 32767 pixels
or more are always refused because OpenCV's resize, used downstream, asserts on them.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
MAX_SIDE = 32766  # OpenCV asserts on any side >= 32767 (SHRT_MAX)

# What Pillow raises for corrupt, truncated or unsupported data depends on the format plugin (OSError,
# SyntaxError, struct.error, NotImplementedError for a DDS variant it identifies but cannot decode, ...):
# any exception from a decoder is that file's failure. MemoryError is not caught: it concerns the process.
_DECODE_ERRORS = (Exception,)


class ImageError(ValueError):
    """An image that cannot or must not be decoded; the message is one line naming the source."""


class PixelBudgetError(ImageError):
    """A readable image refused for its size (pixel budget or a side OpenCV cannot take)."""


def _label(source: Path | bytes, name: str | None) -> str:
    if name is not None:
        return name
    return str(source) if isinstance(source, Path) else "upload"


def _open(source: Path | bytes, label: str) -> Image.Image:
    """``Image.open`` (header only) with Pillow's errors turned into one-line ``ImageError``s."""
    try:
        return Image.open(source if isinstance(source, Path) else io.BytesIO(source))
    except Image.DecompressionBombError as error:
        # Pillow refuses > 2 * MAX_IMAGE_PIXELS at open time; its message names the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = found.group(1) if found else "the declared number of"
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PixelBudgetError(
            f"{label}: {pixels} pixels exceeds the pixel budget of {limit} (Pillow's limit); "
            "downscale the image or raise the limit"
        ) from None
    except UnidentifiedImageError:
        # Pillow's own message repeats the path; say what it means instead.
        empty = (source.stat().st_size if isinstance(source, Path) else len(source)) == 0
        reason = "empty file" if empty else "unknown format"
        raise ImageError(f"{label}: cannot read image ({reason}); remove or replace the file") from None
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except MemoryError:
        raise
    except _DECODE_ERRORS as error:
        raise ImageError(f"{label}: cannot read image ({error}); remove or replace the file") from None


def image_size(source: Path | bytes, name: str | None = None) -> tuple[int, int]:
    """(width, height) as stored in the header, without decoding any pixels (EXIF not applied)."""
    source = Path(source) if isinstance(source, str) else source
    with _open(source, _label(source, name)) as image:
        return image.size


def check_size(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS, label: str = "image") -> None:
    """Raise ``ImageError`` unless a ``width`` x ``height`` image fits the budget and OpenCV's limits."""
    pixels = width * height
    if pixels > max_pixels:
        raise PixelBudgetError(
            f"{label}: {width}×{height} = {pixels} pixels exceeds the pixel budget of {max_pixels} "
            f"(max_pixels={max_pixels}); downscale the image or raise the limit"
        )
    if max(width, height) > MAX_SIDE:
        raise PixelBudgetError(f"{label}: {width}×{height} has a side over {MAX_SIDE} pixels; downscale the image")
    if pixels == 0:
        raise ImageError(f"{label}: {width}×{height} image has no pixels; remove or replace the file")


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded PIL image of any mode -> (H, W, 3) uint8 RGB; 16- and 32-bit grey are scaled to 8 bits
    (Pillow's own ``convert`` clips them, turning a 16-bit photo white)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grey: scale 0..65535 down to 0..255; 8-bit data stored wide stays as is.
        array = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        if array.max(initial=0) > 255:
            array = array * 255 // 65535
        image = Image.fromarray(array.astype(np.uint8))
    return np.asarray(image.convert("RGB"))


def open_checked(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """``Image.open`` with the header's size checked against the pixel budget before any pixel is decoded
    (for label maps, read as stored); errors are one-line ``ImageError``s. Close it (a ``with`` block)."""
    source = Path(source) if isinstance(source, str) else source
    label = _label(source, name)
    image = _open(source, label)
    try:
        check_size(*image.size, max_pixels=max_pixels, label=label)
    except ImageError:
        image.close()
        raise
    return image


def decode_image(
    source: Path | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """A file path or encoded bytes -> (H, W, 3) uint8 RGB as displayed (EXIF orientation applied).

    Grayscale, palette, RGBA (alpha dropped) and 16-bit images are accepted. The pixel budget and
    OpenCV's side limit are checked from the header before decoding; every failure is an
    ``ImageError`` with one line naming ``name`` (default: the path, or "upload" for bytes).
    ``max_side`` shrinks the result (aspect kept) so that its longer side is at most that many
    pixels; JPEGs are then decoded at 1/2, 1/4 or 1/8 scale directly, which is much cheaper.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    source = Path(source) if isinstance(source, str) else source
    label = _label(source, name)
    with open_checked(source, max_pixels, label) as image:
        try:
            if max_side is not None:
                image.draft(image.mode, _fit(image.size, max_side))  # no-op for formats other than JPEG
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # in place: no second full-size copy
            rgb = pil_to_rgb(image)
        except Image.DecompressionBombError as error:  # e.g. from a multi-frame plugin's load
            raise PixelBudgetError(f"{label}: {error}; downscale the image or raise the limit") from None
        except MemoryError:
            raise
        except _DECODE_ERRORS as error:
            raise ImageError(f"{label}: cannot read image ({error}); remove or replace the file") from None
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        width, height = _fit((rgb.shape[1], rgb.shape[0]), max_side)
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    return rgb


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so that the longer side is at most ``max_side``."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
