"""The reward model's training data from an event log and its run folder: impressions with clicks, the creatives'
images, prompts and categories, and the audience groups' profile vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from reward.data import RewardDataset, load_pixels
from studio.core import vocabulary
from studio.core.errors import InputError
from studio.imaging.provenance import read_recipe
from studio.learning.audience import AudienceClustering
from studio.learning.eventlog import EventLog

CATALOGUE_NAME = "catalogue.json"


def read_impressions(log_path: str | Path) -> pd.DataFrame:
    """Impressions joined with clicks from a studio event log (SQLite), with ids as strings.

    Columns: impression_id, ts, user_id, group_id, product_id, creative_id, ..., clicked (0/1).
    """
    path = Path(log_path)
    if not path.is_file():
        raise InputError(f"no event log at {str(path)!r}; pass the events.db written by `studio simulate` or serving")
    with EventLog(path) as log:
        frame = log.read()
    if frame.empty:
        raise InputError(f"the event log {str(path)!r} has no impressions; run `studio simulate` or serve traffic first")
    if frame["group_id"].isna().any():
        raise InputError(f"{int(frame['group_id'].isna().sum())} impressions in {str(path)!r} have no group_id; "
                         "the reward model learns per audience group, so log the group of every impression")
    frame["group_id"] = frame["group_id"].astype(np.int64).astype(str)
    for column in ("user_id", "product_id", "creative_id"):
        frame[column] = frame[column].astype(str)
    frame["clicked"] = frame["clicked"].astype(np.int64)
    return frame


def read_catalogue(run_dir: str | Path, creative_ids: Sequence[str]) -> pd.DataFrame:
    """Where each creative's image, prompt and category are, for the creatives of a run folder.

    Looked up in this order:
    1. ``<run_dir>/catalogue.json``: a list of {creative_id, product_id, category, prompt, image} (image relative to
       the run folder);
    2. the ``studio simulate`` layout: ``<run_dir>/creatives/<creative_id>.png``; the prompt is the PNG's provenance
       recipe prompt when it has one (else empty), the category comes from the product kind that starts the
       product id ("bottle-0" -> beverage).
    Returns a frame indexed by creative_id with columns product_id, category, prompt, image (absolute path).
    """
    run_dir = Path(run_dir)
    wanted = sorted({str(c) for c in creative_ids})
    catalogue = run_dir / CATALOGUE_NAME
    if catalogue.is_file():
        try:
            table = pd.DataFrame(json.loads(catalogue.read_text())).astype({"creative_id": str})
            table["image"] = [str(run_dir / image) for image in table["image"]]
            table = table.set_index("creative_id")[["product_id", "category", "prompt", "image"]]
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{catalogue} is not a creative catalogue ({error}); expected a JSON list of "
                             "{creative_id, product_id, category, prompt, image}") from error
    else:
        rows = []
        for creative_id in wanted:
            image = run_dir / "creatives" / f"{creative_id}.png"
            if not image.is_file():
                continue
            product_id = creative_id.split("/")[0]
            kind = product_id.rsplit("-", 1)[0]
            rows.append({"creative_id": creative_id, "product_id": product_id,
                         "category": vocabulary.CATEGORIES.get(kind, "unknown"), "prompt": recipe_prompt(image),
                         "image": str(image)})
        table = pd.DataFrame(rows, columns=["creative_id", "product_id", "category", "prompt", "image"])
        table = table.set_index("creative_id")
    unknown = [c for c in wanted if c not in table.index]
    if unknown:
        raise InputError(
            f"the log names {len(unknown)} creatives that the run folder {str(run_dir)!r} does not have (e.g. "
            f"{unknown[0]!r}); expected {CATALOGUE_NAME} or creatives/<creative_id>.png beside the log"
        )
    return table.loc[wanted]


def recipe_prompt(image: Path) -> str:
    try:
        return read_recipe(image).prompt
    except InputError:
        return ""


def read_groups(run_dir: str | Path) -> dict[str, np.ndarray]:
    """Group id -> profile vector, from the audience clustering saved in ``<run_dir>/audience``."""
    folder = Path(run_dir) / "audience"
    if not folder.is_dir():
        raise InputError(f"no audience clustering at {str(folder)!r}; the reward model needs the groups' profile "
                         "vectors (studio simulate writes them there)")
    clustering = AudienceClustering.from_pretrained(folder)
    return {str(profile.group_id): np.asarray(profile.vector, dtype=np.float32) for profile in clustering.profiles_}


def load_log_dataset(log_path: str | Path, image_size: int = 64) -> RewardDataset:
    """A RewardDataset from an event log and its run folder (the folder that holds the log, see read_catalogue)."""
    impressions = read_impressions(log_path)
    run_dir = Path(log_path).parent
    creatives = read_catalogue(run_dir, impressions["creative_id"].unique())
    pixels, errors = load_pixels(creatives["image"].tolist(), image_size)
    broken = [e for e in errors if e]
    if broken:
        raise InputError(f"{len(broken)} creative images cannot be read, e.g. {broken[0]}")
    return RewardDataset(creatives, pixels, read_groups(run_dir), impressions)
