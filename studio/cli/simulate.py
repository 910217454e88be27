"""`studio simulate`: the end-to-end learning-from-clicks experiment on the audience simulator."""

from __future__ import annotations

import argparse

from studio.cli import arguments
from studio.cli.output import emit


def register(subparsers) -> None:
    simulate = subparsers.add_parser(
        "simulate",
        help="run a simulated A/B test: LinUCB per audience group against uniform random creatives",
        description="Render creatives, simulate an audience, serve and log impressions (SQLite), learn from clicks, "
                    "and report CTR per bucket, lift, regret against the oracle and an off-policy estimate.",
    )
    # Upper bounds keep memory bounded: the run holds a few arrays of `impressions` and a users x creatives table.
    simulate.add_argument("--impressions", type=arguments.whole(100, 10_000_000), default=200_000,
                          help="requests to serve (default 200000)")
    simulate.add_argument("--products", type=arguments.whole(1, 100), default=4,
                          help="products in the catalogue (default 4)")
    simulate.add_argument("--arms", type=arguments.whole(2, 100), default=6,
                          help="creatives (backdrops) per product (default 6)")
    simulate.add_argument("--users", type=arguments.whole(10, 1_000_000), default=20_000,
                          help="simulated users (default 20000)")
    simulate.add_argument("--alpha", type=arguments.number(0, 100), default=0.25,
                          help="LinUCB exploration strength (default 0.25)")
    simulate.add_argument("--seed", type=arguments.seed, default=0)
    simulate.add_argument("--out", default="out/simulate", help="output folder (must not hold a previous run)")
    simulate.add_argument("--json", action="store_true", help="print the full report as JSON on stdout")
    simulate.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from studio.sim.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig(impressions=args.impressions, products=args.products, arms=args.arms,
                              users=args.users, alpha=args.alpha, seed=args.seed)
    report = run_experiment(config, args.out, progress=True)
    emit(report.to_dict(), args.json, _summary(report))
    return 0
    control, treatment = report.buckets["control"], report.buckets["treatment"]
    ope = report.off_policy
    print(f"groups: {report.groups['n_groups']} (adjusted Rand vs hidden segments "
          f"{report.groups['adjusted_rand_vs_hidden_segments']:.2f})")
    for stats in (control, treatment):
        print(f"{stats['bucket']:>9}: CTR {stats['ctr']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}] "
              f"({stats['clicks']} clicks / {stats['impressions']} impressions)")
    print(f"     lift: {report.lift['lift']:+.1%} [{report.lift['ci_low']:+.1%}, {report.lift['ci_high']:+.1%}], "
          f"p = {report.lift['p_value']:.2g}")
    print(f"   regret: treatment {report.regret['treatment_cumulative']:.0f}, control "
          f"{report.regret['control_cumulative']:.0f} expected clicks lost to the oracle")
    print(f"   oracle: LinUCB reaches {report.oracle['ratio_last_quarter']:.1%} of the oracle CTR "
          f"over the last quarter (best fixed arm per group: {report.oracle['group_oracle_ratio_last_quarter']:.1%})")
    print(f"      OPE: DR {ope['dr']['estimate']:.4f} [{ope['dr']['ci'][0]:.4f}, {ope['dr']['ci'][1]:.4f}] from "
          f"the control log; realised {ope['realised_treatment_ctr']:.4f}")
    print(f"    goals: {', '.join(f'{k}={v}' for k, v in report.goals.items())}")
    print(f"    files: {report.files['report']}, {report.files['plot']}, {report.files['event_log']} "
          f"({report.seconds:.1f} s)")
    return 0


def _summary(report) -> list[str]:
    control, treatment = report.buckets["control"], report.buckets["treatment"]
    ope = report.off_policy
    lines = [f"groups: {report.groups['n_groups']} (adjusted Rand vs hidden segments "
             f"{report.groups['adjusted_rand_vs_hidden_segments']:.2f})"]
    for stats in (control, treatment):
        lines.append(f"{stats['bucket']:>9}: CTR {stats['ctr']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}] "
                     f"({stats['clicks']} clicks / {stats['impressions']} impressions)")
    return lines + [
        f"     lift: {report.lift['lift']:+.1%} [{report.lift['ci_low']:+.1%}, {report.lift['ci_high']:+.1%}], "
        f"p = {report.lift['p_value']:.2g}",
        f"   regret: treatment {report.regret['treatment_cumulative']:.0f}, control "
        f"{report.regret['control_cumulative']:.0f} expected clicks lost to the oracle",
        f"   oracle: LinUCB reaches {report.oracle['ratio_last_quarter']:.1%} of the oracle CTR "
        f"over the last quarter (best fixed arm per group: {report.oracle['group_oracle_ratio_last_quarter']:.1%})",
        f"      OPE: DR {ope['dr']['estimate']:.4f} [{ope['dr']['ci'][0]:.4f}, {ope['dr']['ci'][1]:.4f}] from "
        f"the control log; realised {ope['realised_treatment_ctr']:.4f}",
        f"    goals: {', '.join(f'{k}={v}' for k, v in report.goals.items())}",
        f"    files: {report.files['report']}, {report.files['plot']}, {report.files['event_log']} "
        f"({report.seconds:.1f} s)",
    ]
