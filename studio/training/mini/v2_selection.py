"""studio-mini v2's selection probe: for choosing between runs and settings, so that the gate (``v2_gate``) can judge
the choice without having been part of it.

Nothing here is the gate's: product instances and noise seeds start at ``SELECTION_SEED_BASE`` (10**6, far below the
gate's 2**30), the products are the renderer's only (the held-out real cut-outs and photos stay the gate's), and the
natural sentences hold validation words that neither a training caption nor the gate holds (a test checks), so the
probe sees unknown words as the gate does, but other ones.

The v2 recipe ends by choosing the guidance scale the model declares in its ``studio.json`` (``select_guidance``):
the one with the flattest "plain" backdrops among those that meet the gate's colour and material goals on the
probe's cases, so `studio generate` paints at it by default.

    python -m studio.training.mini.v2_selection runs/a/model runs/b/model --guidance 7.5 4 --threads 1
    python -m studio.training.mini.v2_selection runs/b/model --select      # choose, and write it to studio.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from studio.core.artefact import MANIFEST_NAME, PIPELINE_CLASS, PIPELINE_FORMAT, check_manifest
from studio.core.atomic import write_file
from studio.core.errors import InputError
from studio.core.vocabulary import COLOURS, LIGHTING, MATERIALS
from studio.sim.renderer import render_backdrop
from studio.training.mini.probes import nearest_colour, texture_features
from studio.training.mini.v2_data import aspect_buckets
from studio.training.mini.v2_gate import (
    _composite,
    _high_pass_spread,
    _material_classifier,
    _paint,
    _renderer_cutout,
    stage,
)

SELECTION_SEED_BASE = 10**6
GUIDANCE_GRID: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5)
QUICK_GRID: tuple[float, ...] = (1.5, 7.5)  # a smoke run's (--gate-quick): two probes, not a search
# The gate's goals for the measures the probe shares with it (v2_gate.GOALS), applied to the probe's own cases.
PROBE_GOALS: dict[str, float] = {"colour_adherence_terse": 0.95, "colour_adherence_sentences": 0.90,
                                 "material_adherence": 0.75}
VALIDATION_SCENE_NOUNS: tuple[str, ...] = ("patio", "hallway", "library", "pantry", "veranda", "boutique", "attic",
                                           "loft")
VALIDATION_ADJECTIVES: tuple[str, ...] = ("polished", "serene", "cheerful", "snug", "roomy", "inviting")
VALIDATION_PRODUCT_NOUNS: tuple[str, ...] = ("device", "trinket", "ornament", "accessory", "keepsake", "souvenir")
VALIDATION_SENTENCES: tuple[str, ...] = (
    "here is the {p} sitting on a {c} {m} top in a {a} {n}, {l} light",
    "{p} displayed on {c} {m} under {l} lighting, {a} {n}",
    "showcasing a {p} beside a {c} {m} slab in a {a} {n} with {l} light",
)


def validation_words() -> set[str]:
    """The probe's own words (they must be in neither training captions nor the gate)."""
    return {*VALIDATION_SCENE_NOUNS, *VALIDATION_ADJECTIVES, *VALIDATION_PRODUCT_NOUNS}


def validation_sentence(colour: str, material: str, index: int) -> str:
    """A marketer's sentence in validation words around a vocabulary colour and material."""
    template = VALIDATION_SENTENCES[index % len(VALIDATION_SENTENCES)]
    return template.format(p=VALIDATION_PRODUCT_NOUNS[index % len(VALIDATION_PRODUCT_NOUNS)], c=colour, m=material,
                           a=VALIDATION_ADJECTIVES[index % len(VALIDATION_ADJECTIVES)],
                           n=VALIDATION_SCENE_NOUNS[index % len(VALIDATION_SCENE_NOUNS)],
                           l=LIGHTING[index % len(LIGHTING)])


def probe(model: str | os.PathLike, guidance: float | None = None, steps: int = 30, device: str = "cpu",
          progress: bool = True) -> dict:
    """The measures the v2 runs trade against each other, on the probe's cases: the ghost ratio (36 terse "plain
    backdrop" prompts at 1:1, 9:16 and 16:9, against the renderer's plain `studio` backdrops), material adherence (72
    terse prompts, 6 materials x 12 colours, 1:1), colour adherence on those 108 terse prompts and on 48 validation
    sentences (12 colours in each of the 4 aspect buckets). guidance None: the model's own default, as `studio generate`."""
    from studio.imaging.engine import load_engine

    if not (Path(model) / "model_index.json").is_file():
        raise InputError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
    say = print if progress else (lambda *args, **kwargs: None)
    started = time.perf_counter()
    engine = load_engine(str(model), device=device, dtype="fp32")
    guidance = engine.default_guidance if guidance is None else float(guidance)
    side = engine.pipeline.unet.config.sample_size * engine.pipeline.vae_scale_factor
    buckets = aspect_buckets(side)
    colours = list(COLOURS)
    seeds = iter(range(SELECTION_SEED_BASE, SELECTION_SEED_BASE + 10**5))

    def generate(cases, width, height):
        """cases: (image, region, prompt); returns the composited creatives."""
        images, regions, prompts = zip(*cases)
        frames = _paint(engine.pipeline, images, regions, [engine.read_prompt(p).text for p in prompts],
                        [next(seeds) for _ in cases], width, height, steps, guidance)
        return [_composite(frame, image, region) for frame, image, region in zip(frames, images, regions)]

    say(f"probe {model}: ghost", flush=True)
    spreads, terse_hits = [], []
    cutouts = [_renderer_cutout(index, SELECTION_SEED_BASE) for index in range(len(colours))]
    for bucket in ("1:1", "9:16", "16:9"):
        width, height = buckets[bucket]
        staged = [stage(cutout, width, height) for cutout in cutouts]
        results = generate([(image, ~product, f"a {colour} plain backdrop, soft light")
                            for (image, product), colour in zip(staged, colours)], width, height)
        for index, ((_, product), colour, result) in enumerate(zip(staged, colours, results)):
            base = stage(cutouts[index], width, height, render_backdrop(colour, "plain", "soft", "studio",
                                                                        (width, height), SELECTION_SEED_BASE + index))[0]
            spreads.append((_high_pass_spread(result, ~product), _high_pass_spread(np.asarray(base), ~product)))
            terse_hits.append(nearest_colour(result[~product].mean(0)) == colour)
    generated, rendered = np.array(spreads).T

    say(f"probe {model}: material", flush=True)
    classifier, _ = _material_classifier(side)
    pairs = [(material, colour) for material in MATERIALS for colour in colours]
    cases = [(*stage(_renderer_cutout(100 + i, SELECTION_SEED_BASE), side, side), f"a {c} {m} backdrop, soft light")
             for i, (m, c) in enumerate(pairs)]
    cases = [(image, ~product, prompt) for image, product, prompt in cases]
    results = []
    for start in range(0, len(cases), 24):
        results += generate(cases[start:start + 24], side, side)
    predicted = classifier.predict(texture_features(np.stack(results), np.stack([c[1] for c in cases])))
    terse_hits += [nearest_colour(result[case[1]].mean(0)) == colour
                   for case, result, (_, colour) in zip(cases, results, pairs)]
    material = float(np.mean(predicted == np.array([m for m, _ in pairs])))

    say(f"probe {model}: validation sentences", flush=True)
    hits = []
    for bucket, (width, height) in buckets.items():
        cases = []
        for i, colour in enumerate(colours):
            image, product = stage(_renderer_cutout(300 + i, SELECTION_SEED_BASE), width, height)
            cases.append((image, ~product, validation_sentence(colour, MATERIALS[i % len(MATERIALS)], i)))
        results = generate(cases, width, height)
        hits += [nearest_colour(result[case[1]].mean(0)) == colour
                 for case, result, colour in zip(cases, results, colours)]
    return {"model": str(model), "guidance": guidance, "steps": steps,
            "ghost_ratio": round(float(np.median(generated) / max(np.median(rendered), 1e-6)), 3),
            "material_adherence": round(material, 3), "colour_adherence_terse": round(float(np.mean(terse_hits)), 3),
            "colour_adherence_sentences": round(float(np.mean(hits)), 3),
            "seconds": round(time.perf_counter() - started, 1)}


def select_guidance(model: str | os.PathLike, grid: tuple[float, ...] = GUIDANCE_GRID, steps: int = 30,
                    device: str = "cpu", progress: bool = True) -> dict:
    """Probe `model` at each guidance scale of `grid`, pick the flattest "plain" backdrops (lowest ghost ratio) among
    the scales that meet PROBE_GOALS (all of them failing: the one that meets most), and write it into the model's
    studio.json as its declared guidance. Returns {"guidance": chosen, "probes": [...]}."""
    model = Path(model)
    manifest = check_manifest(model, PIPELINE_CLASS, PIPELINE_FORMAT)
    if not manifest:
        raise InputError(f"{model} has no studio.json: select a guidance scale for a studio-mini folder")
    probes = []
    for guidance in grid:
        probes.append(probe(model, guidance, steps, device, progress=False))
        if progress:
            print(json.dumps(probes[-1]), flush=True)
    met = lambda result: sum(result[name] >= goal for name, goal in PROBE_GOALS.items())
    chosen = min(probes, key=lambda result: (-met(result), result["ghost_ratio"]))["guidance"]
    manifest = {**manifest, "guidance": chosen, "guidance_selection": "studio.training.mini.v2_selection"}
    write_file(model / MANIFEST_NAME, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    return {"guidance": chosen, "probes": probes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="studio-mini pipeline folders")
    parser.add_argument("--guidance", type=float, nargs="*", default=None,
                        help="guidance scales to try (default: each model's own)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--select", action="store_true",
                        help="choose each model's guidance scale over --guidance (default: the grid "
                             f"{', '.join(map(str, GUIDANCE_GRID))}) and write it to its studio.json")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for model in args.models:
        if args.select:
            chosen = select_guidance(model, tuple(args.guidance or GUIDANCE_GRID), args.steps)["guidance"]
            print(json.dumps({"model": model, "guidance": chosen}), flush=True)
            continue
        for guidance in args.guidance or [None]:
            print(json.dumps(probe(model, guidance, args.steps, progress=False)), flush=True)


if __name__ == "__main__":
    main()
