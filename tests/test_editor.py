"""The mask-editing step of the UI: a mask goes into the editor as a paint layer and comes back out unchanged."""

import numpy as np
import pytest
from PIL import Image

from studio.editor import PREVIEW_MAX_SIDE, editor_value, mask_from_editor, mask_layer, open_for_editing, preview_size
from studio.errors import InputError


def a_product_photo(width=120, height=80):
    """A grey backdrop with a red box (the product) in the middle, and the box's mask."""
    pixels = np.full((height, width, 3), 200, dtype=np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    mask[20:60, 40:80] = True
    pixels[mask] = (200, 30, 30)
    return Image.fromarray(pixels), mask


def test_a_mask_round_trips_through_the_editor_value():
    photo, mask = a_product_photo()
    value = editor_value(photo, mask)

    assert value["background"].size == photo.size
    assert len(value["layers"]) == 1
    assert np.array_equal(mask_from_editor(value, photo.size), mask)


def test_the_background_is_the_photo_and_the_composite_shows_the_mask():
    photo, mask = a_product_photo()
    value = editor_value(photo, mask)

    assert np.array_equal(np.asarray(value["background"]), np.asarray(photo))
    composite = np.asarray(value["composite"]).astype(int)
    photo_pixels = np.asarray(photo).astype(int)
    assert np.array_equal(composite[~mask], photo_pixels[~mask])  # untouched outside the mask
    assert np.abs(composite[mask] - photo_pixels[mask]).sum(axis=1).min() > 0  # tinted inside


def test_without_a_detected_mask_the_layer_is_empty_and_reading_it_asks_the_user_to_paint():
    photo, _ = a_product_photo()
    value = editor_value(photo, None)

    assert np.asarray(value["layers"][0])[:, :, 3].max() == 0
    with pytest.raises(InputError, match="paint over the product"):
        mask_from_editor(value, photo.size)


def test_brush_strokes_and_erasing_change_the_mask():
    photo, mask = a_product_photo()
    layer = np.asarray(editor_value(photo, mask)["layers"][0]).copy()
    layer[0:10, 0:10] = (0, 0, 0, 255)  # a brush stroke in the corner, any colour
    layer[20:60, 40:50, 3] = 0  # the eraser removes the left strip of the box
    layer[5, 100] = (0, 0, 0, 20)  # a faint anti-aliased edge pixel does not count

    edited = mask_from_editor({"background": None, "layers": [layer], "composite": None}, photo.size)

    expected = mask.copy()
    expected[0:10, 0:10] = True
    expected[20:60, 40:50] = False
    assert np.array_equal(edited, expected)


def test_every_layer_counts():
    photo, _ = a_product_photo()
    left = np.zeros((80, 120), dtype=bool)
    left[:, :10] = True
    right = np.zeros((80, 120), dtype=bool)
    right[:, -10:] = True
    value = {"layers": [mask_layer(left, photo.size), mask_layer(right, photo.size)]}

    assert np.array_equal(mask_from_editor(value, photo.size), left | right)


def test_a_large_photo_is_previewed_small_and_the_mask_comes_back_at_full_resolution():
    photo = Image.new("RGB", (2048, 1024), "white")
    mask = np.zeros((1024, 2048), dtype=bool)
    mask[300:700, 1000:1600] = True

    value = editor_value(photo, mask)
    assert value["background"].size == (PREVIEW_MAX_SIDE, 512)

    back = mask_from_editor(value, photo.size)
    assert back.shape == (1024, 2048)
    assert np.array_equal(back, mask)  # the preview is exactly half size, so the box edges survive


def test_transparent_photos_are_previewed_on_white():
    photo = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert np.asarray(editor_value(photo)["background"]).min() == 255


def test_uint8_and_float_masks_are_accepted():
    photo, mask = a_product_photo()
    for as_given in (mask.astype(np.uint8) * 255, mask.astype(np.float32)):
        assert np.array_equal(mask_from_editor(editor_value(photo, as_given), photo.size), mask)


def test_preview_size_keeps_the_aspect_and_never_enlarges():
    assert preview_size((4000, 2000), 1000) == (1000, 500)
    assert preview_size((300, 200), 1000) == (300, 200)


def test_bad_masks_and_layers_are_clear_errors():
    photo, _ = a_product_photo()
    with pytest.raises(InputError, match=r"\(H, W\) array"):
        editor_value(photo, np.zeros((80, 120, 3)))
    with pytest.raises(InputError, match="paint over the product"):
        mask_from_editor(None, photo.size)
    with pytest.raises(InputError, match="editor layer"):
        mask_from_editor({"layers": [np.zeros((2, 2, 2, 2), dtype=np.uint8)]}, photo.size)


def test_opening_a_photo_on_a_plain_background_finds_the_product(tmp_path):
    photo, mask = a_product_photo()
    path = tmp_path / "product.png"
    photo.save(path)

    image, value, message = open_for_editing(path)

    assert image.size == photo.size
    assert "Product found" in message
    found = mask_from_editor(value, image.size)
    assert (found & mask).sum() / (found | mask).sum() > 0.9


def test_opening_a_transparent_cut_out_uses_its_alpha(tmp_path):
    pixels = np.zeros((64, 64, 4), dtype=np.uint8)
    pixels[16:48, 8:40] = (10, 120, 200, 255)
    path = tmp_path / "cut-out.png"
    Image.fromarray(pixels, mode="RGBA").save(path)

    _, value, message = open_for_editing(path)

    assert "transparency" in message
    assert np.array_equal(mask_from_editor(value, (64, 64)), pixels[:, :, 3] == 255)


def test_a_busy_photo_opens_with_an_empty_mask_and_asks_the_user_to_paint(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "busy.png"
    Image.fromarray(noise).save(path)

    _, value, message = open_for_editing(path)

    assert "Paint over the product" in message
    assert np.asarray(value["layers"][0])[:, :, 3].max() == 0


def test_a_corrupt_upload_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="broken.png"):
        open_for_editing(path)
