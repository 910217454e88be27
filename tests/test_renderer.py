"""The procedural scene renderer: deterministic scenes whose pixels match their captions."""

import numpy as np
import pytest

from studio.core.errors import InputError
from studio.sim.renderer import (
    CAPTION_WORDS,
    Scene,
    outpaint_mask,
    render_backdrop,
    render_product,
    render_scene,
    sample_scenes,
)
from studio.core.vocabulary import COLOURS, LAYOUTS, LIGHTING, MATERIALS, PRODUCTS


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    table = np.array([COLOURS[name] for name in names], float)
    return names[int(np.argmin(((table - rgb) ** 2).sum(1)))]


def test_same_seed_same_pixels_and_other_seed_other_pixels():
    first = render_scene("teal", "wood", "dramatic", "horizon", "mug", size=96, seed=7)
    again = render_scene("teal", "wood", "dramatic", "horizon", "mug", size=96, seed=7)
    other = render_scene("teal", "wood", "dramatic", "horizon", "mug", size=96, seed=8)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.caption == again.caption
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


@pytest.mark.parametrize("lighting", LIGHTING)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_background_mean_colour_is_the_named_colour(lighting, layout):
    for colour in COLOURS:
        for material in MATERIALS:
            scene = render_scene(colour, material, lighting, layout, "box", size=48, seed=3)
            background = np.asarray(scene.product_mask) < 128
            assert nearest_colour(np.asarray(scene.image, float)[background].mean(0)) == colour


def test_caption_names_every_attribute_with_vocabulary_words():
    scene = render_scene("purple", "bokeh", "bright", "tabletop", "shoe", size=64, seed=1)
    words = scene.caption.split()
    for value in ("purple", "bokeh", "bright", "tabletop", "shoe"):
        assert value in words
    known = set(CAPTION_WORDS) | set(COLOURS) | set(MATERIALS) | set(LIGHTING) | set(LAYOUTS) | set(PRODUCTS)
    assert set(words) <= known


def test_product_mask_marks_the_pasted_product_and_background_mask_is_its_inverse():
    scene = render_scene("white", "plain", "soft", "studio", "bottle", size=128, seed=2)
    product, background = np.asarray(scene.product_mask), np.asarray(scene.background_mask)
    assert set(np.unique(product)) == {0, 255}
    assert np.array_equal(product + background, np.full_like(product, 255))
    assert 0.03 < (product > 0).mean() < 0.4  # a product shot: the product is a part, not the whole
    changed = np.any(np.asarray(scene.image) != np.asarray(scene.backdrop), axis=-1)
    assert changed[product > 0].mean() > 0.95  # the product covers the backdrop where the mask says


def test_materials_differ_in_texture_energy():
    def gradient_energy(material):
        pixels = np.asarray(render_backdrop("grey", material, "soft", "studio", 64, seed=0), float).mean(-1)
        return np.abs(np.diff(pixels, axis=1)).mean() + np.abs(np.diff(pixels, axis=0)).mean()

    assert gradient_energy("plain") < 0.5 * min(gradient_energy(m) for m in MATERIALS if m != "plain")


def test_product_cut_outs_have_transparent_surroundings():
    for kind in PRODUCTS:
        product = render_product(kind, seed=0, size=64)
        alpha = np.asarray(product.getchannel("A"))
        assert product.mode == "RGBA" and product.size == (64, 64)
        assert alpha[0, 0] == 0 and 0.1 < (alpha > 128).mean() < 0.8


def test_sample_scenes_is_a_seeded_catalogue():
    scenes = sample_scenes(4, seed=5, size=32)
    assert len(scenes) == 4 and all(isinstance(scene, Scene) for scene in scenes)
    assert [s.caption for s in scenes] == [s.caption for s in sample_scenes(4, seed=5, size=32)]
    excluded = sample_scenes(30, seed=1, size=16, exclude={("red", m) for m in MATERIALS})
    assert all(scene.attributes["colour"] != "red" for scene in excluded)


def test_outpaint_mask_repaints_outside_the_kept_frame():
    mask = np.asarray(outpaint_mask((100, 50), keep=(0.25, 0.0, 0.75, 1.0)))
    assert mask.shape == (50, 100)
    assert (mask[:, 25:75] == 0).all() and (mask[:, :25] == 255).all() and (mask[:, 75:] == 255).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_backdrop("magenta"),
        lambda: render_backdrop("red", material="velvet"),
        lambda: render_scene("red", product="car"),
        lambda: render_scene("red", size=0),
        lambda: render_product("mug", size=3),
        lambda: outpaint_mask(64, keep=(0.5, 0.0, 0.4, 1.0)),
        lambda: sample_scenes(-1),
    ],
)
def test_bad_input_is_a_clear_input_error(call):
    with pytest.raises(InputError):
        call()
