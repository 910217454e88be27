"""The batch job: a catalogue × audience groups × placements -> ranked creatives in the creative cache.

    read_catalogue -> plan (one work item per product and placement) -> skip the items the cache holds ->
    per item: canvas (once) -> prompts per group -> the generator (batched) -> paste-back, PNG, CTR, rank -> cache

For every (product, placement) the prompt model writes `prompts_per_group` prompts per audience group, the generator
paints one creative per prompt, the reward model predicts its CTR for the group, and the `top_k` best of each
(product, group, placement) are stored as "accepted"; the others are stored as "candidate" (made and scored, not
served: the closed loop can promote them later without painting again).

A work item's creatives and its done-mark are committed in one cache transaction, so a job killed at any point and
run again skips exactly the committed items and redoes the rest; every seed comes from the item's key, never from
the order of work, so the rerun writes the bytes an uninterrupted run writes. A product whose photo cannot be used
(corrupt, busy without a mask) is reported in the run report and the job goes on.

The work runs in this process (`engine="local"`: the models stay loaded, prompts of one item are painted in one
pipeline call, paste-back, PNG encoding and scoring of one item overlap the painting of the next in a thread) or on
Ray Data (`engine="ray"`, see `studio.jobs.batch_ray`).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from studio.core.atomic import write_file
from studio.core.errors import InputError
from studio.jobs.batch_ray import run_on_ray
from studio.jobs.cache import CreativeCache
from studio.jobs.pipeline import Models, audience_groups, load_models
from studio.jobs.work import (
    BatchConfig,
    ItemMaker,
    ItemResult,
    Product,
    Versions,
    WorkItem,
    check_histories,
    group_histories,
    key_version,
    plan,
    read_catalogue,
    versions,
)

REPORT_NAME = "batch.json"
CONTACT_ROWS = 48  # products on one contact sheet; a large catalogue's sheet shows its first products

__all__ = ["BatchConfig", "BatchReport", "run_batch", "read_catalogue", "REPORT_NAME"]


# -- the job -----------------------------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What `run_batch` did; written as `batch.json` in the out folder."""

    catalogue: str
    cache: str
    engine: str
    generator_version: str
    reward_version: str
    prompt_model: str
    products: int
    groups: list[int]
    placements: list[str]
    items: int
    skipped: int = 0
    made: int = 0
    failed: int = 0
    creatives: int = 0
    accepted: int = 0
    candidates: int = 0
    seconds: float = 0.0
    creatives_per_second: float = 0.0
    failures: list[dict] = field(default_factory=list)
    contact_sheets: dict[str, str] = field(default_factory=dict)
    storage: dict = field(default_factory=dict)
    personal: dict = field(default_factory=dict)  # the conditions and each group's history source (None: text only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_batch(config: BatchConfig, models: Models | None = None) -> BatchReport:
    """Run (or resume) a batch job; see the module docstring. Raises StudioError for bad input, before any model
    loads and before anything is written. `models`: already loaded models to reuse (local engine only)."""
    # 1. Check every input before a model loads or anything is written
    config.check()
    products = read_catalogue(config.catalogue)
    out = Path(config.out)
    _check_writable(out)
    groups = audience_groups(config.reward_model)
    if config.groups is not None:
        known = {int(profile["group_id"]) for profile in groups}
        unknown = sorted(set(config.groups) - known)
        if unknown:
            raise InputError(f"unknown audience group(s) {unknown}; the reward model's groups are {sorted(known)}")
        groups = [profile for profile in groups if int(profile["group_id"]) in set(config.groups)]
    histories = group_histories(config, [int(profile["group_id"]) for profile in groups])  # decoded once, here
    check_histories(config, histories)
    with CreativeCache(config.cache, config.blobs) as cache:
        cache.remove_stale_temporaries()  # left by a job killed while it wrote a blob
        version = versions(config, histories)
        items = plan(config, products, groups, version)
        done = cache.units_done(item.unit_id for item in items)
        pending = [item for item in items if item.unit_id not in done]
        report = BatchReport(str(config.catalogue), cache.index, config.engine, version.generator, version.reward,
                             version.prompt_model, len(products), [int(g["group_id"]) for g in groups],
                             list(config.placements), len(items), skipped=len(items) - len(pending),
                             personal=personal_report(config, histories))

        # 2. Make what the cache lacks; each item is committed whole, as it finishes
        started = time.perf_counter()
        per_item = len(groups) * config.prompts_per_group
        with tqdm(total=len(items) * per_item, initial=report.skipped * per_item, desc="batch", unit="creative",
                  disable=not config.progress) as bar:
            if config.engine == "ray":
                results = run_on_ray(config, pending, version)
            else:
                results = run_local(config, pending, version, models, histories)
            for result in results:
                if result.error is not None:
                    report.failed += 1
                    report.failures.append({"product_id": result.product_id, "placement": result.placement,
                                            "error": result.error})
                else:
                    # A key cached by an earlier run (e.g. one with fewer --groups) keeps its creative: serving may
                    # already show it, and a batch of another make-up rounds its floats differently.
                    cache.put_unit(result.unit_id, [(m.png, m.key, m.predicted_ctr, m.rank, m.status)
                                                    for m in result.creatives], keep_existing=True)
                    report.made += 1
                    report.creatives += len(result.creatives)
                    report.accepted += sum(m.status == "accepted" for m in result.creatives)
                    report.candidates += sum(m.status == "candidate" for m in result.creatives)
                bar.update(per_item)
        order = {(item.product.product_id, item.placement): i for i, item in enumerate(items)}
        report.failures.sort(key=lambda failure: order[failure["product_id"], failure["placement"]])
        report.seconds = round(time.perf_counter() - started, 3)
        report.creatives_per_second = round(report.creatives / report.seconds, 3) if report.seconds else 0.0

        # 3. Contact sheets and the report, each written atomically
        report.contact_sheets = write_contact_sheets(cache, items, groups, version, out,
                                                     current=_current_versions(config, version, histories))
        report.storage = cache.storage_report()
    write_file(out / REPORT_NAME, lambda staging: staging.write_text(json.dumps(report.to_dict(), indent=2) + "\n"))
    return report


def personal_report(config: BatchConfig, histories: dict) -> dict:
    """The report's `personal` entry: the conditions, and each group's history source (None: painted from the text
    alone, as its recipes say)."""
    if not config.personal:
        return {}
    return {"history": config.history, "history_guidance": float(config.history_guidance),
            "category": config.category, "category_guidance": float(config.category_guidance),
            "history_adapter": config.history_adapter, "history_projection": config.history_projection,
            "history_interval": float(config.history_interval),
            "histories": {str(group): None if history is None else history.source
                          for group, history in histories.items()}}


def _check_writable(folder: Path) -> None:
    """Refuse a report folder that cannot be written, without creating anything yet."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the run report to {folder} ({existing} is not a writable folder); pass a "
                         "writable folder")


def run_local(config: BatchConfig, items: list[WorkItem], version: Versions, models: Models | None = None,
              histories: dict | None = None) -> Iterator[ItemResult]:
    """Make the items in this process, in order: the next item is painted while a thread finishes the last one."""
    if not items:
        return
    if models is None:
        models = load_models(config.generator, config.prompt_model, config.reward_model, device=config.device)
    maker = ItemMaker(config, models, version, histories)
    maker.models.scorer.group_vectors([str(g["group_id"]) for g in items[0].groups])  # unknown group: fail now
    if not config.overlap:
        for item in items:
            yield maker.paint(item)()
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-batch-finish") as finisher:
        pending: Future | None = None
        for item in items:
            finish = maker.paint(item)
            if pending is not None:
                yield pending.result()
            pending = finisher.submit(finish)
        if pending is not None:
            yield pending.result()


# -- contact sheets ----------------------------------------------------------------------------------------------------


def _current_versions(config: BatchConfig, version: Versions, histories: dict):
    """(product, group id) -> the generator version this job's creatives of that pair are cached under."""
    settings = config.settings("1:1")  # the conditions do not depend on the placement

    def current(product: Product, group_id: int) -> str:
        return key_version(config, version, config.group_settings(settings, product, histories.get(group_id)))

    return current


def write_contact_sheets(cache: CreativeCache, items: list[WorkItem], groups: list[dict], version: Versions,
                         out: Path, thumb: int = 128, current=None) -> dict[str, str]:
    """One PNG per group: a row per product, its accepted creatives (each placement, best first) side by side.
    current(product, group_id): the generator version of this job's creatives (default: `version.generator`)."""
    products = list({item.product.product_id: item.product for item in items}.values())[:CONTACT_ROWS]
    sheets = {}
    for profile in groups:
        group_id = int(profile["group_id"])
        rows = []
        for product in products:
            product_id = product.product_id
            made_by = (current(product, group_id) if current else version.generator, version.reward)
            entries = [entry for entry in cache.creatives(product_id, group_id)
                       if (entry.key.generator_version, entry.key.reward_version) == made_by]
            entries.sort(key=lambda entry: (entry.key.placement, entry.rank))
            rows.append((product_id, entries))
        columns = max([len(entries) for _, entries in rows] + [1])
        label = 18
        sheet = Image.new("RGB", (columns * (thumb + 4) + 4, max(1, len(rows)) * (thumb + label + 4) + 4), "white")
        draw = ImageDraw.Draw(sheet)
        for r, (product_id, entries) in enumerate(rows):
            top = 4 + r * (thumb + label + 4)
            draw.text((4, top), product_id[:40], fill="black")
            for c, entry in enumerate(entries):
                with Image.open(io.BytesIO(cache.read_png(entry.creative_id))) as image:
                    image.thumbnail((thumb, thumb))
                    sheet.paste(image.convert("RGB"), (4 + c * (thumb + 4), top + label))
        path = out / f"contact-group-{group_id}.png"
        write_file(path, lambda staging: sheet.save(staging, format="PNG"))
        sheets[str(group_id)] = str(path)
    return sheets

