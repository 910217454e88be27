"""Convert between product masks and the value of an image editor (Gradio's ImageEditor).

The UI shows the product photo, with the auto-detected product mask tinted magenta, as the editor's background. The
marketer corrects it on a paint layer with two brushes: the magenta "add" brush marks more product, the cyan
"remove" brush marks pixels that are not product; the eraser takes strokes back. When Generate is pressed, the
strokes are applied to the detected mask at the photo's full resolution:

    mask = (detected | added) & ~removed

(The tint lives in the background, not in a layer, because the browser editor does not reliably load layers sent by
the server after an upload; a photo's background always loads.)

An editor value is a dict ``{"background": image, "layers": [image, ...], "composite": image}`` where each image is a
PIL image or a ``(H, W, C)`` uint8 array; this is the format Gradio uses, but nothing here imports Gradio.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from studio.imaging.canvas import product_mask
from studio.core.errors import InputError
from studio.imaging.images import ImageSource, load_image

# Brush colours (RGB) and the tint's opacity: visible on most product photos, the product stays readable underneath.
ADD_COLOUR: tuple[int, int, int] = (255, 0, 170)
REMOVE_COLOUR: tuple[int, int, int] = (0, 200, 255)
TINT_OPACITY = 0.55

# The editor gets a preview no larger than this (pixels on the long side): big photos make the browser canvas slow,
# and the strokes are scaled back to the full photo when they are read.
PREVIEW_MAX_SIDE = 1024

# A stroke covers a pixel when its layer alpha reaches this (0-255); brush edges are anti-aliased.
PAINTED_ALPHA = 64


def preview_size(size: tuple[int, int], max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """The (width, height) in pixels of the editor preview for a photo of `size` (width, height), aspect kept."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def stroke_layer(mask: np.ndarray, colour: tuple[int, int, int] = ADD_COLOUR) -> Image.Image:
    """An RGBA paint layer with a stroke of `colour` over `mask` ((H, W) bool), as the editor's brush paints it."""
    mask = _as_bool_mask(mask)
    layer = np.zeros((*mask.shape, 4), dtype=np.uint8)
    layer[mask] = (*colour, round(255 * TINT_OPACITY))
    return Image.fromarray(layer, mode="RGBA")


def editor_value(image: Image.Image, mask: np.ndarray | None = None, *,
                 max_side: int = PREVIEW_MAX_SIDE) -> dict[str, Any]:
    """The editor value that shows `image` with `mask` ((H, W) bool at the image's resolution, or None) tinted.

    The background is an RGB preview of at most `max_side` pixels on its long side, with the mask tinted in
    ADD_COLOUR; there are no layers yet (the user's strokes will make one).
    """
    size = preview_size(image.size, max_side)
    preview = image.convert("RGBA")
    if preview.size != size:
        preview = preview.resize(size, Image.Resampling.LANCZOS)
    # Flatten transparent photos on white, so the preview looks like the photo a viewer would see.
    flat = Image.alpha_composite(Image.new("RGBA", size, "white"), preview)
    if mask is not None:
        tint = stroke_layer(_resized(_as_bool_mask(mask), size))
        flat = Image.alpha_composite(flat, tint)
    return {"background": flat.convert("RGB"), "layers": [], "composite": None}


def open_for_editing(
    source: ImageSource, *, max_side: int = PREVIEW_MAX_SIDE
) -> tuple[Image.Image, np.ndarray | None, dict[str, Any], str]:
    """Open a product photo and prepare its mask for editing.

    Returns (the photo as loaded by `studio.imaging.images.load_image`, the detected mask ((H, W) bool) or None, the editor
    value showing it, a one-line message for the user). When auto-detection fails there is no mask and the message
    asks the user to paint the product. Raises InputError for a file that is not a readable image.
    """
    image = load_image(source)
    try:
        mask = product_mask(image)
    except InputError as error:
        message = (f"Could not find the product automatically ({error}). "
                   "Paint over the product with the magenta brush, then generate.")
        return image, None, editor_value(image, None, max_side=max_side), message
    found_by = "its transparency" if image.mode == "RGBA" else "the plain background"
    message = (f"Product found from {found_by} (tinted magenta). Correct it if needed: the magenta brush adds to the "
               "product, the cyan brush removes from it, the eraser takes strokes back.")
    return image, mask, editor_value(image, mask, max_side=max_side), message


def mask_from_editor(value: dict[str, Any] | None, size: tuple[int, int],
                     detected: np.ndarray | None = None) -> np.ndarray:
    """The product mask after the user's strokes, as an (H, W) bool array for a photo of `size` (width, height).

    `detected` is the auto-detected mask ((H, W) bool, full resolution) or None. Every layer of `value` counts: a pixel
    with alpha >= PAINTED_ALPHA is added when its colour is nearer ADD_COLOUR and removed when nearer REMOVE_COLOUR.
    Layers painted on a preview are scaled to full resolution (nearest neighbour, so the mask stays binary).

    Raises InputError when the result is empty, since the studio would not know which pixels to keep.
    """
    width, height = size
    mask = np.zeros((height, width), dtype=bool) if detected is None else _resized(_as_bool_mask(detected), size)
    layers = [] if value is None else [layer for layer in value.get("layers") or [] if layer is not None]
    for layer in layers:
        added, removed = _strokes(layer)
        mask = (mask | _resized(added, size)) & ~_resized(removed, size)
    if not mask.any():
        raise InputError("The product mask is empty: paint over the product with the magenta brush, then generate.")
    return mask


def _strokes(layer: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (added, removed) pixels of one paint layer, each (H, W) bool."""
    array = np.asarray(layer)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(f"An editor layer must be an (H, W, 3) or (H, W, 4) image, got shape {array.shape}.")
    rgb = array[:, :, :3].astype(np.int32)
    painted = array[:, :, 3] >= PAINTED_ALPHA if array.shape[2] == 4 else rgb.max(axis=2) > 0
    to_add = ((rgb - ADD_COLOUR) ** 2).sum(axis=2)
    to_remove = ((rgb - REMOVE_COLOUR) ** 2).sum(axis=2)
    return painted & (to_add <= to_remove), painted & (to_remove < to_add)


def _resized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == (size[1], size[0]):
        return mask
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"A product mask must be an (H, W) array, got shape {mask.shape}.")
    if mask.dtype == bool:
        return mask
    # uint8 masks are 0/255, float masks 0.0/1.0 (possibly feathered): threshold at half.
    return mask > (127 if mask.dtype == np.uint8 else 0.5)
