"""Training data from the interest -> scene prior, and the seeded from-scratch recipe of prompts-mini."""

import numpy as np
import pytest

from prompts.data import INTEREST_SCENES, make_pairs
from prompts.loading import load_prompt_model
from prompts.mini import (
    MiniPromptModel,
    MiniTrainingConfig,
    build_tokenizer,
    train_prompts_mini,
)
from prompts.validation import check_prompt
from studio.core.vocabulary import COLOURS, INTEREST_TAGS, LAYOUTS, LIGHTING, MATERIALS

pytestmark = pytest.mark.slow  # loads models

TINY = MiniTrainingConfig(n_pairs=64, n_layer=1, n_embd=32, n_head=2, steps=4, batch_size=8, warmup_steps=2,
                          progress=False)


def test_the_prior_covers_every_interest_in_the_scene_vocabulary():
    assert set(INTEREST_SCENES) == set(INTEREST_TAGS)
    for prior in INTEREST_SCENES.values():
        assert set(prior.colours) <= set(COLOURS) and set(prior.materials) <= set(MATERIALS)
        assert set(prior.lighting) <= set(LIGHTING) and set(prior.layouts) <= set(LAYOUTS)


def test_training_pairs_are_valid_prompts_the_tokenizer_knows_and_follow_the_prior():
    pairs = make_pairs(300, seed=1)
    tokenizer = build_tokenizer()

    assert make_pairs(5, seed=1) == pairs[:5]
    for brief, positive, negative in pairs:
        assert check_prompt_passes(brief, positive, negative)
        assert tokenizer.unk_token_id not in tokenizer(f"{positive} avoid {negative}")["input_ids"]
    eco = [positive for brief, positive, _ in pairs if brief.audience.known_tags()[:1] == ("eco",)]
    assert np.mean([("green" in p or "brown" in p) for p in eco]) > 0.5


def check_prompt_passes(brief, positive, negative) -> bool:
    from prompts.brief import Prompt

    return check_prompt(Prompt(positive, negative), brief)[0] is not None


def test_the_recipe_is_seeded_and_saves_a_loadable_transformers_folder(tmp_path):
    first = train_prompts_mini(tmp_path / "a", TINY)
    second = train_prompts_mini(tmp_path / "b", TINY)

    assert first["final_loss"] == second["final_loss"] and first["first_loss"] > 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert {"config.json", "tokenizer.json", "studio.json"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert isinstance(load_prompt_model(tmp_path / "a"), MiniPromptModel)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind
