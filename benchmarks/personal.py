"""Personal conditions benchmark: does history guidance paint for a group's taste, and does its CTR gain?

    python benchmarks/personal.py --adapter runs/personal/adapter [--model M] [--scales 0 1 2 4] [--seeds 0 1]
                                  [--history-projection none|perpendicular] [--history-interval SHARE] [--json]
                                  [--out out/bench-personal]

The world is `studio.sim.histories.simulate_histories` (96 rendered creatives, 60 000 uniform impressions, the
simulator's 4 segments as the groups, taste_strength 2.0); each group's history is its clicked creatives (weights =
clicks). For every group, prompt (colour x material, named in the prompt) and seed, the backdrop of a neutral product
is painted at each history guidance scale (text guidance 4, 20 steps; the same seed at every scale). Reported:

- personalisation: the mean distance between a creative's standardised taste features (the simulator's warmth,
  brightness, saturation, hue x/y, texture, measured outside the product) and its group's click-weighted history
  mean, per group and scale; whether it falls monotonically on every group;
- text adherence: the share of creatives whose backdrop is nearest the prompt's colour, and the share the
  renderer-trained material classifier reads as the prompt's material, per scale (goal: no more than 5 points below
  scale 0);
- outcome: the oracle CTR of each group's creatives at each scale over the text-only ones (scale 0, same prompts and
  seeds) for that group: the relative gain and a 95 % bootstrap CI (paired over prompts x seeds), per group and
  averaged over groups (goal >= +5 %, CI excluding 0; the mean's CI resamples the same cases in every group);
- cross-check: the same creatives' gain for the *other* groups (a personal gain should not be a global one);
- latency: median seconds per creative at each scale, and the ratio to text-only (each extra condition costs UNet
  passes);
- memory (`--memory`, Linux): for each scale a fresh process loads the model, resets its RSS high-water mark and
  paints 4 creatives; the peak RSS while painting, its difference to the text-only process and their ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLOURS = ("red", "teal", "white", "black")
MATERIALS = ("plain", "marble", "wood")


def bootstrap_gain(treated: np.ndarray, base: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float, float]:
    """Relative gain mean(treated)/mean(base) - 1 and its 95 % paired bootstrap interval."""
    rng = np.random.default_rng(seed)
    gain = float(treated.mean() / base.mean() - 1)
    draws = rng.integers(len(base), size=(n, len(base)))
    boot = treated[draws].mean(axis=1) / base[draws].mean(axis=1) - 1
    return gain, float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def bootstrap_mean_gain(pairs: list[tuple[np.ndarray, np.ndarray]], seed: int = 0,
                        n: int = 2000) -> tuple[float, float, float]:
    """The mean over groups of each group's relative gain, and its 95 % bootstrap interval: every draw resamples the
    same cases (prompt x seed, aligned across groups) in every group, treated and text-only paired."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(pairs[0][0]), size=(n, len(pairs[0][0])))
    gain = float(np.mean([treated.mean() / base.mean() - 1 for treated, base in pairs]))
    boot = np.mean([treated[draws].mean(axis=1) / base[draws].mean(axis=1) - 1 for treated, base in pairs], axis=0)
    return gain, float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def _paint_four(args, scale: float, history) -> float:
    """In a fresh process: load the model, paint 4 creatives at `scale`, return the peak RSS while painting in MiB
    (Linux: the high-water mark is reset once the model is loaded, so loading's own peak does not hide it)."""
    import torch

    from studio.imaging.engine import GenerationSettings, load_engine
    from studio.training.mini.probes import neutral_scene

    torch.set_num_threads(1)
    engine = load_engine(args.model, device="cpu")
    settings = GenerationSettings(steps=args.steps, guidance=args.guidance, history_guidance=scale,
                                  history_projection=args.history_projection, history_interval=args.history_interval)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    for seed in range(4):
        scene = neutral_scene(64, seed)
        engine.generate(scene.image, scene.background_mask, prompt=f"a {scene.attributes['product']} on a red marble "
                        "backdrop", seed=seed, settings=settings, history=history if scale > 0 else None,
                        history_adapter=args.adapter)
    peak = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(peak.split()[1]) / 1024  # kB


def peak_rss_mib(args, scale: float, history) -> float:
    """`_paint_four` in a process of its own (spawned: nothing of this one's memory is inherited)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_paint_four, args, scale, history).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="history adapter (PersonalConditioner or IP-Adapter folder)")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded studio-mini)")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--out", default=None, help="folder for the simulated world (default: a temporary one)")
    from studio.imaging.personal import HISTORY_PROJECTIONS

    parser.add_argument("--history-projection", choices=HISTORY_PROJECTIONS, default="none",
                        help="history guidance as given, or made orthogonal to the text's")
    parser.add_argument("--history-interval", type=float, default=1.0,
                        help="history guidance only at noise levels up to this share of the schedule (1: every step)")
    parser.add_argument("--memory", action="store_true", help="also the peak RSS of a fresh process per scale")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from studio.core.vocabulary import CATEGORIES
    from studio.imaging.engine import GenerationSettings, load_engine
    from studio.sim.histories import group_taste_mean, histories_from_log, simulate_histories, taste_features
    from studio.training.mini.probes import fit_material_classifier, nearest_colour, neutral_scene, texture_features

    torch.set_num_threads(1)
    scratch = None if args.out else tempfile.TemporaryDirectory()
    world = simulate_histories(Path(args.out or scratch.name) / "world")
    histories = histories_from_log(world.folder / "events.db", world.folder / "creatives")
    means = {g: group_taste_mean(world, g) for g in world.groups}
    engine = load_engine(args.model, device="cpu")
    classifier = fit_material_classifier(n=600, size=64, seed=0)[0]
    cases = [(c, m, s) for c in COLOURS for m in MATERIALS for s in args.seeds]

    records = []  # one per (group, scale, case)
    seconds: dict[float, list[float]] = {s: [] for s in args.scales}
    for group in world.groups:
        for scale in args.scales:
            for colour, material, seed in cases:
                scene = neutral_scene(64, seed)
                product = scene.attributes["product"]
                settings = GenerationSettings(steps=args.steps, guidance=args.guidance, history_guidance=scale,
                                              history_projection=args.history_projection,
                                              history_interval=args.history_interval)
                started = time.perf_counter()
                image = engine.generate(scene.image, scene.background_mask, prompt=f"a {product} on a {colour} "
                                        f"{material} backdrop", seed=seed, settings=settings,
                                        history=histories[group] if scale > 0 else None,
                                        history_adapter=args.adapter)
                seconds[scale].append(time.perf_counter() - started)
                background = np.asarray(scene.product_mask) < 128
                pixels = np.asarray(image)
                records.append({
                    "group": group, "scale": scale, "colour": colour, "material": material, "seed": seed,
                    "distance": float(np.linalg.norm(taste_features(image, scene.product_mask) - means[group])),
                    "colour_hit": nearest_colour(pixels.astype(float)[background].mean(0)) == colour,
                    "material_hit": bool(classifier.predict(texture_features(pixels[None], background[None]))[0]
                                         == material),
                    "creative": world.simulator.add_creative(image, scene.product_mask, CATEGORIES[product]),
                })
    ctr = world.simulator.segment_ctr(np.array([r["creative"] for r in records]))  # (groups, records)

    def pick(group, scale):
        return [i for i, r in enumerate(records) if r["group"] == group and r["scale"] == scale]

    base_scale = args.scales[0]
    result: dict = {"conditions": "2-core CPU shared with other jobs, 1 torch thread; studio-mini 64 px, "
                                  f"{args.steps} steps, text guidance {args.guidance}",
                    "adapter": args.adapter, "history_projection": args.history_projection,
                    "history_interval": args.history_interval, "scales": args.scales,
                    "cases_per_group": len(cases),
                    "distance": {}, "monotone": {}, "adherence": {}, "gain": {}, "cross_gain": {}, "latency": {}}
    for group in world.groups:
        distances = [statistics.mean(records[i]["distance"] for i in pick(group, s)) for s in args.scales]
        result["distance"][group] = [round(d, 4) for d in distances]
        result["monotone"][group] = all(b < a for a, b in itertools.pairwise(distances))
    for scale in args.scales:
        rows = [r for r in records if r["scale"] == scale]
        result["adherence"][scale] = {"colour": round(float(np.mean([r["colour_hit"] for r in rows])), 4),
                                      "material": round(float(np.mean([r["material_hit"] for r in rows])), 4)}
        result["latency"][scale] = {"median_s": round(statistics.median(seconds[scale]), 4),
                                    "ratio_to_text_only": round(statistics.median(seconds[scale])
                                                                / statistics.median(seconds[base_scale]), 2)}
    for scale in args.scales[1:]:
        own, cross = {}, {}
        for group in world.groups:
            treated, base = pick(group, scale), pick(group, base_scale)
            own[group] = [round(v, 4) for v in bootstrap_gain(ctr[group, treated], ctr[group, base])]
            others = [bootstrap_gain(ctr[h, treated], ctr[h, base])[0] for h in world.groups if h != group]
            cross[group] = round(float(np.mean(others)), 4)
        mean = bootstrap_mean_gain([(ctr[g, pick(g, scale)], ctr[g, pick(g, base_scale)]) for g in world.groups])
        result["gain"][scale] = {"per_group": own, "mean": round(mean[0], 4),
                                 "mean_ci": [round(mean[1], 4), round(mean[2], 4)]}
        result["cross_gain"][scale] = {"per_group": cross, "mean": round(float(np.mean(list(cross.values()))), 4)}
    if args.memory:
        peaks = {scale: peak_rss_mib(args, scale, histories[world.groups[0]]) for scale in args.scales}
        result["memory"] = {scale: {"peak_rss_mib": round(peak, 1),
                                    "over_text_only_mib": round(peak - peaks[base_scale], 1),
                                    "ratio_to_text_only": round(peak / peaks[base_scale], 3)}
                            for scale, peak in peaks.items()}
    base = result["adherence"][base_scale]
    result["goals"] = {
        "distance_falls_on_every_group": all(result["monotone"].values()),
        # a guard against the history overriding the prompt: a drop of more than 5 points fails, a rise does not
        "adherence_within_5_points": all(base[k] - result["adherence"][s][k] <= 0.05
                                         for s in args.scales for k in ("colour", "material")),
        "mean_gain_at_least_5pct": {s: g["mean"] >= 0.05 for s, g in result["gain"].items()},
        "mean_gain_ci_excludes_0": {s: g["mean_ci"][0] > 0 for s, g in result["gain"].items()},
        "every_group_ci_excludes_0": {s: all(v[1] > 0 for v in g["per_group"].values())
                                      for s, g in result["gain"].items()},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(result["conditions"])
        for group in world.groups:
            print(f"group {group}: taste distance by scale {result['distance'][group]}  "
                  f"monotone={result['monotone'][group]}")
        for scale in args.scales:
            line = f"scale {scale:g}: adherence {result['adherence'][scale]}  latency {result['latency'][scale]}"
            if scale in result["gain"]:
                line += (f"  own-group CTR gain {result['gain'][scale]['mean']:+.3f} "
                         f"[{result['gain'][scale]['mean_ci'][0]:+.3f}, {result['gain'][scale]['mean_ci'][1]:+.3f}] "
                         f"{result['gain'][scale]['per_group']}  other groups {result['cross_gain'][scale]['mean']:+.3f}")
            print(line)
        if args.memory:
            print("peak RSS (MiB) per scale, each in a fresh process:", json.dumps(result["memory"]))
        print("goals", json.dumps(result["goals"]))
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
