"""Safe image input: every way a user's file can be wrong gets one clear InputError, and odd modes come out 8-bit."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from studio.core.errors import InputError
from studio.imaging.images import load_image, load_mask


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) data stream: a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    data = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def test_loads_a_png_from_a_path_bytes_or_pil_image(tmp_path):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(photo))
    for source in (path, str(path), path.read_bytes(), photo):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (40, 30)
        assert np.array_equal(np.asarray(loaded), np.asarray(photo))


def test_missing_empty_corrupt_and_non_image_files_are_refused_by_name(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    whole = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole[: len(whole) // 2])

    cases = {
        tmp_path / "missing.png": "no such file",
        empty: "0 bytes",
        text: "not an image",
        truncated: "corrupt or truncated",
        tmp_path: "not a file",
    }
    for path, reason in cases.items():
        with pytest.raises(InputError, match=reason) as error:
            load_image(path)
        assert path.name in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(InputError, match="empty"):
        load_image(b"")


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding():
    bomb = png_header_only(100_000, 100_000)
    started = time.perf_counter()
    with pytest.raises(InputError, match="100000x100000|decompression bomb"):
        load_image(bomb)
    assert time.perf_counter() - started < 1.0  # nothing was decoded

    # Even when our cap is raised, PIL's own bomb warning (here at 100 M pixels) becomes an InputError.
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(png_header_only(10_000, 10_000), max_pixels=10**12)


def test_an_image_over_the_pixel_cap_is_refused():
    with pytest.raises(InputError, match="over the limit of 5,000"):
        load_image(png_bytes(Image.new("RGB", (100, 100))), max_pixels=5_000)
    with pytest.raises(InputError, match="over the limit"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5_000)


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG", quality=100)
    loaded = load_image(buffer.getvalue())
    assert loaded.mode == "RGB"
    red, green, blue = np.asarray(loaded)[4, 4].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_greyscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    loaded = load_image(png_bytes(Image.fromarray(ramp)))
    assert loaded.mode == "RGB"
    grey = np.asarray(loaded)[..., 0].astype(int)
    assert grey.min() == 0 and grey.max() == 255
    assert len(np.unique(grey)) > 200  # a real ramp, not everything above 255 clipped to white
    assert abs(grey[8, 0] - round(ramp[8, 0] / 257)) <= 1


def test_float_images_map_zero_to_one_onto_0_to_255():
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    loaded = load_image(Image.fromarray(values, "F"))
    assert np.asarray(loaded)[0, :, 0].tolist() == [0, 128, 255]


def test_transparency_is_kept_only_when_real():
    palette = Image.new("P", (10, 10), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.paste(1, (0, 0, 5, 10))
    with_hole = load_image(png_bytes(palette, transparency=0))
    assert with_hole.mode == "RGBA"
    alpha = np.asarray(with_hole)[..., 3]
    assert alpha[:, :5].min() == 255 and alpha[:, 5:].max() == 0

    assert load_image(png_bytes(palette)).mode == "RGB"
    assert load_image(Image.new("RGBA", (4, 4), (1, 2, 3, 255))).mode == "RGB"  # opaque alpha is dropped
    assert load_image(Image.new("LA", (4, 4), (9, 100))).mode == "RGBA"
    assert load_image(Image.new("L", (4, 4), 9)).mode == "RGB"


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animated_images_are_refused_with_the_frame_count(fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, fmt, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(InputError, match="animated image with 3 frames: export one frame as PNG"):
        load_image(buffer.getvalue())


def test_exif_orientation_is_applied():
    photo = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", exif=exif)
    assert load_image(buffer.getvalue()).size == (20, 40)


def test_load_mask_accepts_any_mode_and_states_both_sizes_on_mismatch():
    grey = np.zeros((6, 9), np.uint8)
    grey[2:4, 3:7] = 255
    for source in (png_bytes(Image.fromarray(grey)), Image.fromarray(grey).convert("1"), grey, grey > 0):
        mask = load_mask(source, (9, 6))
        assert mask.dtype == bool and mask.shape == (6, 9) and mask.sum() == 8

    cutout = np.zeros((6, 9, 4), np.uint8)
    cutout[..., :3] = 255
    cutout[2:4, 3:7, 3] = 255  # white where opaque, transparent elsewhere
    assert load_mask(Image.fromarray(cutout, "RGBA"), (9, 6)).sum() == 8

    with pytest.raises(InputError, match=r"mask is 9x6 but the image is 10x6"):
        load_mask(grey, (10, 6))
