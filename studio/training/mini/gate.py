"""studio-mini's quality gate (`studio eval-mini`): the figures a shipped model must reach."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from studio.core.errors import InputError
from studio.training.mini.probes import (
    PROOF_WORD,
    colour_adherence,
    creative_latency,
    fit_material_classifier,
    lora_word_proof,
    material_adherence,
    prompt_model_adherence,
    vae_material_ceiling,
)
from studio.training.mini.recipe import MODEL_FOLDER


def evaluate_mini(model: str | os.PathLike = MODEL_FOLDER, steps: int = 30, guidance: float = 7.5, threads: int = 1,
                  colour_seeds: tuple[int, ...] = (0, 1, 2, 3), material_seeds: tuple[int, ...] = (0,),
                  latency_runs: int = 3, classifier_renders: int = 1800, progress: bool = True) -> dict:
    """The studio-mini quality gate (a benchmark, minutes on a CPU). Returns the measured figures and the goals.

    colour_adherence: 12 colours x colour_seeds on a neutral product (goal >= 0.9). prompt_model_colour_adherence:
    the same measure on prompts-mini's prompts for the reward-mini groups (no goal). material_adherence: 6 materials x
    12 colours x material_seeds, read by a classifier fitted on renders only (goal >= 0.7); material_ceiling: that
    classifier's accuracy on held-out renders; material_vae_ceiling: its accuracy on the VAE's reconstructions of
    renders (what any UNet on these latents can reach). lora_proof: `lora_word_proof`'s colour distances (0-255 RGB)
    before and after the LoRA. product_bit_exact: the product pixels of a 512x512 creative equal the
    input's. latency_s: median seconds per 512x512 creative (generate + upscale + paste back) at `steps` steps.
    steps and guidance default to what `studio generate` and the UI use (30, 7.5).
    peak_rss_mb: peak resident memory of this process before the LoRA proof, which trains.
    """
    import torch
    from diffusers import AutoPipelineForInpainting

    model = Path(model)
    if not (model / "model_index.json").is_file():
        raise InputError(f"{model} is not a diffusers pipeline folder; train one with `studio train-mini` first")
    torch.set_num_threads(threads)
    say = print if progress else (lambda *args, **kwargs: None)
    pipeline = AutoPipelineForInpainting.from_pretrained(model)
    size = pipeline.unet.config.sample_size * 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    report: dict = {"model": str(model), "native_size": size, "steps": steps, "guidance": guidance,
                    "threads": threads}

    say("colour adherence ...", flush=True)
    report.update(colour_adherence(pipeline, colour_seeds, size, steps, guidance))
    say("colour adherence on the prompt model's prompts ...", flush=True)
    report.update(prompt_model_adherence(pipeline, size=size, steps=steps, guidance=guidance))
    say("material classifier (renders only) ...", flush=True)
    classifier, report["material_ceiling"] = fit_material_classifier(n=classifier_renders, size=size)
    say("material adherence ...", flush=True)
    report["material_adherence"] = material_adherence(pipeline, classifier, material_seeds, size, steps,
                                                      guidance=guidance)["material_adherence"]

    report["material_vae_ceiling"] = vae_material_ceiling(pipeline.vae, classifier, size=size)
    say("512x512 creatives ...", flush=True)
    report.update(creative_latency(str(model), steps, guidance, latency_runs))
    exact = report["product_bit_exact"]
    say("LoRA proof ...", flush=True)  # last: it trains, which would count in the generation's peak memory
    with tempfile.TemporaryDirectory() as scratch:
        proof = lora_word_proof(model, scratch)
    report["lora_proof"] = {"word": PROOF_WORD, "distance_before": proof["distance_before"],
                            "distance_after": proof["distance_after"]}
    report["goals"] = {"colour_adherence": 0.9, "material_adherence": 0.7, "latency_s": 2.0, "peak_rss_mb": 1536}
    report["passed"] = bool(report["colour_adherence"] >= 0.9 and report["material_adherence"] >= 0.7 and exact
                            and report["latency_s"] <= 2.0 and report["peak_rss_mb"] <= 1536)
    return report
