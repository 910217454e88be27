"""`studio prompts suggest` and `studio prompts train`: the prompt model from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from studio.cli import arguments
from studio.cli.output import emit
from studio.core.errors import InputError

DEFAULT_TRAIN_OUT = "runs/prompts-mini"


def _words(text: str | None) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def _read_group(value: str) -> dict:
    """A group profile from a JSON file, or built from interest tags like "eco,outdoors"."""
    from prompts.brief import group_profile_from_tags

    path = Path(value)
    if value.endswith(".json") or path.is_file():
        if not path.is_file():
            raise InputError(f"group file {value!r} does not exist; give a group profile JSON file or tags like 'eco,outdoors'")
        try:
            return json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"group file {value!r} is not UTF-8 text; re-save it as UTF-8") from None
        except json.JSONDecodeError as error:
            raise InputError(f"group file {value!r} is not valid JSON ({error.msg}, line {error.lineno})") from None
    return group_profile_from_tags(value)


def _brief_from_args(args: argparse.Namespace):
    from prompts.brief import Brief

    if args.brief:
        return Brief.load(args.brief)
    if not args.group or not args.product:
        raise InputError("give --group (tags like 'eco,outdoors' or a group JSON file) and --product (e.g. 'bottle'), "
                         "or a whole brief with --brief FILE")
    attributes = {"colour": args.colour} if args.colour else {}
    return Brief.from_dict({
        "audience": _read_group(args.group),
        "product": {"title": args.product, "category": args.category or "", "attributes": attributes},
        "brand": {"required_words": _words(args.required), "banned_words": _words(args.banned), "tone": args.tone},
        "placement": {"aspect_ratio": args.aspect},
    })


def run_prompts_suggest(args: argparse.Namespace) -> int:
    import warnings

    from prompts.backends import MAX_CANDIDATES
    from prompts.loading import load_prompt_model

    if not 1 <= args.n <= MAX_CANDIDATES:  # before loading a model, which can take a while
        raise InputError(f"--n must be from 1 to {MAX_CANDIDATES}, got {args.n}")
    brief = _brief_from_args(args)
    model = load_prompt_model(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompts = model.suggest(brief, n=args.n, seed=args.seed, temperature=args.temperature, top_p=args.top_p)
    notes = [str(w.message) for w in caught if "prompt model" in str(w.message)]
    result = {"model": args.model or "prompts-mini", "seed": args.seed, "brief": brief.to_dict(),
              "prompts": [p.to_dict() for p in prompts], "warnings": notes}
    emit(result, args.json, (f"{index}. {prompt.positive}\n   negative: {prompt.negative}"
                             for index, prompt in enumerate(prompts, start=1)))
    if not args.json:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    return 0


def run_prompts_train(args: argparse.Namespace) -> int:
    from prompts.mini import MiniTrainingConfig, train_prompts_mini

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1, got {args.steps}")
    config = MiniTrainingConfig(seed=args.seed, progress=not args.json,
                                **({"steps": args.steps} if args.steps is not None else {}))
    summary = train_prompts_mini(args.out, config)
    emit(summary, args.json, [
        f"trained prompts-mini ({summary['parameters']:,} parameters, {summary['steps']} steps on "
        f"{summary['pairs']:,} pairs, loss {summary['first_loss']} -> {summary['final_loss']}) "
        f"in {summary['seconds']} s; saved to {summary['out_dir']}"])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prompts", help="the prompt model: suggest scene prompts, train prompts-mini")
    commands = parser.add_subparsers(dest="prompts_command", metavar="ACTION", required=True)

    suggest = commands.add_parser("suggest", help="scene prompts for an audience group and a product",
                                  description="Example: studio prompts suggest --group eco,outdoors --product bottle")
    suggest.add_argument("--group", help="interest tags ('eco,outdoors') or a group profile JSON file")
    suggest.add_argument("--product", help="the product's kind or title ('bottle', 'Green tea bottle 500ml')")
    suggest.add_argument("--brief", help="a whole brief as a JSON file (instead of --group/--product)")
    suggest.add_argument("--category", help="catalogue category, e.g. beverage")
    suggest.add_argument("--colour", help="the product's own colour (backdrops avoid it)")
    suggest.add_argument("--tone", default="neutral", help="brand tone: neutral, calm, playful, premium, bold, natural")
    suggest.add_argument("--required", help="comma-separated words every prompt must contain")
    suggest.add_argument("--banned", help="comma-separated words no prompt may contain")
    suggest.add_argument("--aspect", default="1:1", help="placement aspect ratio W:H (default 1:1)")
    suggest.add_argument("--n", type=arguments.whole(1, 64), default=8, help="how many prompts (default 8)")
    suggest.add_argument("--model", help="prompts-mini (default), a saved folder, or a transformers hub id")
    suggest.add_argument("--seed", type=arguments.seed, default=0, help="sampling seed (same seed, same prompts)")
    suggest.add_argument("--temperature", type=arguments.number(0.01, 5), help="sampling temperature (default 0.9)")
    suggest.add_argument("--top-p", dest="top_p", type=arguments.number(0.01, 1),
                         help="nucleus sampling mass (default 0.95)")
    suggest.add_argument("--json", action="store_true", help="print JSON")
    suggest.set_defaults(func=run_prompts_suggest)

    train = commands.add_parser("train", help="train prompts-mini from scratch (seeded, a few minutes on CPU)")
    train.add_argument("--out", default=DEFAULT_TRAIN_OUT, help=f"output folder (default {DEFAULT_TRAIN_OUT})")
    train.add_argument("--steps", type=arguments.whole(1, 10_000_000),
                       help="optimiser steps (default: the shipped recipe)")
    train.add_argument("--seed", type=arguments.seed, default=0, help="seed for data, initialisation and batches")
    train.add_argument("--json", action="store_true", help="print the training summary as JSON")
    train.set_defaults(func=run_prompts_train)
