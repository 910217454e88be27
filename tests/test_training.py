"""The inpainting trainer on tiny components: the objective, full and LoRA fine-tuning, checkpoints and data."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from studio.core.errors import InputError, ModelNotFoundError
from studio.sim.renderer import render_scene
from studio.training.trainer import (
    Components,
    FolderData,
    InpaintingTrainer,
    RendererData,
    TrainConfig,
    encode_dataset,
    encode_prompts,
    latest_checkpoint,
    load_pipeline,
    make_mask,
)

pytestmark = pytest.mark.slow  # loads models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from studio.imaging.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_pipeline(folder, seed=0)
    return folder


def load(folder):
    from diffusers import AutoPipelineForInpainting

    pipeline = AutoPipelineForInpainting.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def config(**overrides):
    settings = dict(steps=6, batch_size=4, learning_rate=1e-3, resolution=64, checkpoint_every=3, snr_gamma=None)
    return TrainConfig(**{**settings, **overrides})


def paint(pipeline, seed=0):
    scene = render_scene("red", "wood", size=64, seed=1)
    return np.asarray(pipeline(prompt="a red wood backdrop", image=scene.image, mask_image=scene.background_mask,
                               height=64, width=64, num_inference_steps=3, output_type="np",
                               generator=torch.Generator().manual_seed(seed)).images[0])


def test_full_fine_tune_lowers_the_loss_on_renders(tiny_folder, tmp_path):
    pipeline = load(tiny_folder)
    trainer = InpaintingTrainer(pipeline, config(steps=40, checkpoint_every=40, learning_rate=2e-3))
    data = encode_dataset(Components.from_pipeline(pipeline), RendererData(n=16, size=64), trainer.config,
                          progress=False)
    trainer.fit(data, tmp_path / "run", progress=False)
    assert trainer.step_ == 40 and len(trainer.losses_) == 40
    assert np.mean(trainer.losses_[-10:]) < 0.8 * np.mean(trainer.losses_[:5])
    saved = trainer.save(tmp_path / "final")
    assert (saved / "model_index.json").is_file() and list(saved.glob("unet/*.safetensors"))


def test_encoding_follows_the_pipeline_conventions(tiny_folder):
    pipeline = load(tiny_folder)
    components = Components.from_pipeline(pipeline)
    data = encode_dataset(components, RendererData(n=3, size=64), config(), progress=False)
    assert data.latent_mean.shape == (3, 4, 8, 8) and data.masks.shape == (3, 1, 8, 8)
    assert set(torch.unique(data.masks).tolist()) <= {0.0, 1.0}
    assert data.prompt_embeds.shape == (3, pipeline.tokenizer.model_max_length, 32)
    # The masked image's latents encode image * (mask < 0.5), as StableDiffusionInpaintPipeline does.
    assert not torch.allclose(data.masked_mean, data.latent_mean)


def test_dropped_captions_become_the_configured_null_captions(tiny_folder):
    pipeline = load(tiny_folder)
    components = Components.from_pipeline(pipeline)
    nulls = ("", "blurry, text, watermark")
    cfg = config(caption_dropout=1.0, null_captions=nulls, batch_size=8)
    data = encode_dataset(components, RendererData(n=3, size=64), cfg, progress=False)
    torch.testing.assert_close(data.empty_embeds, encode_prompts(components, list(nulls)))
    _, _, _, embeds = InpaintingTrainer(pipeline, cfg)._batch(data, step=0, process=0)
    used = {min(range(len(nulls)), key=lambda k: (e - data.empty_embeds[k]).abs().max().item()) for e in embeds}
    assert used == {0, 1}  # every caption dropped, to both null captions
    with pytest.raises(InputError, match="null_captions"):
        config(null_captions=())


def test_lora_initialisation_is_seeded(tiny_folder):
    def lora_weights(seed):
        trainer = InpaintingTrainer(load(tiny_folder), config(lora=True, seed=seed))
        return {name: w.clone() for name, w in trainer.unet.named_parameters() if "lora" in name}

    first, again, other = lora_weights(0), lora_weights(0), lora_weights(1)
    assert first and all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other[name]) for name in first)


def test_lora_trains_saves_and_loads_back_into_a_fresh_pipeline(tiny_folder, tmp_path):
    pipeline = load(tiny_folder)
    before = paint(pipeline)
    trainer = InpaintingTrainer(pipeline, config(lora=True, lora_rank=4, learning_rate=5e-2))
    trainer.fit(RendererData(n=8, size=64), tmp_path / "run", progress=False)
    assert all(p.requires_grad == ("lora" in name) for name, p in trainer.unet.named_parameters())
    trained = paint(pipeline)
    assert np.abs(trained - before).max() > 1e-3  # the adapter changes what the model paints
    saved = trainer.save(tmp_path / "lora")
    assert (saved / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((saved / "studio.json").read_text())["class_name"] == "InpaintingLoRA"

    fresh = load(tiny_folder)
    fresh.load_lora_weights(str(saved))
    np.testing.assert_allclose(paint(fresh), trained, atol=1e-4)


def test_load_pipeline_reads_folders_and_says_how_to_get_a_missing_model(tiny_folder, tmp_path, monkeypatch):
    assert type(load_pipeline(tiny_folder)).__name__ == "StableDiffusionInpaintPipeline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for missing, what in ((tmp_path / "nowhere", "does not exist"), ("nobody-here/no-such-pipeline", "not available")):
        with pytest.raises(ModelNotFoundError, match=what) as caught:
            load_pipeline(missing)
        assert "\n" not in str(caught.value) and "pass a local diffusers folder" in str(caught.value)


def test_resume_continues_from_the_newest_checkpoint_exactly(tiny_folder, tmp_path):
    data = RendererData(n=8, size=64)
    straight = InpaintingTrainer(load(tiny_folder), config(steps=6)).fit(data, tmp_path / "a", progress=False)

    InpaintingTrainer(load(tiny_folder), config(steps=3)).fit(data, tmp_path / "b", progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "step-0000003"
    state = json.loads((latest_checkpoint(tmp_path / "b") / "trainer_state.json").read_text())
    assert state["step"] == 3
    resumed = InpaintingTrainer(load(tiny_folder), config(steps=6)).fit(data, tmp_path / "b", resume=True,
                                                                       progress=False)
    assert resumed.step_ == 6 and len(resumed.losses_) == 3
    np.testing.assert_allclose(resumed.losses_, straight.losses_[3:], rtol=1e-4)
    # checkpoints are written through a staging folder: nothing half-written or left over beside them
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]


def test_masks_of_each_mode():
    rng = np.random.default_rng(0)
    scene = render_scene("blue", size=32, seed=0)
    product = np.asarray(make_mask("product", 32, rng, scene.product_mask))
    assert np.array_equal(product, np.asarray(scene.background_mask))
    outpaint = np.asarray(make_mask("outpaint", 32, rng))
    assert 0.15 < (outpaint == 255).mean() < 0.65
    assert (np.asarray(make_mask("random", 32, rng)) == 255).any()
    # Without a product mask (a photo with no mask file) the product mode falls back to random masks.
    assert (np.asarray(make_mask("product", 32, rng, None)) == 255).any()


def test_a_brand_folder_of_images_captions_and_masks(tmp_path):
    scene = render_scene("green", "fabric", size=48, seed=0)
    scene.image.save(tmp_path / "shot1.png")
    (tmp_path / "shot1.txt").write_text("a green fabric backdrop\n")
    scene.product_mask.save(tmp_path / "shot1.mask.png")
    data = FolderData(tmp_path)
    assert len(data) == 1
    example = data[0]
    assert example["caption"] == "a green fabric backdrop" and example["product_mask"].size == (48, 48)


def test_bad_training_data_and_settings_are_clear_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        FolderData(tmp_path / "missing")
    with pytest.raises(InputError, match="no images"):
        FolderData(tmp_path)
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    with pytest.raises(InputError, match="caption"):
        FolderData(tmp_path)
    (tmp_path / "a.txt").write_text("a grey backdrop")
    Image.new("L", (8, 8)).save(tmp_path / "a.mask.png")
    with pytest.raises(InputError, match="must match"):
        FolderData(tmp_path)[0]
    (tmp_path / "b.png").write_bytes(b"not a png")
    (tmp_path / "b.txt").write_text("x")
    with pytest.raises(InputError, match="cannot read"):
        FolderData(tmp_path)[1]
    with pytest.raises(InputError):
        TrainConfig(steps=0)
    with pytest.raises(InputError):
        TrainConfig(mask_modes={"everything": 1.0})
    with pytest.raises(InputError):
        TrainConfig(mixed_precision="fp8")


def test_studio_train_cli_fine_tunes_a_lora_on_a_folder(tiny_folder, tmp_path, capsys):
    from studio.cli import main

    for seed, colour in enumerate(("pink", "teal")):
        scene = render_scene(colour, "wood", size=64, seed=seed)
        scene.image.save(tmp_path / f"{colour}.png")
        scene.product_mask.save(tmp_path / f"{colour}.mask.png")
        (tmp_path / f"{colour}.txt").write_text(scene.caption)
    out = tmp_path / "out"
    code = main(["train", "--data", str(tmp_path), "--model", str(tiny_folder), "--lora", "--steps", "2",
                 "--batch-size", "2", "--resolution", "64", "--out", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["mode"] == "lora" and result["steps"] == 2
    assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()
    assert main(["train", "--data", str(tmp_path / "nope"), "--model", str(tiny_folder), "--out", str(out)]) == 2


def test_studio_train_cli_fine_tunes_the_whole_unet_on_renders(tiny_folder, tmp_path, capsys):
    from studio.cli import main

    out = tmp_path / "full"
    code = main(["train", "--data", "renderer", "--model", str(tiny_folder), "--steps", "2", "--batch-size", "2",
                 "--resolution", "64", "--out", str(out), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["mode"] == "full" and result["steps"] == 2
    assert (out / "final" / "model_index.json").is_file()
    assert main(["train", "--data", "renderer", "--model", str(tiny_folder), "--steps", "2", "--out", str(out)]) == 2


def test_ema_weights_are_checkpointed_and_exported_with_gradient_accumulation(tiny_folder, tmp_path):
    from diffusers import UNet2DConditionModel

    pipeline = load(tiny_folder)
    trainer = InpaintingTrainer(pipeline, config(steps=4, checkpoint_every=2, ema_decay=0.5,
                                                 gradient_accumulation_steps=2))
    trainer.fit(RendererData(n=8, size=64), tmp_path / "run", progress=False)
    assert trainer.step_ == 4 and (latest_checkpoint(tmp_path / "run") / "ema").is_dir()
    saved = trainer.save(tmp_path / "final")
    exported = UNet2DConditionModel.from_pretrained(saved / "unet").state_dict()
    live = trainer.unet.state_dict()
    name = "conv_in.weight"
    # The export holds the averaged weights; the live (trained) ones are left in place.
    assert not torch.equal(exported[name], live[name])
    torch.testing.assert_close(trainer.ema.shadow_params[0].cpu(), exported[name])
