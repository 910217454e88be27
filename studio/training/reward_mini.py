"""Train reward-mini, the shipped reward model: one command, a few minutes on a CPU.

    python -m studio.training.reward_mini [--out reward/models/reward-mini] [--run DIR]

It runs a `studio simulate` experiment (WORLD: the default world with 12 creatives per product instead of 6, so the
creative split leaves 6 per product to train on: 4 products x 12 creatives, 20,000 users, 200k impressions, seed 0),
trains the reward model on that event log with the default recipe (test figures on the 16 creatives it never saw), and
saves it with the run's audience
clustering in `audience/` (the groups the model knows by id). The simulator is only the
source of the log here; training reads the log, never the simulator's truth.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from reward.evaluation import evaluate, uniform_rows
from reward.model import SHIPPED_MODELS
from reward.training import RewardTrainer, TrainingConfig
from studio.core.atomic import write_file
from studio.learning.audience import AudienceClustering
from studio.learning.log_dataset import load_log_dataset
from studio.sim.experiment import ExperimentConfig, run_experiment
from studio.sim.oracle import SimulatorOracle

MINI = SHIPPED_MODELS / "reward-mini"
WORLD = ExperimentConfig(arms=12)


def train_mini(out: str | Path = MINI, run_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Simulate a log (unless ``run_dir`` already holds one), train on it, save to ``out``; returns the report."""
    torch.set_num_threads(1)  # small full-batch steps: a second thread only contends (see benchmarks/reward_model.py)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(run_dir) if run_dir else Path(scratch) / "run"
        if not (run / "events.db").is_file():
            run_experiment(WORLD, run, progress=progress)
        dataset = load_log_dataset(run / "events.db")
        config = TrainingConfig(progress=progress)
        trainer = RewardTrainer(config).fit(dataset)
        trainer.model_.save_pretrained(out)
        # The groups the model scores by id, with their readable profiles (what `studio demo` writes prompts for).
        AudienceClustering.from_pretrained(run / "audience").save_pretrained(Path(out) / "audience")
        split = trainer.split_
        report = evaluate(trainer.model_, dataset, uniform_rows(split.impressions(dataset.impressions, "test")),
                          SimulatorOracle.from_run(run), split.impressions(dataset.impressions, "train"))
    report = {"seconds": round(time.perf_counter() - started, 1), "epochs": trainer.n_epochs_,
              "best_epoch": trainer.best_epoch_, "split": "test creatives (never seen in training)", **report}
    training = {"log": "studio simulate (ExperimentConfig defaults, arms=12)", "seed": config.seed,
                "creatives": split.to_dict(), "history": trainer.history_, "report": report}
    write_file(Path(out) / "training.json", lambda path: path.write_text(json.dumps(training, indent=2) + "\n"))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(MINI), help="model folder to write")
    parser.add_argument("--run", default=None, help="reuse (or keep) a simulate run folder here")
    args = parser.parse_args()
    print(json.dumps(train_mini(args.out, args.run), indent=2))


if __name__ == "__main__":
    main()
