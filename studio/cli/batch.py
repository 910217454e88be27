"""`studio batch`: a catalogue × audience groups × placements -> ranked creatives in the creative cache (resumes)."""

from __future__ import annotations

import argparse

from studio.cli import arguments
from studio.cli.output import emit


def register(subparsers) -> None:
    batch = subparsers.add_parser(
        "batch",
        help="make, score and cache creatives for a whole catalogue (rerun to resume)",
        description="For every product of a catalogue, audience group and placement: prompts, creatives, predicted "
                    "CTR; the top k per (product, group, placement) are cached as accepted, the rest as candidates. "
                    "Run it again after any interruption: it skips what the cache holds.",
    )
    batch.add_argument("--catalogue", required=True, help="CSV or Parquet: image, product_id, title, category "
                                                          "[, brand (JSON), mask]")
    batch.add_argument("--cache", required=True, help="cache folder, or a postgresql:// URL for the index")
    batch.add_argument("--blobs", default=None, help="blob folder or fsspec URL (required with a PostgreSQL index)")
    batch.add_argument("--out", required=True, help="folder for batch.json and the contact sheets")
    batch.add_argument("--placements", default="1:1", help="comma-separated aspects, e.g. 1:1,4:5,9:16")
    batch.add_argument("--groups", default=None, help="comma-separated audience group ids (default: all)")
    batch.add_argument("--prompts-per-group", type=arguments.whole(1, 16), default=4)
    batch.add_argument("--top-k", type=arguments.whole(1, 16), default=1,
                       help="creatives per (product, group, placement) to accept")
    batch.add_argument("--seed", type=arguments.whole(0, 2**31 - 1), default=0)
    batch.add_argument("--size", type=arguments.whole(64, 4096, " pixels"), default=512,
                       help="long side of each creative, in pixels")
    batch.add_argument("--steps", type=arguments.whole(1, 1000), default=None,
                       help="denoising steps (default: the generator's)")
    batch.add_argument("--batch-size", type=arguments.whole(1, 256), default=16, help="most images per generator call")
    batch.add_argument("--model", default=None, help="generator: hub id or pipeline folder (default: embedded)")
    batch.add_argument("--prompt-model", default=None, help="prompt model (default: prompts-mini)")
    batch.add_argument("--reward-model", default="reward-mini", help="reward model (default: reward-mini)")
    batch.add_argument("--threads", type=arguments.whole(1, 256), default=None,
                       help="torch CPU threads (default: 1 for small models such as studio-mini, else all cores)")
    batch.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (local engine)")
    batch.add_argument("--engine", default="local", choices=("local", "ray"), help="run here or on Ray Data")
    batch.add_argument("--ray-address", default=None, help="join this Ray cluster (e.g. ray://head:10001 or auto)")
    batch.add_argument("--workers", type=arguments.whole(1, 1024), default=1,
                       help="Ray actors (each loads the models once)")
    personal = batch.add_argument_group("personal conditions (DiFashion-style; each is recorded in every recipe)")
    personal.add_argument("--history", metavar="DIR|simulated", default=None,
                          help="each group's own history: a folder with one subfolder of clicked creatives per group "
                               "id (DIR/0/, DIR/1/, ...), or 'simulated' for each group's clicks in the simulated "
                               "world; a group without one is painted from the text alone")
    personal.add_argument("--history-world", metavar="DIR", default=None,
                          help="the simulated world for --history simulated (default: a seeded one in the user cache)")
    personal.add_argument("--history-guidance", type=arguments.number(0, 20), default=0.0,
                          help="guidance scale of the history condition (0: text only)")
    personal.add_argument("--category", default=None,
                          help="category condition for every product (default: each product's own catalogue "
                               "category, with --category-guidance)")
    personal.add_argument("--category-guidance", type=arguments.number(0, 20), default=0.0,
                          help="guidance scale of the category condition (0: left out)")
    arguments.history_variant(personal)
    personal.add_argument("--history-adapter", metavar="DIR", default=None,
                          help="history adapter: a PersonalConditioner (studio-mini) or an IP-Adapter folder; "
                               "default: the model's own")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument("--json", action="store_true", help="print the run report as JSON on stdout")
    batch.set_defaults(func=run_batch_command)


def run_batch_command(args: argparse.Namespace) -> int:
    import torch

    from studio.core.errors import InputError
    from studio.imaging.threads import cpu_threads
    from studio.jobs.batch import BatchConfig, run_batch

    try:
        groups = None if args.groups is None else tuple(int(g) for g in args.groups.split(",") if g.strip())
    except ValueError:
        raise InputError(f"--groups must be comma-separated whole numbers, got {args.groups!r}") from None
    config = BatchConfig(
        catalogue=args.catalogue, cache=args.cache, blobs=args.blobs, out=args.out,
        placements=tuple(p.strip() for p in args.placements.split(",") if p.strip()), groups=groups,
        prompts_per_group=args.prompts_per_group, top_k=args.top_k, seed=args.seed, size=args.size,
        steps=args.steps, batch_size=args.batch_size, generator=args.model, prompt_model=args.prompt_model,
        reward_model=args.reward_model, device=args.device, engine=args.engine, ray_address=args.ray_address,
        workers=args.workers, progress=not args.no_progress, history=args.history, history_world=args.history_world,
        history_guidance=args.history_guidance, category=args.category, category_guidance=args.category_guidance,
        history_adapter=args.history_adapter, history_projection=args.history_projection,
        history_interval=args.history_interval,
    )
    torch.set_num_threads(cpu_threads(args.model, args.threads))  # Ray actors use the same count
    report = run_batch(config)
    lines = [f"{report.items} items ({report.skipped} cached, {report.made} made, {report.failed} failed); "
             f"{report.creatives} creatives ({report.accepted} accepted) in {report.seconds:.1f} s "
             f"-> {args.out}/batch.json"]
    lines += [f"  failed: {f['product_id']} {f['placement']}: {f['error']}" for f in report.failures]
    emit(report.to_dict(), args.json, lines)
    return 0
