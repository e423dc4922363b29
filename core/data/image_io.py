"""Reading pictures: every place DetLab reads an image file goes through :func:`open_image` (pixels)
or :func:`image_size` (size from the header only).

* **EXIF orientation** is applied, as photo viewers, COCO tools and ultralytics show the picture: a
  phone JPEG stored sideways with orientation 6 is read upright. Sizes (``image_size``) and pixels
  (``open_image``) are both those of the *displayed* picture, and annotations are taken to be in
  that orientation. The orientation is read from the header (EXIF, or XMP ``tiff:Orientation``) by
  the same code in both functions, so they always agree; the transposition is the one
  ``PIL.ImageOps.exif_transpose`` applies. A TIFF's orientation tag is applied by Pillow 13 itself
  (reported size and decoded pixels); DetLab then does not turn it a second time.
* **16-bit pictures** (PIL modes ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` and ``I``, e.g. 16-bit
  grey PNG or TIFF) are scaled to 8 bits (``value >> 8``; ``I`` is clipped to 0..65535 first)
  instead of being clipped to 255 by ``convert("RGB")``. PIL itself reads 16-bit RGB(A) PNGs as
  8-bit RGB(A), keeping the high byte.
* A picture whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels (a decompression
  bomb, or a picture too large to train on) is refused before any pixel is decoded.
* Every failure is an :class:`ImageReadError` (a ``DatasetError``) naming the file.
"""
from __future__ import annotations

import functools
import io
import re
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .records import DatasetError

# Largest width * height read. PIL's own default Image.MAX_IMAGE_PIXELS (1024**3 // 4 // 3, about
# 179 M pixels, ~0.5 GB as RGB), the size at which it warns of a decompression bomb; set here
# explicitly so that a changed PIL global (or None) does not change what DetLab accepts.
MAX_IMAGE_PIXELS = 178_956_970

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that shows the stored pixels upright (as ImageOps.exif_transpose)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_SIDES = (5, 6, 7, 8)  # orientations whose displayed picture is the stored one turned by 90 degrees
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

# What PIL raises for files it cannot identify or decode (UnidentifiedImageError is an OSError).
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


class ImageReadError(DatasetError):
    """An image file that cannot be read (missing, not a picture, truncated, too many pixels).
    ``path``: the file; ``reason``: what is wrong, without the file name."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot read image ({reason}); replace or remove it")


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` (header only) with the pixel limit enforced; errors as ImageReadError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, by our own limit
            im = Image.open(path)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except Image.DecompressionBombError as e:  # over twice PIL's limit: PIL refuses before we see the size
        found = re.search(r"(\d+) pixels", str(e))
        raise ImageReadError(path, f"it declares {found[1] if found else 'more than ' + str(MAX_IMAGE_PIXELS)} "
                                   f"pixels, more than the limit of {MAX_IMAGE_PIXELS} "
                                   f"(core.data.image_io.MAX_IMAGE_PIXELS): a decompression bomb or a picture "
                                   f"too large to read") from None
    except _READ_ERRORS as e:
        raise ImageReadError(path, str(e) or type(e).__name__) from None
    with im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise ImageReadError(path, f"it declares {w}x{h} = {w * h} pixels, more than the limit of "
                                       f"{MAX_IMAGE_PIXELS} (core.data.image_io.MAX_IMAGE_PIXELS): a "
                                       f"decompression bomb or a picture too large to read")
        try:
            yield im
        except ImageReadError:
            raise
        except _READ_ERRORS as e:
            raise ImageReadError(path, str(e) or type(e).__name__) from None


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image, read from its header without decoding pixels
    (for a PNG, only an ``eXIf`` chunk before the pixel data counts); 1 when absent or invalid."""
    try:
        value = int(Image.Image.getexif(im).get(ORIENTATION_TAG, 1))  # base method: PNG's own decodes first
    except Exception:  # unreadable metadata does not make the picture unreadable: shown as stored
        return 1
    return value if value in _TRANSPOSE else 1


@functools.cache
def _pillow_turns_tiff() -> bool:
    """Whether this Pillow applies a TIFF's orientation tag itself (Pillow 13 does: the size it reports
    is the displayed one and ``load`` transposes the pixels); found out once on a 2x1 TIFF in memory."""
    buf = io.BytesIO()
    Image.new("L", (2, 1)).save(buf, "TIFF", tiffinfo={ORIENTATION_TAG: 6})
    buf.seek(0)
    with Image.open(buf) as probe:
        return probe.size == (1, 2)


def _turn_left_to_us(im: Image.Image) -> int:
    """The orientation (1..8) DetLab must still apply to an opened image: :func:`orientation`, or 1 for
    a TIFF whose orientation Pillow applies itself (``_pillow_turns_tiff``)."""
    if im.format == "TIFF" and _pillow_turns_tiff():
        return 1
    return orientation(im)


def image_orientation(path: str | Path) -> int:
    """The EXIF orientation (1..8) of the file at ``path``, from its header; 1 when absent."""
    with _opened(path) as im:
        return orientation(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a loaded image; 16-bit values are scaled (``>> 8``), not clipped."""
    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        values = np.asarray(im)
        if im.mode == "I":
            values = np.clip(values, 0, 65535)
        grey = (values.astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")  # uint8 [H, W]: mode L
    return im.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Decode ``path`` as an 8-bit RGB picture the right way up (EXIF orientation applied), 16-bit
    values scaled to 8 bits. Raises :class:`ImageReadError` naming the file when it cannot be read
    or declares more than ``MAX_IMAGE_PIXELS`` pixels (before decoding)."""
    with _opened(path) as im:
        turn = _TRANSPOSE.get(_turn_left_to_us(im))
        im.load()
        rgb = to_rgb(im)
    return rgb.transpose(turn) if turn is not None else rgb


def image_size(path: str | Path, decode: bool = False) -> tuple[int, int]:
    """``(width, height)`` of the displayed picture (sides swapped for EXIF orientations 5-8) from the
    file's header, without decoding pixels (``decode``: decode them too, which also finds truncated
    files). Raises :class:`ImageReadError` as :func:`open_image` does."""
    with _opened(path) as im:
        turn = _turn_left_to_us(im)
        if decode:
            im.load()
        w, h = int(im.size[0]), int(im.size[1])
    return (h, w) if turn in SWAPS_SIDES else (w, h)
