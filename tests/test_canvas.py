"""The product canvas: find the product, place it or extend the frame, and paste it back bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio.imaging.canvas import (
    blend_seam,
    extend_to_aspect,
    model_size,
    outpaint_canvas,
    paste_back,
    place_product,
    product_mask,
    validate_mask,
)
from studio.core.errors import InputError

ASPECTS = {"1:1": (1.0, 1.0), "4:5": (4.0, 5.0), "16:9": (16.0, 9.0), "9:16": (9.0, 16.0)}


def product_photo(size=(333, 517), background=(238, 236, 230), noise=0.0, seed=0) -> Image.Image:
    """A red bottle with a dark cap on a plain (optionally noisy) studio background."""
    photo = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(photo)
    draw.rounded_rectangle((110, 160, 225, 430), radius=30, fill=(190, 30, 45))
    draw.rectangle((145, 110, 190, 165), fill=(25, 25, 30))
    pixels = np.asarray(photo).astype(np.float64)
    if noise:
        pixels += np.random.default_rng(seed).normal(0, noise, pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def drawn_bottle(size=(333, 517)) -> np.ndarray:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    draw.rounded_rectangle((110, 160, 225, 430), radius=30, fill=255)
    draw.rectangle((145, 110, 190, 165), fill=255)
    return np.asarray(mask) > 0


def fake_generation(canvas, seed=0) -> Image.Image:
    """What a diffusion model returns: a new image at its own (smaller) size."""
    width, height = model_size(canvas.size)
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(noise)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --- finding the product ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.0, 6.0])
def test_finds_a_product_on_a_plain_or_slightly_noisy_background(noise):
    found = product_mask(product_photo(noise=noise))
    assert found.shape == (517, 333) and found.dtype == bool
    assert iou(found, drawn_bottle()) > 0.95


def test_refuses_a_busy_background_and_asks_for_a_mask():
    busy = Image.fromarray(np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="supply a mask .* or a PNG with transparency"):
        product_mask(busy)


def test_a_user_mask_wins_then_the_alpha_channel():
    photo = product_photo()
    square = np.zeros((517, 333), bool)
    square[10:50, 10:50] = True
    assert np.array_equal(product_mask(photo, square), square)

    cutout = photo.convert("RGBA")
    cutout.putalpha(Image.fromarray(drawn_bottle().astype(np.uint8) * 255))
    assert np.array_equal(product_mask(cutout), drawn_bottle())


def test_a_blank_photo_has_no_product_to_find():
    with pytest.raises(InputError, match="no product stands out"):
        product_mask(Image.new("RGB", (120, 80), (250, 250, 250)))


def test_a_transparent_cutout_is_placed_with_its_own_pixels():
    cutout = product_photo().convert("RGBA")
    cutout.putalpha(Image.fromarray(drawn_bottle().astype(np.uint8) * 255))
    canvas = place_product(cutout, product_mask(cutout), aspect="4:5", size=800)
    out = paste_back(fake_generation(canvas), canvas)
    assert np.array_equal(np.asarray(out)[canvas.keep], np.asarray(product_photo())[drawn_bottle()])


def test_mask_validation_says_what_is_wrong():
    with pytest.raises(InputError, match="empty"):
        validate_mask(np.zeros((20, 30), bool), (30, 20))
    with pytest.raises(InputError, match="covers 100% of the image"):
        validate_mask(np.ones((20, 30), bool), (30, 20))
    with pytest.raises(InputError, match="mask is 20x30 but the image is 30x20"):
        validate_mask(np.ones((30, 20), bool), (30, 20))
    with pytest.raises(InputError, match="mask is 30x20 but the image is 333x517"):
        product_mask(product_photo(), np.ones((20, 30), bool))


# --- background replacement ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aspect", ASPECTS)
@pytest.mark.parametrize("scale", [0.9, 0.6, None])
def test_product_pixels_are_bit_exact_after_paste_back_for_every_aspect(aspect, scale):
    photo = product_photo()
    canvas = place_product(photo, drawn_bottle(), aspect=aspect, size=640, scale=scale)

    ratio_w, ratio_h = ASPECTS[aspect]
    assert max(canvas.size) == 640 and abs(canvas.size[0] / canvas.size[1] - ratio_w / ratio_h) < 0.01
    assert canvas.image.mode == "RGB" and canvas.image.size == canvas.size
    assert canvas.keep.shape == (canvas.size[1], canvas.size[0])
    paint = np.asarray(canvas.paint_mask) == 255
    assert paint[~canvas.keep].all()  # the model paints everything that is not kept ...
    assert paint[canvas.keep].any() and not paint[canvas.keep].all()  # ... and a thin band into the product

    out = paste_back(fake_generation(canvas), canvas)
    assert out.mode == "RGB" and out.size == canvas.size
    assert np.array_equal(np.asarray(out)[canvas.keep], np.asarray(canvas.image)[canvas.keep])


def test_a_product_that_fits_keeps_the_photos_own_pixels():
    photo, bottle = product_photo(), drawn_bottle()
    for scale in (0.6, None):  # the bottle (116x321) already fits in 60 % of a 1024 frame: no resampling
        canvas = place_product(photo, bottle, size=1024, scale=scale)
        assert int(canvas.keep.sum()) == int(bottle.sum())
        assert np.array_equal(np.asarray(canvas.image)[canvas.keep], np.asarray(photo)[bottle])
        out = paste_back(fake_generation(canvas), canvas)
        assert np.array_equal(np.asarray(out)[canvas.keep], np.asarray(photo)[bottle])


def test_scale_sets_the_products_share_of_the_frame_and_anchor_its_place():
    canvas = place_product(product_photo(), drawn_bottle(), aspect="1:1", size=1000, scale=0.25, anchor=(0.25, 0.5))
    left, top, right, bottom = canvas.box
    assert bottom - top == 250  # the bottle's long side is its height: 25 % of 1000 px
    assert abs((left + right) / 2 - 250) <= 1 and abs((top + bottom) / 2 - 500) <= 1


def test_upscale_is_opt_in():
    small = place_product(product_photo(), drawn_bottle(), size=1024, scale=0.9)
    large = place_product(product_photo(), drawn_bottle(), size=1024, scale=0.9, upscale=True)
    assert small.box[3] - small.box[1] == 321
    assert large.box[3] - large.box[1] == round(0.9 * 1024)


def test_bad_placement_arguments_are_refused():
    photo, bottle = product_photo(), drawn_bottle()
    with pytest.raises(InputError, match="W:H"):
        place_product(photo, bottle, aspect="wide")
    with pytest.raises(InputError, match="too extreme"):
        place_product(photo, bottle, aspect="10:1")
    with pytest.raises(InputError, match="scale must be in"):
        place_product(photo, bottle, scale=1.5)
    with pytest.raises(InputError, match="does not fit"):
        place_product(photo, bottle, size=200, scale=None)


# --- outpainting -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right", "top", "bottom"])
@pytest.mark.parametrize("fill", ["edge", "blur"])
def test_outpaint_extends_each_direction_and_keeps_the_photo_bit_exact(side, fill):
    photo = product_photo()
    canvas = outpaint_canvas(photo, **{side: 100}, fill=fill, overlap=8)

    grow_x, grow_y = (100, 0) if side in ("left", "right") else (0, 100)
    assert canvas.size == (333 + grow_x, 517 + grow_y) and canvas.image.size == canvas.size
    left = 100 if side == "left" else 0
    top = 100 if side == "top" else 0
    assert canvas.box == (left, top, left + 333, top + 517)
    placed = np.asarray(canvas.image)[top : top + 517, left : left + 333]
    assert np.array_equal(placed, np.asarray(photo))
    assert canvas.keep.sum() == 333 * 517 and canvas.keep[top : top + 517, left : left + 333].all()

    # The model paints the new strip and an 8 px overlap into the photo on that side only.
    paint = np.asarray(canvas.paint_mask) == 255
    assert paint[~canvas.keep].all()
    assert paint.sum() == (100 + 8) * (517 if grow_x else 333)

    out = paste_back(fake_generation(canvas), canvas)
    assert out.size == canvas.size
    assert np.array_equal(np.asarray(out)[top : top + 517, left : left + 333], np.asarray(photo))


def test_edge_fill_repeats_the_border_pixels():
    canvas = outpaint_canvas(product_photo(), right=50)
    pixels = np.asarray(canvas.image)
    assert np.array_equal(pixels[:, 333:], np.repeat(pixels[:, 332:333], 50, axis=1))


def test_extend_to_aspect_grows_the_chosen_sides():
    photo = product_photo()  # 333x517, portrait
    both = extend_to_aspect(photo, "16:9")
    assert both.size == (920, 517) and both.box == (294, 0, 627, 517)
    left_only = extend_to_aspect(photo, "1:1", directions=("left",))
    assert left_only.size == (517, 517) and left_only.box == (184, 0, 517, 517)
    with pytest.raises(InputError, match="needs growing left or right"):
        extend_to_aspect(photo, "1:1", directions=("top",))
    with pytest.raises(InputError, match="nothing to extend"):
        outpaint_canvas(photo)
    with pytest.raises(InputError, match="left must be a whole number"):
        outpaint_canvas(photo, left=-5)


# --- sizes and seams -------------------------------------------------------------------------------------------------


def test_model_size_keeps_aspect_in_multiples_of_8_and_clamps_the_long_side():
    assert model_size((1024, 1024)) == (512, 512)
    assert model_size((1024, 576)) == (512, 288)
    assert model_size((819, 1024)) == (408, 512)
    assert model_size((333, 517)) == (328, 512)
    assert model_size((100, 60)) == (104, 64)  # small canvases are not blown up
    assert model_size((4000, 10), multiple=64, max_side=1024) == (1024, 64)
    for width, height in model_size((1000, 700)), model_size((517, 333), multiple=16):
        assert width % 8 == 0 and height % 8 == 0


def test_paste_back_feathers_outside_the_kept_pixels_only():
    canvas = outpaint_canvas(Image.new("RGB", (64, 64), (255, 255, 255)), right=64)
    black = Image.new("RGB", canvas.size, (0, 0, 0))
    row = np.asarray(paste_back(black, canvas, feather=4, blend=False))[32, :, 0].astype(int)
    assert (row[:64] == 255).all()  # kept
    assert 255 > row[64] > row[65] > row[66] > row[67] > 0  # a soft ramp ...
    assert (row[69:] == 0).all()  # ... then the generated pixels
    hard = np.asarray(paste_back(black, canvas, feather=0, blend=False))[32, :, 0]
    assert (hard[64:] == 0).all()


def _seam_jump(image: np.ndarray, column: int) -> float:
    """Mean colour jump between columns `column - 1` and `column`."""
    return float(np.abs(image[:, column].astype(float) - image[:, column - 1].astype(float)).mean())


def test_blend_seam_meets_the_photo_at_the_seam_and_keeps_the_models_colours_far_from_it():
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(120, 12, (48, 128, 3)), 0, 255).astype(np.uint8)
    keep = np.zeros((48, 128), bool)
    keep[:, :64] = True
    # the model continued the photo's texture 50 levels too bright
    generated = np.clip(photo.astype(int) + 50, 0, 255).astype(np.uint8)
    blended = blend_seam(generated, photo, keep)
    assert np.array_equal(blended[keep], photo[keep])
    offset = (blended.astype(int) - photo.astype(int)).mean(axis=(0, 2))
    assert offset[64] < 5  # at the seam the offset is gone ...
    assert 0 < offset[64] < offset[70] < offset[80] < offset[100] < 50  # ... and it comes back smoothly ...
    assert offset[127] > 40  # ... to the model's own colours far away (reach 0.25: 12 px here)
    # with a reach far beyond the frame it is plain Poisson blending: a constant offset goes everywhere
    assert np.abs(blend_seam(generated, photo, keep, reach=100.0)[:, 64:].astype(int) - photo[:, 64:]).max() <= 2
    # a hard paste leaves the offset as a seam; the blend leaves the photo's own jump between columns
    hard = np.where(keep[..., None], photo, generated)
    own = np.mean([_seam_jump(photo, c) for c in range(1, 64)])
    assert _seam_jump(hard, 64) > 3 * own
    assert _seam_jump(blended, 64) < 1.2 * own


def test_blend_seam_keeps_the_generated_structure():
    photo = np.full((40, 80, 3), 100, np.uint8)
    keep = np.zeros((40, 80), bool)
    keep[:, :40] = True
    generated = np.full((40, 80, 3), 160, np.uint8)
    generated[10:30, 60:70] = 220  # a painted object, 60 levels above its surroundings
    blended = blend_seam(generated, photo, keep).astype(int)
    assert abs(blended[:, 40].mean() - 100) < 8  # the new area starts near the photo's colour ...
    assert abs((blended[20, 61] - blended[20, 59]).mean() - 60) < 3  # ... and the object keeps its contrast


def test_paste_back_blends_outpainted_frames_but_not_new_backgrounds():
    photo = Image.new("RGB", (64, 64), (90, 140, 200))
    canvas = outpaint_canvas(photo, right=64)
    grey = Image.new("RGB", (64, 32), (128, 128, 128))  # at half the canvas size, as a model paints
    blended = np.asarray(paste_back(grey, canvas)).astype(int)
    assert np.abs(blended[:, 64] - (90, 140, 200)).max() <= 10  # the new area continues the photo ...
    assert np.abs(blended[:, 127] - 128).max() < np.abs(blended[:, 64] - 128).max() / 4  # ... then the model's grey
    assert (np.asarray(paste_back(grey, canvas, blend=False))[:, 80:] == 128).all()
    background = place_product(product_photo(), drawn_bottle(), size=200)
    assert np.array_equal(np.asarray(paste_back(grey, background)),
                          np.asarray(paste_back(grey, background, blend=False)))


def test_blend_seam_refuses_mismatched_shapes_and_a_bad_reach():
    with pytest.raises(InputError, match="must match"):
        blend_seam(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), np.zeros((8, 8), bool))
    with pytest.raises(InputError, match="reach must be > 0"):
        blend_seam(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool), reach=0)


def test_odd_input_sizes_give_exactly_the_requested_output_size():
    photo = product_photo(size=(333, 517))
    for aspect, expected in (("1:1", (777, 777)), ("4:5", (622, 777)), ("16:9", (777, 437)), ("9:16", (437, 777))):
        canvas = place_product(photo, drawn_bottle(), aspect=aspect, size=777)
        assert canvas.size == expected
        assert paste_back(Image.new("RGB", (13, 29)), canvas).size == expected


# --- decoded once -----------------------------------------------------------------------------------------------------


def test_canvas_functions_take_the_decoded_photo_never_a_path(tmp_path):
    path = tmp_path / "bottle.png"
    product_photo().save(path)
    for build in (product_mask, lambda photo: place_product(photo, drawn_bottle()),
                  lambda photo: outpaint_canvas(photo, left=8), lambda photo: extend_to_aspect(photo, "16:9")):
        with pytest.raises(InputError, match="load_image"):
            build(str(path))
    with pytest.raises(InputError, match="expected mode RGB or RGBA"):
        product_mask(product_photo().convert("L"))
