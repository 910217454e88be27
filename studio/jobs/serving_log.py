"""The reward model's training data from what `studio serve` logged: the event log (a SQLite file or a PostgreSQL
URL), the creative cache it served from (PNGs and the prompts they were made with) and the audience clustering.

    dataset = load_serving_dataset("postgresql://host/db", cache="out/world/cache", audience="out/world/audience")

A served log names creatives by their cache id, so the catalogue is the cache: each creative's image is its PNG, its
prompt the cache key's prompt, its category the product kind that starts the product id ("bottle-0" -> beverage).
Impressions of cold-start users (group -1: no features, no group) are left out: the model learns per group.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from studio.core import vocabulary
from studio.core.db import is_postgres_url
from studio.core.errors import InputError


def load_serving_dataset(log: str | os.PathLike, cache: str | os.PathLike, audience: str | os.PathLike,
                         blobs: str | None = None, image_size: int = 64):
    """A `reward.data.RewardDataset` from a serving event log, its creative cache and its audience folder."""
    from PIL import Image

    from reward.data import RewardDataset, load_pixels
    from studio.jobs.cache import CreativeCache
    from studio.learning.audience import AudienceClustering
    from studio.learning.eventlog import EventLog

    # 1. the log: impressions joined with clicks; a missing SQLite file is an error, not a new empty log
    if not is_postgres_url(log) and not Path(log).is_file():
        raise InputError(f"no event log at {str(log)!r}; pass the events.db `studio serve` wrote, or its "
                         "postgresql:// URL")
    with EventLog(log) as events:
        frame = events.read()
    frame = frame[frame["group_id"].notna() & (frame["group_id"].astype(float) >= 0)].copy()
    if frame.empty:
        raise InputError("the event log has no impressions of users in an audience group; serve some traffic first")
    frame["group_id"] = frame["group_id"].astype(np.int64).astype(str)
    for column in ("user_id", "product_id", "creative_id"):
        frame[column] = frame[column].astype(str)

    # 2. the catalogue: every logged creative from the cache
    rows, images = [], []
    with CreativeCache(cache, blobs=blobs) as store:
        for creative_id in sorted(frame["creative_id"].unique()):
            entry = store.get(creative_id)  # an id the cache does not hold is one clear error
            with Image.open(io.BytesIO(store.read_png(creative_id))) as opened:
                images.append(opened.convert("RGB"))
            kind = entry.key.product_id.rsplit("-", 1)[0]
            rows.append({"creative_id": creative_id, "product_id": entry.key.product_id,
                         "category": vocabulary.CATEGORIES.get(kind, "unknown"), "prompt": entry.key.prompt})
    pixels, errors = load_pixels(images, image_size)
    if any(errors):
        raise InputError(f"a cached creative cannot be read: {next(e for e in errors if e)}")

    # 3. the groups' profile vectors
    folder = Path(audience)
    if not folder.is_dir():
        raise InputError(f"no audience clustering at {str(folder)!r}; pass the --audience folder the server used")
    clustering = AudienceClustering.from_pretrained(folder)
    groups = {str(p.group_id): np.asarray(p.vector, dtype=np.float32) for p in clustering.profiles_}
    return RewardDataset(pd.DataFrame(rows).set_index("creative_id"), pixels, groups, frame)
