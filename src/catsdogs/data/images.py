"""Decode one photo into an RGB array: the single decode path used by scan, train, evaluate,
predict and serve, so a photo gets the same pixels (and so the same probability) everywhere.

Pillow does the decoding (https://pillow.readthedocs.io/en/stable/handbook/image-file-formats.html);
``ImageOps.exif_transpose`` applies the EXIF orientation tag so a phone photo is seen upright.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from catsdogs.errors import ImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half a photo

MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485
"""Largest accepted width × height, in pixels: Pillow's decompression-bomb limit (89,478,485,
https://pillow.readthedocs.io/en/stable/reference/Image.html#PIL.Image.open). Larger images are
rejected from their header, before any pixel is decoded."""

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}

Source = str | os.PathLike | bytes | BinaryIO
"""A path, the file's bytes, or an open binary file."""


def read_file(path: str | bytes | os.PathLike) -> bytes:
    """Read a photo file's bytes.

    Raises:
        ImageError: missing file, broken symbolic link, symbolic link loop, permission denied,
            a directory or other non-regular file, or an empty (0-byte) file.
    """
    if os.path.islink(path) and not os.path.exists(path):
        raise ImageError(path, "broken symbolic link")
    try:
        with open(path, "rb") as fh:
            if not os.path.isfile(path):
                raise ImageError(path, "not a regular file")
            data = fh.read()
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except OSError as exc:
        raise ImageError(path, _os_reason(exc)) from None
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    return data


def _open(source: Source, name) -> tuple[Image.Image, object]:
    """Open ``source`` lazily with Pillow, turning its errors into :class:`ImageError`."""
    if isinstance(source, str | os.PathLike):
        label = source if name is None else name
        fp: BinaryIO = io.BytesIO(read_file(source))
    elif isinstance(source, bytes):
        label = name
        if not source:
            raise ImageError(label, "empty file (0 bytes)")
        fp = io.BytesIO(source)
    else:
        label = name
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except UnidentifiedImageError:
        raise ImageError(label, "not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(label, f"too many pixels (over {MAX_PIXELS:,}, the decompression-bomb "
                                "limit); not decoded") from None
    except Exception as exc:  # noqa: BLE001 - hostile headers raise many types
        raise ImageError(label, f"corrupt or truncated image ({_short(exc)})") from None
    return img, label


def _os_reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    return f"cannot read file ({exc.strerror or exc})"


def _to_rgb(img: Image.Image, label) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to a ``(H, W, 3) uint8`` array."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES:  # 16-bit (or 32-bit int) grayscale: scale 0..65535 -> 0..255
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 or mode != "I" else 255.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels are composited over white, as a browser shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise ImageError(label, f"unsupported image mode {mode!r} ({exc})") from None


def _check_size(img: Image.Image, label) -> tuple[int, int]:
    """``(width, height)`` from the header, or :class:`ImageError` for no pixels or more than
    :data:`MAX_PIXELS`."""
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(label, f"image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageError(label, f"too many pixels ({width}x{height} = {width * height:,} "
                                f"> {MAX_PIXELS:,}, the decompression-bomb limit); not decoded")
    return width, height


def load_image(source: Source, name: str | None = None) -> np.ndarray:
    """Decode one photo to RGB pixels.

    Args:
        source: a file path (``str`` or ``PathLike``; use ``os.fsdecode`` for a ``bytes`` name),
            the file's content as ``bytes``, or a binary file object. Any format Pillow
            reads (JPEG, PNG, WebP, BMP, GIF, TIFF, …).
        name: how to name the photo in error messages (defaults to the path).

    Returns:
        ``(height, width, 3) uint8`` array, upright (EXIF orientation applied). GIF and other
        animations give their first frame; grayscale, palette and CMYK are converted to RGB;
        alpha is composited over white; 16-bit images are scaled to 8 bits.

    Raises:
        ImageError: the file is missing, empty, unreadable (permission, broken link, loop), not an
            image, truncated or corrupt, has more than :data:`MAX_PIXELS` pixels, or is in a mode
            that cannot be converted. Nothing else escapes for bad input.
    """
    img, label = _open(source, name)
    try:
        with img:
            _check_size(img, label)
            if getattr(img, "is_animated", False):
                img.seek(0)
            img.load()
            upright = ImageOps.exif_transpose(img) or img
            return _to_rgb(upright, label)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(label, "image too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise many types on hostile input
        raise ImageError(label, f"corrupt or truncated image ({_short(exc)})") from None


_SWAPS_SIDES = {5, 6, 7, 8}
"""EXIF orientations that turn the photo by 90° (width and height swap when upright)."""


def image_header(source: Source, name: str | None = None) -> tuple[int, int]:
    """Read a photo's header only: its upright ``(width, height)`` in pixels, no pixel decoded.

    A multi-worker scan (:func:`catsdogs.data.scan.scan_folder` with ``share``) checks the
    photos other workers decode this way; it catches what the header shows (not an image, empty,
    too many pixels), not a truncated body.

    Raises:
        ImageError: missing, empty or unreadable file, not an image, no pixels, or more than
            :data:`MAX_PIXELS` pixels.
    """
    img, label = _open(source, name)
    with img:
        width, height = _check_size(img, label)
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block is found when decoding
            orientation = 1
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
