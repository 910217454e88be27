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
    simulate.add_argument("--prepare-world", metavar="DIR", default=None,
                          help="write a world for a server instead of running: DIR/cache, DIR/audience, world.json")
    simulate.add_argument("--via-http", metavar="URL", default=None,
                          help="drive a running `studio serve` (loopback only) with simulated users and clicks")
    simulate.add_argument("--world", metavar="DIR", default=None, help="the world the server serves (--via-http)")
    simulate.add_argument("--max-seconds", type=float, default=300.0, help="time limit of --via-http (default 300)")
    simulate.add_argument("--concurrency", type=int, default=8, help="requests in flight with --via-http")
    simulate.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    from studio.sim.experiment import ExperimentConfig, run_experiment

    config = ExperimentConfig(impressions=args.impressions, products=args.products, arms=args.arms,
                              users=args.users, alpha=args.alpha, seed=args.seed)
    if args.prepare_world or args.via_http:
        return _run_http(args, config)
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


def _run_http(args: argparse.Namespace, config) -> int:
    import os

    from studio.core.errors import InputError
    from studio.serving.drive import drive, prepare_world

    if args.prepare_world:
        summary = prepare_world(config, args.prepare_world)
        emit(summary, args.json, [f"world written to {args.prepare_world}: {len(summary['products'])} products, "
                                  f"{summary['groups']} audience groups; serve it with studio serve --cache "
                                  f"{args.prepare_world}/cache --audience {args.prepare_world}/audience"])
        return 0
    if not args.world:
        raise InputError("--via-http needs --world DIR (the folder --prepare-world wrote for the server)")
    result = drive(args.via_http, args.world, requests=args.impressions, seconds=args.max_seconds,
                   concurrency=args.concurrency, token=os.environ.get("STUDIO_API_TOKEN"), seed=args.seed)
    lines = [f"{result['requests']} requests in {result['seconds']:.1f} s "
             f"({result['requests_per_second']:.0f}/s), errors: {result['errors'] or 'none'}"]
    for stats in result["buckets"].values():
        lines.append(f"{stats['bucket']:>9}: CTR {stats['ctr']:.4f} [{stats['ci_low']:.4f}, {stats['ci_high']:.4f}] "
                     f"({stats['clicks']} clicks / {stats['impressions']} impressions)")
    if "lift" in result:
        lift = result["lift"]
        lines.append(f"     lift: {lift['lift']:+.1%} [{lift['ci_low']:+.1%}, {lift['ci_high']:+.1%}], "
                     f"p = {lift['p_value']:.2g}")
    if "oracle" in result:
        lines.append(f"   oracle: LinUCB reaches {result['oracle']['ratio_last_quarter']:.1%} of the oracle CTR over "
                     "the last quarter")
    emit(result, args.json, lines)
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
