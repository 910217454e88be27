"""Convert between product masks and the value of an image editor (Gradio's ImageEditor / ImageMask).

The UI shows the product photo as the editor's background and the product mask as one translucent paint layer on top,
so a marketer can see the auto-detected mask and correct it with the brush and the eraser. When Generate is pressed,
the painted layer is read back into a boolean mask at the photo's full resolution.

An editor value is a dict ``{"background": image, "layers": [image, ...], "composite": image}`` where each image is a
PIL image or a ``(H, W, C)`` uint8 array; this is the format Gradio uses, but nothing here imports Gradio.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from studio.canvas import product_mask
from studio.errors import InputError
from studio.images import ImageSource, load_image

# Translucent magenta: visible on most product photos, while the product stays readable underneath.
MASK_COLOUR: tuple[int, int, int, int] = (255, 0, 170, 140)

# The editor gets a preview no larger than this (pixels on the long side): big photos make the browser canvas slow,
# and the mask is scaled back to the full photo when it is read.
PREVIEW_MAX_SIDE = 1024

# A painted pixel counts as product when its layer alpha reaches this (0-255); brush edges are anti-aliased.
PAINTED_ALPHA = 64


def preview_size(size: tuple[int, int], max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """The (width, height) in pixels of the editor preview for a photo of `size` (width, height), aspect kept."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def mask_layer(mask: np.ndarray | None, size: tuple[int, int]) -> Image.Image:
    """An RGBA paint layer of `size` (width, height) showing `mask` ((H, W) bool, any resolution) in MASK_COLOUR.

    Pixels outside the mask are fully transparent. A None mask gives an empty layer for the user to paint on.
    """
    layer = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    if mask is not None:
        mask = _as_bool_mask(mask)
        if mask.shape != (size[1], size[0]):
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
        layer[mask] = MASK_COLOUR
    return Image.fromarray(layer, mode="RGBA")


def editor_value(image: Image.Image, mask: np.ndarray | None = None, *,
                 max_side: int = PREVIEW_MAX_SIDE) -> dict[str, Any]:
    """The editor value that shows `image` with `mask` ((H, W) bool at the image's resolution, or None) painted on it.

    The background is an RGB preview of at most `max_side` pixels on its long side; the mask is the only layer.
    """
    size = preview_size(image.size, max_side)
    background = image.convert("RGBA")
    if background.size != size:
        background = background.resize(size, Image.Resampling.LANCZOS)
    # Flatten transparent photos on white, so the preview looks like the photo a viewer would see.
    flat = Image.alpha_composite(Image.new("RGBA", size, "white"), background)
    layer = mask_layer(mask, size)
    return {
        "background": flat.convert("RGB"),
        "layers": [layer],
        "composite": Image.alpha_composite(flat, layer).convert("RGB"),
    }


def open_for_editing(source: ImageSource, *, max_side: int = PREVIEW_MAX_SIDE) -> tuple[Image.Image, dict[str, Any], str]:
    """Open a product photo and prepare its mask for editing.

    Returns (the photo as loaded by `studio.images.load_image`, the editor value with the auto-detected mask painted
    on it, a one-line message for the user). When auto-detection fails the layer is empty and the message asks the
    user to paint the product. Raises InputError for a file that is not a readable image.
    """
    image = load_image(source)
    try:
        mask = product_mask(image)
    except InputError as error:
        message = (f"Could not find the product automatically ({error}). "
                   "Paint over the product with the brush, then generate.")
        return image, editor_value(image, None, max_side=max_side), message
    found_by = "its transparency" if image.mode == "RGBA" else "the plain background"
    message = (f"Product found from {found_by}: check the magenta mask, brush to add to it, "
               "erase to remove from it.")
    return image, editor_value(image, mask, max_side=max_side), message


def mask_from_editor(value: dict[str, Any] | None, size: tuple[int, int]) -> np.ndarray:
    """The product mask painted in an editor value, as an (H, W) bool array for a photo of `size` (width, height).

    Every layer counts: a pixel is product where any layer's alpha is at least PAINTED_ALPHA. Layers painted on a
    preview are scaled to the photo's full resolution (nearest neighbour, so the mask stays binary).

    Raises InputError when nothing is painted, since the studio would not know which pixels to keep.
    """
    layers = [] if value is None else [layer for layer in value.get("layers") or [] if layer is not None]
    painted: np.ndarray | None = None
    for layer in layers:
        alpha = _alpha(layer) >= PAINTED_ALPHA
        painted = alpha if painted is None else _union(painted, alpha)
    if painted is None or not painted.any():
        raise InputError("The product mask is empty: paint over the product with the brush, then generate again.")
    if painted.shape != (size[1], size[0]):
        painted = np.asarray(Image.fromarray(painted).resize(size, Image.Resampling.NEAREST))
    return painted


def _alpha(layer: Image.Image | np.ndarray) -> np.ndarray:
    """The (H, W) uint8 alpha channel of a paint layer; a layer without alpha counts as painted where it is not black."""
    array = np.asarray(layer)
    if array.ndim == 3 and array.shape[2] == 4:
        return array[:, :, 3]
    if array.ndim == 3:
        return np.where(array.max(axis=2) > 0, 255, 0).astype(np.uint8)
    if array.ndim == 2:
        return np.where(array > 0, 255, 0).astype(np.uint8)
    raise InputError(f"An editor layer must be an (H, W) or (H, W, C) image, got an array of shape {array.shape}.")


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union of two bool masks; the second is scaled to the first's shape if the editor sent layers of mixed sizes."""
    if b.shape != a.shape:
        b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0]), Image.Resampling.NEAREST))
    return a | b


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"A product mask must be an (H, W) array, got shape {mask.shape}.")
    if mask.dtype == bool:
        return mask
    # uint8 masks are 0/255, float masks 0.0/1.0 (possibly feathered): threshold at half.
    return mask > (127 if mask.dtype == np.uint8 else 0.5)
