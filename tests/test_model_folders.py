"""What `--model` accepts besides an inpainting folder: a text-to-image model (mask blending), a single-file
checkpoint; what it refuses with one clear line: a folder missing a component, a UNet that fits no mode; and the
memory and speed options, each recorded in the recipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from studio.core.errors import InputError, ModelNotFoundError
from studio.imaging.creatives import CreativeSettings, build_canvas, generate_creatives
from studio.imaging.engine import INPAINTING_MODEL, MASK_BLENDING, EngineOptions, GenerationSettings, load_engine
from studio.imaging.images import load_image
from studio.imaging.provenance import read_recipe


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def copy_with_unet(tiny_pipeline_dir, folder, *, in_channels: int, pipeline_class: str | None = None):
    """The tiny pipeline with its UNet rebuilt for `in_channels` (and model_index's class renamed if asked)."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(tiny_pipeline_dir, folder)
    config = dict(UNet2DConditionModel.load_config(folder / "unet"), in_channels=in_channels)
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    if pipeline_class:
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = pipeline_class
        for key in ("safety_checker", "feature_extractor", "image_encoder"):
            index.pop(key, None)
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_text_to_image_model_paints_with_mask_blending_and_says_so(tiny_pipeline_dir, product_photo, tmp_path):
    folder = copy_with_unet(tiny_pipeline_dir, tmp_path / "t2i", in_channels=4, pipeline_class="StableDiffusionPipeline")
    environment = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "studio.cli", "generate", "--product", str(product_photo), "--prompt", "a red table",
         "--model", str(folder), "--steps", "2", "--size", "128", "--n", "1", "--out", str(tmp_path / "out"),
         "--json"], capture_output=True, text=True, env=environment, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["inpaint_method"] == MASK_BLENDING
    assert "mask blending" in result.stderr
    path = summary["creatives"][0]["path"]
    assert read_recipe(path).inpaint_method == MASK_BLENDING
    canvas = build_canvas(load_image(product_photo), CreativeSettings(size=128))
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB"))[canvas.keep],
                          np.asarray(canvas.image)[canvas.keep])


def test_the_inpainting_model_says_it_is_one(tiny_pipeline_dir):
    assert load_engine(str(tiny_pipeline_dir), device="cpu").inpaint_method == INPAINTING_MODEL


def test_a_unet_that_fits_no_mode_is_one_clear_error(tiny_pipeline_dir, tmp_path):
    folder = copy_with_unet(tiny_pipeline_dir, tmp_path / "odd", in_channels=5)
    with pytest.raises(ModelNotFoundError) as caught:
        load_engine(str(folder), device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert "takes 5 input channels" in message and "inpainting UNet takes 9" in message and "neither" in message


def test_a_folder_missing_its_vae_says_which_folder_is_missing(tiny_pipeline_dir, tmp_path):
    folder = shutil.copytree(tiny_pipeline_dir, tmp_path / "no-vae")
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelNotFoundError, match=r"has no vae/ folder although its model_index.json lists a "
                                                 r"AutoencoderKL; copy the whole pipeline folder"):
        load_engine(str(folder), device="cpu")
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelNotFoundError, match="has no VAE"):
        load_engine(str(folder), device="cpu")


def test_a_single_file_checkpoint_needs_a_local_configuration(tiny_pipeline_dir, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_engine(str(checkpoint), device="cpu")
    checkpoint.write_bytes(b"")
    with pytest.raises(InputError, match="pass --model-config with a local diffusers folder"):
        load_engine(str(checkpoint), device="cpu")
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_engine(str(checkpoint), device="cpu", model_config=str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="could not load the checkpoint") as caught:  # an empty file
        load_engine(str(checkpoint), device="cpu", model_config=str(tiny_pipeline_dir))
    assert "\n" not in str(caught.value)


def test_engine_options_are_applied_and_recorded(tiny_pipeline_dir, product_photo):
    options = EngineOptions(attention_slicing=True, vae_tiling=True, channels_last=True)
    assert options.describe() == "attention-slicing,vae-tiling,channels-last"
    assert EngineOptions().describe() == "" and EngineOptions(cpu_offload="model").describe() == "cpu-offload=model"
    plain = load_engine(str(tiny_pipeline_dir), device="cpu")
    tuned = load_engine(str(tiny_pipeline_dir), device="cpu", options=options)
    assert tuned is not plain and tuned.pipeline.vae.use_tiling and not plain.pipeline.vae.use_tiling
    import torch

    weight = tuned.pipeline.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()

    settings = CreativeSettings(size=128, steps=2)
    (a,) = generate_creatives(product_photo, "a red table", settings=settings, n=1, seed=1, engine=plain,
                              progress=False)
    (b,) = generate_creatives(product_photo, "a red table", settings=settings, n=1, seed=1, engine=tuned,
                              progress=False)
    assert (a.recipe.engine_options, b.recipe.engine_options) == ("", options.describe())
    # Slicing and memory order change the summation order only; tiling is inactive below the tile size.
    difference = np.abs(np.asarray(a.image, np.int16) - np.asarray(b.image, np.int16))
    assert difference.max() <= 2


def test_cpu_offload_needs_a_gpu_and_unknown_values_are_refused(tiny_pipeline_dir):
    with pytest.raises(InputError, match="needs --device cuda"):
        load_engine(str(tiny_pipeline_dir), device="cpu", options=EngineOptions(cpu_offload="model"))
    with pytest.raises(InputError, match="cpu_offload must be one of model, sequential"):
        load_engine(str(tiny_pipeline_dir), device="cpu", options=EngineOptions(cpu_offload="everything"))


@pytest.mark.slow
def test_compile_paints_what_eager_paints(tiny_pipeline_dir, product_photo):
    eager = load_engine(str(tiny_pipeline_dir), device="cpu")
    compiled = load_engine(str(tiny_pipeline_dir), device="cpu", options=EngineOptions(compile=True))
    canvas = build_canvas(load_image(product_photo), CreativeSettings(size=128))
    image, mask = canvas.image.resize((128, 128)), canvas.paint_mask.resize((128, 128))
    settings = GenerationSettings(steps=2)
    first = eager.generate(image, mask, prompt="a red table", seed=2, settings=settings)
    second = compiled.generate(image, mask, prompt="a red table", seed=2, settings=settings)
    assert np.abs(np.asarray(first, np.int16) - np.asarray(second, np.int16)).max() <= 2


# Parameter counts of the published checkpoints (the inpainting UNets and FLUX Fill carry their extra input channels).
PUBLISHED = {
    ("sd15-inpaint", False): {"unet": 859_535_364, "text_encoder": 123_060_480, "vae": 83_653_863},
    ("sd2-inpaint", False): {"unet": 865_925_124, "text_encoder": 340_387_840, "vae": 83_653_863},
    ("sdxl-inpaint", False): {"unet": 2_567_478_084, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                              "vae": 83_653_863},
    ("flux-fill", True): {"transformer": 11_902_391_360, "text_encoder": 123_060_480,
                          "text_encoder_2": 4_762_310_656, "vae": 83_819_683},
}


@pytest.mark.parametrize("name, full_depth", list(PUBLISHED))
def test_architectures_have_their_published_sizes(name, full_depth, tmp_path):
    """Built on the meta device (no memory): every component has exactly the published checkpoint's parameters."""
    import torch

    from studio.imaging.architectures import build_random_pipeline

    pipeline = build_random_pipeline(name, tmp_path, device="meta", save=False, full_depth=full_depth)
    counts = {key: sum(p.numel() for p in module.parameters())
              for key, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}
    assert counts == PUBLISHED[(name, full_depth)]


def test_the_reduced_flux_keeps_the_real_widths(tmp_path):
    from studio.imaging.architectures import build_random_pipeline

    pipeline = build_random_pipeline("flux-fill", tmp_path, device="meta", save=False)
    config = pipeline.transformer.config
    assert (config.num_layers, config.num_single_layers) == (1, 1)
    assert (config.num_attention_heads * config.attention_head_dim, config.in_channels) == (3072, 384)
    assert (pipeline.text_encoder_2.config.d_model, pipeline.text_encoder_2.config.num_layers) == (4096, 1)


def test_auto_precision_is_bf16_for_flux_on_a_gpu(tiny_pipeline_dir, tmp_path, monkeypatch):
    """fp16 overflows in FLUX's T5 encoder, so "auto" on a GPU means bf16 there (fp16 elsewhere)."""
    from studio.imaging import engine

    asked: list[tuple[str, str]] = []

    def record(device, dtype="auto"):
        asked.append((device, dtype))
        raise InputError("recorded")  # stop before anything loads: this machine has no GPU

    monkeypatch.setattr(engine, "resolve_dtype", record)
    flux = shutil.copytree(tiny_pipeline_dir, tmp_path / "flux")
    index = json.loads((flux / "model_index.json").read_text())
    (flux / "model_index.json").write_text(json.dumps(dict(index, _class_name="FluxFillPipeline")))
    for folder in (flux, tiny_pipeline_dir):
        with pytest.raises(InputError, match="recorded"):
            engine._load_pipeline(str(folder), model_config=None, device="cuda", dtype="auto")
    assert asked == [("cuda", "bf16"), ("cuda", "auto")]
