"""The mask-editing step of the UI: the detected mask is shown tinted, brush strokes add to it or remove from it."""

import numpy as np
import pytest
from PIL import Image

from studio.imaging.editor import (ADD_COLOUR, PREVIEW_MAX_SIDE, REMOVE_COLOUR, editor_value, mask_from_editor,
                           open_for_editing, preview_size, stroke_layer)
from studio.core.errors import InputError


def a_product_photo(width=120, height=80):
    """A grey backdrop with a red box (the product) in the middle, and the box's mask."""
    pixels = np.full((height, width, 3), 200, dtype=np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    mask[20:60, 40:80] = True
    pixels[mask] = (200, 30, 30)
    return Image.fromarray(pixels), mask


def region(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_the_detected_mask_is_shown_tinted_on_the_photo():
    photo, mask = a_product_photo()
    value = editor_value(photo, mask)

    background = np.asarray(value["background"]).astype(int)
    photo_pixels = np.asarray(photo).astype(int)
    assert value["background"].size == photo.size and value["layers"] == []
    assert np.array_equal(background[~mask], photo_pixels[~mask])  # untouched outside the mask
    assert np.abs(background[mask] - photo_pixels[mask]).sum(axis=1).min() > 0  # tinted inside


def test_without_strokes_the_detected_mask_is_the_product():
    photo, mask = a_product_photo()
    assert np.array_equal(mask_from_editor(editor_value(photo, mask), photo.size, mask), mask)


def test_the_add_brush_adds_and_the_remove_brush_removes():
    photo, mask = a_product_photo()
    corner = region(mask.shape, slice(0, 10), slice(0, 10))
    left_strip = region(mask.shape, slice(20, 60), slice(40, 50))
    layer = np.asarray(stroke_layer(corner, ADD_COLOUR)).copy()
    layer[left_strip] = np.asarray(stroke_layer(left_strip, REMOVE_COLOUR))[left_strip]
    layer[5, 100] = (*ADD_COLOUR, 20)  # a faint anti-aliased edge pixel does not count

    edited = mask_from_editor({"background": None, "layers": [layer], "composite": None}, photo.size, mask)

    assert np.array_equal(edited, (mask | corner) & ~left_strip)


def test_strokes_alone_make_the_mask_when_nothing_was_detected():
    photo, mask = a_product_photo()
    value = {"layers": [stroke_layer(mask)]}
    assert np.array_equal(mask_from_editor(value, photo.size), mask)


def test_every_layer_counts():
    photo, _ = a_product_photo()
    left = region((80, 120), slice(None), slice(0, 10))
    right = region((80, 120), slice(None), slice(110, 120))
    value = {"layers": [stroke_layer(left), stroke_layer(right)]}

    assert np.array_equal(mask_from_editor(value, photo.size), left | right)


def test_nothing_detected_and_nothing_painted_asks_the_user_to_paint():
    photo, _ = a_product_photo()
    with pytest.raises(InputError, match="paint over the product"):
        mask_from_editor(editor_value(photo, None), photo.size)
    with pytest.raises(InputError, match="paint over the product"):
        mask_from_editor(None, photo.size)


def test_removing_the_whole_product_is_an_error():
    photo, mask = a_product_photo()
    value = {"layers": [stroke_layer(mask, REMOVE_COLOUR)]}
    with pytest.raises(InputError, match="mask is empty"):
        mask_from_editor(value, photo.size, mask)


def test_a_large_photo_is_previewed_small_and_strokes_come_back_at_full_resolution():
    photo = Image.new("RGB", (2048, 1024), "white")
    detected = region((1024, 2048), slice(300, 700), slice(1000, 1600))

    value = editor_value(photo, detected)
    assert value["background"].size == (PREVIEW_MAX_SIDE, 512)

    removed = region((512, 1024), slice(150, 350), slice(500, 600))  # the left third of the box, on the preview
    value["layers"] = [stroke_layer(removed, REMOVE_COLOUR)]
    back = mask_from_editor(value, photo.size, detected)
    assert back.shape == (1024, 2048)
    assert np.array_equal(back, detected & ~region((1024, 2048), slice(300, 700), slice(1000, 1200)))


def test_transparent_photos_are_previewed_on_white():
    photo = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert np.asarray(editor_value(photo)["background"]).min() == 255


def test_uint8_and_float_masks_are_accepted():
    photo, mask = a_product_photo()
    for as_given in (mask.astype(np.uint8) * 255, mask.astype(np.float32)):
        assert np.array_equal(mask_from_editor(None, photo.size, as_given), mask)


def test_preview_size_keeps_the_aspect_and_never_enlarges():
    assert preview_size((4000, 2000), 1000) == (1000, 500)
    assert preview_size((300, 200), 1000) == (300, 200)


def test_bad_masks_and_layers_are_clear_errors():
    photo, _ = a_product_photo()
    with pytest.raises(InputError, match=r"\(H, W\) array"):
        editor_value(photo, np.zeros((80, 120, 3)))
    with pytest.raises(InputError, match="editor layer"):
        mask_from_editor({"layers": [np.zeros((2, 2), dtype=np.uint8)]}, photo.size)


def test_opening_a_photo_on_a_plain_background_finds_the_product(tmp_path):
    photo, mask = a_product_photo()
    path = tmp_path / "product.png"
    photo.save(path)

    image, detected, value, message = open_for_editing(path)

    assert image.size == photo.size and value["background"].size == photo.size
    assert "Product found" in message
    assert (detected & mask).sum() / (detected | mask).sum() > 0.9


def test_opening_a_transparent_cut_out_uses_its_alpha(tmp_path):
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[16:48, 8:40] = (10, 120, 200, 255)
    path = tmp_path / "cut-out.png"
    Image.fromarray(pixels, mode="RGBA").save(path)

    _, detected, _, message = open_for_editing(path)

    assert "transparency" in message
    assert np.array_equal(detected, pixels[:, :, 3] == 255)


def test_a_busy_photo_opens_without_a_mask_and_asks_the_user_to_paint(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "busy.png"
    Image.fromarray(noise).save(path)

    _, detected, value, message = open_for_editing(path)

    assert detected is None and "Paint over the product" in message
    assert np.array_equal(np.asarray(value["background"]), noise)


def test_a_corrupt_upload_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="broken.png"):
        open_for_editing(path)
