"""`studio campaign` (a product -> the best creative per audience group) and `studio demo` (the same on a demo product)."""

from __future__ import annotations

import argparse
import sys

from studio.cli import arguments
from studio.cli.output import emit
from studio.core.atomic import check_output_folder


def register(subparsers) -> None:
    campaign = subparsers.add_parser(
        "campaign",
        help="write prompts, creatives and a CTR ranking for each audience group of one product",
        description="For each audience group: the prompt model writes scene prompts, the generator paints creatives "
                    "around the product, and the reward model ranks them by predicted CTR.",
    )
    campaign.add_argument("--product", required=True, help="product photo (PNG with transparency, or plain background)")
    campaign.add_argument("--mask", default=None, help="product mask (white = product) for a photo without "
                                                        "transparency or a plain background")
    campaign.add_argument("--title", default="", help="product title, e.g. 'green glass bottle'")
    campaign.add_argument("--category", default="", help="catalogue category or product kind, e.g. beverage or bottle")
    _common(campaign)
    campaign.set_defaults(func=run_campaign_command)

    demo = subparsers.add_parser(
        "demo",
        help="the main job on the embedded defaults: a rendered demo bottle -> best creative per audience group",
    )
    _common(demo)
    demo.set_defaults(func=run_demo)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", default=None, help="audience folder (studio simulate's audience/); "
                                                       "default: the reward model's groups")
    parser.add_argument("--prompts-per-group", type=arguments.whole(1, 16), default=2)
    parser.add_argument("--seed", type=arguments.seed, default=0)
    parser.add_argument("--size", type=arguments.whole(64, 4096, " pixels"), default=512,
                        help="long side of each creative, in pixels")
    parser.add_argument("--steps", type=arguments.whole(1, 1000), default=None,
                        help="denoising steps (default: the generator's)")
    parser.add_argument("--model", default=None, help="generator: hub id or pipeline folder (default: embedded)")
    parser.add_argument("--prompt-model", default=None, help="prompt model: hub id or folder (default: prompts-mini)")
    parser.add_argument("--reward-model", default="reward-mini", help="reward model folder (default: reward-mini)")
    parser.add_argument("--threads", type=arguments.whole(1, 256), default=None,
                        help="torch CPU threads (default: 1 for small models such as studio-mini, else all cores)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run_campaign_command(args: argparse.Namespace, product=None) -> int:
    import torch

    from studio.imaging.threads import cpu_threads
    from studio.jobs.campaign import run_campaign

    check_output_folder(args.out)
    torch.set_num_threads(cpu_threads(args.model, args.threads))
    groups = None
    if args.groups:
        from studio.learning.audience import AudienceClustering

        groups = [p.to_dict() for p in AudienceClustering.from_pretrained(args.groups).profiles_]
    report = run_campaign(
        product if product is not None else args.product,
        out_dir=args.out, mask=getattr(args, "mask", None), title=getattr(args, "title", ""),
        category=getattr(args, "category", ""), groups=groups,
        prompts_per_group=args.prompts_per_group, seed=args.seed, generator=args.model,
        prompt_model=args.prompt_model, reward_model=args.reward_model, size=args.size, steps=args.steps,
    )
    lines = [f"product {report.title!r} ({report.category}) -> {args.out}/campaign.json"]
    for group in report.groups:
        lines.append(f"group {group.group_id}: {group.summary}")
        lines += [f"  #{c.rank} pCTR {c.predicted_ctr:.2%}  {c.path}\n      {c.prompt}" for c in group.creatives]
    emit(report.to_dict(), args.json, lines)
    if report.random_init:
        from studio.imaging.engine import RANDOM_INIT_NOTE

        print(f"studio: note: {RANDOM_INIT_NOTE}", file=sys.stderr)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from studio.sim.renderer import render_product

    args.title, args.category = "glass bottle", "beverage"
    return run_campaign_command(args, product=render_product("bottle", seed=args.seed, size=384))
