"""The batch job's pieces: its config, the catalogue, the work items and `ItemMaker`, which makes one item.

`studio.jobs.batch` runs them in this process, `studio.jobs.batch_ray` on Ray Data; both make an item with the same
`ItemMaker`, so its bytes do not depend on where it ran.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.core.errors import InputError, StudioError
from studio.core.vocabulary import CATEGORIES
from studio.imaging.canvas import paste_back, parse_aspect
from studio.imaging.creatives import CreativeSettings, build_canvas, make_recipe, model_inputs
from studio.imaging.engine import default_model, model_guidance, model_weights_hash
from studio.imaging.images import load_image
from studio.imaging.personal import IMAGE_SUFFIXES, History, adapter_kind, load_history
from studio.imaging.provenance import encode_png, weights_hash
from studio.jobs.cache import CacheKey
from studio.jobs.pipeline import Models, normalise_category, rank_by_ctr, score, write_prompts

REQUIRED_COLUMNS = ("image", "product_id", "title", "category")
OPTIONAL_COLUMNS = ("brand", "mask")
PRODUCT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
KNOWN_CATEGORIES = set(CATEGORIES) | set(CATEGORIES.values())
ENGINES = ("local", "ray")
SIMULATED = "simulated"  # BatchConfig.history: each group's clicks in the simulated world


class CatalogueError(InputError):
    """A catalogue that cannot be read or holds rows that cannot be a product."""


@dataclass(frozen=True)
class Product:
    """One catalogue row."""

    row: int
    product_id: str
    image: str
    title: str
    category: str
    brand: dict | None = None
    mask: str | None = None


@dataclass
class BatchConfig:
    """One batch job.

    catalogue: CSV or Parquet with columns image, product_id, title, category and optionally brand (a JSON object:
        required_words, banned_words, tone) and mask (a mask image for a busy photo); image paths relative to it.
    cache / blobs: the creative cache (a folder, or a postgresql:// URL plus a blob folder or fsspec URL).
    out: the folder for the run report (batch.json) and one contact sheet per group.
    groups: audience group ids (None: every group of the reward model's clustering).
    top_k: creatives per (product, group, placement) stored as "accepted"; the rest are stored as "candidate".
    batch_size: most images in one generator call (the item's prompts are split in fixed chunks of this size).
    engine: "local" (this process) or "ray" (Ray Data; `ray_address` joins a cluster, `workers` actors).
    history / history_guidance / category / category_guidance / history_adapter: personal conditions
        (`studio.imaging.personal`), as `studio generate` takes them. history is each group's own: "simulated" (the
        group's clicks in the simulated world at `history_world`, default the seeded one in the user cache) or a
        folder holding one subfolder per group id (DIR/0/, DIR/2/, ...); a group with no (or an empty) subfolder is
        painted from the text alone, which its recipe says. category: None is each product's own catalogue
        category (used when category_guidance > 0).
    """

    catalogue: str
    cache: str
    out: str
    blobs: str | None = None
    placements: tuple[str, ...] = ("1:1",)
    groups: tuple[int, ...] | None = None
    prompts_per_group: int = 4
    top_k: int = 1
    seed: int = 0
    size: int = 512
    steps: int | None = None
    generator: str | None = None
    prompt_model: str | None = None
    reward_model: str = "reward-mini"
    batch_size: int = 16
    device: str = "auto"
    engine: str = "local"
    ray_address: str | None = None
    workers: int = 1
    progress: bool = True
    # Tuning switches, for benchmarks/batch.py: each optimisation can be turned off alone.
    batched: bool = True  # several prompts per generator call, canvas VAE-encoded once, cached text embeddings
    overlap: bool = True  # paste-back, PNG and scoring of one item in a thread while the next is painted
    history: str | None = None
    history_world: str | None = None
    history_guidance: float = 0.0
    category: str | None = None
    category_guidance: float = 0.0
    history_adapter: str | None = None
    history_projection: str = "none"
    history_interval: float = 1.0

    @property
    def personal(self) -> bool:
        """Whether any personal condition is set (then each creative is painted alone, with its group's history)."""
        return (self.history is not None or self.category is not None or self.history_adapter is not None
                or float(self.history_guidance) > 0 or float(self.category_guidance) > 0)

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not self.placements:
            raise InputError("no placements given; pass at least one aspect such as 1:1")
        if len(set(self.placements)) != len(self.placements):
            raise InputError(f"placements repeat: {', '.join(self.placements)}")
        for placement in self.placements:
            parse_aspect(placement)
        if not isinstance(self.prompts_per_group, int) or not 1 <= self.prompts_per_group <= 16:
            raise InputError(f"prompts per group must be 1 to 16, got {self.prompts_per_group!r}")
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.prompts_per_group:
            raise InputError(f"top k must be 1 to prompts per group ({self.prompts_per_group}), got {self.top_k!r}")
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 256:
            raise InputError(f"batch size must be 1 to 256 images, got {self.batch_size!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**31:
            raise InputError(f"seed must be a whole number from 0 to 2**31-1, got {self.seed!r}")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= 1024:
            raise InputError(f"workers must be 1 to 1024, got {self.workers!r}")
        self.settings("1:1").check()  # the guidance scales and the category, too
        self._check_personal()

    def _check_personal(self) -> None:
        if self.history is not None and self.history != SIMULATED and not Path(self.history).expanduser().is_dir():
            raise InputError(f"history {self.history!r} is not a folder; pass a folder with one subfolder of clicked "
                             f"creatives per group id (DIR/0/, DIR/1/, ...) or '{SIMULATED}'")
        if self.history_world is not None and self.history != SIMULATED:
            raise InputError(f"a history world is only read with history '{SIMULATED}'")
        if self.history_adapter is not None:
            if not Path(self.history_adapter).expanduser().is_dir():
                raise InputError(f"history adapter {self.history_adapter!r} is not a folder; pass a PersonalConditioner"
                                 " folder (studio-mini) or an IP-Adapter folder")
            adapter_kind(self.history_adapter)  # neither kind: one clear error before any model loads

    def settings(self, placement: str) -> CreativeSettings:
        return CreativeSettings(size=self.size, steps=self.steps or CreativeSettings.steps, placement=placement,
                                history_guidance=self.history_guidance, category_guidance=self.category_guidance,
                                category=self.category if self.category is None else normalise_category(self.category),
                                history_adapter=self.history_adapter, history_projection=self.history_projection,
                                history_interval=self.history_interval)

    def group_settings(self, settings: CreativeSettings, product: Product,
                       history: History | None) -> CreativeSettings:
        """One group's settings for one product: its history, and the category condition (the product's own unless
        the job names one)."""
        category = settings.category
        if category is None and float(self.category_guidance) > 0:
            category = product.category
        return replace(settings, history=history, category=category)


@dataclass
class WorkItem:
    """One unit of work: a product in one placement, for every group; its id decides whether it is done."""

    unit_id: str
    product: Product
    placement: str
    groups: list[dict]


@dataclass
class Made:
    """One creative a worker made, ready for the cache."""

    png: bytes
    key: CacheKey
    predicted_ctr: float
    rank: int
    status: str


@dataclass
class ItemResult:
    unit_id: str
    product_id: str
    placement: str
    creatives: list[Made] = field(default_factory=list)
    error: str | None = None


# -- the catalogue -----------------------------------------------------------------------------------------------------


def read_catalogue(path: str | os.PathLike) -> list[Product]:
    """The catalogue's products, checked: columns, ids (unique, plain), categories, brand rules, image paths."""
    import pandas as pd

    from prompts.brief import BrandRules

    path = Path(path)
    if not path.is_file():
        raise CatalogueError(f"catalogue {path} does not exist; pass a CSV or Parquet file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")  # Excel writes a BOM
    except ImportError as error:
        raise CatalogueError(f"cannot read {path}: {error}; pip install pyarrow") from None
    except Exception as error:  # noqa: BLE001 - pandas/pyarrow raise many kinds for a damaged file
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise CatalogueError(f"catalogue {path} is not a readable CSV or Parquet file ({reason})") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise CatalogueError(f"catalogue {path} lacks column(s) {', '.join(missing)}; it needs "
                             f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)})")
    if table.empty:
        raise CatalogueError(f"catalogue {path} has no rows")
    products, seen = [], {}
    for index, record in enumerate(table.to_dict("records")):
        row = index + 2 if path.suffix.lower() not in (".parquet", ".pq") else index + 1  # CSV: line 1 is the header
        where = f"catalogue {path} row {row}"
        text = {key: "" if _missing(value) else str(value).strip() for key, value in record.items()}
        product_id = text["product_id"]
        if PRODUCT_ID.fullmatch(product_id) is None:
            raise CatalogueError(f"{where}: product_id {product_id!r} must be 1-128 letters, digits, '.', '_', ':' "
                                 "or '-'")
        if product_id in seen:
            raise CatalogueError(f"{where}: product_id {product_id!r} repeats row {seen[product_id]}; ids must be "
                                 "unique")
        seen[product_id] = row
        category = text["category"].lower()
        if category not in KNOWN_CATEGORIES:
            raise CatalogueError(f"{where}: unknown category {text['category']!r}; use one of "
                                 f"{', '.join(sorted(KNOWN_CATEGORIES))}")
        if not text["image"]:
            raise CatalogueError(f"{where}: no image path")
        brand = None
        if text.get("brand"):
            try:
                brand = json.loads(text["brand"])
                BrandRules.from_dict(brand)
            except (ValueError, InputError) as error:
                raise CatalogueError(f"{where}: brand rules are not a valid JSON object ({error})") from None
        mask = str(path.parent / text["mask"]) if text.get("mask") else None
        products.append(Product(row, product_id, str(path.parent / text["image"]), text["title"],
                                normalise_category(category), brand, mask))
    return products


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# -- planning ----------------------------------------------------------------------------------------------------------


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def item_seed(seed: int, product_id: str, placement: str, group_id: int) -> int:
    """The prompt and image seeds of one (product, placement, group) come from its key, never from the work order."""
    return int(digest(seed, product_id, placement, int(group_id))[:8], 16) % 2**31


@dataclass
class Versions:
    generator: str
    reward: str
    prompt_model: str
    personal: str | None = None  # a digest of the job's personal conditions (None: a text-only job)


def versions(config: BatchConfig, histories: dict[int, History | None] | None = None) -> Versions:
    """Version strings for the cache key: the model, a hash of its weights, and (for the generator) the settings and
    seed that decide its pixels, so a changed model or setting never reuses a stale entry. With personal conditions
    `personal` digests them (work items' ids hold it) and each key's generator version gets the conditions that
    decided that creative (`key_version`)."""
    from reward.model import resolve_model_folder

    generator = config.generator or default_model()
    generator_hash = (model_weights_hash(generator) or "unhashed").removeprefix("sha256:")[:12]
    settings = config.settings("1:1")
    guidance = model_guidance(generator) if settings.guidance is None else settings.guidance
    knobs = digest(settings.steps, guidance, settings.strength, settings.scheduler, settings.size,
                   settings.scale, settings.mode, config.seed, config.batch_size if config.batched else 1)[:8]
    reward_folder = resolve_model_folder(config.reward_model)
    reward_hash = weights_hash(reward_folder).removeprefix("sha256:")[:12]
    return Versions(f"{Path(generator).name or generator}@{generator_hash}+{knobs}",
                    f"{Path(config.reward_model).name}@{reward_hash}", str(config.prompt_model or "prompts-mini"),
                    personal_version(config, histories or {}))


# -- personal conditions -----------------------------------------------------------------------------------------------


def group_histories(config: BatchConfig, group_ids: list[int]) -> dict[int, History | None]:
    """Each group's own history for the job ({} without `config.history`); None: the group has none (no clicks, no
    subfolder or an empty one), so its creatives are painted from the text alone and their recipes say so."""
    if config.history is None:
        return {}
    if config.history == SIMULATED:
        return {int(group): _simulated_history(group, config.history_world) for group in group_ids}
    folder = Path(config.history).expanduser()
    return {int(group): _folder_history(folder / str(int(group))) for group in group_ids}


def _folder_history(folder: Path) -> History | None:
    if not folder.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir()):
        return None
    return load_history(folder)  # a file that is not an image is one clear error


def _simulated_history(group: int, world: str | None) -> History | None:
    from studio.sim.histories import history_for_group

    try:
        return history_for_group(group, world)
    except InputError as error:
        if "clicked nothing" in str(error):  # a group without clicks has no history: the text-only fallback
            return None
        raise  # an unknown group, or a world folder holding something else


def check_histories(config: BatchConfig, histories: dict[int, History | None]) -> None:
    """A history folder must hold a subfolder for at least one of the job's groups: a flat folder of images is a
    mistake, not a request to paint every group from the text alone."""
    if config.history in (None, SIMULATED):
        return
    folder = Path(config.history).expanduser()
    if not any((folder / str(group)).is_dir() for group in histories):
        raise InputError(f"history folder {config.history!r} has no subfolder for any group of the job "
                         f"({', '.join(str(g) for g in histories)}); put each group's clicked creatives in "
                         f"{config.history}/<group id>/")


def personal_version(config: BatchConfig, histories: dict[int, History | None]) -> str | None:
    """What decides the personal conditions' pixels and recipes: the scales, the category, the adapter's weights and
    each group's history (its source and a hash of its pixels); None for a text-only job."""
    if not config.personal:
        return None
    adapter = weights_hash(config.history_adapter) if config.history_adapter else None
    groups = sorted((group, None if h is None else [h.source, h.digest]) for group, h in histories.items())
    variant = _history_variant(config.history_projection, config.history_interval)
    return digest("personal", float(config.history_guidance), float(config.category_guidance), config.category,
                  adapter, config.history, groups, *variant)[:16]


def _history_variant(projection: str, interval: float) -> tuple:
    """How the history is guided, beyond its scale: () for the defaults, so older keys stay valid."""
    return (() if projection == "none" else (projection,)) + (() if float(interval) >= 1.0 else (float(interval),))


def key_version(config: BatchConfig, version: Versions, settings: CreativeSettings) -> str:
    """The generator version in the cache key of a creative made with `settings` (its group's): the job's, plus, with
    personal conditions, a digest of what its recipe records of them (its history, the scales that apply, the
    category) and of the adapter's weights. A group painted from the text alone (no history) keeps its key when only
    the history scale changes: its creative is the same bytes, which the cache must not store under two keys."""
    if not config.personal:
        return version.generator
    history = settings.history
    s_hist = float(settings.history_guidance) if history is not None else 0.0
    s_cat = float(settings.category_guidance) if settings.category is not None else 0.0
    adapter = weights_hash(config.history_adapter) if config.history_adapter and (s_hist or s_cat) else None
    no_history = history is None and float(settings.history_guidance) > 0  # the recipe's text-only note
    variant = _history_variant(settings.history_projection, settings.history_interval) if s_hist else ()
    conditions = digest(None if history is None else [history.source, history.digest], s_hist, settings.category,
                        s_cat, adapter, no_history, *variant)[:8]
    return f"{version.generator}+{conditions}"


# -- work items --------------------------------------------------------------------------------------------------------


def plan(config: BatchConfig, products: list[Product], groups: list[dict], version: Versions) -> list[WorkItem]:
    """Every work item of the job, in catalogue order."""
    items = []
    for product in products:
        for placement in config.placements:
            unit_id = digest("batch-item", product.product_id, placement, [int(g["group_id"]) for g in groups],
                             product.title, product.category, product.brand, config.prompts_per_group, config.top_k,
                             version.generator, version.reward, version.prompt_model,
                             *([version.personal] if version.personal else []))  # text-only ids stay as they were
            items.append(WorkItem(unit_id, product, placement, groups))
    return items


# -- one work item -----------------------------------------------------------------------------------------------------


class ItemMaker:
    """Makes work items with loaded models: used in this process and inside each Ray actor.

    `paint(item)` runs the generator (the slow part) and returns a closure that finishes the item (paste-back, PNG,
    CTR, ranking), so the caller can run that closure beside the next `paint`.
    """

    def __init__(self, config: BatchConfig, models: Models, version: Versions,
                 histories: dict[int, History | None] | None = None) -> None:
        self.config, self.models, self.version = config, models, version
        self._photo: tuple[str, Any] | None = None  # the last decoded photo: every placement of a product reuses it
        self.histories = dict(histories or {})  # group -> History; a Ray actor loads its own on first use

    def history(self, group_id: int) -> History | None:
        if self.config.history is None:
            return None
        if group_id not in self.histories:
            self.histories.update(group_histories(self.config, [group_id]))
        return self.histories[group_id]

    def paint(self, item: WorkItem) -> Callable[[], ItemResult]:
        config, engine = self.config, self.models.engine
        product = item.product
        try:
            settings = config.settings(item.placement)
            if self._photo is None or self._photo[0] != product.product_id:
                self._photo = (product.product_id, load_image(product.image))
            canvas = build_canvas(self._photo[1], settings, mask=product.mask)
            # Prompts per group, each group's seeds from its own key
            jobs = []  # (group_id, prompt, image seed)
            per_group = {}  # group_id -> its settings (its own history, with personal conditions)
            for profile in item.groups:
                group_id = int(profile["group_id"])
                per_group[group_id] = config.group_settings(settings, product, self.history(group_id))
                seed = item_seed(config.seed, product.product_id, item.placement, group_id)
                prompts = write_prompts(self.models.writer, profile, title=product.title or product.category,
                                        category=product.category, brand=product.brand, placement=item.placement,
                                        n=config.prompts_per_group, seed=seed)
                jobs.extend((group_id, prompt, seed + index) for index, prompt in enumerate(prompts))
        except (StudioError, OSError) as error:  # this product cannot be made: reported, the job goes on
            failed = ItemResult(item.unit_id, product.product_id, item.placement, error=_one_line(error))
            return lambda: failed
        model_image, model_mask = model_inputs(canvas, engine)

        # The generator: fixed chunks of the item's prompts in one call each (or one call per image). With personal
        # conditions each image is painted alone: its group's history adds UNet passes a batched call cannot take.
        if config.personal:
            generated = []
            for group_id, p, seed in jobs:
                mine = replace(per_group[group_id], negative_prompt=p.negative)
                generated.append(engine.generate(model_image, model_mask, prompt=p.positive, seed=seed, settings=mine,
                                                 history=mine.history, category=mine.category,
                                                 history_adapter=mine.history_adapter))
        elif config.batched:
            prepared = engine.prepare_canvas(model_image, model_mask)
            generated = []
            for start in range(0, len(jobs), config.batch_size):
                chunk = jobs[start:start + config.batch_size]
                generated += engine.generate_many(
                    prepared, prompts=[p.positive for _, p, _ in chunk],
                    negative_prompts=[p.negative for _, p, _ in chunk], seeds=[seed for _, _, seed in chunk],
                    settings=settings)
        else:
            generated = [engine.generate(model_image, model_mask, prompt=p.positive, seed=seed,
                                         settings=replace(settings, negative_prompt=p.negative))
                         for _, p, seed in jobs]
        return lambda: self.finish(item, canvas, per_group, model_image.size, jobs, generated)

    def finish(self, item: WorkItem, canvas, per_group: dict[int, CreativeSettings], size: tuple[int, int],
               jobs: list, generated: list) -> ItemResult:
        """Paste back, encode each PNG with its recipe (its group's conditions), score each creative for its group,
        rank per group."""
        finals, pngs = [], []
        for (group_id, prompt, seed), image in zip(jobs, generated):
            final = paste_back(image, canvas)
            settings = replace(per_group[group_id], negative_prompt=prompt.negative)
            recipe = make_recipe(self.models.engine, canvas, settings,
                                 prompt=prompt.positive, seed=seed, model_size=size)
            finals.append(final)
            models = {"prompt_model": self.version.prompt_model, "reward_model": self.version.reward}
            pngs.append(encode_png(final, recipe, keep=canvas.keep, models=models))
        ctr = score(self.models.scorer, finals, [p.positive for _, p, _ in jobs], [g for g, _, _ in jobs],
                    [item.product.category] * len(jobs))
        result = ItemResult(item.unit_id, item.product.product_id, item.placement)
        for group_id in dict.fromkeys(g for g, _, _ in jobs):
            members = [i for i, (g, _, _) in enumerate(jobs) if g == group_id]
            for i, rank in zip(members, rank_by_ctr([ctr[i] for i in members])):
                key = CacheKey(item.product.product_id, group_id, item.placement, jobs[i][1].positive,
                               key_version(self.config, self.version, per_group[group_id]), self.version.reward)
                status = "accepted" if rank <= self.config.top_k else "candidate"
                result.creatives.append(Made(pngs[i], key, ctr[i], rank, status))
        return result


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__
