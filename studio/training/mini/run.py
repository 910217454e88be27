"""studio-mini: the embedded Stable-Diffusion-architecture inpainting model, trained from scratch on the renderer.

The recipe (`train_mini`, the `studio train-mini` command) runs in resumable stages under one run folder:
1. data  -- render a fixed, seeded set of 64x64 product scenes (one held-out colour x material pair is never shown);
2. vae   -- train an AutoencoderKL (4x down-sampling, 4 latent channels) until it reconstructs held-out renders at the
            PSNR goal, then freeze it and set its scaling factor to 1 / std of the latents;
3. cache -- encode every scene once with the frozen VAE and the frozen random-init CLIP text encoder
            (`studio.training.trainer.encode_dataset`): UNet steps then pay for the UNet only;
4. unet  -- train the 9-channel UNet2DConditionModel from scratch with `studio.training.trainer.InpaintingTrainer`, probing
            colour and material adherence at every checkpoint and keeping the best (EMA) pipeline;
5. export -- copy the best pipeline to the model folder (studio/models/studio-mini by default).

`evaluate_mini` is the quality gate (`studio eval-mini`): colour and material adherence, bit-exact product pixels,
latency and peak memory.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from studio.core.artefact import PIPELINE_CLASS, PIPELINE_FORMAT, write_manifest
from studio.core.atomic import staged_folder, write_file
from studio.core.errors import InputError
from studio.training.mini.data import SceneArrays
from studio.training.mini.probes import (
    colour_adherence,
    fit_material_classifier,
    material_adherence,
)
from studio.training.mini.recipe import (
    MODEL_FOLDER,
    PROBE_COLOURS,
    MiniRecipe,
    build_components,
    null_captions,
)
from studio.training.mini.vae import latent_scaling_factor, save_atomically, train_vae


def train_mini(run: str | os.PathLike = "runs/studio-mini", export: str | os.PathLike | None = MODEL_FOLDER,
               recipe: MiniRecipe | None = None, threads: int = 1, progress: bool = True) -> dict:
    """Run (or resume) the whole studio-mini recipe; every stage skips what the run folder already holds.

    run: the run folder (data, VAE checkpoints, latent cache, UNet checkpoints, probes.jsonl, best/).
    export: where the best pipeline is copied at the end (None: do not export). Returns the run's report.
    threads: torch CPU threads; 1 by default because on a shared 2-core machine one thread trains several times
    faster than two that wait for each other.
    """
    import torch

    from studio.training.trainer import (
        Components,
        EncodedData,
        InpaintingTrainer,
        TrainConfig,
        encode_dataset,
    )

    recipe = recipe or MiniRecipe()
    torch.set_num_threads(threads)
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    recipe_path = run / "recipe.json"
    # Everything but the UNet step budget must match: a resumed run may be given more steps.
    settings = json.loads(json.dumps({**asdict(recipe), "unet_steps": None}))
    if recipe_path.is_file() and {**json.loads(recipe_path.read_text()), "unet_steps": None} != settings:
        raise InputError(f"{run} was started with another recipe ({recipe_path}); resume with the same settings or "
                         "use a new --run folder")
    recipe_path.write_text(json.dumps(asdict(recipe), indent=1) + "\n")
    log = _Log(run / "log.jsonl", echo=progress)

    # 1. Data: a fixed seeded set of renders, and held-out renders for the VAE gate.
    data_path = run / "scenes.safetensors"
    if not data_path.is_file():
        SceneArrays.render(recipe.n_train, recipe.resolution, recipe.seed, set(recipe.held_out), progress,
                           recipe.prompt_style_captions).save(data_path)
        SceneArrays.render(recipe.n_heldout, recipe.resolution, recipe.seed + 1, set(recipe.held_out),
                           progress).save(run / "heldout.safetensors")
    scenes, heldout = SceneArrays.load(data_path), SceneArrays.load(run / "heldout.safetensors")
    pipeline = build_components(run / "components", recipe)

    # 2. VAE, gated on held-out PSNR, then frozen with its latent scaling factor.
    from diffusers import AutoencoderKL

    vae_final = run / "vae" / "final"
    if not vae_final.is_dir():
        state = train_vae(pipeline.vae, scenes.images, heldout.images, recipe, run / "vae", progress)
        scale = latent_scaling_factor(pipeline.vae, scenes.images[:1024])
        pipeline.vae.register_to_config(scaling_factor=scale)
        save_atomically(pipeline.vae, vae_final)
        log.write(stage="vae", step=state["step"], psnr=state["psnr"][-1][1], scaling_factor=scale)
    pipeline.vae = AutoencoderKL.from_pretrained(vae_final)
    pipeline.register_modules(vae=pipeline.vae)

    # 3. Encode every scene once (frozen VAE + frozen random-init text encoder).
    cache_path = run / "encoded.safetensors"
    config = TrainConfig(
        steps=recipe.unet_steps, batch_size=recipe.unet_batch, learning_rate=recipe.unet_lr,
        warmup_steps=recipe.unet_warmup, caption_dropout=recipe.caption_dropout, snr_gamma=recipe.unet_snr_gamma,
        null_captions=null_captions(), ema_decay=recipe.unet_ema_decay, seed=recipe.seed,
        checkpoint_every=recipe.checkpoint_every, keep_checkpoints=2,
        mask_modes={"product": 0.8, "outpaint": 0.1, "random": 0.1})
    if not cache_path.is_file():
        encode_dataset(Components.from_pipeline(pipeline), scenes, config, progress=progress).save(cache_path)
    encoded = EncodedData.load(cache_path)

    # 4. The UNet, from scratch, probing colour and material adherence at every checkpoint (EMA weights) and keeping
    # the best pipeline by their mean; a tie goes to the later step.
    best_path = run / "best"
    best = _read_best(run)
    classifier = None

    def probe(trainer, step):
        nonlocal best, classifier
        started = time.perf_counter()
        if classifier is None:
            classifier = fit_material_classifier(n=600, size=recipe.resolution, seed=recipe.seed)[0]
        with trainer.averaged_weights() as unet:
            unet.eval()
            result = colour_adherence(pipeline, seeds=(0, 1), size=recipe.resolution, steps=recipe.inference_steps)
            result.update(material_adherence(pipeline, classifier, seeds=(0,), size=recipe.resolution,
                                             steps=recipe.inference_steps, colours=PROBE_COLOURS))
            result["score"] = (result["colour_adherence"] + result["material_adherence"]) / 2
            unet.train()
            loss = float(np.mean(trainer.losses_[-recipe.checkpoint_every:])) if trainer.losses_ else None
            log.write(stage="unet", step=step, loss=loss, probe_seconds=round(time.perf_counter() - started, 1),
                      **result)
            if best is None or result["score"] >= best.get("score", -1.0):
                best = {"step": step, **result}
                save_atomically(pipeline, best_path)
                write_file(run / "best.json", lambda tmp: tmp.write_text(json.dumps(best, indent=1) + "\n"))

    trainer = InpaintingTrainer(pipeline, config)
    trainer.fit(encoded, run / "unet", resume=True, callback=probe, progress=progress)

    # 5. Export the best pipeline as the shipped model folder.
    if export is not None and best_path.is_dir():
        export_model(best_path, export)
        log.write(stage="export", folder=str(export), **(best or {}))
    return {"run": str(run), "best": best}


def _read_best(run: Path) -> dict | None:
    path = run / "best.json"
    return json.loads(path.read_text()) if path.is_file() and (run / "best").is_dir() else None


def export_model(source: str | os.PathLike, folder: str | os.PathLike = MODEL_FOLDER) -> Path:
    """Copy a studio-mini pipeline folder to `folder` (atomically), dropping anything but configs, tokenizer files
    and safetensors weights."""
    source, folder = Path(source), Path(folder)
    if not (source / "model_index.json").is_file():
        raise InputError(f"{source} is not a diffusers pipeline folder (no model_index.json)")
    with staged_folder(folder) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl", "*.tmp"))
        write_manifest(staging, PIPELINE_CLASS, PIPELINE_FORMAT, name="studio-mini", vocabulary="closed")
    return folder


class _Log:
    """Append-only JSON-lines log of a run (one record per probe or stage)."""

    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo

    def write(self, **record) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.echo:
            print(json.dumps(record), flush=True)


