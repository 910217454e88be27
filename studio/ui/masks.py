"""Product masks from a click, from an uploaded file, and the editor preview in tint or true colour.

    select_region(photo, (x, y), tolerance)   the connected pixels whose colour is near the clicked pixel's
    apply_click(mask, region, mode)           the mask after a click: add, remove, or "the rest is the product"
    uploaded_mask(path, size)                 a mask image (white = product) of the photo's size
    preview(photo, mask, tinted)              the mask editor's value: the mask tinted magenta, or the true colours
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from studio.core.errors import InputError
from studio.imaging.editor import editor_value, preview_size
from studio.imaging.images import ImageSource, load_mask

CLICK_MODES = ("add", "remove", "background")
DEFAULT_TOLERANCE = 32.0  # RGB distance (0-441) from the clicked colour: a product's flat colour plus JPEG noise


def select_region(image: Image.Image, point: tuple[int, int], tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """Flood fill from `point` (x, y, in the photo's pixels): the 4-connected pixels within `tolerance` (Euclidean
    RGB distance) of the clicked pixel's colour, as an (H, W) bool array. Transparent photos are read flattened on
    white, as the preview shows them."""
    if not 0 <= tolerance <= 442:
        raise InputError(f"tolerance must be 0 to 441 (an RGB distance), got {tolerance!r}")
    rgb = _flat_rgb(image).astype(np.int32)
    height, width = rgb.shape[:2]
    x, y = int(point[0]), int(point[1])
    if not (0 <= x < width and 0 <= y < height):
        raise InputError(f"the click ({x}, {y}) is outside the {width}x{height} photo")
    distance = np.sqrt(((rgb - rgb[y, x]) ** 2).sum(axis=2))
    labels, _ = ndimage.label(distance <= tolerance)  # default structure: 4-connectivity
    return labels == labels[y, x]


def preview_to_photo(point: tuple[int, int], photo_size: tuple[int, int]) -> tuple[int, int]:
    """A click on the preview (at most `PREVIEW_MAX_SIDE` px; see `studio.imaging.editor`) in the photo's pixels."""
    shown = preview_size(photo_size)
    x = min(photo_size[0] - 1, int(point[0] * photo_size[0] / shown[0]))
    y = min(photo_size[1] - 1, int(point[1] * photo_size[1] / shown[1]))
    return x, y


def apply_click(mask: np.ndarray | None, region: np.ndarray, mode: str) -> np.ndarray:
    """The product mask after a click: "add" the region to it, "remove" the region from it, or "background" (the
    click was on the backdrop: the product is everything else)."""
    if mode not in CLICK_MODES:
        raise InputError(f"click mode must be one of {', '.join(CLICK_MODES)}, got {mode!r}")
    current = np.zeros_like(region) if mask is None else np.asarray(mask, dtype=bool)
    if current.shape != region.shape:
        raise InputError(f"the mask is {current.shape} but the selection is {region.shape}; open the photo again")
    if mode == "add":
        return current | region
    if mode == "remove":
        return current & ~region
    return ~region


def uploaded_mask(source: ImageSource, size: tuple[int, int]) -> np.ndarray:
    """A mask image (white = product, the photo's `size` (width, height)) as an (H, W) bool array; an all-black
    mask is an error, since it would keep nothing."""
    mask = load_mask(source, size)
    if not mask.any():
        raise InputError("the uploaded mask is all black; white marks the product")
    return mask


def preview(image: Image.Image, mask: np.ndarray | None, tinted: bool = True) -> dict[str, Any]:
    """The mask editor's value: the photo with `mask` tinted magenta, or (``tinted=False``) its true colours."""
    return editor_value(image, mask if tinted else None)


def _flat_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))
