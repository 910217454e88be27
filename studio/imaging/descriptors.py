"""Measurements of a creative's backdrop: colour temperature, brightness, saturation, hue and texture.

The audience simulator's users click by these (`studio.sim.simulator`), the personal-condition benchmark measures
taste with them (`studio.sim.histories`), and the serving bandit describes each creative by them
(`backdrop_features`), so a creative it has never served starts from what its group's taste model predicts.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from studio.core.errors import InputError

# The background measurements, in the order of `background_vector` and of every taste vector.
BACKGROUND_FEATURES: tuple[str, ...] = ("warmth", "brightness", "saturation", "hue_x", "hue_y", "texture")
# Fixed centres and scales that map typical measurements to about [-1, 1]; fixed so that a creative's z-scores do not
# depend on which other creatives exist.
FEATURE_CENTRE = np.array([0.1, 0.45, 0.55, 0.1, 0.0, 0.035])
FEATURE_SCALE = np.array([0.4, 0.2, 0.3, 0.35, 0.3, 0.02])



def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(f"image must be RGB of shape (H, W, 3), got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if array.min() < 0.0 or array.max() > 1.0:
        raise InputError("a float image must hold values in [0, 1]; pass uint8 0-255 or float 0-1 pixels")
    return array


def _as_mask(product_mask: Image.Image | np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask, True on the product."""
    if product_mask is None:
        return np.zeros(shape, dtype=bool)
    if isinstance(product_mask, Image.Image):
        product_mask = np.asarray(product_mask.convert("L"))
    mask = np.asarray(product_mask)
    if mask.shape != shape:
        raise InputError(f"product mask has shape {mask.shape}, the image is {shape}; pass a mask of the same size")
    return mask > (0.5 if mask.dtype.kind in "bf" else 127)


def measure_background(image: Image.Image | np.ndarray, product_mask: Image.Image | np.ndarray | None) -> dict:
    """Measure the background of a creative (every pixel outside the product mask).

    Args:
        image: RGB, a PIL image or an (H, W, 3) array (uint8 0-255 or float 0-1).
        product_mask: (H, W), non-zero / >127 on the product; None measures the whole image.

    Returns:
        A dict of floats:
        ``warmth`` (colour temperature proxy, mean R - B, in [-1, 1]; warm > 0),
        ``brightness`` (mean Rec. 709 luma, [0, 1]),
        ``saturation`` (mean HSV saturation, [0, 1]),
        ``hue`` (chroma-weighted circular mean hue in degrees [0, 360)) and its vector ``hue_x``, ``hue_y``
        (chroma-weighted mean of cos/sin hue, [-1, 1]; near 0 for grey backgrounds),
        ``texture`` (RMS of the luma gradient between neighbouring background pixels, luma units per pixel).
    """
    rgb = _as_rgb(image)
    product = _as_mask(product_mask, rgb.shape[:2])
    background = ~product
    if background.sum() < 4:
        raise InputError("the product mask covers (almost) the whole image; there is no background to measure")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    chroma = high - low
    saturation = np.where(high > 0, chroma / np.maximum(high, 1e-12), 0.0)
    # Hue angle of each pixel from the standard RGB hexagon projection.
    angle = np.arctan2(np.sqrt(3.0) * (g - b), 2.0 * r - g - b)
    hue_x = float((chroma * np.cos(angle))[background].mean())
    hue_y = float((chroma * np.sin(angle))[background].mean())
    # Texture: gradients only between two background pixels, so the product's edge is not counted as texture.
    dx = np.diff(luma, axis=1)[background[:, 1:] & background[:, :-1]]
    dy = np.diff(luma, axis=0)[background[1:, :] & background[:-1, :]]
    gradients = np.concatenate([dx, dy])
    texture = float(np.sqrt(np.mean(gradients**2))) if len(gradients) else 0.0
    return {
        "warmth": float((r - b)[background].mean()),
        "brightness": float(luma[background].mean()),
        "saturation": float(saturation[background].mean()),
        "hue": float(np.degrees(np.arctan2(hue_y, hue_x)) % 360.0),
        "hue_x": hue_x,
        "hue_y": hue_y,
        "texture": texture,
    }


def background_vector(measurement: dict) -> np.ndarray:
    """The measurement as a (len(BACKGROUND_FEATURES),) array in `BACKGROUND_FEATURES` order."""
    return np.array([measurement[name] for name in BACKGROUND_FEATURES], dtype=np.float64)


# The outer share of each side that `backdrop_features` measures: at `place_product`'s default scale (0.6) and anchor
# the product stays inside it, so the band is backdrop (elsewhere the product's own pixels shift every creative of
# that product alike, which a ranking within the product does not see).
BAND = 0.15


def standardise(measurements: np.ndarray) -> np.ndarray:
    """Raw `background_vector` measurements -> fixed z-units (about [-1, 1] for typical backdrops)."""
    return (np.asarray(measurements, dtype=np.float64) - FEATURE_CENTRE) / FEATURE_SCALE


def backdrop_features(image: Image.Image | np.ndarray | bytes, band: float = BAND) -> np.ndarray:
    """A creative's standardised backdrop measurements ``(len(BACKGROUND_FEATURES),)``, measured on the frame's
    outer band (no product mask needed: a served PNG carries none). `image`: PIL, an RGB array, or PNG/JPEG bytes."""
    if isinstance(image, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(bytes(image))) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the creative's image ({error})") from None
    rgb = _as_rgb(image)
    if not 0.0 < band < 0.5:
        raise InputError(f"band must be a share of the side in (0, 0.5), got {band!r}")
    h, w = rgb.shape[:2]
    inside = np.zeros((h, w), dtype=bool)
    inside[int(h * band):h - int(h * band), int(w * band):w - int(w * band)] = True
    return standardise(background_vector(measure_background(rgb, inside)))
