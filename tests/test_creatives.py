"""The batch job: product photo in, creatives with exact product pixels and a readable recipe out, or nothing at all."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from PIL import Image

from studio.core.errors import InputError
from studio.imaging import engine as engine_module
from studio.imaging import images as images_module
from studio.imaging.canvas import outpaint_canvas, place_product, product_mask
from studio.imaging.creatives import CreativeSettings, build_canvas, generate_creatives, parse_extend
from studio.imaging.engine import GenerationCancelled, LoraSpec
from studio.imaging.images import load_image
from studio.imaging.provenance import read_recipe

pytestmark = pytest.mark.slow  # loads models


def fast(**options) -> CreativeSettings:
    """Small and quick: 128 px creatives painted in 2 steps by the tiny random pipeline."""
    return CreativeSettings(**{"steps": 2, "size": 128, **options})


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture()
def engine(tiny_pipeline_dir):
    return engine_module.load_engine(str(tiny_pipeline_dir), device="cpu")


@pytest.fixture()
def photo(product_photo):
    return load_image(product_photo)


def test_background_creatives_keep_the_product_bit_exact_on_disk(product_photo, photo, engine, tmp_path):
    out = tmp_path / "out"
    creatives = generate_creatives(
        product_photo, "a teal marble table, soft light", settings=fast(), n=2, seed=5, engine=engine, out_dir=out,
        progress=False,
    )
    assert [c.recipe.seed for c in creatives] == [5, 6]
    assert sorted(p.name for p in out.iterdir()) == sorted(c.path.name for c in creatives)
    assert all(c.path.name.startswith("bottle-background-") for c in creatives)  # named after the photo

    canvas = place_product(photo, product_mask(photo), aspect="1:1", size=128, scale=0.6)
    for creative in creatives:
        on_disk = np.asarray(Image.open(creative.path).convert("RGB"))
        assert on_disk.shape == (128, 128, 3)
        assert np.array_equal(on_disk, np.asarray(creative.image))  # lossless PNG
        assert np.array_equal(on_disk[canvas.keep], np.asarray(canvas.image)[canvas.keep])
        assert set(creative.timings) == {"generate", "paste", "write", "total"}
    first, second = (np.asarray(c.image) for c in creatives)
    assert not np.array_equal(first[~canvas.keep], second[~canvas.keep])  # seeds 5 and 6 paint differently


def test_the_recipe_travels_inside_the_png(product_photo, engine, tmp_path):
    settings = fast(negative_prompt="blue", scheduler="euler", guidance=5.0, placement="4:5")
    [creative] = generate_creatives(
        product_photo, "a red wood table", settings=settings, n=1, seed=3, engine=engine, out_dir=tmp_path,
        progress=False,
    )
    recipe = read_recipe(creative.path)
    assert recipe == creative.recipe
    assert (recipe.prompt, recipe.negative_prompt, recipe.seed, recipe.steps) == ("a red wood table", "blue", 3, 2)
    assert (recipe.scheduler, recipe.guidance, recipe.mode, recipe.placement) == ("euler", 5.0, "background", "4:5")
    assert recipe.random_init is True and recipe.weights_hash.startswith("sha256:")
    assert recipe.size == creative.image.size == (102, 128)


def test_a_model_paints_at_its_declared_guidance_unless_told_otherwise(product_photo, tiny_pipeline_dir, tmp_path):
    import shutil

    from studio.core.artefact import PIPELINE_CLASS, PIPELINE_FORMAT, write_manifest
    from studio.ui.create import model_guidance_for

    folder = tmp_path / "declares-2"
    shutil.copytree(tiny_pipeline_dir, folder)
    write_manifest(folder, PIPELINE_CLASS, PIPELINE_FORMAT, name="studio-mini", version=2, guidance=2.0)
    declaring = engine_module.load_engine(str(folder), device="cpu")
    plain = engine_module.load_engine(str(tiny_pipeline_dir), device="cpu")
    assert (declaring.default_guidance, plain.default_guidance) == (2.0, 7.5)
    assert engine_module.model_guidance(str(folder)) == 2.0 and model_guidance_for(str(folder)) == 2.0
    assert model_guidance_for("some-org/some-model") is None  # a hub id: the slider is left alone

    def paint(engine, **options):
        [creative] = generate_creatives(product_photo, "a red wood table", settings=fast(**options), n=1, seed=3,
                                        engine=engine, progress=False)
        return creative

    left_open, explicit, overridden = paint(declaring), paint(declaring, guidance=2.0), paint(declaring, guidance=7.5)
    assert left_open.recipe.guidance == 2.0 and overridden.recipe.guidance == 7.5
    assert np.array_equal(np.asarray(left_open.image), np.asarray(explicit.image))
    assert not np.array_equal(np.asarray(left_open.image), np.asarray(overridden.image))
    assert np.array_equal(np.asarray(overridden.image), np.asarray(paint(plain).image))  # 7.5 without a declaration

    write_manifest(folder, PIPELINE_CLASS, PIPELINE_FORMAT, guidance="strong")
    with pytest.raises(engine_module.ModelNotFoundError, match="guidance"):
        engine_module.load_engine(str(folder), device="cpu")


def test_a_lora_is_recorded_with_its_scale_and_hash(product_photo, engine, tiny_lora_path):
    bare = generate_creatives(product_photo, "a red wood table", settings=fast(), n=1, engine=engine,
                              progress=False)[0]
    styled = generate_creatives(
        product_photo, "a red wood table", settings=fast(lora=LoraSpec(str(tiny_lora_path), 0.8)), n=1,
        engine=engine, progress=False,
    )[0]
    assert styled.recipe.lora == {"path": str(tiny_lora_path), "scale": 0.8, "hash": styled.recipe.lora["hash"]}
    assert styled.recipe.lora["hash"].startswith("sha256:") and bare.recipe.lora is None
    assert not np.array_equal(np.asarray(bare.image), np.asarray(styled.image))


def test_same_seed_makes_the_same_creative_again(product_photo, engine):
    first = generate_creatives(product_photo, "a red wood table", settings=fast(), n=1, seed=11, engine=engine,
                               progress=False)[0]
    again = generate_creatives(product_photo, "a red wood table", settings=fast(), n=1, seed=11, engine=engine,
                               progress=False)[0]
    assert first.path is None  # no out_dir: kept in memory only
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))


@pytest.mark.parametrize("options", [{}, {"mode": "outpaint", "extend": "left=40,right=24"}], ids=["background",
                                                                                                   "outpaint"])
def test_a_canvas_built_once_paints_the_same_pixels_and_recipes_as_the_photo(photo, engine, options):
    settings = fast(**options)
    from_photo = generate_creatives(photo, "a red wood table", settings=settings, n=2, seed=7, engine=engine,
                                    progress=False)
    canvas = build_canvas(photo, settings)
    from_canvas = generate_creatives(canvas, "a red wood table", settings=settings, n=2, seed=7, engine=engine,
                                     progress=False)
    for a, b in zip(from_photo, from_canvas):
        assert a.recipe == b.recipe
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_the_photo_is_decoded_once_per_request(product_photo, engine, tmp_path, monkeypatch):
    decodes = []
    real_open = images_module._open

    def counting_open(*args, **kwargs):
        decodes.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(images_module, "_open", counting_open)
    generate_creatives(product_photo, "a red table", settings=fast(), n=3, engine=engine, out_dir=tmp_path / "a",
                       progress=False)
    assert decodes == [product_photo]

    # The CLI and the UI decode the photo themselves (they need its size for the mask) and pass the image on.
    decodes.clear()
    image = load_image(product_photo)
    assert load_image(image) is image  # an image load_image made comes back as is: no decode, no copy
    generate_creatives(image, "a red table", settings=fast(), n=2, engine=engine, progress=False)
    assert decodes == [product_photo]


def test_outpaint_extends_the_frame_and_keeps_the_photo(product_photo, engine, tmp_path):
    [creative] = generate_creatives(
        product_photo, "a beach horizon", settings=fast(mode="outpaint", extend="left=40,right=24"), n=1,
        engine=engine, out_dir=tmp_path, progress=False,
    )
    photo = np.asarray(Image.open(product_photo).convert("RGB"))
    on_disk = np.asarray(Image.open(creative.path).convert("RGB"))
    assert on_disk.shape == (160, 120 + 64, 3)
    assert np.array_equal(on_disk[:, 40 : 40 + 120], photo)
    assert read_recipe(creative.path).placement == "left=40,right=24"


def test_outpaint_to_an_aspect_without_explicit_amounts(product_photo, engine):
    [creative] = generate_creatives(
        product_photo, "a beach horizon", settings=fast(mode="outpaint", placement="16:9"), n=1, engine=engine,
        progress=False,
    )
    width, height = creative.image.size
    assert height == 160 and abs(width / height - 16 / 9) < 0.01
    assert creative.recipe.placement.startswith("left=")


def test_cancel_writes_nothing(product_photo, engine, tmp_path):
    stop = threading.Event()
    stop.set()
    out = tmp_path / "out"
    with pytest.raises(GenerationCancelled):
        generate_creatives(product_photo, "a red table", settings=fast(), n=3, engine=engine, out_dir=out,
                           cancel=stop, progress=False)
    assert list(out.iterdir()) == []


def test_a_crash_in_the_middle_of_a_batch_writes_nothing(product_photo, engine, tmp_path, monkeypatch):
    real_generate = engine.generate
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(engine, "generate", fail_on_third)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="out of memory"):
        generate_creatives(product_photo, "a red table", settings=fast(), n=4, engine=engine, out_dir=out,
                           progress=False)
    assert len(calls) == 3 and list(out.iterdir()) == []


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"this is not an image", "not an image|cannot identify|corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt|truncated|not an image"),
    ],
    ids=["missing", "empty", "text", "truncated-png"],
)
def test_bad_product_files_leave_the_out_dir_empty(engine, tmp_path, content, message):
    product = tmp_path / "product.png"
    if content is not None:
        product.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=message):
        generate_creatives(product, "a red table", settings=fast(), n=2, engine=engine, out_dir=out, progress=False)
    assert list(out.iterdir()) == []


def test_a_photo_without_a_findable_product_asks_for_a_mask(engine, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    product = tmp_path / "busy.png"
    Image.fromarray(noise).save(product)
    with pytest.raises(InputError, match="mask"):
        generate_creatives(product, "a red table", settings=fast(), engine=engine, out_dir=tmp_path / "out",
                           progress=False)
    assert not (tmp_path / "out").exists()


def test_a_user_mask_is_used(engine, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    product, mask = tmp_path / "busy.png", tmp_path / "mask.png"
    Image.fromarray(noise).save(product)
    mask_pixels = np.zeros((96, 96), np.uint8)
    mask_pixels[30:70, 30:60] = 255
    Image.fromarray(mask_pixels).save(mask)
    [creative] = generate_creatives(product, "a red table", settings=fast(), mask=mask, n=1, engine=engine,
                                    progress=False)
    photo = load_image(product)
    canvas = place_product(photo, product_mask(photo, mask), aspect="1:1", size=128, scale=0.6)
    assert np.array_equal(np.asarray(creative.image)[canvas.keep], np.asarray(canvas.image)[canvas.keep])


@pytest.mark.parametrize(
    "prompt, options, message",
    [
        ("", {}, "prompt is empty"),
        (" ".join(["red"] * 90), {}, "92 tokens long"),
        ("red", {"mode": "inpaint-everything"}, "mode must be"),
        ("red", {"n": 0}, "n must be"),
        ("red", {"seed": -1}, "seed must be"),
        ("red", {"steps": 0}, "steps"),
        ("red", {"scheduler": "nope"}, "unknown scheduler"),
        ("red", {"placement": "0:1"}, "aspect|placement"),
        ("red", {"mode": "outpaint", "extend": "up=10"}, "cannot read extension"),
        ("red", {"lora": LoraSpec("/no/such/lora.safetensors")}, "LoRA"),
    ],
)
def test_bad_arguments_are_input_errors_and_write_nothing(product_photo, engine, tmp_path, prompt, options, message):
    call = {key: options[key] for key in ("n", "seed") if key in options}
    options = {key: value for key, value in options.items() if key not in call}
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        generate_creatives(product_photo, prompt, settings=fast(**options), engine=engine, out_dir=out,
                           progress=False, **call)
    assert not out.exists() or list(out.iterdir()) == []


def test_a_canvas_must_match_the_settings_and_carries_its_own_mask(photo, engine):
    canvas = build_canvas(photo, fast())
    with pytest.raises(InputError, match="canvas is for mode 'background'"):
        generate_creatives(canvas, "a red table", settings=fast(mode="outpaint"), engine=engine, progress=False)
    with pytest.raises(InputError, match="canvas already holds"):
        generate_creatives(canvas, "a red table", settings=fast(), mask=np.ones((160, 120), bool), engine=engine,
                           progress=False)
    with pytest.raises(InputError, match="must be a CreativeSettings"):
        generate_creatives(canvas, "a red table", settings=engine_module.GenerationSettings(), engine=engine)


def test_an_out_dir_that_is_a_file_is_an_input_error(product_photo, engine, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    with pytest.raises(InputError, match="cannot write creatives"):
        generate_creatives(product_photo, "a red table", settings=fast(), n=1, engine=engine, out_dir=taken,
                           progress=False)
    assert taken.read_text() == "a file, not a folder"


def test_settings_are_one_object_the_engine_takes_as_is():
    settings = fast(negative_prompt="blue", mode="outpaint")
    assert isinstance(settings, engine_module.GenerationSettings)
    assert dataclasses.replace(settings, negative_prompt="red").mode == "outpaint"


def test_parse_extend():
    assert parse_extend("left=256, right=128") == {"left": 256, "right": 128}
    assert parse_extend("top=8") == {"top": 8}
    with pytest.raises(InputError):
        parse_extend("left=-3")
    with pytest.raises(InputError):
        parse_extend(" , ")


def test_outpaint_canvas_matches_what_generate_uses(photo):
    # The outpaint creative above is compared to the photo itself; this pins down that the canvas agrees.
    canvas = outpaint_canvas(photo, left=40, right=24)
    assert canvas.size == (184, 160) and canvas.box == (40, 0, 160, 160) and canvas.placement == "left=40,right=24"
    assert build_canvas(photo, fast(mode="outpaint", extend={"right": 24, "left": 40})).placement == canvas.placement


def test_position_puts_the_products_centre_where_asked(product_photo):
    from studio.imaging.creatives import CreativeSettings, build_canvas
    from studio.imaging.images import load_image

    photo = load_image(product_photo)
    canvas = build_canvas(photo, CreativeSettings(size=400, scale=0.3, position=(0.25, 0.7)))
    left, top, right, bottom = canvas.box
    assert abs((left + right) / 2 - 100) <= 1 and abs((top + bottom) / 2 - 280) <= 1
    centred = build_canvas(photo, CreativeSettings(size=400, scale=0.3))  # the default: centre, a little low
    assert abs(sum(centred.box[0::2]) / 2 - 200) <= 1 and abs(sum(centred.box[1::2]) / 2 - 220) <= 1
