"""Evaluating a reward model on held-out impressions, and against an oracle's true CTRs when one is known.

An oracle is anything with the :class:`Oracle` methods; for a simulated log it is ``studio.sim.oracle.SimulatorOracle``,
rebuilt from the run's ``report.json``. It is read for evaluation only; training never sees it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from studio.core.errors import InputError
from reward import metrics
from reward.data import RewardDataset
from reward.model import RewardModel
from reward.training import predict_pairs


class Oracle(Protocol):
    """Ground truth for evaluation only (e.g. ``studio.sim.oracle.SimulatorOracle``): true CTRs the model never sees."""

    def impression_ctr(self, impressions: pd.DataFrame) -> np.ndarray:
        """Expected CTR (n,) of each logged impression: its user on its creative."""

    def pair_ctr(self, pairs: pd.DataFrame, impressions: pd.DataFrame) -> np.ndarray:
        """True CTR (len(pairs),) of each (product_id, group_id, creative_id) row of `pairs`."""


def candidate_pairs(dataset: RewardDataset, impressions: pd.DataFrame) -> pd.DataFrame:
    """Every (product, group, creative) a ranking must order: each creative of a product, for each group that saw it."""
    seen = impressions[["product_id", "group_id"]].drop_duplicates()
    creatives = dataset.creatives.reset_index()[["creative_id", "product_id"]]
    return seen.merge(creatives, on="product_id").sort_values(["product_id", "group_id", "creative_id"]).reset_index(
        drop=True
    )


def evaluate(
    model: RewardModel,
    dataset: RewardDataset,
    impressions: pd.DataFrame | None = None,
    oracle: Oracle | None = None,
) -> dict[str, float]:
    """Impression-level AUC, log-loss and ECE; NDCG and top-1 uplift of creatives within (product, group).

    Ranking metrics use the realised CTR of each (product, group, creative) in ``impressions`` (pairs without
    impressions are left out). With an oracle, also the oracle's AUC and top-1 uplift (ranking by the true CTR), the
    model's top-1 uplift measured with true CTRs, and the ratios model / oracle.
    """
    impressions = dataset.impressions if impressions is None else impressions
    clicked = impressions["clicked"].to_numpy()
    predicted = predict_pairs(model, dataset, impressions)
    report = {
        "impressions": int(len(impressions)),
        "clicks": int(clicked.sum()),
        "auc": metrics.auc(clicked, predicted),
        "log_loss": metrics.log_loss(clicked, predicted),
        "ece": metrics.expected_calibration_error(clicked, predicted),
        "mean_predicted_ctr": float(predicted.mean()),
        "mean_ctr": float(clicked.mean()),
    }
    pairs = candidate_pairs(dataset, impressions)
    pairs["score"] = predict_pairs(model, dataset, pairs)
    grouped = impressions.groupby(["product_id", "group_id", "creative_id"])["clicked"]
    realised = pd.DataFrame({"n": grouped.size(), "ctr": grouped.mean()}).reset_index()
    seen = pairs.merge(realised, on=["product_id", "group_id", "creative_id"])
    lists = (seen["product_id"] + "\x1f" + seen["group_id"]).to_numpy()
    report["ndcg"] = metrics.ndcg(lists, seen["score"], seen["ctr"])
    report["top1_uplift"] = metrics.top_k_uplift(lists, seen["score"], seen["ctr"], k=1)
    if oracle is not None:
        true_impression = oracle.impression_ctr(impressions)
        pairs["true_ctr"] = oracle.pair_ctr(pairs, impressions)
        lists = (pairs["product_id"] + "\x1f" + pairs["group_id"]).to_numpy()
        group_true = impressions[["product_id", "group_id", "creative_id"]].merge(
            pairs, on=["product_id", "group_id", "creative_id"], how="left")["true_ctr"].to_numpy()
        report.update({
            "oracle_auc": metrics.auc(clicked, true_impression),
            "group_oracle_auc": metrics.auc(clicked, group_true),
            "true_top1_uplift": metrics.top_k_uplift(lists, pairs["score"], pairs["true_ctr"], k=1),
            "oracle_top1_uplift": metrics.top_k_uplift(lists, pairs["true_ctr"], pairs["true_ctr"], k=1),
            "true_ndcg": metrics.ndcg(lists, pairs["score"], pairs["true_ctr"]),
        })
        report["auc_vs_oracle"] = report["auc"] / report["oracle_auc"]
        if report["oracle_top1_uplift"] <= 0:
            raise InputError("the oracle's top-1 uplift is 0: every creative of this run is equally good")
        report["top1_uplift_vs_oracle"] = report["true_top1_uplift"] / report["oracle_top1_uplift"]
    return report
