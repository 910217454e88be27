"""studio-mini: the from-scratch components, the resumable recipe, the gate's measures and the LoRA proof."""

import json

import numpy as np
import pytest
import torch

from prompts.validation import words
from studio.core.errors import InputError
from studio.training.mini import (
    MODEL_FOLDER,
    MiniRecipe,
    SceneArrays,
    build_components,
    colour_adherence,
    evaluate_mini,
    fit_material_classifier,
    lora_word_proof,
    mini_words,
    nearest_colour,
    neutral_scene,
    null_captions,
    paint_proof_word,
    train_mini,
)
from studio.imaging.tiny import build_clip_tokenizer
from studio.sim.renderer import render_scene
from studio.core.vocabulary import COLOURS

pytestmark = pytest.mark.slow  # loads models

torch.set_num_threads(1)

# A recipe small enough for CI: the same stages and code paths as the shipped one, minutes become seconds.
SMALL = MiniRecipe(n_train=24, n_heldout=8, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4,
                   checkpoint_every=2, inference_steps=2, unet_channels=(16, 32), unet_attention=(False, True),
                   vae_channels=(16, 16, 32))


def load(folder):
    from diffusers import AutoPipelineForInpainting

    pipeline = AutoPipelineForInpainting.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def mini_folder():
    """The shipped studio-mini (the package's default generator)."""
    assert (MODEL_FOLDER / "model_index.json").is_file(), f"studio-mini must ship in {MODEL_FOLDER}"
    return MODEL_FOLDER


def test_the_shipped_studio_mini_is_v2_a_stable_diffusion_inpainting_pipeline_reading_clip_tokens(mini_folder,
                                                                                                     tmp_path):
    from studio.core.clip_bpe import clip_tokenizer

    pipeline = load(mini_folder)
    assert type(pipeline).__name__ == "StableDiffusionInpaintPipeline"
    assert pipeline.unet.config.in_channels == 9 and pipeline.vae.config.latent_channels == 4
    assert pipeline.unet.config.sample_size * 4 == 64  # native 64 x 64 pixels
    assert pipeline.tokenizer.model_max_length == 77  # CLIP's window and its exact BPE ids
    sentence = "our gift on a teal marble table in a sunny kitchen"
    assert pipeline.tokenizer(sentence).input_ids == clip_tokenizer(tmp_path)(sentence).input_ids
    manifest = json.loads((mini_folder / "studio.json").read_text())
    assert (manifest["version"], manifest["vocabulary"], manifest["guidance"]) == (2, "closed-colours", 1.5)
    weights = sum(path.stat().st_size for path in mini_folder.rglob("*") if path.is_file())
    assert weights <= 40 * 2**20


def test_the_shipped_studio_mini_paints_the_requested_colour(mini_folder):
    """The gate's colour check on one seed: the embedded generator follows the colour word of its prompt."""
    result = colour_adherence(load(mini_folder), seeds=(0,), steps=20)
    assert result["cases"] == 12 and result["colour_adherence"] >= 0.75, result["confusions"]


def test_the_recipe_runs_all_stages_resumes_and_exports(tmp_path):
    run, export = tmp_path / "run", tmp_path / "export"
    first = train_mini(run, export=export, recipe=SMALL, progress=False)
    assert first["best"]["step"] == 2 and 0 <= first["best"]["colour_adherence"] <= 1
    stages = [json.loads(line)["stage"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert stages == ["vae", "unet", "export"]
    scenes = run / "scenes.safetensors"
    stamp = scenes.stat().st_mtime_ns

    # Resuming with a larger step budget reuses the data, the VAE and the cache, and continues the UNet.
    longer = MiniRecipe(**{**SMALL.__dict__, "unet_steps": 4})
    train_mini(run, export=export, recipe=longer, progress=False)
    assert scenes.stat().st_mtime_ns == stamp
    steps = [json.loads(line).get("step") for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps[-2] == 4
    pipeline = load(export)
    for word in mini_words():  # v1 reads its vocabulary word by word
        assert len(pipeline.tokenizer.tokenize(word)) == 1, word
    scene = neutral_scene(64, seed=0)
    image = pipeline(prompt="a bottle on a red plain backdrop", image=scene.image, mask_image=scene.background_mask,
                     num_inference_steps=2).images[0]
    assert image.size == (64, 64)

    with pytest.raises(InputError, match="another recipe"):
        train_mini(run, export=None, recipe=MiniRecipe(**{**SMALL.__dict__, "seed": 1}), progress=False)


def test_a_recipe_with_one_attention_flag_per_level_missing_is_refused(tmp_path):
    with pytest.raises(InputError, match="one flag per UNet level"):
        build_components(tmp_path, MiniRecipe(unet_attention=(False, True)))


def test_prompt_style_captions_change_captions_only_and_name_every_attribute(tmp_path):
    plain = SceneArrays.render(12, 32, seed=0, progress=False)
    styled = SceneArrays.render(12, 32, seed=0, progress=False, prompt_style=0.5)
    assert np.array_equal(plain.images, styled.images) and plain.attributes == styled.attributes
    changed = [c for a, c in zip(plain.captions, styled.captions) if a != c]
    assert 0 < len(changed) < 12 and all("," in caption for caption in changed)
    for caption, attributes in zip(styled.captions, styled.attributes):
        named = words(caption)
        assert all(attributes[key] in named for key in ("colour", "material", "lighting", "layout"))
    tokenizer = build_clip_tokenizer(mini_words(), tmp_path, model_max_length=MiniRecipe().text_length)
    for caption in styled.captions + list(null_captions()):
        assert all(len(tokenizer.tokenize(word)) == 1 for word in words(caption)), caption
        assert len(tokenizer(caption).input_ids) <= MiniRecipe().text_length


def test_the_gate_measures_everything_it_reports(mini_folder):
    report = evaluate_mini(mini_folder, steps=2, colour_seeds=(0,), latency_runs=1, classifier_renders=120,
                           progress=False)
    assert report["cases"] == 12 and report["prompt_model_cases"] >= 32
    for key in ("colour_adherence", "prompt_model_colour_adherence", "material_adherence", "material_ceiling",
                "material_vae_ceiling"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["lora_proof"]["distance_after"] < 0.5 * report["lora_proof"]["distance_before"]
    assert report["product_bit_exact"] is True and report["latency_s"] > 0 and report["peak_rss_mb"] > 0
    assert report["passed"] == (report["colour_adherence"] >= 0.9 and report["material_adherence"] >= 0.7
                                and report["latency_s"] <= 2.0 and report["peak_rss_mb"] <= 1536)


def test_material_classifier_learns_from_renders_only():
    classifier, ceiling = fit_material_classifier(n=360, seed=3)
    assert ceiling >= 0.8  # the ceiling eval-mini reports; chance is 1/6


def test_nearest_colour_names_the_rendered_backdrop():
    for colour in COLOURS:
        scene = render_scene(colour, "plain", size=32, seed=0)
        background = np.asarray(scene.product_mask) < 128
        assert nearest_colour(np.asarray(scene.image, float)[background].mean(0)) == colour


def test_lora_teaches_studio_mini_a_new_word_for_an_unseen_backdrop_and_round_trips(mini_folder, tmp_path):
    """DreamBooth-style LoRA proof: six renders of the never-trained pink x wood pair, captioned with a word studio-mini
    has learnt to ignore ("neon", a mood word its captions attach to random scenes), move what the word paints
    toward that backdrop; the LoRA saves and loads back to the same pixels."""
    proof = lora_word_proof(mini_folder, tmp_path)
    assert proof["distance_after"] < 0.5 * proof["distance_before"]

    fresh = load(mini_folder)
    fresh.load_lora_weights(proof["lora"])
    np.testing.assert_allclose(paint_proof_word(fresh), proof["pixels"], atol=1e-4)
