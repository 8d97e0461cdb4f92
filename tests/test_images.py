"""Decoding: every accepted format and mode gives an upright (H, W, 3) uint8 array; every bad
file raises ImageError with a clear reason, also for fuzzed bytes (Hypothesis)."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import photo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catsdogs.data.images import MAX_PIXELS, image_header, load_image
from catsdogs.errors import ImageError


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(photo(0, (30, 20)))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_formats_decode_to_rgb_uint8(fmt):
    arr = load_image(encode(RGB, fmt), name=f"x.{fmt.lower()}")
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless: exact pixels
        np.testing.assert_array_equal(arr, np.asarray(RGB))


def test_grayscale_is_replicated_to_three_channels():
    gray = Image.fromarray(np.arange(20 * 30, dtype=np.uint8).reshape(20, 30) % 251, "L")
    arr = load_image(encode(gray, "PNG"))
    assert arr.shape == (20, 30, 3)
    np.testing.assert_array_equal(arr[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(arr[..., 0], arr[..., 2])


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    arr = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(arr[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(arr[3, 0], [255, 255, 255])


def test_palette_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), c).convert("P") for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    arr = load_image(buf.getvalue())
    assert arr.shape == (8, 8, 3)
    assert arr[4, 4, 0] > 200 and arr[4, 4, 2] < 50  # red, the first frame


def test_cmyk_jpeg_converted_to_rgb():
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # pure red in CMYK
    arr = load_image(encode(cmyk, "JPEG"))
    assert arr.shape == (10, 10, 3)
    assert arr[5, 5, 0] > 200 and arr[5, 5, 1] < 60 and arr[5, 5, 2] < 60


def test_sixteen_bit_png_scaled_to_eight_bits():
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    arr = load_image(encode(img, "PNG"))
    assert arr.shape == (1, 3, 3)
    np.testing.assert_array_equal(arr[0, :, 0], [0, 128, 255])


def test_exif_orientation_is_applied():
    # A 30 wide × 20 high JPEG tagged "rotate 90° clockwise to display" (orientation 6) is
    # upright as 20 wide × 30 high; its white left column becomes the top row (clockwise).
    src = np.zeros((20, 30, 3), np.uint8)
    src[:, :5] = 255  # white left band
    img = Image.fromarray(src)
    exif = Image.Exif()
    exif[0x0112] = 6
    arr = load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert arr.shape == (30, 20, 3)
    assert arr[0].min() > 200 and arr[-1].max() < 50


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_header_gives_the_upright_size_without_decoding(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", exif=exif.tobytes())
    height, width = load_image(data).shape[:2]
    assert image_header(data) == (width, height) == ((200, 300) if orientation > 4
                                                     else (300, 200))
    # a cut body passes the header check; only decoding finds it
    assert image_header(data[: len(data) // 2]) == (width, height)
    with pytest.raises(ImageError, match="truncated"):
        load_image(data[: len(data) // 2])
    with pytest.raises(ImageError, match="not an image"):
        image_header(b"plain text, not a photo")


@pytest.mark.parametrize("size", [(1, 1), (10000, 20)])
def test_extreme_sizes(size):
    arr = load_image(encode(Image.new("RGB", size, (10, 20, 30)), "PNG"))
    assert arr.shape == (size[1], size[0], 3)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize("make, reason", [
    (lambda: b"", "empty file"),
    (lambda: encode(RGB, "JPEG")[:200], "corrupt or truncated"),
    (lambda: os.urandom(2048), "not an image"),
    (lambda: b"hello, I am a text file\n" * 10, "not an image"),
    (lambda: _png_header_only(20000, 20000), "too many pixels"),
])
def test_bad_bytes_raise_image_error(make, reason):
    with pytest.raises(ImageError) as info:
        load_image(make(), name="bad.jpg")
    assert reason in info.value.reason
    assert info.value.path == "bad.jpg"


def test_decompression_bomb_is_rejected_before_decoding(monkeypatch):
    data = _png_header_only(MAX_PIXELS // 1000 + 1, 1001)
    called = []
    monkeypatch.setattr(Image.Image, "load", lambda self: called.append(1))
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(data)
    assert not called


def test_path_errors(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageError, match="no such file"):
        load_image(missing)
    broken = tmp_path / "broken.jpg"
    broken.symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageError, match="broken symbolic link"):
        load_image(broken)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(ImageError, match="symbolic link loop|broken symbolic link"):
        load_image(loop)
    with pytest.raises(ImageError, match="directory|not a regular file"):
        load_image(tmp_path)


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "secret.jpg"
    path.write_bytes(encode(RGB, "JPEG"))
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the OS refusal happen anyway
        import builtins

        real_open = builtins.open

        def deny(file, *a, **kw):
            if os.fspath(file) == str(path):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(file, *a, **kw)

        monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_non_utf8_file_name(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"chat-\xff.png")
    with open(raw, "wb") as fh:
        fh.write(encode(RGB, "PNG"))
    arr = load_image(os.fsdecode(raw))
    assert arr.shape == (20, 30, 3)
    with pytest.raises(ImageError) as info:
        load_image(os.fsdecode(raw) + "-missing")
    assert "\\xff" in str(info.value)  # printable, names the file


# -- fuzzing ---------------------------------------------------------------------------------

def _encode_seed(fmt: str) -> bytes:
    return encode(Image.fromarray(photo(1, (24, 16), seed=5)), fmt)


SEEDS = {fmt: _encode_seed(fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP")}


def _check(data: bytes) -> None:
    """Any bytes give either an upright RGB uint8 array or an ImageError with a reason."""
    try:
        arr = load_image(data, name="fuzz")
    except ImageError as exc:
        assert exc.reason and exc.path == "fuzz"
        return
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[0] >= 1 and arr.shape[1] >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    _check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(SEEDS)),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_fuzz_mutated_images(fmt, edits, cut):
    data = bytearray(SEEDS[fmt])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    _check(bytes(data))
