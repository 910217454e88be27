"""The reward model as a user meets it: score creatives, steer pixels with its gradient, save and load it, plug in
transformers encoders from a local folder."""

import json

import numpy as np
import pytest
import torch

from reward.model import FORMAT_VERSION, SHIPPED_MODELS, RewardConfig, RewardModel
from studio.core.artefact import ArtefactError
from studio.core.errors import InputError, ModelNotFoundError

pytestmark = pytest.mark.slow  # loads models


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
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["class_name"] == "RewardModel" and config["format_version"] == FORMAT_VERSION
    loaded = RewardModel.from_pretrained(tmp_path / "rm")
    pixels = torch.rand(2, 3, 64, 64)
    args = (["blue wood"] * 2, ["0", "1"], ["beverage"] * 2)
    np.testing.assert_allclose(loaded.predict_ctr(pixels, *args), model.predict_ctr(pixels, *args), rtol=1e-6)
    model.save_pretrained(tmp_path / "rm")  # over an existing folder: swapped whole, no staging left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_saving_never_replaces_a_folder_that_holds_something_else(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.db").write_bytes(b"the log")

    with pytest.raises(InputError, match="holds something other than a reward model"):
        small_model().save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "events.db").read_bytes() == b"the log"


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("damage, error, what", [
    (lambda f: _truncate(f / "model.safetensors"), ArtefactError, "model.safetensors is damaged"),
    (lambda f: (f / "config.json").write_text('{"class_name": "RewardModel", "format_'), ArtefactError,
     "config.json is damaged"),
    (lambda f: _edit_config(f, class_name="LinUCB"), ArtefactError, "a LinUCB folder, not a RewardModel"),
    (lambda f: _edit_config(f, format_version=FORMAT_VERSION + 1), ArtefactError, "written by a newer studio"),
    (lambda f: _edit_config(f, format_version=FORMAT_VERSION - 1), ArtefactError, "older reward model format"),
    (lambda f: _edit_config(f, hidden_dim=16), ArtefactError, "do not match its config"),
    (lambda f: _edit_config(f, num_heads=5), ArtefactError, "does not describe a reward model"),
    (lambda f: _edit_config(f, colour="red"), ArtefactError, "unknown keys"),
    (lambda f: (f / "config.json").unlink(), ModelNotFoundError, "it has no config.json"),
])
def test_a_damaged_foreign_or_newer_folder_is_one_line_naming_it_and_what_to_do(tmp_path, damage, error, what):
    small_model().save_pretrained(tmp_path / "rm")
    damage(tmp_path / "rm")

    with pytest.raises(error) as caught:
        RewardModel.from_pretrained(tmp_path / "rm")
    message = str(caught.value)
    assert what in message and str(tmp_path / "rm") in message and "\n" not in message
    assert "studio reward train" in message or "upgrade creative-studio" in message


def test_a_missing_folder_says_how_to_get_one(tmp_path):
    for missing in (tmp_path / "nothing-here", "no-such-shipped-model", "owner/not-a-hub-id-here"):
        with pytest.raises(ModelNotFoundError, match="does not exist; train one with `studio reward train"):
            RewardModel.from_pretrained(missing)


def test_the_shipped_reward_mini_is_in_the_one_artefact_format():
    config = json.loads((SHIPPED_MODELS / "reward-mini" / "config.json").read_text())

    assert (config["class_name"], config["format_version"]) == ("RewardModel", FORMAT_VERSION)
    assert RewardModel.from_pretrained("reward-mini").config.group_ids == config["group_ids"]


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

    weights = tmp_path / "rm" / "image_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ArtefactError) as caught:  # one line naming the damaged encoder folder, not a library traceback
        RewardModel.from_pretrained(tmp_path / "rm")
    assert str(caught.value).startswith(f"{tmp_path / 'rm' / 'image_encoder'} could not be loaded as an image encoder")
    assert "\n" not in str(caught.value)


def test_an_unavailable_hub_encoder_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not available locally"):
        small_model(image_encoder="no-such-org/no-such-clip")
