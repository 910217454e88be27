"""Reward model benchmark: ranking quality against the simulator's oracle, and scoring throughput on the CPU.

    python benchmarks/reward_model.py [--run DIR] [--model DIR] [--threads 1] [--speed-only]

1. Quality on creatives never seen in training: a `studio simulate` run (reward-mini's world: the defaults with 12 creatives per product, unless --run
   names an existing run folder), the reward model trained on its training creatives (or --model), evaluated on the
   test creatives of the seeded creative split. Against the simulator's oracle (user-level expected CTR; goals:
   normalised AUC (AUC - 0.5) / (oracle AUC - 0.5) >= 0.8 and top-1 uplift >= 0.8 x the oracle's), the group-level
   oracle, and the lookup table (Beta-smoothed CTR per (creative, group) of the training creatives; on unseen
   creatives it falls back to the prior, so it ranks nothing).
2. Speed: scoring 256x256 PNG creatives in batches of 128 (decode at the encoder's input size + model), median of 5
   runs of 256 creatives, against the goal of 100 creatives per second; the model alone on full-size 256x256 tensors;
   and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def quality(run: Path, model_dir: str | None, seed: int = 0) -> tuple[object, dict]:
    from reward.evaluation import evaluate, uniform_rows
    from reward.model import RewardModel
    from reward.training import RewardTrainer, TrainingConfig, split_creatives
    from studio.learning.log_dataset import load_log_dataset
    from studio.sim.experiment import run_experiment
    from studio.sim.oracle import SimulatorOracle
    from studio.training.reward_mini import WORLD

    if not (run / "events.db").is_file():
        run_experiment(WORLD, run, progress=False)
    dataset = load_log_dataset(run / "events.db")
    config = TrainingConfig(progress=False, seed=seed)
    started = time.perf_counter()
    if model_dir:  # a given model: the split of this seed (right for reward-mini on the default world, seed 0)
        model = RewardModel.from_pretrained(model_dir)
        split = split_creatives(dataset.creatives, config.validation_fraction, config.test_fraction, seed)
    else:
        trainer = RewardTrainer(config).fit(dataset)
        model, split = trainer.model_, trainer.split_
    seconds = time.perf_counter() - started
    # test creatives only (never seen in training); the lookup table is fitted on the training creatives
    report = evaluate(model, dataset, uniform_rows(split.impressions(dataset.impressions, "test")),
                      SimulatorOracle.from_run(run),
                      split.impressions(dataset.impressions, "train"))
    report["train_seconds"] = seconds if not model_dir else float("nan")
    return model, report


def throughput(model, repeats: int = 5, n: int = 256, batch: int = 128) -> dict:
    import torch

    from reward.data import load_pixels
    from studio.sim.renderer import sample_scenes

    with tempfile.TemporaryDirectory() as scratch:
        scenes = sample_scenes(32, seed=1, size=256)
        paths = []
        for i in range(n):
            path = Path(scratch) / f"creative-{i}.png"
            scenes[i % len(scenes)].image.save(path)
            paths.append(path)
        group = model.config.group_ids[0]
        end_to_end, model_only = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, n, batch):
                pixels, _ = load_pixels(paths[start : start + batch], model.input_size)
                model.predict_ctr(pixels, [""] * len(pixels), [group] * len(pixels), ["beverage"] * len(pixels))
            end_to_end.append(n / (time.perf_counter() - started))
        pixels, _ = load_pixels(paths[:batch], 256)  # full-size tensors: the model pools them itself
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(n // batch):
                model.predict_ctr(pixels, [""] * batch, [group] * batch, ["beverage"] * batch)
            model_only.append(n / (time.perf_counter() - started))
    return {
        "creatives_per_second": statistics.median(end_to_end),
        "model_only_creatives_per_second": statistics.median(model_only),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description="reward model benchmark")
    parser.add_argument("--run", default=None, help="a studio simulate run folder (made here if missing)")
    parser.add_argument("--model", default=None, help="evaluate this model folder instead of training one")
    parser.add_argument("--seed", type=int, default=0, help="training seed, also picks the creative split (the simulated world is always seed 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--speed-only", action="store_true", help="only the throughput part, with --model or reward-mini")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.speed_only:
        from reward.model import RewardModel

        speed = throughput(RewardModel.from_pretrained(args.model or "reward-mini"))
        for name, value in speed.items():
            print(f"{name:<42} {value:>10.4f}" if isinstance(value, float) else f"{name:<42} {value:>10}")
        print(f"{'creatives/s / goal of 100':<42} {speed['creatives_per_second'] / 100:>10.4f}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(args.run) if args.run else Path(scratch) / "run"
        model, q = quality(run, args.model, args.seed)
    speed = throughput(model)
    rows = [
        ("test creatives (unseen in training)", q["creatives"], ""),
        ("test impressions", q["impressions"], ""),
        ("AUC (model)", q["auc"], ""),
        ("AUC (oracle, user-level)", q["oracle_auc"], ""),
        ("AUC (oracle, group-level)", q["group_oracle_auc"], ""),
        ("AUC (lookup table)", q["lookup_auc"], ""),
        ("normalised AUC (model)", q["normalised_auc"], "goal >= 0.8"),
        ("normalised AUC (lookup table)", q["lookup_normalised_auc"], ""),
        ("lookup table: test impressions it had seen", q["lookup_coverage"], "(0: falls back to the prior)"),
        ("log-loss", q["log_loss"], ""),
        ("ECE", q["ece"], ""),
        ("NDCG (true CTR)", q["true_ndcg"], ""),
        ("top-1 uplift (realised test CTR)", q["top1_uplift"], ""),
        ("top-1 uplift (true CTR)", q["true_top1_uplift"], ""),
        ("top-1 uplift (oracle)", q["oracle_top1_uplift"], ""),
        ("top-1 uplift / oracle (model)", q["top1_uplift_vs_oracle"], "goal >= 0.8"),
        ("top-1 uplift / oracle (lookup table)", q["lookup_top1_uplift_vs_oracle"], ""),
        ("training seconds", q["train_seconds"], ""),
        ("creatives/s (PNG 256x256 -> CTR)", speed["creatives_per_second"], "goal >= 100"),
        ("  / goal of 100", speed["creatives_per_second"] / 100, ""),
        ("creatives/s (model only)", speed["model_only_creatives_per_second"], ""),
        ("peak RSS MiB", speed["peak_rss_mib"], ""),
        ("torch threads", speed["threads"], ""),
    ]
    for name, value, goal in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{name:<42} {text:>10}  {goal}")


if __name__ == "__main__":
    main()
