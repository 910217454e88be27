"""The product canvas: geometry and compositing around a diffusion model, never the diffusion itself.

A `Canvas` is what a generator needs (an RGB image at the output size and a paint mask) and what paste-back needs (the
`keep` pixels that must come out bit-exact). Two ways to make one:

- `place_product` — background replacement: cut the product out, scale it, place it on a new frame of any aspect.
- `outpaint_canvas` / `extend_to_aspect` — outpainting: extend the photo's frame and keep the whole photo.

The guarantee: `np.asarray(paste_back(generated, canvas))[canvas.keep] == np.asarray(canvas.image)[canvas.keep]`,
bit for bit. With `place_product(..., scale=None)`, or whenever the product already fits at its own resolution (it is
never upscaled unless asked), those pixels are the photo's own pixels, unchanged.

Every function here takes the photo as `studio.imaging.images.load_image` returned it (decoded once, at the entry
point); a path or bytes is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np
from PIL import Image, ImageFilter

from studio.core.errors import InputError
from studio.imaging.images import ImageSource, decoded, load_mask

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right/bottom exclusive

MIN_ASPECT, MAX_ASPECT = 1 / 4, 4.0
MAX_OUTPAINT_PIXELS = 40_000_000  # the same budget as a photo the studio accepts
MAX_MASK_COVERAGE = 0.98  # a mask over more than this leaves the model nothing worth painting
SIDES = ("left", "right", "top", "bottom")


@dataclass(eq=False)  # holds arrays: compare fields explicitly
class Canvas:
    """A frame ready for a generator, and everything paste-back needs.

    image:      PIL "RGB", `size`: the product (or original photo) placed, the rest pre-filled.
    keep:       bool array (H, W): pixels that come out of `paste_back` bit-exact from `image`.
    paint_mask: PIL "L", `size`: 255 where the model paints (not `keep`, reaching a few px into it to blend the edge).
    size:       (width, height) of the output in pixels.
    box:        where the product (place_product) or the original photo (outpaint) lies on the canvas.
    kind:       "background" for background replacement, "outpaint" for frame extension.
    placement:  what a recipe records: the aspect ("4:5") for background, the pixels added per side
                ("left=256,right=256") for outpaint.
    """

    image: Image.Image
    keep: np.ndarray
    paint_mask: Image.Image
    size: tuple[int, int]
    box: Box
    kind: Literal["background", "outpaint"]
    placement: str


# --- the product mask ------------------------------------------------------------------------------------------------


def product_mask(
    image: Image.Image, mask: ImageSource | np.ndarray | None = None, *, tolerance: float = 30.0
) -> np.ndarray:
    """Find the product in a photo: bool array (H, W), True on the product.

    Priority: the user's `mask` if given (white = product); else the alpha channel when the image has real
    transparency; else automatic detection on a plain or near-uniform background. Detection estimates the background
    colour from the image border, marks everything within `tolerance` (RGB distance, 0-441) of it that connects to the
    border as background, cleans the result with morphology, keeps the main component(s) and fills holes.

    Raises InputError when the border is not near-uniform (supply a mask or a PNG with transparency), or when the
    resulting mask is empty or covers nearly the whole image.
    """
    image = decoded(image)
    if mask is not None:
        found = load_mask(mask, image.size)
    elif image.mode == "RGBA":
        found = np.asarray(image.getchannel("A")) >= 128
    else:
        found = _detect_on_plain_background(np.asarray(image), tolerance)
        if not found.any():
            raise InputError(
                f"no product stands out from the plain background (tolerance {tolerance}); "
                "supply a mask (white product on black) or a PNG with transparency"
            )
    return validate_mask(found, image.size)


def validate_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Check a product mask for an image of `size` = (width, height); return it as bool (H, W).

    Raises InputError when the size differs, the mask is empty, or it covers nearly the whole image.
    """
    mask = np.asarray(mask)
    width, height = size
    if mask.ndim != 2 or mask.shape != (height, width):
        got = f"{mask.shape[1]}x{mask.shape[0]}" if mask.ndim == 2 else f"an array of shape {mask.shape}"
        raise InputError(f"mask is {got} but the image is {width}x{height}; make the mask the same size as the image")
    mask = mask.astype(bool, copy=False)
    covered = int(mask.sum())
    if covered == 0:
        raise InputError("mask is empty: no product pixels; paint the product white on a black mask")
    if covered > MAX_MASK_COVERAGE * mask.size:
        raise InputError(
            f"mask covers {covered / mask.size:.0%} of the image, leaving nothing to paint; "
            "mask only the product, or use outpainting to extend the frame"
        )
    return mask


def _detect_on_plain_background(rgb: np.ndarray, tolerance: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    # Blur first so sensor noise and JPEG grain do not read as product.
    smooth = cv2.GaussianBlur(rgb, (5, 5), 0).astype(np.float32)
    band = max(2, round(0.02 * min(height, width)))
    border = np.zeros((height, width), bool)
    border[:band], border[-band:], border[:, :band], border[:, -band:] = True, True, True, True
    background_colour = np.median(smooth[border], axis=0)
    distance = np.linalg.norm(smooth - background_colour, axis=2)

    # A product may touch an edge (a bottle standing on the bottom), but most of the border must be background.
    if np.mean(distance[border] <= tolerance) < 0.6:
        raise InputError(
            "the photo's background is not plain enough to find the product automatically; "
            "supply a mask (white product on black) or a PNG with transparency"
        )

    # Background = near-background pixels connected to the border (a flood fill from the edges).
    near = (distance <= tolerance).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    border_labels = np.unique(labels[border & (near > 0)])
    product = ~np.isin(labels, border_labels) | (near == 0)

    # Open to drop specks of noise, close to seal thin gaps in the outline.
    radius = max(1, round(0.005 * max(height, width)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    product = cv2.morphologyEx(product.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    product = cv2.morphologyEx(product, cv2.MORPH_CLOSE, kernel)
    return _fill_holes(_main_components(product.astype(bool)))


def _main_components(mask: np.ndarray, min_share: float = 0.1) -> np.ndarray:
    """Keep every component at least `min_share` of the largest (a product may come in parts: a pair of shoes)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    wanted = 1 + np.flatnonzero(areas >= min_share * areas.max())
    return np.isin(labels, wanted)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Mark as product every non-product region that does not reach the image border."""
    outside = (~mask).astype(np.uint8)
    _, labels = cv2.connectedComponents(outside, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return mask | ~np.isin(labels, edge_labels[edge_labels > 0])


# --- background replacement ------------------------------------------------------------------------------------------


def parse_aspect(aspect: str) -> float:
    """Parse "W:H" (e.g. "1:1", "4:5", "16:9", "9:16") into width / height."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*", str(aspect))
    if not match or float(match[1]) <= 0 or float(match[2]) <= 0:
        raise InputError(f"aspect must look like W:H, e.g. 1:1, 4:5, 16:9 or 9:16; got {aspect!r}")
    ratio = float(match[1]) / float(match[2])
    if not MIN_ASPECT <= ratio <= MAX_ASPECT:
        raise InputError(f"aspect {aspect} is too extreme; use a ratio between 1:4 and 4:1")
    return ratio


def canvas_size(aspect: str, size: int) -> tuple[int, int]:
    """The (width, height) of a frame of `aspect` whose long side is `size` pixels."""
    if not isinstance(size, int) or size < 8:
        raise InputError(f"size (the long side in pixels) must be an integer of at least 8, got {size!r}")
    ratio = parse_aspect(aspect)
    if ratio >= 1:
        return size, max(1, round(size / ratio))
    return max(1, round(size * ratio)), size


def place_product(
    image: Image.Image,
    mask: ImageSource | np.ndarray,
    *,
    aspect: str = "1:1",
    size: int = 1024,
    scale: float | None = 0.6,
    anchor: tuple[float, float] = (0.5, 0.55),
    upscale: bool = False,
    fill: Literal["edge"] | tuple[int, int, int] = "edge",
    blend: int = 4,
) -> Canvas:
    """Cut the product out of a photo and place it on a new frame for background replacement.

    image:  the photo (any size), as load_image returns it. mask: bool (H, W) or a mask image, True on the product.
    aspect: "W:H" of the output; size: its long side in pixels, so the output is exactly `canvas_size(aspect, size)`.
    scale:  the product's bounding box fits in `scale` x the frame (e.g. 0.6 = 60 % of the width or height, whichever
            binds first). A product already smaller than that keeps its own resolution unless `upscale=True`, so its
            pixels stay identical to the photo. `scale=None` always keeps the photo's resolution (no resampling).
    anchor: where the product's centre goes, as fractions (x, y) of the frame; it is moved inside the frame if needed.
    fill:   how the area around the product is pre-filled: "edge" smears the product's outline colours outward
            (a neutral start for the model and a soft ramp for paste-back), or an (r, g, b) colour.
    blend:  how many pixels the paint mask reaches into the product so the model blends its edge.

    The product pixels placed in `Canvas.image` (resampled at most once) are what `paste_back` returns on `keep`.
    """
    image = decoded(image)
    mask = validate_mask(load_mask(mask, image.size), image.size)
    width, height = canvas_size(aspect, size)
    if not (0 <= anchor[0] <= 1 and 0 <= anchor[1] <= 1):
        raise InputError(f"anchor must be two fractions in [0, 1] (x, y), got {anchor!r}")

    # 1. Crop the product to its bounding box.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop_box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    product = image.crop(crop_box)
    product_keep = mask[crop_box[1] : crop_box[3], crop_box[0] : crop_box[2]]

    # 2. Scale it once, and only when asked to or when it does not fit.
    factor = _product_factor(product.size, (width, height), scale, upscale)
    if factor != 1.0:
        new_size = (max(1, round(product.width * factor)), max(1, round(product.height * factor)))
        product = _resize_colour(product, new_size)
        keep_image = Image.fromarray(product_keep.astype(np.uint8) * 255).resize(new_size, Image.Resampling.LANCZOS)
        product_keep = np.asarray(keep_image) >= 128
        if not product_keep.any():
            raise InputError(f"the product shrinks to nothing at scale {scale}; use a larger scale or size")

    # 3. Place it at the anchor, inside the frame.
    left = min(max(round(anchor[0] * width - product.width / 2), 0), width - product.width)
    top = min(max(round(anchor[1] * height - product.height / 2), 0), height - product.height)
    box = (left, top, left + product.width, top + product.height)
    keep = np.zeros((height, width), bool)
    keep[top : box[3], left : box[2]] = product_keep
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[top : box[3], left : box[2]] = np.asarray(product.convert("RGB"))

    # 4. Pre-fill everything else, then put the product pixels back exactly.
    canvas = _prefill(pixels, keep, fill)
    canvas[keep] = pixels[keep]
    return Canvas(
        image=Image.fromarray(canvas, "RGB"),
        keep=keep,
        paint_mask=_paint_mask(keep, blend),
        size=(width, height),
        box=box,
        kind="background",
        placement=aspect,
    )


def _product_factor(product: tuple[int, int], frame: tuple[int, int], scale: float | None, upscale: bool) -> float:
    fits = min(frame[0] / product[0], frame[1] / product[1])
    if scale is None:
        if fits < 1:
            raise InputError(
                f"the product ({product[0]}x{product[1]}) does not fit in the {frame[0]}x{frame[1]} frame at its "
                "own resolution; pass a scale such as 0.6 or a larger size"
            )
        return 1.0
    if not 0 < scale <= 1:
        raise InputError(f"scale must be in (0, 1] (the product's share of the frame) or None, got {scale!r}")
    factor = scale * fits
    return factor if factor < 1 or upscale else 1.0


def _resize_colour(product: Image.Image, new_size: tuple[int, int]) -> Image.Image:
    # Resample premultiplied so transparent pixels' hidden colours do not bleed into the product's edge.
    if product.mode == "RGBA":
        return product.convert("RGBa").resize(new_size, Image.Resampling.LANCZOS).convert("RGBA")
    return product.resize(new_size, Image.Resampling.LANCZOS)


def _prefill(pixels: np.ndarray, keep: np.ndarray, fill: Literal["edge"] | tuple[int, int, int]) -> np.ndarray:
    if fill == "edge":
        # Each outside pixel takes the colour of its nearest product pixel, then blur to a smooth neutral start.
        _, labels = cv2.distanceTransformWithLabels(
            (~keep).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
        )
        colours = np.zeros((labels.max() + 1, 3), np.uint8)
        colours[labels[keep]] = pixels[keep]
        smeared = colours[labels]
        sigma = max(1.0, 0.01 * max(keep.shape))
        return cv2.GaussianBlur(smeared, (0, 0), sigma)
    colour = np.asarray(fill, dtype=np.int64).reshape(-1)
    if colour.shape != (3,) or colour.min() < 0 or colour.max() > 255:
        raise InputError(f"fill must be 'edge' or an (r, g, b) colour with values 0-255, got {fill!r}")
    return np.broadcast_to(colour.astype(np.uint8), pixels.shape).copy()


def _paint_mask(keep: np.ndarray, reach: int) -> Image.Image:
    """255 outside `keep`, and `reach` pixels into it so the model paints over the seam."""
    if reach < 0:
        raise InputError(f"the paint mask's reach into the kept pixels must be >= 0, got {reach}")
    kept = keep.astype(np.uint8)
    if reach > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
        kept = cv2.erode(kept, kernel, borderType=cv2.BORDER_REPLICATE)
    return Image.fromarray(np.where(kept > 0, 0, 255).astype(np.uint8), "L")


# --- outpainting -----------------------------------------------------------------------------------------------------


def outpaint_canvas(
    image: Image.Image,
    *,
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    fill: Literal["edge", "blur"] = "edge",
    overlap: int = 8,
) -> Canvas:
    """Extend the photo's frame by `left`/`right`/`top`/`bottom` pixels for outpainting.

    The new area is pre-filled by repeating the edge pixels ("edge") or with a blurred stretch of the whole photo
    ("blur"). `keep` is the whole original photo (bit-exact); the paint mask is the new area plus `overlap` pixels into
    the photo so the model blends the seam. Transparent pixels of an RGBA photo are flattened onto white.
    """
    image = decoded(image)
    amounts = {"left": left, "right": right, "top": top, "bottom": bottom}
    for side, amount in amounts.items():
        if not isinstance(amount, (int, np.integer)) or amount < 0:
            raise InputError(f"{side} must be a whole number of pixels >= 0, got {amount!r}")
    if not any(amounts.values()):
        raise InputError("nothing to extend: give left, right, top or bottom a number of pixels")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    original = np.asarray(image.convert("RGB"))
    height, width = original.shape[:2]
    new_width, new_height = width + left + right, height + top + bottom
    # Bounded before any allocation: the extended frame is held several times over as arrays.
    if new_width * new_height > MAX_OUTPAINT_PIXELS or not MIN_ASPECT <= new_width / new_height <= MAX_ASPECT:
        raise InputError(
            f"extending a {width}x{height} photo to {new_width}x{new_height} is too large or too elongated: the frame "
            f"may hold up to {MAX_OUTPAINT_PIXELS:,} pixels at an aspect ratio from 1:4 to 4:1; extend less"
        )

    if fill == "edge":
        canvas = np.pad(original, ((top, bottom), (left, right), (0, 0)), mode="edge")
    elif fill == "blur":
        stretched = image.convert("RGB").resize((new_width, new_height), Image.Resampling.BILINEAR)
        radius = max(2.0, 0.05 * max(new_width, new_height))
        canvas = np.array(stretched.filter(ImageFilter.GaussianBlur(radius)))
    else:
        raise InputError(f"fill must be 'edge' or 'blur', got {fill!r}")
    canvas[top : top + height, left : left + width] = original

    keep = np.zeros((new_height, new_width), bool)
    keep[top : top + height, left : left + width] = True
    return Canvas(
        image=Image.fromarray(canvas, "RGB"),
        keep=keep,
        paint_mask=_paint_mask(keep, overlap),
        size=(new_width, new_height),
        box=(left, top, left + width, top + height),
        kind="outpaint",
        placement=",".join(f"{side}={int(amounts[side])}" for side in SIDES if amounts[side]),
    )


def extend_to_aspect(
    image: Image.Image,
    aspect: str,
    *,
    directions: Sequence[str] = ("left", "right"),
    fill: Literal["edge", "blur"] = "edge",
    overlap: int = 8,
) -> Canvas:
    """Outpaint the photo to `aspect` ("W:H") by growing it toward `directions`, never cropping it.

    The photo must be narrower than the target to grow left/right, or wider to grow top/bottom; the extra pixels are
    split evenly between the chosen directions on that axis (e.g. ("left",) puts them all on the left).
    """
    image = decoded(image)
    ratio = parse_aspect(aspect)
    unknown = set(directions) - set(SIDES)
    if unknown or not directions:
        raise InputError(f"directions must be some of left, right, top, bottom; got {tuple(directions)!r}")
    width, height = image.size
    amounts = {"left": 0, "right": 0, "top": 0, "bottom": 0}
    if width / height < ratio:
        sides, extra = [d for d in ("left", "right") if d in directions], math.ceil(height * ratio) - width
    elif width / height > ratio:
        sides, extra = [d for d in ("top", "bottom") if d in directions], math.ceil(width / ratio) - height
    else:
        raise InputError(f"the photo ({width}x{height}) already has aspect {aspect}; nothing to extend")
    if not sides:
        axis = "left or right" if width / height < ratio else "top or bottom"
        raise InputError(f"reaching {aspect} from {width}x{height} needs growing {axis}; add it to directions")
    if extra <= 0:
        raise InputError(f"the photo ({width}x{height}) is within a pixel of {aspect}; nothing to extend")
    amounts[sides[0]] = extra - extra // 2 if len(sides) == 2 else extra
    if len(sides) == 2:
        amounts[sides[1]] = extra // 2
    return outpaint_canvas(image, **amounts, fill=fill, overlap=overlap)


# --- generation size and paste-back ----------------------------------------------------------------------------------


def model_size(size: tuple[int, int], *, multiple: int = 8, max_side: int = 512) -> tuple[int, int]:
    """The (width, height) to generate at for a canvas of `size`: same aspect, long side at most `max_side`, both
    sides rounded to a multiple of `multiple` (8 for Stable Diffusion's VAE), and at least `multiple`."""
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"size must be positive (width, height), got {size!r}")
    if multiple <= 0 or max_side < multiple:
        raise InputError(f"need multiple > 0 and max_side >= multiple, got multiple={multiple}, max_side={max_side}")
    shrink = min(1.0, max_side / max(width, height))

    def snap(side: float) -> int:
        nearest = math.floor(side * shrink / multiple + 0.5) * multiple  # halves round up, not to even
        return min(max(multiple, nearest), max_side // multiple * multiple)

    return snap(width), snap(height)


def paste_alpha(canvas: Canvas, feather: int = 6) -> np.ndarray:
    """The weight (H, W) of the kept pixels in `paste_back`: 1 on `canvas.keep`, ramping linearly to 0 over `feather`
    pixels outside it."""
    if feather < 0:
        raise InputError(f"feather must be >= 0 pixels, got {feather}")
    # Distance (px) of every outside pixel to the nearest kept pixel; 1 right next to it.
    distance = cv2.distanceTransform((~canvas.keep).astype(np.uint8), cv2.DIST_L2, 5)
    return np.clip((feather + 1 - distance) / (feather + 1), 0.0, 1.0)


def blend_seam(generated: np.ndarray, kept: np.ndarray, keep: np.ndarray, reach: float = 0.25) -> np.ndarray:
    """Screened Poisson blending (Perez et al. 2003) of a painted frame into the photo it continues: uint8 (H, W, 3).

    Outside `keep` the result has the generated image's own gradients, and its colours meet the photo's at the seam:
    it is `generated` plus a smooth correction that equals `kept - generated` on the kept pixels next to the painted
    ones and fades with the distance from them over about `reach` x the frame's shorter side, so far from the photo
    the model's own colours (the prompt's) remain. `generated` is the model's whole frame, kept pixels included (their
    gradient across the seam is the one the result keeps). On `keep` the result is `kept`, bit for bit.
    """
    import scipy.sparse
    import scipy.sparse.linalg

    if generated.shape != kept.shape or generated.shape[:2] != keep.shape:
        raise InputError(f"generated {generated.shape}, kept {kept.shape} and keep {keep.shape} must match")
    if not reach > 0:
        raise InputError(f"reach must be > 0 (a share of the frame's shorter side), got {reach}")
    out = np.where(keep[..., None], kept, generated)
    painted = ~keep
    if not painted.any() or not keep.any():
        return out
    height, width = keep.shape
    index = np.full(keep.shape, -1, np.int64)
    index[painted] = np.arange(int(painted.sum()))
    ys, xs = np.nonzero(painted)
    me = index[ys, xs]
    difference = kept.astype(np.float64) - generated.astype(np.float64)
    rows, cols, diagonal = [me], [me], np.zeros(len(me))
    rhs = np.zeros((len(me), generated.shape[2]))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):  # neighbours outside the frame add nothing (a free border)
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        p, qy, qx = me[inside], ny[inside], nx[inside]
        diagonal[p] += 1
        q = index[qy, qx]
        rows.append(p[q >= 0])
        cols.append(q[q >= 0])
        np.add.at(rhs, p[q < 0], difference[qy[q < 0], qx[q < 0]])
    # the screening term: the correction decays as exp(-distance / decay) away from the seam
    decay = reach * min(height, width)
    values = np.concatenate([diagonal + 1 / decay**2] + [-np.ones(len(r)) for r in rows[1:]])
    laplacian = scipy.sparse.csc_matrix((values, (np.concatenate(rows), np.concatenate(cols))),
                                        shape=(len(me), len(me)))
    correction = scipy.sparse.linalg.spsolve(laplacian, rhs).reshape(len(me), -1)
    out = out.astype(np.float64)
    out[ys, xs] += correction
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out[keep] = kept[keep]
    return out


def paste_back(generated: Image.Image, canvas: Canvas, *, feather: int = 6, blend: bool = True) -> Image.Image:
    """Put the kept pixels back over a generated image: PIL "RGB" at `canvas.size`.

    `generated` (any size, e.g. `model_size(canvas.size)`) is resized to the canvas. The alpha of the canvas is exactly
    1 on `canvas.keep` and ramps linearly to 0 over `feather` pixels outside it, so seams are soft while
    `np.asarray(out)[canvas.keep] == np.asarray(canvas.image)[canvas.keep]` holds bit for bit. An outpainted frame is
    first Poisson-blended into the photo at the generated size (`blend_seam`; `blend=False` skips it), so the new
    area continues the photo's colours instead of meeting it at a hard seam. A new background around a product is
    not: it should not take the product's colours.
    """
    if not isinstance(generated, Image.Image):
        raise InputError(f"generated must be a PIL image, got {type(generated).__name__}")
    generated = generated.convert("RGB")
    if blend and canvas.kind == "outpaint":
        photo = np.asarray(canvas.image.convert("RGB").resize(generated.size, Image.Resampling.BOX))
        keep = np.asarray(Image.fromarray(canvas.keep).resize(generated.size, Image.Resampling.NEAREST))
        generated = Image.fromarray(blend_seam(np.asarray(generated), photo, keep), "RGB")
    if generated.size != canvas.size:
        generated = generated.resize(canvas.size, Image.Resampling.LANCZOS)
    kept = np.asarray(canvas.image.convert("RGB"))
    painted = np.asarray(generated)
    alpha = paste_alpha(canvas, feather)[..., None]
    out = np.rint(alpha * kept + (1 - alpha) * painted).astype(np.uint8)
    out[canvas.keep] = kept[canvas.keep]  # exact, whatever float rounding did
    return Image.fromarray(out, "RGB")
