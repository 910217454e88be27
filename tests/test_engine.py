"""The diffusion engine on a tiny random pipeline: loading, seeds, schedulers, cancel, LoRA, and clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from studio.imaging import engine as engine_module
from studio.imaging.engine import (
    SCHEDULERS,
    GenerationCancelled,
    GenerationSettings,
    LoraSpec,
    default_model,
    is_random_init,
    load_engine,
    resolve_device,
    resolve_dtype,
)
from studio.core.errors import InputError, ModelNotFoundError
from studio.imaging.tiny import build_clip_tokenizer, tiny_words

pytestmark = pytest.mark.slow  # loads models

FAST = GenerationSettings(steps=2)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture()
def tiny(tiny_pipeline_dir):
    return load_engine(str(tiny_pipeline_dir), device="cpu")


@pytest.fixture()
def scene():
    """A 64x64 model-size input: a red square to keep in the middle, paint everything else."""
    image = Image.new("RGB", (64, 64), (240, 240, 240))
    image.paste((200, 30, 35), (24, 24, 40, 40))
    mask = Image.new("L", (64, 64), 255)
    mask.paste(0, (24, 24, 40, 40))
    return image, mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_clip_tokenizer_makes_each_word_one_token(tmp_path):
    words = ["red", "redwood", "wood", "marble", "teal", "tea", "ed"]
    tokenizer = build_clip_tokenizer(words, tmp_path / "tok")
    for word in words:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a teal marble table").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    # Words outside the list still tokenize (byte-level pieces), and the folder reloads the same tokenizer.
    assert len(tokenizer("zebra", add_special_tokens=False).input_ids) > 1
    from transformers import CLIPTokenizer

    reloaded = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert reloaded("redwood wood").input_ids == tokenizer("redwood wood").input_ids


def test_tiny_vocabulary_words_are_single_tokens(tiny):
    for word in tiny_words():
        assert len(tiny.pipeline.tokenizer(word, add_special_tokens=False).input_ids) == 1, word


def test_save_pretrained_round_trip_is_exact(tiny_pipeline_dir, tmp_path):
    import torch
    from diffusers import AutoPipelineForInpainting

    loaded = AutoPipelineForInpainting.from_pretrained(tiny_pipeline_dir, local_files_only=True)
    assert type(loaded).__name__ == "StableDiffusionInpaintPipeline"
    assert loaded.unet.config.in_channels == 9
    loaded.save_pretrained(tmp_path / "again")
    again = AutoPipelineForInpainting.from_pretrained(tmp_path / "again", local_files_only=True)
    for before, after in zip(loaded.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(before, after)
    assert not list(tiny_pipeline_dir.rglob("*.bin")) and list(tiny_pipeline_dir.rglob("*.safetensors"))


def test_engine_is_cached_and_knows_its_provenance(tiny, tiny_pipeline_dir):
    assert load_engine(str(tiny_pipeline_dir), device="cpu") is tiny
    assert tiny.random_init and is_random_init(str(tiny_pipeline_dir))
    assert tiny.weights_hash.startswith("sha256:") and len(tiny.weights_hash) == 7 + 64
    assert tiny.native_size == 256 and tiny.size_multiple == 16


def test_same_seed_same_pixels_and_different_seeds_differ(tiny, scene):
    image, mask = scene
    first = tiny.generate(image, mask, prompt="a red marble table", seed=7, settings=FAST)
    again = tiny.generate(image, mask, prompt="a red marble table", seed=7, settings=FAST)
    other = tiny.generate(image, mask, prompt="a red marble table", seed=8, settings=FAST)
    assert first.size == (64, 64) and first.mode == "RGB"
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_each_scheduler_runs(tiny, scene, name):
    image, mask = scene
    out = tiny.generate(image, mask, prompt="soft light", seed=0, settings=GenerationSettings(steps=2, scheduler=name))
    assert out.size == image.size
    assert type(tiny.pipeline.scheduler).__name__ == SCHEDULERS[name]
    assert pixels(out).std() > 0


def test_cancel_with_an_event_or_a_callable(tiny, scene):
    image, mask = scene
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationCancelled):
        tiny.generate(image, mask, prompt="wood", seed=0, settings=FAST, cancel=stop)
    steps_seen = []

    def after_first_step():
        steps_seen.append(1)
        return len(steps_seen) >= 1

    with pytest.raises(GenerationCancelled):
        tiny.generate(image, mask, prompt="wood", seed=0, settings=GenerationSettings(steps=5), cancel=after_first_step)
    assert len(steps_seen) == 1  # stopped right after the first denoising step
    # A hook that never fires changes nothing.
    plain = tiny.generate(image, mask, prompt="wood", seed=0, settings=FAST)
    hooked = tiny.generate(image, mask, prompt="wood", seed=0, settings=FAST, cancel=threading.Event())
    assert np.array_equal(pixels(plain), pixels(hooked))


def test_lora_scale_changes_the_output(tiny, scene, tiny_lora_path):
    image, mask = scene
    bare = tiny.generate(image, mask, prompt="red", seed=0, settings=FAST)
    full = tiny.generate(image, mask, prompt="red", seed=0, settings=FAST, lora=LoraSpec(str(tiny_lora_path), 1.0))
    half = tiny.generate(image, mask, prompt="red", seed=0, settings=FAST, lora=LoraSpec(str(tiny_lora_path), 0.5))
    off = tiny.generate(image, mask, prompt="red", seed=0, settings=FAST, lora=LoraSpec(str(tiny_lora_path), 0.0))
    after = tiny.generate(image, mask, prompt="red", seed=0, settings=FAST)
    assert not np.array_equal(pixels(bare), pixels(full))
    assert not np.array_equal(pixels(full), pixels(half))
    assert np.abs(pixels(bare) - pixels(off)).max() <= 1  # scale 0 is the bare model
    assert np.array_equal(pixels(bare), pixels(after))  # no LoRA asked: the adapter is off again


def test_missing_lora_is_an_input_error(tiny, scene, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        tiny.generate(*scene, prompt="red", seed=0, settings=FAST, lora=LoraSpec(str(tmp_path / "nope.safetensors")))


def test_missing_hub_model_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as caught:
        load_engine("nobody-here/no-such-inpainting-model", device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "huggingface-cli download nobody-here/no-such-inpainting-model" in message


def test_missing_hub_model_online_is_one_quick_question_not_a_minute_of_retries(monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(self, repo_id, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(ModelNotFoundError) as caught:
        load_engine("nobody-here/no-such-inpainting-model", device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "Name or service not known" in message
    assert "`hf download nobody-here/no-such-inpainting-model`" in message and "--model" in message


def test_missing_or_wrong_folder_is_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_engine(str(tmp_path / "no" / "such" / "folder"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        load_engine(str(tmp_path / "empty"), device="cpu")


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_refused(tiny, scene, prompt):
    with pytest.raises(InputError, match="prompt is empty"):
        tiny.generate(*scene, prompt=prompt, seed=0, settings=FAST)


def test_overlong_prompt_says_how_many_tokens(tiny, scene):
    prompt = " ".join(["red marble"] * 40)  # 80 words + start and end tokens
    with pytest.raises(InputError, match="82 tokens long.*at most 77"):
        tiny.generate(*scene, prompt=prompt, seed=0, settings=FAST)
    with pytest.raises(InputError, match="negative prompt is 82 tokens"):
        tiny.generate(*scene, prompt="red", seed=0, settings=GenerationSettings(steps=2, negative_prompt=prompt))


@pytest.mark.parametrize(
    "settings, message",
    [
        (GenerationSettings(steps=0), "steps"),
        (GenerationSettings(strength=0.0), "strength"),
        (GenerationSettings(guidance=-1.0), "guidance"),
        (GenerationSettings(scheduler="lms-karras-unknown"), "unknown scheduler"),
    ],
)
def test_bad_settings_are_refused(tiny, scene, settings, message):
    with pytest.raises(InputError, match=message):
        tiny.generate(*scene, prompt="red", seed=0, settings=settings)


def test_device_and_dtype_choice():
    import torch

    assert resolve_device("auto") in ("cuda", "mps", "cpu")
    assert resolve_dtype("cpu", "auto") == torch.float32
    assert resolve_dtype("cuda", "auto") == torch.float16
    assert resolve_dtype("cuda", "bf16") == torch.bfloat16
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        resolve_dtype("cpu", "fp16")
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("cpu", "int3")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_default_model_builds_the_tiny_pipeline_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_module, "embedded_model_folder", lambda: tmp_path / "not-shipped")
    folder = default_model()
    assert folder == str(tmp_path / "cache" / "creative-studio" / "tiny-random")
    assert is_random_init(folder)
    stamp = (tmp_path / "cache" / "creative-studio" / "tiny-random" / "model_index.json").stat().st_mtime_ns
    assert default_model() == folder  # second call reuses the folder
    assert (tmp_path / "cache" / "creative-studio" / "tiny-random" / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "cache" / "creative-studio").iterdir() if p.name.startswith(".")]


def test_default_model_prefers_the_embedded_studio_mini(tmp_path, monkeypatch):
    shipped = tmp_path / "studio-mini"
    shipped.mkdir()
    (shipped / "model_index.json").write_text("{}")
    monkeypatch.setattr(engine_module, "embedded_model_folder", lambda: shipped)
    assert default_model() == str(shipped)
    assert not is_random_init(str(shipped))


def test_weights_hash_is_stable_cached_and_follows_the_bytes(tmp_path):
    from studio.imaging.provenance import weights_hash

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    (folder / "model_index.json").write_text("{}")  # configs are not weights
    first = weights_hash(folder)
    assert weights_hash(folder) == first
    assert (tmp_path / "cache" / "creative-studio" / "weights-hashes.json").is_file()
    (folder / "model_index.json").write_text('{"changed": true}')
    assert weights_hash(folder) == first
    weights.write_bytes(b"\x01" * 64)
    assert weights_hash(folder) != first
    with pytest.raises(InputError, match="no weight files"):
        weights_hash(tmp_path / "cache")


def test_a_file_that_is_not_a_lora_is_an_input_error(tiny, scene, tmp_path):
    import torch
    from safetensors.torch import save_file

    junk = tmp_path / "not-a-lora.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(junk))
    with pytest.raises(InputError, match="could not load LoRA") as caught:
        tiny.generate(*scene, prompt="red", seed=0, settings=FAST, lora=LoraSpec(str(junk)))
    assert "\n" not in str(caught.value)


def test_a_folder_the_studio_wrote_for_something_else_is_refused_by_name(tiny_pipeline_dir, tmp_path):
    import json
    import shutil

    from studio.core.artefact import ArtefactError

    impostor = tmp_path / "impostor"
    shutil.copytree(tiny_pipeline_dir, impostor)
    (impostor / "studio.json").write_text(json.dumps({"class_name": "InpaintingLoRA", "format_version": 1}))
    with pytest.raises(ArtefactError, match="holds an InpaintingLoRA folder, not an InpaintingPipeline folder"):
        load_engine(str(impostor))
    (impostor / "studio.json").write_text(json.dumps({"class_name": "InpaintingPipeline", "format_version": 99}))
    with pytest.raises(ArtefactError, match="written by a newer studio"):
        load_engine(str(impostor))


def test_the_shipped_studio_mini_names_itself():
    from studio.core.artefact import PIPELINE_CLASS, PIPELINE_FORMAT, check_manifest

    assert check_manifest(default_model(), PIPELINE_CLASS, PIPELINE_FORMAT)["name"] == "studio-mini"
