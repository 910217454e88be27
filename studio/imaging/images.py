"""Safe image input: open any user image without surprises, or refuse it in one clear line.

The pixel count is checked from the header *before* any pixel is decoded, so a decompression bomb costs a few bytes of
reading, never an out-of-memory crash. Every image comes out as 8-bit "RGB", or "RGBA" when it has real transparency.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from studio.core.errors import InputError

ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image]

DEFAULT_MAX_PIXELS = 40_000_000

# What PIL raises for damaged files: truncated streams, bad chunks, broken headers.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, Image.DecompressionBombError,
)


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image from a path, bytes or a PIL image, safely.

    Returns a loaded, EXIF-upright PIL image in mode "RGB", or "RGBA" when it has real transparency (an alpha channel
    that is not fully opaque, or a palette/colour-key transparency entry). High bit depths are scaled to 8 bits:
    16-bit greyscale by 255/65535, float images from [0, 1] (or their own range when outside it).

    Raises InputError (one line naming the file) for a missing, empty, corrupt, truncated, animated or non-image file,
    and for an image with more than `max_pixels` pixels (width * height), refused from its header before decoding.

    Call it once, at the entry point (CLI, UI, `generate_creatives`, `run_campaign`); everything downstream takes the
    image it returns. Given an image it returned before, it hands back that same object (no decode, no copy).
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        image = source
        _check_pixels(image.size, max_pixels, name)
    else:
        image = _open(source, name, max_pixels)

    frames = getattr(image, "n_frames", 1) if getattr(image, "is_animated", False) else 1
    if frames > 1:
        raise InputError(f"{name}: animated image with {frames} frames: export one frame as PNG")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            # Transpose only when needed: exif_transpose copies every image, so an already loaded one came back a copy.
            if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                image = ImageOps.exif_transpose(image)
    except Image.DecompressionBombWarning as exc:
        raise InputError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name}: corrupt or truncated image ({exc}); re-export it as PNG or JPEG") from None
    return _to_8bit(image, name)


def decoded(image: object) -> Image.Image:
    """Check that `image` is what `load_image` returns; internal functions take only that, never a path or bytes."""
    if not isinstance(image, Image.Image):
        raise InputError(
            f"{_describe(image)}: expected a decoded PIL image; open it with studio.imaging.images.load_image first"
        )
    if image.mode not in ("RGB", "RGBA"):
        raise InputError(f"{_describe(image)}: expected mode RGB or RGBA; open it with load_image first")
    return image


def load_mask(source: ImageSource | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Load a product mask and check it matches an image of `size` = (width, height).

    White (>= 128) means product. Any image mode works; transparent pixels count as black. A numpy array (bool, or
    numbers where > 0.5 of the max means product) is accepted too. Returns a bool array of shape (height, width).
    """
    if isinstance(source, np.ndarray):
        array = np.asarray(source)
        if array.ndim == 3 and array.shape[2] in (1, 3, 4):
            array = array[..., 0]
        if array.ndim != 2:
            raise InputError(f"mask array must be 2-D (height, width), got shape {source.shape}")
        if array.dtype == bool:
            mask = array
        else:
            top = float(array.max()) if array.size else 0.0
            mask = array > (top / 2 if top > 0 else 0)
        name = "mask array"
    else:
        name = _describe(source)
        image = load_image(source)
        if image.mode == "RGBA":
            black = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(black, image)
        mask = np.asarray(image.convert("L")) >= 128
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise InputError(
            f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}; "
            "make the mask the same size as the image"
        )
    return mask.astype(bool, copy=False)


def has_transparency(image: Image.Image) -> bool:
    """True when `image` (any mode) has at least one pixel that is not fully opaque."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return image.getchannel("A").getextrema()[0] < 255
    if "transparency" in image.info:
        return image.convert("RGBA").getchannel("A").getextrema()[0] < 255
    return False


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"image bytes ({len(source)} bytes)"
    if isinstance(source, Image.Image):
        return f"image {source.width}x{source.height} {source.mode}"
    return type(source).__name__


def _open(source: ImageSource, name: str, max_pixels: int) -> Image.Image:
    """Read the header only (PIL opens lazily) and refuse oversized images before decoding."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise InputError("image bytes are empty (0 bytes): send the image file's contents")
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{name}: no such file; check the path")
        if not path.is_file():
            raise InputError(f"{name}: not a file; give the path of an image file")
        if path.stat().st_size == 0:
            raise InputError(f"{name}: file is empty (0 bytes); re-export the image")
        # Read the bytes up front so no file handle stays open behind the lazy image.
        try:
            stream = io.BytesIO(path.read_bytes())
        except OSError as exc:
            raise InputError(f"{name}: cannot read the file ({exc.strerror or exc}); check its permissions") from None
    else:
        raise InputError(f"expected an image path, bytes or a PIL image, got {name}")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image PIL can read; use PNG, JPEG or WebP") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InputError(f"{name}: refused as a possible decompression bomb ({exc})") from None
    except _DECODE_ERRORS as exc:
        raise InputError(f"{name}: corrupt image header ({exc}); re-export it as PNG or JPEG") from None
    _check_pixels(image.size, max_pixels, name)
    return image


def _check_pixels(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "downscale it first"
        )


def _to_8bit(image: Image.Image, name: str) -> Image.Image:
    """Convert any PIL mode to 8-bit "RGB", or "RGBA" when transparency is real."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        # 16-bit data spans 0..65535; scale it down instead of clipping everything above 255 to white.
        if values.min() >= 0 and values.max() <= 65535:
            values = values * (255.0 / 65535.0)
        else:
            values = _stretch(values)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            raise InputError(f"{name}: float image holds no finite values")
        values = np.nan_to_num(values, nan=0.0, posinf=finite.max(), neginf=finite.min())
        values = values * 255.0 if finite.min() >= 0 and finite.max() <= 1 else _stretch(values)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode == "RGBA" and has_transparency(image):
        return image  # already what load_image returns: no copy
    if has_transparency(image):
        return image.convert("RGBA")
    # CMYK, YCbCr, LAB, HSV, "1", "L", "P", and alpha modes that are fully opaque: PIL's own ICC-free conversions.
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise InputError(f"{name}: cannot convert image mode {mode} to RGB ({exc}); re-export it as RGB PNG") from None


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))
