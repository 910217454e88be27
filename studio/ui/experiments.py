"""The Experiments tab's figures, read live from a serving database (the event log and the creative cache that
`studio serve` uses).

    read_experiment(config) -> Experiment: CTR per bucket and group (Wilson 95 % intervals), the lift of treatment
        over control (delta-method interval), CTR and estimated regret over time per bucket, and each arm's LinUCB
        score per group
    why_wins(experiment.arms, product, placement, group) -> one paragraph in plain words

The CTR cells and the lift are computed as `GET /v1/report` computes them (`studio.learning.abtest.bucket_stats`
and `compare` over `EventLog.summary`), and the bandit is rebuilt from the log as a serving worker rebuilds it
(`studio.serving.service.rebuild_policy`), so the page shows what the service would say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from studio.core.errors import InputError
from studio.jobs.cache import CreativeCache
from studio.learning.abtest import bucket_stats, compare
from studio.learning.eventlog import EventLog
from studio.learning.policy import COLD_START_GROUP, CONTROL, TREATMENT
from studio.serving.config import ServeConfig
from studio.serving.service import rebuild_policy

CELL_COLUMNS = ["bucket", "group_id", "impressions", "clicks", "ctr", "ci_low", "ci_high"]
ARM_COLUMNS = ["product_id", "placement", "group_id", "creative_id", "estimate", "uncertainty", "score", "learned",
               "predicted_ctr", "prompt"]


@dataclass
class Experiment:
    """What the Experiments tab shows (see the module docstring); frames are empty before any traffic."""

    cells: pd.DataFrame  # CELL_COLUMNS; group_id -1 is the cold-start group
    lift: dict | None  # {"lift", "ci_low", "ci_high", "p_value"}; None until both buckets have clicks
    over_time: pd.DataFrame  # bucket, ts (end of a window, unix seconds), impressions, ctr (cumulative)
    arms: pd.DataFrame  # ARM_COLUMNS, one row per (product, placement, group, arm)
    regret: pd.DataFrame  # bucket, ts, regret (cumulative, in expected clicks, by the bandit's hindsight estimates)
    impressions: int
    clicks: int

    def lift_text(self) -> str:
        if self.lift is None or self.lift["lift"] is None:
            return "No lift yet: it needs clicks in both the control and the treatment bucket."
        low, high = self.lift["ci_low"], self.lift["ci_high"]
        interval = f" (95 % interval {low:+.1%} to {high:+.1%})" if low is not None and high is not None else ""
        return (f"Lift of treatment over control: **{self.lift['lift']:+.1%}**{interval}, "
                f"p = {self.lift['p_value']:.3g}")


def read_experiment(config: ServeConfig, windows: int = 20) -> Experiment:
    """Read the experiment from the serving database `config` names (the same `ServeConfig` as `studio serve`)."""
    if not isinstance(windows, int) or windows < 1:
        raise InputError(f"windows must be a whole number >= 1, got {windows!r}")
    with EventLog(config.db) as log, CreativeCache(config.cache, config.cache_blobs) as cache:
        rows = log.summary()
        events = log.read()
        policy = rebuild_policy(config, log, cache)
        entries = {entry.creative_id: entry for entry in cache.all_creatives()}
    cells, lift = ctr_cells(rows)
    arms = arm_scores(policy, entries)
    return Experiment(cells, lift, ctr_over_time(events, windows), arms, regret_over_time(events, arms, windows),
                      int(cells["impressions"].sum()) if len(cells) else 0,
                      int(cells["clicks"].sum()) if len(cells) else 0)


def ctr_cells(rows: list[tuple]) -> tuple[pd.DataFrame, dict | None]:
    """CTR per (bucket, group) with Wilson intervals, and the lift of treatment over control, from
    `EventLog.summary()` rows ``(bucket, group_id, impressions, clicks)`` (as `GET /v1/report` computes them)."""
    cells, totals = [], {}
    for bucket, group, impressions, clicks in rows:
        stats = bucket_stats(str(bucket), int(clicks), int(impressions))
        cells.append((str(bucket), -1 if group is None else int(group), stats.impressions, stats.clicks, stats.ctr,
                      stats.ci_low, stats.ci_high))
        total = totals.setdefault(str(bucket), [0, 0])
        total[0] += int(impressions)
        total[1] += int(clicks)
    lift = None
    if all(totals.get(b, [0, 0])[1] > 0 for b in (CONTROL, TREATMENT)):
        result = compare(bucket_stats(CONTROL, totals[CONTROL][1], totals[CONTROL][0]),
                         bucket_stats(TREATMENT, totals[TREATMENT][1], totals[TREATMENT][0]))
        lift = {name: _finite(getattr(result, attr)) for name, attr in
                (("lift", "lift"), ("ci_low", "lift_ci_low"), ("ci_high", "lift_ci_high"), ("p_value", "p_value"))}
    return pd.DataFrame(cells, columns=CELL_COLUMNS), lift


def _cumulative_by_bucket(events: pd.DataFrame, column: str, windows: int) -> pd.DataFrame:
    """Per bucket, at the end of each of `windows` equal time windows: impressions so far and the running sum of
    `column` (windows before a bucket's first impression are left out)."""
    start, end = float(events["ts"].min()), float(events["ts"].max())
    edges = np.linspace(start, end, windows + 1)[1:] if end > start else np.array([end])
    frames = []
    for bucket, part in events.groupby(events["bucket"].fillna("none"), sort=True):
        order = np.argsort(part["ts"].to_numpy(), kind="stable")
        ts, total = part["ts"].to_numpy()[order], np.cumsum(part[column].to_numpy()[order])
        seen = np.searchsorted(ts, edges, side="right")
        keep = seen > 0
        frames.append(pd.DataFrame({"bucket": str(bucket), "ts": edges[keep], "impressions": seen[keep],
                                    "total": total[seen[keep] - 1]}))
    return pd.concat(frames, ignore_index=True)


def ctr_over_time(events: pd.DataFrame, windows: int = 20) -> pd.DataFrame:
    """Cumulative CTR per bucket at the end of each of `windows` equal time windows (`EventLog.read()` rows)."""
    columns = ["bucket", "ts", "impressions", "ctr"]
    if events.empty:
        return pd.DataFrame(columns=columns)
    found = _cumulative_by_bucket(events, "clicked", windows)
    return found.assign(ctr=found["total"] / found["impressions"])[columns]


def regret_over_time(events: pd.DataFrame, arms: pd.DataFrame, windows: int = 20) -> pd.DataFrame:
    """Cumulative estimated regret per bucket at the end of each of `windows` equal time windows.

    A live log has no oracle, so each impression's regret is judged in hindsight by the bandit's current estimates:
    the best arm's estimated CTR for the impression's group (product, placement) minus the served arm's; impressions
    of arms without an estimate count 0. A learning treatment bucket flattens out; uniform control keeps climbing."""
    columns = ["bucket", "ts", "regret"]
    if events.empty or arms.empty:
        return pd.DataFrame(columns=columns)
    keys = ["product_id", "placement", "group_id"]
    estimates = arms.set_index([*keys, "creative_id"])["estimate"]
    best = arms.groupby(keys)["estimate"].max()
    frame = events.assign(group_id=events["group_id"].fillna(COLD_START_GROUP).astype(int))
    index = list(zip(frame["product_id"], frame["placement"], frame["group_id"], frame["creative_id"]))
    served = estimates.reindex(index).to_numpy()
    top = best.reindex([key[:3] for key in index]).to_numpy()
    frame = frame.assign(regret=np.where(np.isnan(served) | np.isnan(top), 0.0, top - served))
    return _cumulative_by_bucket(frame, "regret", windows).rename(columns={"total": "regret"})[columns]


def arm_scores(policy, entries: dict) -> pd.DataFrame:
    """Each arm's bandit estimate (expected reward), uncertainty (standard error), score (estimate + alpha x
    uncertainty) and impressions learned, per audience group and the cold-start group, with the arm's predicted
    CTR and prompt from the cache (`entries`: creative_id -> CachedCreative)."""
    rows = []
    groups = [*range(policy.n_groups), COLD_START_GROUP]
    alpha = policy.model.alpha
    for product, placement in sorted(policy.keys, key=lambda key: tuple(map(str, key))):
        if not policy.arms((product, placement)):
            continue
        arms, mean, width, learned = policy.estimates((product, placement))
        for g, group in enumerate(groups):
            for k, arm in enumerate(arms):
                entry = entries.get(arm)
                rows.append((product, placement, group, arm, float(mean[g, k]), float(width[g, k]),
                             float(mean[g, k] + alpha * width[g, k]), round(learned[g, k]),
                             None if entry is None else entry.predicted_ctr, "" if entry is None else entry.key.prompt))
    return pd.DataFrame(rows, columns=ARM_COLUMNS)


def why_wins(arms: pd.DataFrame, product_id: str, placement: str, group_id: int) -> str:
    """Why the leading creative leads for a group, in plain words: its bandit estimate and uncertainty, its predicted
    CTR, and what in its prompt differs from the runner-up's."""
    part = arms[(arms["product_id"] == product_id) & (arms["placement"] == placement)
                & (arms["group_id"] == int(group_id))]
    if part.empty:
        raise InputError(f"no creatives learned for product {product_id!r}, placement {placement!r}, "
                         f"group {group_id}")
    ranked = part.sort_values(["estimate", "score"], ascending=False)
    best = ranked.iloc[0]
    who = "cold-start users" if int(group_id) == COLD_START_GROUP else f"group {int(group_id)}"
    lines = [(f"For {who}, creative `{best['creative_id'][:12]}` leads: the bandit expects a CTR of "
             f"{best['estimate']:.2%} ± {best['uncertainty']:.2%} (one standard error) after learning from "
             f"{best['learned']:,} impressions of it.")]
    if best["predicted_ctr"] is not None and not _is_nan(best["predicted_ctr"]):
        lines.append(f"Before any traffic the reward model predicted {best['predicted_ctr']:.2%}.")
    if len(ranked) > 1:
        runner = ranked.iloc[1]
        gap = best["estimate"] - runner["estimate"]
        sure = "clearly" if gap > best["uncertainty"] + runner["uncertainty"] else "not yet clearly"
        lines.append(f"The runner-up `{runner['creative_id'][:12]}` is expected at {runner['estimate']:.2%} "
                     f"± {runner['uncertainty']:.2%}: {gap:+.2%}, {sure} ahead given the uncertainty.")
        ours, theirs = _words(best["prompt"]), _words(runner["prompt"])
        only_best, only_runner = [w for w in ours if w not in theirs], [w for w in theirs if w not in ours]
        if only_best or only_runner:
            lines.append(f"Its prompt has {_listed(only_best)} where the runner-up's has {_listed(only_runner)}.")
    else:
        lines.append("It is the only creative served for this product and placement.")
    return " ".join(lines)


def _words(prompt: str) -> list[str]:
    words = [w.strip(".,;:!?()").lower() for w in str(prompt or "").split()]
    return list(dict.fromkeys(w for w in words if w))


def _listed(words: list[str]) -> str:
    return ", ".join(f"'{w}'" for w in words[:8]) if words else "nothing else"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
