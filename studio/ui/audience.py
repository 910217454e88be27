"""The Audience tab's work: the groups with their sizes and profiles, a 2-D map of users coloured by group, and
re-clustering from an uploaded user table.

    clustering_of(reward_model) -> groups_table(clustering) -> user_map(clustering, users) -> recluster(table, out)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from studio.core.errors import InputError
from studio.learning.audience import AudienceClustering, read_table

MAP_USERS = 600  # users drawn for the map when no table is uploaded


def clustering_of(reward_model_name: str = "reward-mini") -> AudienceClustering:
    """The audience clustering the reward model was trained with (its `audience/` folder)."""
    from reward.model import resolve_model_folder

    folder = resolve_model_folder(reward_model_name) / "audience"
    if not folder.is_dir():
        raise InputError(f"reward model {reward_model_name!r} ships no audience/ folder")
    return AudienceClustering.from_pretrained(folder)


def groups_table(clustering: AudienceClustering) -> pd.DataFrame:
    """One row per group: id, size, share of users, top interests and the one-line summary."""
    total = sum(p.size for p in clustering.profiles_) or 1
    return pd.DataFrame([(p.group_id, p.size, round(p.size / total, 3), ", ".join(p.top_tags), p.summary)
                         for p in clustering.profiles_],
                        columns=["group_id", "size", "share", "top_interests", "profile"])


def sample_users(n: int = MAP_USERS, seed: int = 0) -> pd.DataFrame:
    """Simulated users (the studio's audience simulator), for a map before a real user table is uploaded."""
    from studio.sim.simulator import AudienceSimulator

    return AudienceSimulator(seed=seed).sample_users(n)


def user_map(clustering: AudienceClustering, users: pd.DataFrame) -> pd.DataFrame:
    """Users in 2-D (the first two principal components of the clustering's encoding) with their group:
    columns x, y, group (a string, so a plot colours groups as categories)."""
    features = clustering.transform(users)
    if len(features) < 3:
        raise InputError("the map needs at least 3 users")
    points = PCA(n_components=2, random_state=0).fit_transform(np.asarray(features, dtype=np.float64))
    labels = clustering.predict(users)
    return pd.DataFrame({"x": points[:, 0], "y": points[:, 1], "group": [f"group {g}" for g in labels]})


def recluster(table: str | os.PathLike | pd.DataFrame, out: str | os.PathLike, n_groups: int | None = None,
              seed: int = 0) -> AudienceClustering:
    """Cluster an uploaded user table (CSV or Parquet: user_id, age, region, device, interests ...) and save the
    clustering to `out` (an artefact folder `AudienceClustering.from_pretrained` reads, e.g. for `studio serve`)."""
    users = read_table(table)
    if n_groups is not None and n_groups < 2:
        raise InputError(f"n_groups must be at least 2, got {n_groups!r}")
    columns = [c for c in ("age", "region", "device") if c in users.columns] or None
    clustering = AudienceClustering(n_groups=n_groups, seed=seed, k_range=(2, 8), columns=columns).fit(users)
    clustering.save_pretrained(Path(out))
    return clustering
