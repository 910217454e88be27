"""The hacking gap of finished `studio loop` runs, re-scored offline with other linear checks on the same rounds.

    python benchmarks/hacking_gap.py RUN [RUN ...] [--draws 400]

RUN: a `studio loop --out` folder (benchmarks/loop.py writes OUT/seed-S). For each round of its "loop" arm the check
is refitted on the rounds before it, from the run's event log and creatives, and prices the round's new arms against
what the bandit served each group the round before, as the loop does; the true gain is the round's record (the
simulator's oracle), and each group's true CTR the round before weights it. The checks:

- shipped: `reward.scene_ridge.SceneRidge`, as the loop fits it (it reproduces the recorded gap within a point; the
  weighting of the true gain is the approximation);
- simulator features: the same regression over the six measurements the simulator's users click by, taken around
  the product mask. A diagnostic, not a check: no check can know what an audience reacts to. It bounds what better
  features could give;
- binomial: the same penalties, a binomial likelihood on the raw clicks instead of least squares on smoothed logits.

With --draws N, a 90 % Bayesian-bootstrap interval of the shipped check's predicted gain (N refits, Dirichlet(1)
weights on the logged creatives) and how often it holds the true gain. Prints each run's gaps per round, then the
mean |gap|, the rounds within 5 points and the runs within 5 points in every round, per check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reward.data import RewardDataset, load_pixels
from reward.scene_ridge import SceneRidge
from studio.imaging.descriptors import background_vector, measure_background, standardise
from studio.learning.log_dataset import read_impressions


class SimulatorFeatures(SceneRidge):
    """SceneRidge over the simulator's own backdrop measurements (around `mask`, True on the product)."""

    def __init__(self, mask: np.ndarray):
        super().__init__()
        self.mask = mask

    def _statistics(self, pixels):
        images = pixels.permute(0, 2, 3, 1).clamp(0, 1).numpy()
        return np.stack([standardise(background_vector(measure_background(x, self.mask))) for x in images])


class Binomial(SceneRidge):
    """SceneRidge's penalties with a binomial likelihood on the clicks (Newton steps from its least-squares fit)."""

    def _fit_rows(self, rows, z, prior):
        fit = super()._fit_rows(rows, z, prior)
        clicks, n = rows["clicks"].to_numpy(float), rows["impressions"].to_numpy(float)
        x = np.hstack([np.ones((len(rows), 1)), np.stack([z[c] for c in rows["creative_id"]])])
        ctr = rows["label"].to_numpy()
        penalty = np.eye(x.shape[1]) * fit["penalty"] * (n * ctr * (1 - ctr)).mean()  # SceneRidge normalises weights
        penalty[0, 0] = 0.0
        target = np.concatenate([[0.0], prior])
        beta = np.concatenate([[fit["intercept"]], fit["slopes"]])
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-(x @ beta)))
            step = np.linalg.solve((x.T * (n * p * (1 - p))) @ x + penalty,
                                   x.T @ (clicks - n * p) - penalty @ (beta - target))
            beta = beta + step
            if np.abs(step).max() < 1e-9:
                break
        return {"intercept": float(beta[0]), "slopes": beta[1:], "penalty": fit["penalty"]}


class Reweighted(SceneRidge):
    """SceneRidge with each logged creative's rows weighted (a Bayesian-bootstrap draw)."""

    def __init__(self, weight: dict):
        super().__init__()
        self.weight = weight

    def _fit_rows(self, rows, z, prior):
        rows = rows.assign(impressions=rows["impressions"] * rows["creative_id"].map(self.weight).to_numpy())
        return super()._fit_rows(rows, z, prior)


def rounds_of(run: Path):
    """Per round >= 1 of the run's loop arm: the log before it as a reward dataset, and what it served and added."""
    arm = run / "loop"
    catalogue = {c["creative_id"]: c for c in json.loads((arm / "catalogue.json").read_text())}
    log = read_impressions(arm / "events.db")
    log["round"] = log["model_version"].str.rsplit("-", n=1).str[1].astype(int)
    images: dict[str, object] = {}

    def pixels(ids):
        missing = [c for c in ids if c not in images]
        if missing:
            images.update(zip(missing, load_pixels([catalogue[c]["image"] for c in missing], 64)[0]))
        return torch.stack([images[c] for c in ids])

    record = json.loads((arm / "round-0" / "round.json").read_text())
    for r in range(1, 1 + max(log["round"])):
        before, record = record, json.loads((arm / f"round-{r}" / "round.json").read_text())
        seen = log[log["round"] < r].reset_index(drop=True)
        ids = sorted(seen["creative_id"].unique())
        creatives = pd.DataFrame([{"creative_id": c, "product_id": catalogue[c]["product_id"],
                                   "category": catalogue[c]["category"], "prompt": catalogue[c]["prompt"]}
                                  for c in ids]).set_index("creative_id")
        groups = {g: np.zeros(1, dtype=np.float32) for g in seen["group_id"].unique()}  # SceneRidge reads no profile
        dataset = RewardDataset(creatives, pixels(ids), groups, seen)
        served = log[(log["round"] == r - 1) & (log["bucket"] == "treatment")]
        cells = []
        for key, truth in record["hacking"]["by_group"].items():
            product, group = key.split("/")
            counts = served[(served["product_id"] == product) & (served["group_id"] == group)]["creative_id"]
            counts = counts.value_counts()
            new = [c for c in record["selected"]
                   if catalogue[c]["product_id"] == product and str(catalogue[c]["group"]) == group]
            cells.append({"product": product, "group": group, "new": new, "old": list(counts.index),
                          "share": counts.to_numpy() / counts.sum(), "weight": float(counts.sum()),
                          "true_old": before["true_ctr_by_group"][group]["mean"], "true_gain": truth["true_gain"]})
        yield r, dataset, cells, pixels, record["hacking"]["gap_points"]


def gain(model, cells, pixels) -> tuple[float, float]:
    """(predicted, true) relative gain of the new arms over last round's served mix, traffic-weighted over groups."""
    def ctr(ids, cell):
        return model.predict_ctr(pixels(ids), [cell["product"]] * len(ids), [cell["group"]] * len(ids))

    w = np.array([c["weight"] for c in cells])
    new = np.array([ctr(c["new"], c).mean() for c in cells])
    old = np.array([c["share"] @ ctr(c["old"], c) for c in cells])
    true_old = np.array([c["true_old"] for c in cells])
    true_new = true_old * (1 + np.array([c["true_gain"] for c in cells]))
    return float(w @ new / (w @ old) - 1), float(w @ true_new / (w @ true_old) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--draws", type=int, default=0, help="Bayesian-bootstrap refits for a 90 %% interval")
    args = parser.parse_args()
    gaps: dict[str, dict[str, list[float]]] = {"recorded": {}, "shipped": {}, "simulator features": {},
                                               "binomial": {}}
    covered = []
    for run in args.runs:
        mask_file = next((run / "products").glob("*.mask.png"))
        mask = np.asarray(Image.open(mask_file).convert("L")) > 127
        for r, dataset, cells, pixels, recorded in rounds_of(run):
            gaps["recorded"].setdefault(str(run), []).append(recorded)
            for name, model in (("shipped", SceneRidge()), ("simulator features", SimulatorFeatures(mask)),
                                ("binomial", Binomial())):
                predicted, true = gain(model.fit(dataset), cells, pixels)
                gaps[name].setdefault(str(run), []).append(100 * (predicted - true))
            if args.draws:
                rng = np.random.default_rng(r)
                ids = list(dataset.creatives.index)
                draws = [gain(Reweighted(dict(zip(ids, len(ids) * rng.dirichlet(np.ones(len(ids)))))).fit(dataset),
                              cells, pixels)[0] for _ in range(args.draws)]
                low, high = np.percentile(draws, [5, 95])
                covered.append(bool(low <= true <= high))
                print(f"{run} round {r}: 90 % interval {100 * low:+.1f} to {100 * high:+.1f} %, "
                      f"true {100 * true:+.1f} %")
        print(f"{run}: " + "; ".join(f"{name} " + ", ".join(f"{g:+.1f}" for g in by_run[str(run)])
                                      for name, by_run in gaps.items()), flush=True)
    for name, by_run in gaps.items():
        flat = np.abs([g for run_gaps in by_run.values() for g in run_gaps])
        print(f"{name}: mean |gap| {flat.mean():.2f} points, median {np.median(flat):.2f}, "
              f"{int((flat <= 5).sum())} of {len(flat)} rounds within 5, every round within 5 on "
              f"{sum(all(abs(g) <= 5 for g in run_gaps) for run_gaps in by_run.values())} of {len(by_run)} runs")
    if covered:
        print(f"the 90 % interval holds the true gain in {sum(covered)} of {len(covered)} rounds")


if __name__ == "__main__":
    main()
