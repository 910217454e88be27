"""How good a CTR model is: impression-level AUC and log-loss, calibration, and ranking within a product.

All functions take plain arrays; "lists" are the sets of creatives that compete for one slot (one product, or one
(product, group) pair), identified by a list id per row.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss as _sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from studio.core.errors import InputError


def _check_pair(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape or labels.size == 0:
        raise InputError(f"expected equal non-empty label and score arrays, got {labels.shape} and {scores.shape}")
    return labels, scores


def auc(clicked: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve over impressions. clicked: (N,) 0/1; scores: (N,) any monotone score."""
    clicked, scores = _check_pair(clicked, scores)
    if clicked.min() == clicked.max():
        raise InputError("AUC needs impressions with and without clicks; this set has only one kind")
    return float(roc_auc_score(clicked, scores))


def normalised_auc(auc_value: float, oracle_auc: float) -> float:
    """(AUC - 0.5) / (oracle AUC - 0.5): 0 for a random scorer, 1 for one as good as the oracle."""
    if oracle_auc <= 0.5:
        raise InputError(f"the oracle's AUC is {oracle_auc:.4f}; normalising needs an oracle better than chance")
    return float((auc_value - 0.5) / (oracle_auc - 0.5))


def log_loss(clicked: np.ndarray, ctr: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per impression) of 0/1 clicks under predicted CTRs in (0, 1)."""
    clicked, ctr = _check_pair(clicked, ctr)
    return float(_sk_log_loss(clicked, np.clip(ctr, 1e-7, 1 - 1e-7), labels=[0, 1]))


def expected_calibration_error(clicked: np.ndarray, ctr: np.ndarray, n_bins: int = 10) -> float:
    """ECE: impression-weighted mean |observed CTR - mean predicted CTR| over bins of equal impression count.

    Equal-count bins (quantiles of the prediction) rather than equal-width ones, because CTRs crowd into the bottom
    few per cent of [0, 1]. Units: CTR (a fraction).
    """
    clicked, ctr = _check_pair(clicked, ctr)
    order = np.argsort(ctr, kind="stable")
    error = 0.0
    for chunk in np.array_split(order, min(n_bins, len(order))):
        error += len(chunk) * abs(clicked[chunk].mean() - ctr[chunk].mean())
    return float(error / len(order))


def _lists(list_ids: np.ndarray) -> list[np.ndarray]:
    """Row indices of each list, for lists of at least two creatives (a single creative has nothing to rank)."""
    _, inverse = np.unique(np.asarray(list_ids), return_inverse=True)
    groups = [np.flatnonzero(inverse == i) for i in range(inverse.max() + 1)] if len(inverse) else []
    return [rows for rows in groups if len(rows) >= 2]


def ndcg(list_ids: np.ndarray, scores: np.ndarray, ctr: np.ndarray, k: int | None = None) -> float:
    """Mean NDCG@k of the ranking by ``scores`` within each list, with the creatives' CTRs as gains.

    list_ids, scores, ctr: (R,) one row per creative (in a list).
    """
    scores, ctr = np.asarray(scores, dtype=np.float64), np.asarray(ctr, dtype=np.float64)
    values = [ndcg_score(ctr[rows][None], scores[rows][None], k=k) for rows in _lists(list_ids)]
    if not values:
        raise InputError("NDCG needs at least one list with two or more creatives")
    return float(np.mean(values))


def top_k_uplift(list_ids: np.ndarray, scores: np.ndarray, ctr: np.ndarray, k: int = 1) -> float:
    """CG4CTR's top-k CTR uplift: CTR of the k best-scored creatives per list over the mean CTR of all, minus 1.

    Summed over lists before dividing (lists count equally, noisy low-CTR lists do not explode the ratio).
    list_ids, scores, ctr: (R,) one row per creative. Returns a fraction (0.2 = +20 %).
    """
    scores, ctr = np.asarray(scores, dtype=np.float64), np.asarray(ctr, dtype=np.float64)
    top, mean = 0.0, 0.0
    for rows in _lists(list_ids):
        # ties at the cut share the remaining slots (the expectation of a random tie-break): a constant scorer gets 0
        kth = np.sort(scores[rows])[::-1][min(k, len(rows)) - 1]
        above, tied = rows[scores[rows] > kth], rows[scores[rows] == kth]
        top += (ctr[above].sum() + (min(k, len(rows)) - len(above)) * ctr[tied].mean()) / min(k, len(rows))
        mean += ctr[rows].mean()
    if mean <= 0:
        raise InputError("top-k uplift needs lists of two or more creatives with a positive mean CTR")
    return float(top / mean - 1.0)
