"""Training data for the reward model: impressions -> per (creative, group) aggregates with Beta-smoothed CTR labels.

A creative shown 40 times with 0 clicks does not have a CTR of 0: its label is shrunk towards the log's average with a
Beta(alpha, beta) prior fitted by the method of moments (CG4CTR's smoothing), so the model learns from evidence in
proportion to how much there is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from studio.core.errors import InputError

KEYS = ["product_id", "group_id", "creative_id"]


@dataclass
class RewardDataset:
    """Everything the trainer and the evaluation read.

    creatives: one row per creative, indexed by creative_id, with columns product_id, category, prompt.
    pixels: (n_creatives, 3, S, S) float in [0, 1], rows in the order of ``creatives``.
    group_vectors: group_id -> profile vector (group_dim,).
    impressions: one row per impression with product_id, group_id, creative_id, clicked (0/1); may also carry
        user_id and anything else.
    """

    creatives: pd.DataFrame
    pixels: torch.Tensor
    group_vectors: dict[str, np.ndarray]
    impressions: pd.DataFrame

    def __post_init__(self) -> None:
        # 1. the join keys are strings everywhere, so ids from SQLite, JSON and the CLI compare equal
        self.creatives = self.creatives.copy()
        self.creatives.index = self.creatives.index.astype(str)
        self.impressions = self.impressions.copy()
        for column in ("product_id", "group_id", "creative_id"):
            if column not in self.impressions.columns:
                raise InputError(f"impressions need a {column!r} column")
            self.impressions[column] = self.impressions[column].astype(str)
        self.group_vectors = {str(k): np.asarray(v, dtype=np.float32) for k, v in self.group_vectors.items()}
        # 2. the log must be usable: not empty, some clicks, and only creatives and groups we know
        if self.impressions.empty:
            raise InputError("the log has no impressions to learn from; run `studio simulate` or serve traffic first")
        if "clicked" not in self.impressions.columns or int(self.impressions["clicked"].sum()) == 0:
            raise InputError("the log has impressions but no clicks; a CTR model needs some clicks to learn from")
        unknown = sorted(set(self.impressions["creative_id"]) - set(self.creatives.index))
        if unknown:
            raise InputError(
                f"the log has {len(unknown)} creatives with no image/prompt in the catalogue (e.g. {unknown[0]!r}); "
                "pass the catalogue of the run that wrote the log"
            )
        groups = sorted(set(self.impressions["group_id"]) - set(self.group_vectors))
        if groups:
            raise InputError(f"the log has audience groups with no profile vector (e.g. {groups[0]!r})")
        if len(self.pixels) != len(self.creatives):
            raise InputError(f"got {len(self.pixels)} images for {len(self.creatives)} creatives")

    def creative_rows(self, creative_ids: Sequence[str]) -> np.ndarray:
        """Row numbers (into ``pixels`` and ``creatives``) of the given creative ids."""
        return self.creatives.index.get_indexer([str(c) for c in creative_ids])


@dataclass(frozen=True)
class BetaPrior:
    """Beta(alpha, beta) prior over CTRs; its mean is alpha / (alpha + beta)."""

    alpha: float
    beta: float

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def smooth(self, clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
        """Posterior-mean CTR (clicks + alpha) / (impressions + alpha + beta), elementwise."""
        return (np.asarray(clicks, float) + self.alpha) / (np.asarray(impressions, float) + self.alpha + self.beta)


def fit_beta_prior(clicks: np.ndarray, impressions: np.ndarray, max_strength: float = 1e5) -> BetaPrior:
    """Fit a Beta prior to per-item click counts by the method of moments.

    The observed spread of CTRs is the true spread plus binomial noise; the noise part m(1-m)/n is removed before
    matching moments, so items with few impressions do not fake a wide prior. ``alpha + beta`` (the prior's weight,
    in impressions) is clipped to [1, max_strength].
    clicks, impressions: (K,) counts per item.
    """
    clicks, impressions = np.asarray(clicks, float), np.asarray(impressions, float)
    if clicks.size == 0 or impressions.sum() <= 0:
        raise InputError("the log has no impressions to learn from; run `studio simulate` or serve some traffic first")
    mean = clicks.sum() / impressions.sum()
    if mean <= 0:
        raise InputError("the log has impressions but no clicks; a CTR model needs some clicks to learn from")
    if mean >= 1:
        raise InputError("every impression in the log was clicked; a CTR model needs some impressions without clicks")
    rates = clicks / np.maximum(impressions, 1)
    weights = impressions / impressions.sum()
    observed_var = float(np.sum(weights * (rates - mean) ** 2))
    noise_var = mean * (1 - mean) * float(np.sum(weights / np.maximum(impressions, 1)))
    true_var = observed_var - noise_var
    strength = max_strength if true_var <= 0 else mean * (1 - mean) / true_var - 1
    strength = float(np.clip(strength, 1.0, max_strength))
    return BetaPrior(alpha=mean * strength, beta=(1 - mean) * strength)


def aggregate(impressions: pd.DataFrame) -> pd.DataFrame:
    """Impressions (one row each, with product_id, group_id, creative_id and 0/1 ``clicked``) -> one row per
    (product_id, group_id, creative_id) with ``impressions`` and ``clicks`` counts."""
    missing = [c for c in [*KEYS, "clicked"] if c not in impressions.columns]
    if missing:
        raise InputError(f"impressions need columns {KEYS + ['clicked']}; missing {missing}")
    if impressions.empty:
        raise InputError("the log has no impressions to learn from; run `studio simulate` or serve some traffic first")
    grouped = impressions.groupby(KEYS, sort=True)["clicked"]
    table = pd.DataFrame({"impressions": grouped.size(), "clicks": grouped.sum()}).reset_index()
    table["impressions"] = table["impressions"].astype(np.int64)
    table["clicks"] = table["clicks"].astype(np.int64)
    return table


def label(aggregates: pd.DataFrame, prior: BetaPrior) -> pd.DataFrame:
    """Add ``ctr`` (raw clicks / impressions) and ``label`` (Beta-smoothed CTR) columns; returns a copy."""
    table = aggregates.copy()
    table["ctr"] = table["clicks"] / table["impressions"].clip(lower=1)
    table["label"] = prior.smooth(table["clicks"].to_numpy(), table["impressions"].to_numpy())
    return table


def load_pixels(images: Sequence[str | Path | object], size: int) -> tuple[torch.Tensor, list[str | None]]:
    """Read images (paths or PIL images) into a (N, 3, size, size) float tensor in [0, 1].

    A file that cannot be read does not stop the batch: its row is zeros and its entry in the returned error list is
    one line saying why (None for images that loaded).
    """
    from PIL import Image, UnidentifiedImageError

    batch = np.zeros((len(images), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = []
    for i, item in enumerate(images):
        try:
            if isinstance(item, (str, Path)):
                with Image.open(item) as opened:
                    image = opened.convert("RGB")
            else:
                image = item.convert("RGB")
            width, height = image.size
            if (width, height) != (size, size):
                # area averaging, like the encoder's own pooling; an exact multiple takes the fast box reduce
                if width == height and width % size == 0:
                    image = image.reduce(width // size)
                else:
                    image = image.resize((size, size), Image.BOX)
            batch[i] = np.asarray(image)
            errors.append(None)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
            errors.append(f"{item}: not a readable image ({type(error).__name__}: {error})")
    # one conversion for the whole batch: per-image float tensors cost more than decoding the PNGs
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    return pixels, errors


# ---- an event log and the run folder around it -> RewardDataset ------------------------------------------------------
