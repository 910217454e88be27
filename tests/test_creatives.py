"""The batch job: product photo in, creatives with exact product pixels and a readable recipe out, or nothing at all."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from studio.imaging import engine as engine_module
from studio.imaging.canvas import outpaint_canvas, place_product, product_mask
from studio.imaging.creatives import generate_creatives, parse_extend
from studio.imaging.engine import GenerationCancelled
from studio.core.errors import InputError
from studio.imaging.provenance import read_recipe

# Small and quick: 128 px creatives painted in 2 steps by the tiny random pipeline.
FAST = dict(steps=2, size=128, progress=False, device="cpu")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture()
def model(tiny_pipeline_dir) -> str:
    return str(tiny_pipeline_dir)


def test_background_creatives_keep_the_product_bit_exact_on_disk(product_photo, model, tmp_path):
    out = tmp_path / "out"
    creatives = generate_creatives(
        product_photo, prompt="a teal marble table, soft light", n=2, seed=5, model=model, out_dir=out, **FAST
    )
    assert [c.recipe.seed for c in creatives] == [5, 6]
    assert sorted(p.name for p in out.iterdir()) == sorted(c.path.name for c in creatives)

    canvas = place_product(product_photo, product_mask(product_photo), aspect="1:1", size=128, scale=0.6)
    for creative in creatives:
        on_disk = np.asarray(Image.open(creative.path).convert("RGB"))
        assert on_disk.shape == (128, 128, 3)
        assert np.array_equal(on_disk, np.asarray(creative.image))  # lossless PNG
        assert np.array_equal(on_disk[canvas.keep], np.asarray(canvas.image)[canvas.keep])
        assert set(creative.timings) == {"generate", "paste", "write", "total"}
    first, second = (np.asarray(c.image) for c in creatives)
    assert not np.array_equal(first[~canvas.keep], second[~canvas.keep])  # seeds 5 and 6 paint differently


def test_the_recipe_travels_inside_the_png(product_photo, model, tmp_path):
    [creative] = generate_creatives(
        product_photo, prompt="a red wood table", negative_prompt="blue", n=1, seed=3, model=model,
        scheduler="euler", guidance=5.0, placement="4:5", out_dir=tmp_path, **FAST
    )
    recipe = read_recipe(creative.path)
    assert recipe == creative.recipe
    assert (recipe.prompt, recipe.negative_prompt, recipe.seed, recipe.steps) == ("a red wood table", "blue", 3, 2)
    assert (recipe.scheduler, recipe.guidance, recipe.mode, recipe.placement) == ("euler", 5.0, "background", "4:5")
    assert recipe.random_init is True and recipe.weights_hash.startswith("sha256:")
    assert recipe.size == creative.image.size == (102, 128)


def test_a_lora_is_recorded_with_its_scale_and_hash(product_photo, model, tiny_lora_path):
    bare = generate_creatives(product_photo, prompt="a red wood table", n=1, model=model, **FAST)[0]
    styled = generate_creatives(
        product_photo, prompt="a red wood table", n=1, model=model, lora=tiny_lora_path, lora_scale=0.8, **FAST
    )[0]
    assert styled.recipe.lora == {"path": str(tiny_lora_path), "scale": 0.8, "hash": styled.recipe.lora["hash"]}
    assert styled.recipe.lora["hash"].startswith("sha256:") and bare.recipe.lora is None
    assert not np.array_equal(np.asarray(bare.image), np.asarray(styled.image))


def test_same_seed_makes_the_same_creative_again(product_photo, model):
    first = generate_creatives(product_photo, prompt="a red wood table", n=1, seed=11, model=model, **FAST)[0]
    again = generate_creatives(product_photo, prompt="a red wood table", n=1, seed=11, model=model, **FAST)[0]
    assert first.path is None  # no out_dir: kept in memory only
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))


def test_outpaint_extends_the_frame_and_keeps_the_photo(product_photo, model, tmp_path):
    [creative] = generate_creatives(
        product_photo, prompt="a beach horizon", mode="outpaint", extend="left=40,right=24", n=1, model=model,
        out_dir=tmp_path, **FAST
    )
    photo = np.asarray(Image.open(product_photo).convert("RGB"))
    on_disk = np.asarray(Image.open(creative.path).convert("RGB"))
    assert on_disk.shape == (160, 120 + 64, 3)
    assert np.array_equal(on_disk[:, 40 : 40 + 120], photo)
    assert read_recipe(creative.path).placement == "left=40,right=24"


def test_outpaint_to_an_aspect_without_explicit_amounts(product_photo, model):
    [creative] = generate_creatives(
        product_photo, prompt="a beach horizon", mode="outpaint", placement="16:9", n=1, model=model, **FAST
    )
    width, height = creative.image.size
    assert height == 160 and abs(width / height - 16 / 9) < 0.01
    assert creative.recipe.placement.startswith("left=")


def test_cancel_writes_nothing(product_photo, model, tmp_path):
    stop = threading.Event()
    stop.set()
    out = tmp_path / "out"
    with pytest.raises(GenerationCancelled):
        generate_creatives(product_photo, prompt="a red table", n=3, model=model, out_dir=out, cancel=stop, **FAST)
    assert list(out.iterdir()) == []


def test_a_crash_in_the_middle_of_a_batch_writes_nothing(product_photo, model, tmp_path, monkeypatch):
    engine = engine_module.load_engine(model, device="cpu")
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
        generate_creatives(product_photo, prompt="a red table", n=4, model=model, out_dir=out, **FAST)
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
def test_bad_product_files_leave_the_out_dir_empty(model, tmp_path, content, message):
    product = tmp_path / "product.png"
    if content is not None:
        product.write_bytes(content)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=message):
        generate_creatives(product, prompt="a red table", n=2, model=model, out_dir=out, **FAST)
    assert list(out.iterdir()) == []


def test_a_photo_without_a_findable_product_asks_for_a_mask(model, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    product = tmp_path / "busy.png"
    Image.fromarray(noise).save(product)
    with pytest.raises(InputError, match="mask"):
        generate_creatives(product, prompt="a red table", model=model, out_dir=tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_a_user_mask_is_used(model, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    product, mask = tmp_path / "busy.png", tmp_path / "mask.png"
    Image.fromarray(noise).save(product)
    mask_pixels = np.zeros((96, 96), np.uint8)
    mask_pixels[30:70, 30:60] = 255
    Image.fromarray(mask_pixels).save(mask)
    [creative] = generate_creatives(product, prompt="a red table", mask=mask, n=1, model=model, **FAST)
    canvas = place_product(product, product_mask(product, mask), aspect="1:1", size=128, scale=0.6)
    assert np.array_equal(np.asarray(creative.image)[canvas.keep], np.asarray(canvas.image)[canvas.keep])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt=" ".join(["red"] * 90)), "92 tokens long"),
        (dict(prompt="red", mode="inpaint-everything"), "mode must be"),
        (dict(prompt="red", n=0), "n must be"),
        (dict(prompt="red", seed=-1), "seed must be"),
        (dict(prompt="red", steps=0), "steps"),
        (dict(prompt="red", scheduler="nope"), "unknown scheduler"),
        (dict(prompt="red", placement="0:1"), "aspect|placement"),
        (dict(prompt="red", mode="outpaint", extend="up=10"), "cannot read extension"),
        (dict(prompt="red", lora="/no/such/lora.safetensors"), "LoRA"),
    ],
)
def test_bad_arguments_are_input_errors_and_write_nothing(product_photo, model, tmp_path, arguments, message):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        generate_creatives(product_photo, model=model, out_dir=out, **{**FAST, **arguments})
    assert not out.exists() or list(out.iterdir()) == []


def test_an_out_dir_that_is_a_file_is_an_input_error(product_photo, model, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    with pytest.raises(InputError, match="cannot write creatives"):
        generate_creatives(product_photo, prompt="a red table", n=1, model=model, out_dir=taken, **FAST)
    assert taken.read_text() == "a file, not a folder"


def test_parse_extend():
    assert parse_extend("left=256, right=128") == {"left": 256, "right": 128}
    assert parse_extend("top=8") == {"top": 8}
    with pytest.raises(InputError):
        parse_extend("left=-3")
    with pytest.raises(InputError):
        parse_extend(" , ")


def test_outpaint_canvas_matches_what_generate_uses(product_photo):
    # The outpaint creative above is compared to the photo itself; this pins down that the canvas agrees.
    canvas = outpaint_canvas(product_photo, left=40, right=24)
    assert canvas.size == (184, 160) and canvas.box == (40, 0, 160, 160)
