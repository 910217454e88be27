"""The Create tab's work: audience groups and their profiles, prompt suggestions, the token counter, creatives that
stream in one at a time with their predicted CTR and rank, accepting one into the campaign cache, and the zip.

    groups(reward_model) -> suggest(profile, ...) -> creative_settings(..., personal_group, history_guidance)
    -> stream_creatives(...) yields [ScoredCreative] after each image -> accept(cache, creative, ...)
    -> zip_creatives(paths, out)

The predicted CTR is the reward model's own (`studio.jobs.pipeline.score`, as the campaign and the batch job call it)
for the chosen group and category; the rank orders the creatives of one run, 1 = best.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from studio.core.atomic import write_file
from studio.core.errors import InputError, StudioError
from studio.imaging.creatives import CreativeSettings, build_canvas, generate_creatives
from studio.imaging.engine import load_engine, model_guidance
from studio.imaging.personal import check_category, check_scale
from studio.imaging.provenance import read_recipe, weights_hash
from studio.jobs.cache import CachedCreative, CacheKey, CreativeCache
from studio.jobs.pipeline import audience_groups, normalise_category, rank_by_ctr, score, write_prompts
from studio.jobs.work import digest

# Each channel's placement and the aspect ratio the creative is painted at.
PLACEMENT_PRESETS: dict[str, str] = {
    "Feed, square 1:1": "1:1",
    "Feed, portrait 4:5": "4:5",
    "Story 9:16": "9:16",
    "Banner 16:9": "16:9",
}
DEFAULT_REWARD_MODEL = "reward-mini"
# the history slider's value once a group is chosen: with the colours kept, studio-mini v2 held the prompt's colour
# (1.00) and raised the group's own oracle CTR by +10.8 % on evaluation seeds (docs/benchmarks.md)
DEFAULT_HISTORY_GUIDANCE = 2.0
MAX_HISTORY_GUIDANCE = 4.0  # the slider's top: past it the history overrides the prompt's colours (generation.md)
# "Keep the prompt's colours": the history never works against the prompt (perpendicular), at every step; with v2 the
# v1 setting's interval (the last third of the steps only) kept the colour but left no gain (docs/benchmarks.md)
KEEP_COLOURS = {"history_projection": "perpendicular", "history_interval": 1.0}


@dataclass
class ScoredCreative:
    """One creative of a Create run: its PNG, how it was made, its predicted CTR for the group and its rank."""

    path: str
    prompt: str
    seed: int
    group_id: int | None  # None: no group chosen, so no predicted CTR and no rank
    category: str
    predicted_ctr: float | None
    rank: int | None

    def caption(self) -> str:
        if self.predicted_ctr is None:
            return f"seed {self.seed}"
        return f"#{self.rank} · predicted CTR {self.predicted_ctr:.2%} · seed {self.seed}"


# -- models, loaded once per name ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def reward_model(name: str = DEFAULT_REWARD_MODEL):
    from reward.model import RewardModel

    model = RewardModel.from_pretrained(name)
    model.eval()
    return model


@functools.lru_cache(maxsize=4)
def prompt_writer(name: str | None = None):
    from prompts.loading import load_prompt_model

    return load_prompt_model(name)


# -- audience groups ------------------------------------------------------------------------------------------------


def groups(reward_model_name: str = DEFAULT_REWARD_MODEL) -> list[dict]:
    """The reward model's audience groups (profiles as dicts: group_id, summary, top_tags, demographics, size)."""
    from reward.model import resolve_model_folder
    from studio.learning.audience import AudienceClustering

    profiles = audience_groups(reward_model_name)
    sizes = {p.group_id: p.size for p in
             AudienceClustering.from_pretrained(resolve_model_folder(reward_model_name) / "audience").profiles_}
    return [{**profile, "size": int(sizes.get(profile["group_id"], 0))} for profile in profiles]


def group_choices(profiles: list[dict]) -> list[tuple[str, str]]:
    """(label, value) pairs for a group picker: "Group 0 · 4,335 users · travel, nightlife, beach"."""
    return [(f"Group {p['group_id']} · {p.get('size', 0):,} users · {', '.join(p.get('top_tags', []))}",
             str(p["group_id"])) for p in profiles]


def find_group(profiles: list[dict], group_id: str | int | None) -> dict:
    if group_id is None or str(group_id).strip() == "":
        raise InputError("choose an audience group first")
    for profile in profiles:
        if str(profile["group_id"]) == str(group_id):
            return profile
    raise InputError(f"unknown audience group {group_id!r}; the groups are "
                     f"{', '.join(str(p['group_id']) for p in profiles)}")


def profile_text(profile: dict) -> str:
    """A group's profile in a few plain lines (Markdown)."""
    lines = [f"**Group {profile['group_id']}** · {profile.get('size', 0):,} users",
             f"Interests: {', '.join(profile.get('top_tags', [])) or 'none stand out'}"]
    for name, value in (profile.get("demographics") or {}).items():
        if isinstance(value, dict):
            lines.append(f"{name.capitalize()}: mostly {value['value']} ({value['share']:.0%})")
        else:
            lines.append(f"{name.capitalize()}: about {value:g} on average")
    return "  \n".join(lines)


def categories(reward_model_name: str = DEFAULT_REWARD_MODEL) -> list[str]:
    """The product categories the reward model knows."""
    return list(reward_model(reward_model_name).config.categories)


# -- prompts --------------------------------------------------------------------------------------------------------


def suggest(profile: dict, *, title: str, category: str, n: int = 4, seed: int = 0, placement: str | None = None,
            prompt_model: str | None = None) -> list[str]:
    """`n` scene prompts the prompt model writes for this group and product (fewer when its samples fail
    validation); the same inputs give the same prompts."""
    category = normalise_category(category or "")
    title = (title or "").strip() or category or "product"
    brief = {key: value for key, value in profile.items() if key != "size"}  # the brief's audience fields only
    found = write_prompts(prompt_writer(prompt_model), brief, title=title, category=category, n=int(n),
                          seed=int(seed), placement=placement)
    return [prompt.positive for prompt in found]


@dataclass(frozen=True)
class TokenCount:
    count: int  # tokens the text encoder reads, with its start and end tokens
    limit: int  # the most it reads (77 for CLIP: Stable Diffusion's and studio-mini v2's; v1's encoder reads 32)
    read_as: str | None = None  # what a closed-vocabulary (or closed-colours) model reads (None: read as typed)
    replaced: tuple[tuple[str, str], ...] = ()  # (colour name, the vocabulary colour it was read as)
    left_out: tuple[str, ...] = ()

    def text(self) -> str:
        if self.count > self.limit:
            over = self.count - self.limit
            counted = f"**{self.count} / {self.limit} tokens**: too long by {over}; shorten the prompt"
        else:
            counted = f"{self.count} / {self.limit} tokens"
        if self.read_as is None:
            return counted
        changes = [f"{word} → {colour}" for word, colour in self.replaced]
        changes += [f"left out: {', '.join(self.left_out)}"] if self.left_out else []
        return f"{counted} · the model reads “{self.read_as}” ({'; '.join(changes)})"


def token_count(text: str | None, model: str | None = None) -> TokenCount:
    """Count a prompt's tokens as the generator's text encoder reads them (the tokenizer `Engine.check_prompt` uses),
    after a closed-vocabulary model's reading (studio.imaging.prompt_reading), which it shows."""
    engine = load_engine(model or None)
    reading = engine.read_prompt(text or "")
    counted = engine.count_tokens(reading.text)
    if counted is None:
        raise InputError("this generator's text encoder has no token limit to count against")
    count = TokenCount(*counted)
    if not reading.changed:
        return count
    return replace(count, read_as=reading.text, replaced=tuple(reading.replaced.items()), left_out=reading.dropped)


# -- the settings of a run, personal conditions included ----------------------------------------------------------


def personal_choices(profiles: list[dict]) -> list[tuple[str, str]]:
    """(label, value) pairs for "Personalise for audience group": none (the prompt alone), then each group."""
    return [("None: the prompt alone", "")] + [(f"Group {p['group_id']} (its clicked creatives)", str(p["group_id"]))
                                               for p in profiles]


def model_guidance_for(model: str | None) -> float | None:
    """The guidance scale the Model box's generator declares (its studio.json's, else 7.5), for the Guidance slider:
    for an empty box (the embedded model) or an existing local folder; None (leave the slider) for a hub id, a path
    being typed, or a folder that is no pipeline."""
    model = (model or "").strip()
    if model and not Path(model).expanduser().is_dir():
        return None
    try:
        return model_guidance(str(Path(model).expanduser()) if model else None)
    except StudioError:
        return None


def creative_settings(*, mode: str, placement: str, extend: dict[str, int] | None, steps: int, guidance: float,
                      negative_prompt: str, scale: float | None, position: tuple[float, float],
                      personal_group: str | int | None = None, history_guidance: float = DEFAULT_HISTORY_GUIDANCE,
                      keep_colours: bool = True, category: str = "", category_guidance: float = 0.0,
                      history_adapter: str | None = None, history_world: str | None = None) -> CreativeSettings:
    """The Create button's settings. With `personal_group`, the creatives are painted for that group's taste: its
    clicked creatives in the simulated world (`studio.sim.histories.history_for_group`; `history_world`, default the
    seeded one in the user cache) condition the generator at `history_guidance` (with `keep_colours`, as
    `KEEP_COLOURS`), through `history_adapter` (empty: the model's own). Without a group the prompt alone paints and
    the slider is not used. `category_guidance` > 0 conditions on the product's `category` too. Checked here: a bad
    scale, an unknown group or category, or a missing adapter is one clear error before anything is painted."""
    settings = CreativeSettings(mode=mode, placement=placement, extend=extend, steps=int(steps),
                                guidance=float(guidance), negative_prompt=negative_prompt, scale=scale,
                                position=position)
    if check_scale("category guidance", category_guidance) > 0:
        category = normalise_category(category or "")
        if not category:
            raise InputError("category guidance needs the product's category: choose one, or set the slider to 0")
        settings = replace(settings, category=check_category(category), category_guidance=float(category_guidance))
    if personal_group is None or str(personal_group).strip() == "":
        return settings
    from studio.sim.histories import history_for_group

    adapter = (history_adapter or "").strip() or None
    if adapter is not None and not Path(adapter).expanduser().is_dir():
        raise InputError(f"history adapter {adapter!r} is not a folder; enter a PersonalConditioner (studio-mini) or "
                         "an IP-Adapter folder, or leave it empty for the model's own")
    settings = replace(settings, history_guidance=check_scale("history guidance", history_guidance),
                       history_adapter=adapter, **(KEEP_COLOURS if keep_colours else {}))
    settings.history = history_for_group(str(personal_group).strip(), history_world)
    return settings


# -- creatives with predicted CTR -------------------------------------------------------------------------------------


def predict_ctr(images: list[Image.Image | str | os.PathLike], prompts: list[str], group_id: str | int,
                category: str, reward_model_name: str = DEFAULT_REWARD_MODEL) -> list[float]:
    """The reward model's predicted CTR of each creative for one audience group and product category."""
    category = normalise_category(category or "")
    known = categories(reward_model_name)
    if category not in known:
        raise InputError(f"unknown category {category!r}; the reward model knows {', '.join(known)}")
    return score(reward_model(reward_model_name), [str(i) if isinstance(i, Path) else i for i in images],
                 list(prompts), [str(group_id)] * len(images), [category] * len(images))


def stream_creatives(product: Image.Image, prompt: str, *, settings: CreativeSettings, n: int, seed: int,
                     group_id: str | int | None, category: str, out_dir: str | os.PathLike, name: str,
                     mask=None, engine: str | None = None, cancel=None, progress: bool = True,
                     reward_model_name: str = DEFAULT_REWARD_MODEL) -> Iterator[list[ScoredCreative]]:
    """Paint `n` creatives one at a time (seeds `seed`, `seed + 1`, ...) and yield every creative so far, each with
    its predicted CTR for the group and its rank among them (none without a group), after each one is written.

    The CTR is predicted from the PNG as written (with its watermark), the creative a viewer will see. The canvas is
    built once; a cancel (`cancel`, a `CancelFlags` hook) stops the image being painted and raises
    `GenerationCancelled`: the creatives already yielded stay on disk.
    """
    if not 1 <= int(n) <= 16:
        raise InputError(f"count must be 1 to 16, got {n!r}")
    scored = group_id is not None and str(group_id).strip() != ""
    category = normalise_category(category or "")
    if scored:
        predict_ctr([], [], group_id, category, reward_model_name)  # unknown category or model: fail before painting
    canvas = build_canvas(product, settings, mask=mask)
    made: list[tuple[str, str, int, float | None]] = []
    for i in range(int(n)):
        creative = generate_creatives(canvas, prompt, settings=settings, n=1, seed=int(seed) + i, engine=engine,
                                      out_dir=out_dir, name=name, progress=progress, cancel=cancel,
                                      models={"reward_model": reward_model_name} if scored else None)[0]
        ctr = predict_ctr([creative.path], [prompt], group_id, category, reward_model_name)[0] if scored else None
        made.append((str(creative.path), prompt, creative.recipe.seed, ctr))
        ranks = rank_by_ctr([item[3] for item in made]) if scored else [None] * len(made)
        group = int(group_id) if scored else None
        yield [ScoredCreative(path, text, item_seed, group, category, value, rank)
               for (path, text, item_seed, value), rank in zip(made, ranks)]


# -- the campaign cache and the zip -----------------------------------------------------------------------------------


def reward_version(reward_model_name: str = DEFAULT_REWARD_MODEL) -> str:
    """The reward model's version as the batch job writes it into cache keys: name@weights-hash."""
    from reward.model import resolve_model_folder

    folder = resolve_model_folder(reward_model_name)
    return f"{Path(reward_model_name).name}@{weights_hash(folder).removeprefix('sha256:')[:12]}"


def generator_version(recipe) -> str:
    """The generator's version for a cache key: the model, its weights hash and the settings and seed that decided
    the pixels (two seeds of one prompt are two cache entries)."""
    weights = (recipe.weights_hash or "unhashed").removeprefix("sha256:")[:12]
    knobs = digest(recipe.steps, recipe.guidance, recipe.strength, recipe.scheduler, recipe.size, recipe.mode,
                   recipe.seed, recipe.lora)[:8]
    return f"{Path(recipe.model).name or recipe.model}@{weights}+{knobs}"


def accept(cache: CreativeCache, creative: ScoredCreative, *, product_id: str,
           reward_model_name: str = DEFAULT_REWARD_MODEL) -> CachedCreative:
    """Store a creative in the campaign cache as "accepted" for its (product, group, placement), with its predicted
    CTR and rank; accepting the same creative twice returns the stored entry."""
    if creative.group_id is None or creative.predicted_ctr is None:
        raise InputError("choose an audience group and generate again: the cache stores a creative for a group, "
                         "with its predicted CTR")
    product_id = (product_id or "").strip()
    if not product_id:
        raise InputError("the product id is empty; name the product (e.g. its SKU) before accepting a creative")
    png = Path(creative.path).read_bytes()
    recipe = read_recipe(creative.path)
    key = CacheKey(product_id, int(creative.group_id), recipe.placement, recipe.prompt, generator_version(recipe),
                   reward_version(reward_model_name))
    return cache.put(png, key, creative.predicted_ctr, creative.rank, status="accepted")


def zip_creatives(creatives: list[ScoredCreative], out: str | os.PathLike) -> Path:
    """One zip of the run: each creative's PNG (its recipe inside) and beside it `<name>.json` with its recipe,
    predicted CTR, group and rank. Written atomically."""
    if not creatives:
        raise InputError("no creatives to download yet: generate first")

    def write(staging: Path) -> None:
        with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
            for creative in creatives:
                path = Path(creative.path)
                archive.write(path, path.name)
                info = {"recipe": asdict(read_recipe(path)), **asdict(replace(creative, path=path.name))}
                archive.writestr(f"{path.stem}.json", json.dumps(info, indent=2) + "\n")

    out = Path(out)
    write_file(out, write)
    return out


def toggle_favourite(favourites: list[dict[str, Any]] | None, creative: dict[str, Any]) -> list[dict[str, Any]]:
    """The favourites with `creative` added, or removed if it was one already (matched by its PNG path)."""
    kept = [item for item in favourites or [] if item["path"] != creative["path"]]
    return kept if len(kept) < len(favourites or []) else [*kept, creative]


def from_dicts(items: list[dict[str, Any]] | None) -> list[ScoredCreative]:
    """ScoredCreatives back from the plain dicts a UI keeps in its session state."""
    return [ScoredCreative(**item) for item in items or []]


# -- recent runs ----------------------------------------------------------------------------------------------------

# The settings a run is remembered by, in the order "reuse settings" gives them back.
HISTORY_FIELDS = ("prompt", "negative_prompt", "group", "category", "placement", "scale", "count", "seed", "steps",
                  "guidance", "model", "position_x", "position_y", "personal_group", "history_guidance",
                  "keep_colours", "category_guidance", "history_adapter")
HISTORY_LIMIT = 10


def remember(history: list[dict] | None, settings: dict[str, Any], limit: int = HISTORY_LIMIT) -> list[dict]:
    """The recent runs with `settings` first (most recent first, at most `limit`; a repeated run moves to the top)."""
    missing = [name for name in HISTORY_FIELDS if name not in settings]
    if missing:
        raise InputError(f"a run's settings lack {', '.join(missing)}")
    run = {name: settings[name] for name in HISTORY_FIELDS}
    return [run, *[old for old in history or [] if old != run]][:limit]


def reuse(history: list[dict] | None, index: int | str | None) -> tuple:
    """The settings of recent run `index` (0 = the latest), in `HISTORY_FIELDS` order."""
    runs = history or []
    try:
        run = runs[int(index)]
    except (TypeError, ValueError, IndexError):
        raise InputError(f"no recent run {index!r}; choose one of the {len(runs)} listed") from None
    return tuple(run[name] for name in HISTORY_FIELDS)


def history_choices(history: list[dict] | None) -> list[tuple[str, str]]:
    """(label, index) pairs for a picker: "#0 · group 2 · 1:1 · seed 0 · a teal marble table…"."""
    return [((f"#{i} · group {run['group'] or '-'} · {run['placement']} · seed {run['seed']} · "
              f"{_personal_label(run)}{str(run['prompt'])[:48]}"), str(i)) for i, run in enumerate(history or [])]


def _personal_label(run: dict) -> str:
    group = run.get("personal_group")
    return f"for group {group} ×{float(run['history_guidance']):g} · " if group not in (None, "") else ""
