"""The main job: one product in, the best creative per audience group out.

For each audience group the prompt model writes scene prompts, the generator paints a creative per prompt around the
product (its pixels kept bit-exact), and the reward model predicts each creative's CTR for that group. The creatives
are ranked per group and the report names the best one: what the creative cache pre-caches per (product, group).

The photo is decoded, its canvas built and the generator loaded once per product; every prompt is painted on that one
canvas through that one engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from studio.core.atomic import staged_folder
from studio.core.errors import InputError
from studio.imaging.creatives import CreativeSettings, build_canvas, generate_creatives
from studio.imaging.engine import is_random_init
from studio.imaging.images import ImageSource, load_image
from studio.jobs.pipeline import audience_groups, load_models, normalise_category, rank_by_ctr, score, write_prompts

REPORT_NAME = "campaign.json"


@dataclass
class RankedCreative:
    """One creative of a campaign: its file, the prompt that made it and its predicted CTR for the group."""

    path: str
    prompt: str
    negative_prompt: str
    seed: int
    predicted_ctr: float
    rank: int = 0


@dataclass
class GroupResult:
    """The creatives of one audience group, best first."""

    group_id: str
    summary: str
    top_tags: list[str]
    creatives: list[RankedCreative] = field(default_factory=list)

    @property
    def best(self) -> RankedCreative:
        return self.creatives[0]


@dataclass
class CampaignReport:
    """What `run_campaign` made; `to_dict()` is what it writes to `campaign.json`."""

    product: str
    title: str
    category: str
    generator: str
    random_init: bool
    prompt_model: str
    reward_model: str
    groups: list[GroupResult]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for group, result in zip(data["groups"], self.groups):
            group["best"] = result.best.path
        return data


def run_campaign(
    product: ImageSource,
    *,
    out_dir: str | os.PathLike,
    mask: ImageSource | None = None,
    title: str = "",
    category: str = "",
    groups: list[dict] | None = None,
    prompts_per_group: int = 2,
    seed: int = 0,
    generator: str | None = None,
    prompt_model: str | None = None,
    reward_model: str = "reward-mini",
    size: int = 512,
    steps: int | None = None,
    progress: bool = True,
) -> CampaignReport:
    """Write prompts, creatives and a ranked report for each audience group.

    Args:
        product: the product photo (path, bytes or PIL image; transparency or a plain background).
        out_dir: where `product.png`, one folder of PNG creatives per group and `campaign.json` go.
        mask: the product mask (white = product) for a photo with neither transparency nor a plain background.
        title, category: the product as the prompt model and reward model read it (category: a catalogue category
            such as "beverage" or a product kind such as "bottle").
        groups: audience group profiles ({"group_id", "summary", "top_tags", ...}); None for the reward model's own
            groups (its `audience/` folder), which it can score by id.
        prompts_per_group: creatives per group, one per distinct prompt.
        generator, prompt_model, reward_model: hub ids or folders; None for the embedded defaults.
        size: long side of each creative, in pixels. steps: denoising steps (None: the generator's default).
    """
    # 1. Check inputs; the photo is decoded and its canvas built once, before any model loads
    if not 1 <= prompts_per_group <= 16:
        raise InputError(f"prompts_per_group must be 1 to 16, got {prompts_per_group}")
    settings = CreativeSettings(size=size, steps=steps or CreativeSettings.steps)
    image = load_image(product)
    canvas = build_canvas(image, settings, mask=mask)
    category = normalise_category(category)
    title = title.strip() or category or "product"

    # 2. Load the three models (each raises a one-line error when missing)
    models = load_models(generator, prompt_model, reward_model)
    generator = models.generator
    groups = audience_groups(reward_model, groups)
    models.scorer.group_vectors([str(profile["group_id"]) for profile in groups])  # unknown group: fails before work

    # 3. Per group: prompts -> creatives -> predicted CTR -> ranking, written into a staging folder that replaces
    # `out_dir` whole at the end: a failed or killed campaign leaves `out_dir` as it was
    final = Path(out_dir)
    if final.is_dir() and any(final.iterdir()) and not (final / REPORT_NAME).is_file():
        raise InputError(f"--out {final} is a folder that is not empty and holds no campaign; choose a new folder "
                         "(a campaign writes a whole folder, and replaces an earlier campaign's)")
    with staged_folder(final) as out:
        results = _paint_and_rank(models, groups, canvas, image, settings, title, category, prompts_per_group, seed,
                                  out, final, progress)
        report = CampaignReport(str(final / "product.png"), title, category, generator, is_random_init(generator),
                                str(prompt_model or "prompts-mini"), str(reward_model), results)
        (out / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _paint_and_rank(models, groups, canvas, image, settings, title, category, prompts_per_group, seed, out: Path,
                    final: Path, progress: bool) -> list[GroupResult]:
    """Each group's prompts painted on the one canvas and ranked by predicted CTR; files go to `out`, paths name
    where they will be (`final`)."""
    results = []
    image.save(out / "product.png")
    bar = tqdm(groups, desc="campaign", unit="group", disable=not progress)
    for profile in bar:
        group_id = str(profile["group_id"])
        prompts = write_prompts(models.writer, profile, title=title, category=category, n=prompts_per_group,
                                seed=seed)
        group_dir = out / f"group-{group_id}"
        creatives = [
            generate_creatives(
                canvas, prompt.positive, settings=replace(settings, negative_prompt=prompt.negative), n=1,
                seed=seed + i, engine=models.engine, out_dir=group_dir, progress=False,
                models={"prompt_model": models.prompt_model, "reward_model": models.reward_model},
            )[0]
            for i, prompt in enumerate(prompts)
        ]
        ctr = score(models.scorer, [creative.image for creative in creatives], [p.positive for p in prompts],
                    [group_id] * len(prompts), [category] * len(prompts))
        ranked = sorted(
            (RankedCreative(str(final / c.path.relative_to(out)), p.positive, p.negative, c.recipe.seed, value, rank)
             for c, p, value, rank in zip(creatives, prompts, ctr, rank_by_ctr(ctr))),
            key=lambda creative: creative.rank,
        )
        summary, tags = str(profile.get("summary", "")), list(profile.get("top_tags", []))
        results.append(GroupResult(group_id, summary, tags, ranked))
    return results
