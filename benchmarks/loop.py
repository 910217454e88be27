"""Closed-loop benchmark: `studio loop --rounds 3` on several seeds, against the issue's goals.

    python benchmarks/loop.py --seeds 0 1 2 [--out out/bench-loop] [--rounds 3] [--lora-per-group]
        [--lora-examples clicked] [--lora-steps 20] [--draft-steps 0] [--refresh-arm]

Each seed runs `studio.jobs.loop.run_loop` with the CLI defaults into OUT/seed-S (a seed whose folder already holds a
finished `loop.json` is read, not run again, so seeds can run in separate processes and be summarised after). Prints,
per seed: the true CTR (the simulator's oracle) of the served treatment at round 0 and the last round, the loop's gain
over round 0 and over the no-loop baseline (the bandit over the fixed round-0 pool, same requests), the
prompts-only arm against both, the hacking gap per round (the linear check's, the reward-model checkers', and the
ranker's own), the
DRaFT stage's predicted gains per round (the ranker's it ascended, the checkers' it never saw), the least distinct
prompts per group, and the wall time (with --refresh-arm also the arm that gets new arms without learning, against
the others); then the medians over seeds, and each hacking gap's summaries: over all
rounds, and per round as a mean over seeds with a 95 % t-interval (a bias, if any, shows there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_seed(out: Path, seed: int, rounds: int, **settings) -> dict:
    """One seed's finished report; `settings`: LoopConfig fields (None: the loop's default)."""
    from studio.jobs.loop import LoopConfig, run_loop

    report = out / "loop.json"
    if report.is_file():
        data = json.loads(report.read_text())
        if data.get("finished"):
            return data
    config = LoopConfig(rounds=rounds, seed=seed, **{k: v for k, v in settings.items() if v is not None})
    return run_loop(config, out, progress=True).to_dict()


def row(seed: int, report: dict) -> dict:
    rounds, comparisons = report["rounds"], report["comparisons"]
    loop = rounds["loop"]
    return {
        "seed": seed,
        "ctr_round_0": loop[0]["true_ctr"]["mean"],
        "ctr_loop_last": loop[-1]["true_ctr"]["mean"],
        "ctr_prompts_only_last": rounds["prompts_only"][-1]["true_ctr"]["mean"],
        "ctr_no_loop_last": rounds["no_loop"][-1]["true_ctr"]["mean"],
        **{name: comparisons[name] for name in ("loop_vs_round_0", "loop_vs_no_loop", "prompts_only_vs_no_loop",
                                                 "loop_vs_prompts_only", "no_loop_vs_round_0")},
        "hacking_gap_points": [r["hacking"]["gap_points"] for r in loop if "hacking" in r],
        **{f"{estimate}gap_points": [r["hacking"].get(f"{estimate}gap_points", float("nan")) for r in loop
                                     if "hacking" in r] for estimate in ("reward_check_", "selection_")},
        "draft_gains": [(d["ranker_gain"], d["checker_gain"]) for r in loop
                        if (d := r.get("lora", {}).get("draft")) is not None],
        "new_arm_share_last": loop[-1]["origin"]["new_arm_share"],
        "distinct_prompts": [r["diversity"]["mean_distinct_prompts"] for r in loop],
        **({"ctr_refresh_last": rounds["refresh"][-1]["true_ctr"]["mean"]} | {
            name: comparisons[name] for name in REFRESH_COMPARISONS} if "refresh" in rounds else {}),
        "goals": report["goals"],
        "seconds": report["seconds"],
    }


REFRESH_COMPARISONS = ("loop_vs_refresh", "prompts_only_vs_refresh", "refresh_vs_no_loop", "refresh_vs_round_0")


def mean_over_seeds(values) -> tuple[float, float, float]:
    """Mean of one figure over seeds (each seed another world) with its 95 % Student t interval."""
    from scipy import stats

    values = [v for v in values if not math.isnan(v)]  # a round without a gap has nothing to average
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="out/bench-loop")
    parser.add_argument("--lora-per-group", action="store_true", help="one generator LoRA per audience group")
    parser.add_argument("--lora-examples", choices=("selected", "clicked"), default="selected",
                        help="what the generator LoRA learns from")
    parser.add_argument("--lora-steps", type=int, default=None, help="LoRA steps a round (default: the loop's)")
    parser.add_argument("--draft-steps", type=int, default=None, help="DRaFT steps a round (default: the loop's)")
    parser.add_argument("--refresh-arm", action="store_true", help="also run the arm with new arms but no learning")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from studio.jobs.loop import DEFAULT_ARMS

    rows = [row(seed, run_seed(Path(args.out) / f"seed-{seed}", seed, args.rounds, lora_per_group=args.lora_per_group,
                               lora_examples=args.lora_examples, lora_steps=args.lora_steps,
                               draft_steps=args.draft_steps,
                               arms=DEFAULT_ARMS + ("refresh",) if args.refresh_arm else None)) for seed in args.seeds]

    def gain(value: dict) -> str:
        return f"{value['gain']:+.1%} [{value['ci'][0]:+.1%}, {value['ci'][1]:+.1%}]"

    def points(gaps: list[float]) -> str:
        return ", ".join(f"{g:+.1f}" for g in gaps)

    for r in rows:
        print(f"seed {r['seed']}: true CTR round 0 {r['ctr_round_0']:.4f} -> loop {r['ctr_loop_last']:.4f}, prompts "
              f"only {r['ctr_prompts_only_last']:.4f}, no loop {r['ctr_no_loop_last']:.4f}")
        print(f"  loop vs round 0 {gain(r['loop_vs_round_0'])}; loop vs no-loop {gain(r['loop_vs_no_loop'])}; "
              f"prompts-only vs no-loop {gain(r['prompts_only_vs_no_loop'])}; loop vs prompts-only "
              f"{gain(r['loop_vs_prompts_only'])}; no-loop vs its round 0 {gain(r['no_loop_vs_round_0'])}")
        print(f"  hacking gap (points) {points(r['hacking_gap_points'])} (the reward-model checkers: "
              f"{points(r['reward_check_gap_points'])}; the ranker's own: {points(r['selection_gap_points'])}); "
              "distinct prompts "
              f"per group {r['distinct_prompts']}; new-arm share of treatment {r['new_arm_share_last']:.0%}; "
              f"{r['seconds']:.0f} s")
        if r["draft_gains"]:
            print("  DRaFT predicted gain per round, ranker / checkers: " + ", ".join(
                f"{ranker:+.1%} / {checker:+.1%}" for ranker, checker in r["draft_gains"]))
        if "loop_vs_refresh" in r:
            print(f"  refresh arm: true CTR {r['ctr_refresh_last']:.4f}; " + "; ".join(
                f"{name.replace('_', ' ')} {gain(r[name])}" for name in REFRESH_COMPARISONS))
        print(f"  goals: {r['goals']}")
    if len(rows) > 1:
        print(f"median over {len(rows)} seeds: loop vs round 0 "
              f"{statistics.median(r['loop_vs_round_0']['gain'] for r in rows):+.1%}, loop vs no-loop "
              f"{statistics.median(r['loop_vs_no_loop']['gain'] for r in rows):+.1%}, loop vs prompts-only "
              f"{statistics.median(r['loop_vs_prompts_only']['gain'] for r in rows):+.1%}, wall "
              f"{statistics.median(r['seconds'] for r in rows):.0f} s")
        if all("loop_vs_refresh" in r for r in rows):
            print("medians, refresh arm: " + ", ".join(
                f"{name.replace('_', ' ')} {statistics.median(r[name]['gain'] for r in rows):+.1%} (above 0 on "
                f"{sum(r[name]['gain'] > 0 for r in rows)} of {len(rows)})" for name in REFRESH_COMPARISONS))
        for name, key in (("linear check", "hacking_gap_points"), ("reward-model checkers", "reward_check_gap_points"),
                          ("ranker", "selection_gap_points")):
            gaps = [g for r in rows for g in r[key]]
            print(f"hacking gap, {name}: mean {statistics.fmean(gaps):+.1f} points, mean |gap| "
                  f"{statistics.fmean(abs(g) for g in gaps):.1f}, {sum(abs(g) <= 5 for g in gaps)} of {len(gaps)} "
                  f"rounds within 5 points, every round within 5 on "
                  f"{sum(all(abs(g) <= 5 for g in r[key]) for r in rows)} of {len(rows)} seeds")
            print("  by round, mean over seeds [95 % t-interval over seeds]: " + "; ".join(
                f"round {i} {mean:+.1f} [{low:+.1f}, {high:+.1f}]"
                for i, (mean, low, high) in enumerate(map(mean_over_seeds, zip(*(r[key] for r in rows))), start=1)))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
