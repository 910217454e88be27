"""The building blocks the campaign and the batch job share: the three models, the audience groups, prompts per
group, and CTR scores.

    load_models -> audience_groups -> write_prompts (per group) -> the generator -> score -> rank_by_ctr
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from studio.core.errors import InputError
from studio.core.vocabulary import CATEGORIES
from studio.imaging.engine import Engine, default_model, load_engine


@dataclass
class Models:
    """The three models of a job, loaded once and kept for every product."""

    engine: Engine
    writer: Any  # prompts.backends.CausalLMBackend
    scorer: Any  # reward.model.RewardModel
    generator: str
    prompt_model: str
    reward_model: str


def load_models(generator: str | None, prompt_model: str | None, reward_model: str, *,
                device: str = "auto") -> Models:
    """Load the generator, the prompt model and the reward model (each raises a one-line error when missing)."""
    from prompts.loading import load_prompt_model
    from reward.model import RewardModel

    generator = generator or default_model()
    engine = load_engine(generator, device=device)
    writer = load_prompt_model(prompt_model)
    scorer = RewardModel.from_pretrained(reward_model)
    scorer.eval()
    return Models(engine, writer, scorer, generator, str(prompt_model or "prompts-mini"), str(reward_model))


def audience_groups(reward_model: str, groups: list[dict] | None = None) -> list[dict]:
    """The group profiles to write for: `groups` as given, or the reward model's own clustering (its audience/)."""
    from reward.model import resolve_model_folder
    from studio.learning.audience import AudienceClustering

    if groups is None:
        audience_dir = resolve_model_folder(reward_model) / "audience"
        if not audience_dir.is_dir():
            raise InputError(f"reward model {reward_model!r} ships no audience/ folder; pass the groups explicitly")
        groups = [profile.to_dict() for profile in AudienceClustering.from_pretrained(audience_dir).profiles_]
    if not groups:
        raise InputError("no audience groups given")
    return groups


def normalise_category(category: str) -> str:
    """A catalogue category ("beverage") or a product kind ("bottle", read as its category), lower case."""
    return CATEGORIES.get(category, category).strip().lower()


def write_prompts(writer, profile: dict, *, title: str, category: str, n: int, seed: int,
                  brand: dict | None = None, placement: str | None = None) -> list:
    """`n` distinct scene prompts for one audience group (fewer if the model's samples fail validation)."""
    from prompts.brief import Brief

    brief: dict[str, Any] = {"audience": profile, "product": {"title": title, "category": category}}
    if brand:
        brief["brand"] = brand
    if placement:
        brief["placement"] = {"aspect_ratio": placement}
    prompts = writer.suggest(Brief.from_dict(brief), n=n, seed=seed)
    if not prompts:
        raise InputError(f"the prompt model wrote no valid prompt for group {profile['group_id']}; try another seed")
    return prompts


def score(scorer, images: Sequence, prompts: Sequence[str], group_ids: Sequence[str],
          categories: Sequence[str]) -> list[float]:
    """Predicted CTR of each creative (PIL images or paths) for its group, in one batched call."""
    import torch

    from reward.data import load_pixels

    pixels, _ = load_pixels(list(images), scorer.config.image_size)
    with torch.no_grad():
        ctr = scorer.predict_ctr(pixels, list(prompts), [str(g) for g in group_ids], list(categories))
    return [float(value) for value in ctr]


def rank_by_ctr(scores: Sequence[float]) -> list[int]:
    """Rank (1 = best) of each score; ties keep their order, so equal inputs give equal ranks everywhere."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return ranks
