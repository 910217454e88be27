"""The history adapter of studio-mini (DiFashion-style personal conditions): train a `PersonalConditioner`.

The generator stays frozen; only the adapter learns (IP-Adapter style), so the text-only model is the shipped one,
bit for bit. Training data come from the renderer:

1. a pool of seeded scenes with their attributes, encoded once by the frozen VAE (`encode_dataset`); each scene's
   caption names only part of its attributes (all of them, colour and material, the colour, or the product alone),
   so that what the caption leaves open is left to the history;
2. every training example's *history* is `history_size` other scenes of the pool that share the example's taste:
   each history scene shares its lighting, colour and material with the example with the probabilities in
   `PersonalRecipe.match` (a group's clicks resemble what it clicks next); their mean latent is the pooled history;
3. the text, the category and the history are dropped independently (`*_dropout`), so each condition can be left
   out at sampling time and has its own guidance scale.

`python -m studio.training.personal --out DIR [--steps N]` runs it (2000 steps: 341 s on the 2-core CPU, one
thread); `train_personal` is the function. Its default recipe made the adapter shipped in
`studio/models/studio-mini-personal/`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from studio.core.atomic import write_file
from studio.core.errors import InputError
from studio.core.vocabulary import CATEGORIES
from studio.imaging.personal import CATEGORY_NAMES

CAPTION_KINDS = ("full", "colour-material", "colour", "product")


@dataclass
class PersonalRecipe:
    """Every knob of the history-adapter recipe."""

    n_scenes: int = 2000
    resolution: int = 64
    history_size: int = 8
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    text_dropout: float = 0.1
    category_dropout: float = 0.15
    history_dropout: float = 0.15
    caption_kinds: dict[str, float] = field(default_factory=lambda: {kind: 0.25 for kind in CAPTION_KINDS})
    # Probability that a history scene shares each attribute with the example it conditions. Colour is shared less
    # often than the rest so the history shifts a backdrop's tone without overriding the prompt's colour word (0.5
    # personalised more and lost 16 points of colour adherence; 0.0 kept the colour and hardly personalised).
    match: dict[str, float] = field(default_factory=lambda: {"lighting": 0.9, "colour": 0.25, "material": 0.5})
    hidden: int = 64
    seed: int = 0

    def check(self) -> None:
        for name in ("text_dropout", "category_dropout", "history_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.steps < 1 or self.batch_size < 1 or self.history_size < 1 or self.n_scenes < 2:
            raise InputError("steps, batch_size and history_size must be >= 1 and n_scenes >= 2")


def caption(attributes: dict, kind: str) -> str:
    """A caption naming part of a scene's attributes (see CAPTION_KINDS); "full" is the renderer's own."""
    product, colour, material = attributes["product"], attributes["colour"], attributes["material"]
    if kind == "colour-material":
        return f"a {product} on a {colour} {material} backdrop"
    if kind == "colour":
        return f"a {product} on a {colour} backdrop"
    if kind == "product":
        return f"a {product}"
    raise InputError(f"unknown caption kind {kind!r}")


def draw_dropout(rng: np.random.Generator, batch: int, recipe: PersonalRecipe) -> dict[str, np.ndarray]:
    """Independent condition dropout for one batch: {"text", "category", "history"} -> (batch,) bool, True = dropped."""
    return {name: rng.uniform(size=batch) < getattr(recipe, f"{name}_dropout")
            for name in ("text", "category", "history")}


def draw_histories(attributes: list[dict], targets: np.ndarray, recipe: PersonalRecipe,
                   rng: np.random.Generator) -> np.ndarray:
    """(len(targets), history_size) pool indices: each history scene shares each attribute of its target with the
    probability in `recipe.match` (drawn uniformly among the pool scenes that fit; never the target itself)."""
    keys = tuple(recipe.match)
    masks = {key: {} for key in keys}
    for key in keys:
        values = np.array([scene[key] for scene in attributes])
        for value in np.unique(values):
            masks[key][value] = values == value
    out = np.empty((len(targets), recipe.history_size), dtype=np.int64)
    for row, target in enumerate(targets):
        for column in range(recipe.history_size):
            allowed = np.ones(len(attributes), dtype=bool)
            allowed[int(target)] = False
            for key in keys:
                if rng.uniform() < recipe.match[key]:
                    narrowed = allowed & masks[key][attributes[target][key]]
                    if narrowed.any():
                        allowed = narrowed
            out[row, column] = rng.choice(np.flatnonzero(allowed))
    return out


def train_personal(model: str | os.PathLike | None = None, out: str | os.PathLike = "runs/personal",
                   recipe: PersonalRecipe | None = None, progress: bool = True, threads: int = 1) -> dict:
    """Train a PersonalConditioner for the (frozen) studio-mini pipeline at `model`; save it to `out`/adapter.

    Returns the run's report (losses per 50 steps, seconds). Writes out/encoded.safetensors and out/pool.json (the
    encoded pool), out/adapter and out/report.json. A run folder that already holds an adapter resumes from it up to
    `recipe.steps` in all (the optimiser's moments start afresh; batches continue the step-seeded sequence).
    """
    import torch
    from tqdm.auto import tqdm

    from studio.imaging.personal import load_conditioner, new_conditioner
    from studio.training.mini.data import SceneArrays
    from studio.training.mini.recipe import MODEL_FOLDER
    from studio.training.trainer import (
        Components,
        EncodedData,
        TrainConfig,
        encode_dataset,
        inpainting_loss,
        load_pipeline,
    )

    recipe = recipe or PersonalRecipe()
    recipe.check()
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipeline = load_pipeline(model or MODEL_FOLDER)
    unet = pipeline.unet.eval().requires_grad_(False)
    components = Components.from_pipeline(pipeline)

    # 1. The pool: scenes, partial captions, and their encodings (once per run folder)
    rng = np.random.default_rng([recipe.seed, 16])
    data_path, meta_path = out / "encoded.safetensors", out / "pool.json"
    if not data_path.is_file():
        scenes = SceneArrays.render(recipe.n_scenes, recipe.resolution, recipe.seed, progress=progress)
        kinds, weights = zip(*recipe.caption_kinds.items())
        weights = np.asarray(weights, float) / sum(weights)
        scenes.captions = [text if kind == "full" else caption(a, kind) for text, a, kind in
                           zip(scenes.captions, scenes.attributes, rng.choice(kinds, size=len(scenes), p=weights))]
        config = TrainConfig(resolution=recipe.resolution, seed=recipe.seed, mask_modes={"product": 1.0})
        encode_dataset(components, scenes, config, progress=progress).save(data_path)
        write_file(meta_path, lambda tmp: tmp.write_text(json.dumps({"attributes": scenes.attributes,
                                                                     "captions": scenes.captions})))
    data = EncodedData.load(data_path)
    pool = json.loads(meta_path.read_text())
    attributes = pool["attributes"]
    scale = float(pipeline.vae.config.scaling_factor)
    categories = torch.tensor([CATEGORY_NAMES.index(CATEGORIES[a["product"]]) + 1 for a in attributes])

    # 2. The adapter, hooked into the frozen UNet
    conditioner = new_conditioner(unet, hidden=recipe.hidden)
    report = {"recipe": asdict(recipe), "losses": [], "steps_done": 0, "seconds": 0.0}
    if (out / "adapter").is_dir() and (out / "report.json").is_file():
        report = {**json.loads((out / "report.json").read_text()), "recipe": asdict(recipe)}
        conditioner.load_state_dict(load_conditioner(out / "adapter").state_dict())
    conditioner.train()
    handles = conditioner.hook(unet)
    optimiser = torch.optim.AdamW(conditioner.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(recipe.seed + report["steps_done"])
    losses, first = [], report["steps_done"]
    try:
        for step in tqdm(range(first, recipe.steps), desc="personal", disable=not progress):
            batch_rng = np.random.default_rng([recipe.seed, 17, step])
            targets = batch_rng.integers(len(data), size=recipe.batch_size)
            history = torch.from_numpy(draw_histories(attributes, targets, recipe, batch_rng))
            dropped = {name: torch.from_numpy(mask) for name, mask in draw_dropout(batch_rng, recipe.batch_size,
                                                                                   recipe).items()}
            index = torch.from_numpy(targets)
            latents = (data.latent_mean[index] + data.latent_std[index]
                       * torch.randn(data.latent_std[index].shape, generator=generator)) * scale
            masked = (data.masked_mean[index] + data.masked_std[index]
                      * torch.randn(data.masked_std[index].shape, generator=generator)) * scale
            embeds = data.prompt_embeds[index].clone()
            embeds[dropped["text"]] = data.empty_embeds[0].to(embeds.dtype)
            pooled = data.latent_mean[history].mean(dim=1) * scale
            category = torch.where(dropped["category"], 0, categories[index])
            with conditioner.conditions(history=pooled, has_history=(~dropped["history"]).float(), category=category):
                loss = inpainting_loss(unet, components.noise_scheduler, latents, data.masks[index], masked, embeds,
                                       generator)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if (step + 1) % 50 == 0 or step + 1 == recipe.steps:
                report["losses"].append([step + 1, float(np.mean(losses[-50:]))])
            if (step + 1) % 250 == 0 and step + 1 < recipe.steps:  # a killed run resumes from here
                _save(conditioner, out, {**report, "steps_done": step + 1}, started)
                conditioner.train()
    finally:
        for handle in handles:
            handle.remove()
    return _save(conditioner, out, {**report, "steps_done": max(first, recipe.steps)}, started)


def _save(conditioner, out: Path, report: dict, started: float) -> dict:
    """Write the adapter, then the report that names its step (the pair is what a resumed run reads)."""
    conditioner.eval().save_pretrained(out / "adapter")
    report = {**report, "adapter": str(out / "adapter"),
              "seconds": round(report.get("seconds", 0.0) + time.perf_counter() - started, 1)}
    write_file(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1) + "\n"))
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m studio.training.personal",
                                     description="train studio-mini's history adapter (PersonalConditioner)")
    parser.add_argument("--model", default=None, help="the studio-mini pipeline folder (default: the shipped one)")
    parser.add_argument("--out", required=True, help="run folder (the adapter is written to OUT/adapter)")
    parser.add_argument("--steps", type=int, default=PersonalRecipe.steps)
    parser.add_argument("--scenes", type=int, default=PersonalRecipe.n_scenes)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = train_personal(args.model, args.out, PersonalRecipe(steps=args.steps, n_scenes=args.scenes,
                                                                 seed=args.seed))
    print(json.dumps({"adapter": report["adapter"], "seconds": report["seconds"],
                      "loss_first_last": [report["losses"][0], report["losses"][-1]]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
