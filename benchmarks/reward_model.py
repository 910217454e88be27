"""Reward model benchmark: ranking quality against the simulator's oracle, and scoring throughput on the CPU.

    python benchmarks/reward_model.py [--run DIR] [--model DIR] [--threads 1] [--speed-only]

1. Quality: a `studio simulate` run (ExperimentConfig defaults unless --run names an existing run folder), the
   reward model trained on its log (or --model), evaluated on the held-out 20 % of impressions. Baselines measured
   in the same process: the simulator's oracle (user-level expected CTR; the goal is AUC >= 0.9 x its AUC and top-1
   uplift >= 0.8 x its uplift), the group-level oracle, and the raw Beta-smoothed CTR of each (creative, group).
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
    from reward.data import aggregate, fit_beta_prior, label
    from studio.learning.log_dataset import load_log_dataset
    from reward.evaluation import candidate_pairs, evaluate
    from studio.sim.oracle import SimulatorOracle
    from reward.model import RewardModel
    from reward.training import RewardTrainer, TrainingConfig, split_impressions
    from reward import metrics
    from studio.sim.experiment import ExperimentConfig, run_experiment

    if not (run / "events.db").is_file():
        run_experiment(ExperimentConfig(), run, progress=False)
    dataset = load_log_dataset(run / "events.db")
    config = TrainingConfig(progress=False, seed=seed)
    started = time.perf_counter()
    model = RewardModel.from_pretrained(model_dir) if model_dir else RewardTrainer(config).fit(dataset).model_
    seconds = time.perf_counter() - started
    train_rows, held_rows = split_impressions(dataset.impressions, config.validation_fraction, config.seed)
    held = dataset.impressions.iloc[held_rows]
    oracle = SimulatorOracle.from_run(run)
    report = evaluate(model, dataset, held, oracle)
    # baseline: each (creative, group)'s own Beta-smoothed training CTR, no model at all
    table = aggregate(dataset.impressions.iloc[train_rows])
    prior = fit_beta_prior(table["clicks"], table["impressions"])
    table = label(table, prior)
    keys = ["product_id", "group_id", "creative_id"]
    smoothed = held[keys].merge(table, on=keys, how="left")["label"].fillna(prior.mean).to_numpy()
    pairs = candidate_pairs(dataset, held).merge(table, on=keys, how="left")
    pairs["label"] = pairs["label"].fillna(prior.mean)
    pairs["true_ctr"] = oracle.pair_ctr(pairs, held)
    lists = (pairs["product_id"] + "|" + pairs["group_id"]).to_numpy()
    report["smoothed_ctr_auc"] = metrics.auc(held["clicked"], smoothed)
    report["smoothed_ctr_true_top1_uplift"] = metrics.top_k_uplift(lists, pairs["label"], pairs["true_ctr"])
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
    parser.add_argument("--seed", type=int, default=0, help="training seed, also picks the held-out 20 %% (the simulated world is always seed 0)")
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
        ("held-out impressions", q["impressions"], ""),
        ("AUC (model)", q["auc"], ""),
        ("AUC (oracle, user-level)", q["oracle_auc"], ""),
        ("AUC (oracle, group-level)", q["group_oracle_auc"], ""),
        ("AUC (smoothed CTR per creative x group)", q["smoothed_ctr_auc"], ""),
        ("AUC / oracle AUC", q["auc_vs_oracle"], "goal >= 0.9"),
        ("log-loss", q["log_loss"], ""),
        ("ECE", q["ece"], ""),
        ("NDCG (realised CTR)", q["ndcg"], ""),
        ("top-1 uplift (realised held-out CTR)", q["top1_uplift"], ""),
        ("top-1 uplift (true CTR)", q["true_top1_uplift"], ""),
        ("top-1 uplift (oracle)", q["oracle_top1_uplift"], ""),
        ("top-1 uplift (smoothed CTR, true CTR)", q["smoothed_ctr_true_top1_uplift"], ""),
        ("top-1 uplift / oracle", q["top1_uplift_vs_oracle"], "goal >= 0.8"),
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
