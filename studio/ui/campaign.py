"""The Campaign tab's work: a catalogue upload -> the batch job (one product at a time, so it can stop between
products), a contact sheet per audience group from the creative cache with each creative's predicted CTR, the storage
report, and retiring or promoting a creative.

    gather_catalogue(csv, images, folder) -> run_catalogue(config, cancelled) yields progress -> contact_sheet(...)
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from studio.core.errors import InputError
from studio.jobs.batch import BatchConfig, run_batch
from studio.jobs.cache import CreativeCache, check_status
from studio.jobs.pipeline import load_models
from studio.jobs.work import read_catalogue


@dataclass
class JobProgress:
    """Where a catalogue job stands after a product: products done of all, creatives made, failures so far."""

    done: int
    total: int
    creatives: int
    failures: list[dict]
    cancelled: bool = False

    def text(self) -> str:
        state = "Cancelled" if self.cancelled else ("Done" if self.done == self.total else "Running")
        failed = "".join(f"  \n- {f['product_id']} ({f['placement']}): {f['error']}" for f in self.failures)
        return (f"**{state}:** {self.done} of {self.total} products, {self.creatives} creatives made"
                + (f"; {len(self.failures)} failed:{failed}" if self.failures else ""))


def gather_catalogue(csv: str | os.PathLike | None, images: list[str | os.PathLike],
                     folder: str | os.PathLike) -> Path:
    """Copy an uploaded catalogue CSV and its images into one folder, so the CSV's image paths (file names) resolve;
    returns the CSV's new path, checked by `read_catalogue` (a bad row is one clear error before any work).

    `csv` None takes the one CSV among `images`: a whole uploaded folder (the CSV beside its photos)."""
    files = [Path(item) for item in images or []]
    if not csv:
        tables = [item for item in files if item.suffix.lower() == ".csv"]
        if len(tables) != 1:
            found = ", ".join(sorted(t.name for t in tables)) or "none"
            raise InputError("upload the catalogue CSV (columns image, product_id, title, category), or a folder "
                             f"holding exactly one CSV beside its photos (CSV files found: {found})")
        csv = tables[0]
        files.remove(csv)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for image in files:
        shutil.copyfile(image, folder / image.name)
    target = folder / "catalogue.csv"
    shutil.copyfile(csv, target)
    try:
        read_catalogue(target)
    except InputError as error:  # name the file the marketer uploaded, not the job folder's copy
        raise InputError(str(error).replace(str(target), Path(csv).name)) from None
    return target


def run_catalogue(config: BatchConfig, cancelled: Callable[[], bool] = lambda: False) -> Iterator[JobProgress]:
    """Run the batch job product by product (the models load once), yielding progress after each; stop before the
    next product once `cancelled()` is true. The job is resumable: running it again skips what the cache holds."""
    products = read_catalogue(config.catalogue)
    models = load_models(config.generator, config.prompt_model, config.reward_model, device=config.device)
    folder = Path(config.out) / "products"
    progress = JobProgress(0, len(products), 0, [])
    yield progress
    for index, product in enumerate(products):
        if cancelled():
            progress.cancelled = True
            yield progress
            return
        single = folder / f"{index:05d}.csv"
        _one_row_catalogue(Path(config.catalogue), index, single)
        report = run_batch(replace(config, catalogue=str(single), progress=False), models=models)
        progress.done += 1
        progress.creatives += report.creatives
        progress.failures += report.failures
        yield progress


def contact_sheet(cache: CreativeCache, group_id: int, status: str | None = None,
                  limit: int = 48) -> list[tuple[Image.Image, str]]:
    """The cached creatives of one audience group (all statuses, or one), best predicted CTR first, each with a
    caption: product, placement, predicted CTR, status and the first characters of its id."""
    if status is not None:
        check_status(status)
    entries = [c for c in cache.all_creatives() if c.key.group_id == int(group_id)
               and (status is None or c.status == status)]
    entries.sort(key=lambda c: (-c.predicted_ctr, c.creative_id))
    sheet = []
    for entry in entries[:limit]:
        image = Image.open(io.BytesIO(cache.read_png(entry.creative_id)))
        image.load()
        sheet.append((image, (f"{entry.key.product_id} · {entry.key.placement} · predicted CTR "
                             f"{entry.predicted_ctr:.2%} · {entry.status} · {entry.creative_id[:12]}")))
    return sheet


def set_status(cache: CreativeCache, creative_id: str, status: str) -> str:
    """Retire ("retired") or promote ("accepted") one creative; `creative_id` may be the first 12+ characters."""
    creative_id = (creative_id or "").strip().lower()
    if len(creative_id) < 12:
        raise InputError("give the creative's id (at least its first 12 characters, as the contact sheet shows)")
    matches = [c.creative_id for c in cache.all_creatives() if c.creative_id.startswith(creative_id)]
    if len(matches) != 1:
        raise InputError(f"{'no' if not matches else 'more than one'} creative in the cache starts with "
                         f"{creative_id!r}")
    cache.set_status(matches[0], status)
    return matches[0]


def _one_row_catalogue(catalogue: Path, index: int, out: Path) -> None:
    """Row `index` of a CSV catalogue as its own catalogue, image paths made absolute (it lives elsewhere)."""
    import pandas as pd

    table = pd.read_csv(catalogue, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    row = table.iloc[[index]].copy()
    for column in ("image", "mask"):
        if column in row.columns and row[column].iloc[0]:
            path = Path(row[column].iloc[0])
            row[column] = str(path if path.is_absolute() else (catalogue.parent / path).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    row.to_csv(out, index=False)
