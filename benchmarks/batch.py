"""Benchmark: `studio batch` against a naive loop (one generate_creatives call per creative), in one process.

Every side makes the same creatives: the same catalogue, audience groups, prompts (the prompt model, same seeds), the
same model and settings, scored by the same reward model and written to a fresh creative cache. The models are loaded
once, before any timing, and shared. Sides, each adding one optimisation to the one above:

    naive      per creative: generate_creatives(photo path, prompt, n=1) (decode + canvas + paint + paste), PNG,
               one reward call per creative; per item: rank, commit
    canvas     the job with batched=False, overlap=False: photo decoded and canvas built once per (product,
               placement), the item's creatives scored in one reward call
    batched    + all prompts of an item in one generator call (VAE-encoded canvas once, text embeddings cached)
    overlap    + paste-back, PNG encoding, scoring and commit of an item in a thread while the next is painted (the job)

Rounds alternate the sides so background load hits them alike; medians of `--rounds`. Prints creatives/s, the speed-up
over naive, and how the outputs compare with naive's (identical bytes; largest pixel difference).

    python benchmarks/batch.py          # studio-mini, 3 products x 4 groups x 4 prompts, 512 px, 20 steps
    python benchmarks/batch.py --products 2 --steps 8 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image


def photo(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    """A 600x800 bottle on a plain background, a little different per product."""
    shift = 20 * seed
    pixels = np.full((800, 600, 3), 236, np.uint8)
    pixels[200 + shift:700, 200:400 + shift] = colour
    pixels[120 + shift:200 + shift, 260:340] = colour
    pixels[400:500, 200:400] = (235, 210, 45)
    Image.fromarray(pixels).save(path)


def naive(config, models, cache_dir: Path) -> float:
    """One generate_creatives call per creative, one reward call per creative; the same prompts, seeds and keys."""
    from studio.imaging.creatives import generate_creatives
    from studio.imaging.provenance import encode_png
    from studio.jobs.cache import CacheKey, CreativeCache
    from studio.jobs.pipeline import audience_groups, rank_by_ctr, score, write_prompts
    from studio.jobs.work import item_seed, plan, read_catalogue, versions

    started = time.perf_counter()
    with CreativeCache(cache_dir) as cache:
        version = versions(config)
        groups = audience_groups(config.reward_model)
        for item in plan(config, read_catalogue(config.catalogue), groups, version):
            product, made = item.product, []
            for profile in groups:
                group_id = int(profile["group_id"])
                seed = item_seed(config.seed, product.product_id, item.placement, group_id)
                prompts = write_prompts(models.writer, profile, title=product.title, category=product.category,
                                        brand=product.brand, placement=item.placement, n=config.prompts_per_group,
                                        seed=seed)
                scores, pngs = [], []
                for index, prompt in enumerate(prompts):
                    creative = generate_creatives(
                        product.image, prompt.positive, settings=replace(config.settings(item.placement),
                                                                         negative_prompt=prompt.negative),
                        n=1, seed=seed + index, engine=models.engine, progress=False)[0]
                    named = {"prompt_model": version.prompt_model, "reward_model": version.reward}
                    pngs.append(encode_png(creative.image, creative.recipe, keep=creative.keep, models=named))
                    scores += score(models.scorer, [creative.image], [prompt.positive], [group_id],
                                    [product.category])
                for prompt, png, value, rank in zip(prompts, pngs, scores, rank_by_ctr(scores)):
                    key = CacheKey(product.product_id, group_id, item.placement, prompt.positive, version.generator,
                                   version.reward)
                    made.append((png, key, value, rank, "accepted" if rank <= config.top_k else "candidate"))
            cache.put_unit(item.unit_id, made)
    return time.perf_counter() - started


def compare(reference: Path, other: Path) -> tuple[int, int, int]:
    """(creatives, byte-identical to the reference, largest pixel difference) matched by cache key."""
    from studio.jobs.cache import CreativeCache

    def by_key(folder: Path) -> dict:
        with CreativeCache(folder) as cache:
            return {(e.key.product_id, e.key.group_id, e.key.placement, e.key.prompt): cache.read_png(e.creative_id)
                    for e in cache.all_creatives()}

    ref, mine = by_key(reference), by_key(other)
    assert ref.keys() == mine.keys(), "the sides made different sets of creatives"
    same = sum(ref[k] == mine[k] for k in ref)
    worst = max(int(np.abs(np.asarray(Image.open(io.BytesIO(ref[k]))).astype(int)
                           - np.asarray(Image.open(io.BytesIO(mine[k]))).astype(int)).max()) for k in ref)
    return len(ref), same, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="generator (default: studio-mini)")
    parser.add_argument("--products", type=int, default=3)
    parser.add_argument("--placements", default="1:1")
    parser.add_argument("--prompts-per-group", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the overlap thread uses one more)")
    args = parser.parse_args()

    import torch

    from studio.jobs.batch import BatchConfig, run_batch
    from studio.jobs.pipeline import load_models

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    rows = ["image,product_id,title,category,brand"]
    for i in range(args.products):
        photo(folder / f"p{i}.png", [(200, 30, 35), (30, 90, 200), (40, 160, 60), (120, 60, 150)][i % 4], i)
        rows.append(f"p{i}.png,sku-{i},bottle {i},beverage,")
    (folder / "catalogue.csv").write_text("\n".join(rows) + "\n")
    base = BatchConfig(catalogue=str(folder / "catalogue.csv"), cache="", out="", generator=args.model,
                       placements=tuple(args.placements.split(",")), prompts_per_group=args.prompts_per_group,
                       top_k=1, size=args.size, steps=args.steps, progress=False)
    models = load_models(base.generator, base.prompt_model, base.reward_model)
    sides = {
        "naive": None,
        "canvas": replace(base, batched=False, overlap=False),
        "batched": replace(base, batched=True, overlap=False),
        "overlap": replace(base, batched=True, overlap=True),
    }
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    creatives = 0
    for round_index in range(args.rounds + 1):  # round 0 warms up every side (allocator, kernels, page cache)
        for name, config in sides.items():
            cache = folder / f"{name}-{round_index}"
            models.engine._embeddings.clear()  # each run starts without cached text embeddings
            if config is None:
                elapsed = naive(replace(base, batched=False), models, cache)
            else:
                report = run_batch(replace(config, cache=str(cache), out=str(folder / f"out-{name}-{round_index}")),
                                   models)
                elapsed, creatives = report.seconds, report.creatives
            if round_index:
                seconds[name].append(elapsed)
            print(f"round {round_index} {name:8s} {elapsed:7.2f} s", file=sys.stderr)

    print(f"\n{args.products} products x {len(base.placements)} placement(s) x 4 groups x {args.prompts_per_group} "
          f"prompts = {creatives} creatives; {Path(models.generator).name}, {args.size} px, {args.steps} steps, "
          f"torch threads {args.threads}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; median of "
          f"{args.rounds}\n")
    print("| side | median s | creatives/s | vs naive | vs previous | identical bytes to naive | max pixel diff |")
    print("|---|---|---|---|---|---|---|")
    naive_s, previous = statistics.median(seconds["naive"]), None
    for name in sides:
        median = statistics.median(seconds[name])
        total, same, worst = compare(folder / "naive-1", folder / f"{name}-1")
        step = "" if previous is None else f"{previous / median:.2f}×"
        print(f"| {name} | {median:.2f} | {creatives / median:.2f} | {naive_s / median:.2f}× | {step} | "
              f"{same}/{total} | {worst} |")
        previous = median
    return 0


if __name__ == "__main__":
    sys.exit(main())
