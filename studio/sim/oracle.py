"""The simulator's ground truth for evaluating a reward model (see ``reward.evaluation.Oracle``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from studio.sim.experiment import ExperimentConfig, make_creatives
from studio.sim.simulator import AudienceSimulator


class SimulatorOracle:
    """True click probabilities of a simulated run. ``creative_index`` maps creative_id -> simulator index."""

    def __init__(self, simulator, creative_index: dict[str, int]):
        self.simulator = simulator
        self.creative_index = creative_index

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "SimulatorOracle | None":
        """Rebuild the world of a ``studio simulate`` run from its report.json; None if the folder has none."""
        report = Path(run_dir) / "report.json"
        if not report.is_file():
            return None
        config = ExperimentConfig(**json.loads(report.read_text())["config"])
        simulator = AudienceSimulator(n_segments=config.segments, seed=config.seed)
        with tempfile.TemporaryDirectory() as scratch:
            creatives = make_creatives(config, simulator, Path(scratch))
        simulator.sample_users(config.users)
        return cls(simulator, {c["creative_id"]: i for i, c in enumerate(creatives)})

    def impression_ctr(self, impressions: pd.DataFrame) -> np.ndarray:
        """Expected CTR (n,) of each logged impression: its user on its creative."""
        users = impressions["user_id"].astype(np.int64).to_numpy()
        creatives = impressions["creative_id"].map(self.creative_index).to_numpy()
        return self.simulator.click_probability(users, creatives)

    def pair_ctr(self, pairs: pd.DataFrame, impressions: pd.DataFrame) -> np.ndarray:
        """True CTR (len(pairs),) of each (product_id, group_id, creative_id): the mean expected CTR over the users of
        that group who looked at that product in ``impressions`` (so it weighs users as the traffic does)."""
        users = np.unique(impressions["user_id"].astype(np.int64).to_numpy())
        table = self.simulator.expected_ctr(users)  # (users, creatives)
        row_of = {u: i for i, u in enumerate(users)}
        out = np.zeros(len(pairs))
        for (product, group), rows in pairs.groupby(["product_id", "group_id"]).groups.items():
            seen = impressions[(impressions["product_id"] == product) & (impressions["group_id"] == group)]
            user_rows = [row_of[int(u)] for u in seen["user_id"]]
            creatives = pairs.loc[rows, "creative_id"].map(self.creative_index).to_numpy()
            out[pairs.index.get_indexer(rows)] = table[np.ix_(user_rows, creatives)].mean(axis=0)
        return out
