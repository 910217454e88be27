"""Evaluating a reward model on the impressions of held-out creatives, and against an oracle's true CTRs when known.

An oracle is anything with the :class:`Oracle` methods; for a simulated log it is ``studio.sim.oracle.SimulatorOracle``,
rebuilt from the run's ``report.json``. It is read for evaluation only; training never sees it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from studio.core.errors import InputError
from reward import metrics
from reward.data import KEYS, RewardDataset, aggregate, fit_beta_prior, label
from reward.model import RewardModel
from reward.training import predict_pairs


class Oracle(Protocol):
    """Ground truth for evaluation only (e.g. ``studio.sim.oracle.SimulatorOracle``): true CTRs the model never sees."""

    def impression_ctr(self, impressions: pd.DataFrame) -> np.ndarray:
        """Expected CTR (n,) of each logged impression: its user on its creative."""

    def pair_ctr(self, pairs: pd.DataFrame, impressions: pd.DataFrame) -> np.ndarray:
        """True CTR (len(pairs),) of each (product_id, group_id, creative_id) row of `pairs`."""


def candidate_pairs(dataset: RewardDataset, impressions: pd.DataFrame) -> pd.DataFrame:
    """Every (product, group, creative) a ranking must order: each creative of ``impressions`` with its product, for
    each group that saw that product there."""
    seen = impressions[["product_id", "group_id"]].drop_duplicates()
    creatives = impressions[["creative_id", "product_id"]].drop_duplicates()
    return seen.merge(creatives, on="product_id").sort_values(["product_id", "group_id", "creative_id"]).reset_index(
        drop=True
    )


class LookupTable:
    """The no-model baseline: each (product, group, creative)'s Beta-smoothed CTR in the training impressions.

    A pair it never saw (every pair of an unseen creative) gets the prior mean: it cannot rank new creatives.
    """

    def __init__(self, train_impressions: pd.DataFrame):
        table = aggregate(train_impressions)
        self.prior = fit_beta_prior(table["clicks"].to_numpy(), table["impressions"].to_numpy())
        self.table = label(table, self.prior)[KEYS + ["label"]]

    def predict(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(CTR, known) for each (product_id, group_id, creative_id) row; known is False where the prior was used."""
        merged = rows[KEYS].astype(str).merge(self.table, on=KEYS, how="left")["label"]
        return merged.fillna(self.prior.mean).to_numpy(), merged.notna().to_numpy()


def uniform_rows(impressions: pd.DataFrame) -> pd.DataFrame:
    """The impressions a uniformly random policy served (``policy == "uniform"``: the A/B control bucket) when the log
    has any, else all of them. Ranking metrics read on the rows an adaptive bandit chose mostly measure what the bandit
    already knew to serve to whom (it shows each group what that group likes, leaving little to rank); the uniform
    rows sample every (creative, group) pair alike."""
    if "policy" in impressions and (impressions["policy"] == "uniform").any():
        return impressions[impressions["policy"] == "uniform"]
    return impressions


def evaluate(
    model: RewardModel,
    dataset: RewardDataset,
    impressions: pd.DataFrame | None = None,
    oracle: Oracle | None = None,
    train_impressions: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Impression-level AUC, log-loss and ECE; NDCG and top-1 uplift of creatives within (product, group).

    ``impressions`` is the part to evaluate (the test creatives' impressions, for a model trained with a creative
    split); candidate creatives are those that appear in it. Ranking metrics use the realised CTR of each (product,
    group, creative) (pairs without impressions are left out). With an oracle, also the oracle's AUC and top-1
    uplift (ranking by the true CTR), the normalised AUC (AUC - 0.5) / (oracle AUC - 0.5), the model's top-1 uplift
    measured with true CTRs and its ratio to the oracle's. With ``train_impressions``, the same figures for the
    lookup-table baseline (``lookup_*``) and the share of evaluated impressions it had seen (``lookup_coverage``).
    """
    impressions = dataset.impressions if impressions is None else impressions
    clicked = impressions["clicked"].to_numpy()
    pairs = candidate_pairs(dataset, impressions)
    pairs["score"] = predict_pairs(model, dataset, pairs)
    predicted = impressions[KEYS].merge(pairs, on=KEYS, how="left")["score"].to_numpy()
    report = {
        "impressions": int(len(impressions)),
        "creatives": int(impressions["creative_id"].nunique()),
        "clicks": int(clicked.sum()),
        "auc": metrics.auc(clicked, predicted),
        "log_loss": metrics.log_loss(clicked, predicted),
        "ece": metrics.expected_calibration_error(clicked, predicted),
        "mean_predicted_ctr": float(predicted.mean()),
        "mean_ctr": float(clicked.mean()),
    }
    grouped = impressions.groupby(KEYS)["clicked"]
    realised = pd.DataFrame({"n": grouped.size(), "ctr": grouped.mean()}).reset_index()
    seen = pairs.merge(realised, on=KEYS)
    lists = (seen["product_id"] + "\x1f" + seen["group_id"]).to_numpy()
    report["ndcg"] = metrics.ndcg(lists, seen["score"], seen["ctr"])
    report["top1_uplift"] = metrics.top_k_uplift(lists, seen["score"], seen["ctr"], k=1)
    lookup = None
    if train_impressions is not None:
        lookup = LookupTable(train_impressions)
        pairs["lookup"], _ = lookup.predict(pairs)
        lookup_impression, seen_before = lookup.predict(impressions)
        report["lookup_auc"] = metrics.auc(clicked, lookup_impression)
        report["lookup_coverage"] = float(seen_before.mean())
    if oracle is not None:
        true_impression = oracle.impression_ctr(impressions)
        pairs["true_ctr"] = oracle.pair_ctr(pairs, impressions)
        lists = (pairs["product_id"] + "\x1f" + pairs["group_id"]).to_numpy()
        group_true = impressions[KEYS].merge(pairs, on=KEYS, how="left")["true_ctr"].to_numpy()
        report.update({
            "oracle_auc": metrics.auc(clicked, true_impression),
            "group_oracle_auc": metrics.auc(clicked, group_true),
            "true_top1_uplift": metrics.top_k_uplift(lists, pairs["score"], pairs["true_ctr"], k=1),
            "oracle_top1_uplift": metrics.top_k_uplift(lists, pairs["true_ctr"], pairs["true_ctr"], k=1),
            "true_ndcg": metrics.ndcg(lists, pairs["score"], pairs["true_ctr"]),
        })
        if report["oracle_top1_uplift"] <= 0:
            raise InputError("the oracle's top-1 uplift is 0: every creative of this run is equally good")
        report["normalised_auc"] = metrics.normalised_auc(report["auc"], report["oracle_auc"])
        report["top1_uplift_vs_oracle"] = report["true_top1_uplift"] / report["oracle_top1_uplift"]
        if lookup is not None:
            report["lookup_normalised_auc"] = metrics.normalised_auc(report["lookup_auc"], report["oracle_auc"])
            report["lookup_true_top1_uplift"] = metrics.top_k_uplift(lists, pairs["lookup"], pairs["true_ctr"], k=1)
            report["lookup_top1_uplift_vs_oracle"] = report["lookup_true_top1_uplift"] / report["oracle_top1_uplift"]
    return report
