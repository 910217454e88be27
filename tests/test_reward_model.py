"""The reward model as a user meets it: score creatives, steer pixels with its gradient, save and load it, plug in
transformers encoders from a local folder."""

import json

import numpy as np
import pytest
import torch

from reward.model import FORMAT_VERSION, RewardConfig, RewardModel
from studio.core.errors import InputError, ModelNotFoundError


def small_model(**overrides) -> RewardModel:
    torch.manual_seed(0)
    config = RewardConfig(**{"group_dim": 5, "group_ids": ["0", "1"], "hidden_dim": 32, **overrides})
    model = RewardModel(config)
    model.group_table.copy_(torch.randn(2, 5))
    return model.eval()


def test_predicts_a_ctr_per_creative_and_group():
    model = small_model()
    pixels = torch.rand(3, 3, 96, 96)
    ctr = model.predict_ctr(pixels, ["red marble, soft light"] * 3, ["0", "1", "0"], ["beverage", "footwear", "mug"])
    assert ctr.shape == (3,)
    assert np.all((ctr > 0) & (ctr < 1))
    # a fresh model starts at its base CTR, not at 50 %
    assert abs(float(ctr.mean()) - model.config.base_ctr) < 0.03


def test_score_is_differentiable_in_the_pixels():
    model = small_model()
    pixels = torch.rand(2, 3, 64, 64, requires_grad=True)
    logits = model(pixels, ["a", "b"], model.group_vectors(["0", "1"]), ["beverage", "kitchen"])
    logits.sum().backward()
    assert pixels.grad is not None
    assert pixels.grad.abs().sum() > 0
    # a step along the gradient raises the score: the reward can steer a generator
    stepped = (pixels + 0.5 * pixels.grad.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        after = model(stepped, ["a", "b"], model.group_vectors(["0", "1"]), ["beverage", "kitchen"])
    assert float(after.sum()) > float(logits.detach().sum())


def test_save_and_load_round_trip(tmp_path):
    model = small_model()
    model.save_pretrained(tmp_path / "rm")
    assert sorted(p.name for p in (tmp_path / "rm").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["format_version"] == FORMAT_VERSION
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    pixels = torch.rand(2, 3, 64, 64)
    args = (["blue wood"] * 2, ["0", "1"], ["beverage"] * 2)
    np.testing.assert_allclose(loaded.predict_ctr(pixels, *args), model.predict_ctr(pixels, *args), rtol=1e-6)


def test_a_folder_from_another_format_version_is_refused(tmp_path):
    small_model().save_pretrained(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "rm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="format version"):
        RewardModel.from_pretrained(tmp_path / "rm")


def test_missing_or_damaged_folders_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="studio reward train"):
        RewardModel.from_pretrained(tmp_path / "nothing-here")
    small_model().save_pretrained(tmp_path / "rm")
    other = small_model(hidden_dim=16)
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "rm" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(InputError, match="do not match its config"):
        RewardModel.from_pretrained(tmp_path / "rm")


def test_bad_inputs_say_what_was_expected():
    model = small_model()
    with pytest.raises(InputError, match="unknown audience group"):
        model.group_vectors(["7"])
    with pytest.raises(InputError, match="group profile vectors of length 5"):
        model(torch.rand(1, 3, 32, 32), ["x"], torch.zeros(1, 3), ["beverage"])
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 32, 32), ["x"], torch.zeros(1, 5), ["beverage"])
    with pytest.raises(InputError, match="one prompt, group and category per image"):
        model(torch.rand(2, 3, 32, 32), ["x"], torch.zeros(2, 5), ["beverage"] * 2)


def test_transformers_encoders_from_local_folders(tmp_path):
    """A CLIP vision tower and a CLIP text tower by path (tiny and random, built here: never the hub)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from studio.imaging.tiny import build_clip_tokenizer, tiny_words

    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=32, patch_size=8))
    vision.save_pretrained(tmp_path / "vision")
    tokenizer = build_clip_tokenizer(tiny_words(), tmp_path / "text")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
    text.save_pretrained(tmp_path / "text")

    model = small_model(image_encoder=str(tmp_path / "vision"), text_encoder=str(tmp_path / "text"))
    pixels = torch.rand(2, 3, 64, 64, requires_grad=True)
    logits = model(pixels, ["red marble", "blue wood"], model.group_vectors(["0", "1"]), ["beverage"] * 2)
    logits.sum().backward()
    assert pixels.grad.abs().sum() > 0  # differentiable through the CLIP tower too
    assert not any(p.requires_grad for p in model.image_encoder.model.parameters())  # frozen by default

    model.save_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "image_encoder" / "config.json").is_file()
    assert (tmp_path / "rm" / "text_encoder" / "tokenizer_config.json").is_file()
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    args = (pixels.detach(), ["red marble", "blue wood"], ["0", "1"], ["beverage"] * 2)
    np.testing.assert_allclose(loaded.predict_ctr(*args), model.predict_ctr(*args), rtol=1e-5)


def test_an_unavailable_hub_encoder_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not available locally"):
        small_model(image_encoder="no-such-org/no-such-clip")
