"""studio-mini: the embedded Stable-Diffusion-architecture inpainting model, trained from scratch on the renderer.

The recipe (`train_mini`, the `studio train-mini` command, in ``run``) runs in resumable stages under one run folder:
1. data  -- render a fixed, seeded set of 64x64 product scenes (``data``; one held-out colour x material pair is never
            shown);
2. vae   -- train an AutoencoderKL until it reconstructs held-out renders at the PSNR goal, then freeze it with its
            latent scaling factor (``vae``);
3. cache -- encode every scene once with the frozen VAE and text encoder (`studio.training.trainer.encode_dataset`);
4. unet  -- train the 9-channel UNet from scratch with `studio.training.trainer.InpaintingTrainer`, probing colour and
            material adherence at every checkpoint (``probes``) and keeping the best (EMA) pipeline;
5. export -- copy the best pipeline to the model folder (studio/models/studio-mini by default).

`evaluate_mini` (``gate``) is the quality gate (`studio eval-mini`); the knobs and vocabulary live in ``recipe``.
"""

from studio.training.mini.data import SceneArrays
from studio.training.mini.gate import evaluate_mini
from studio.training.mini.probes import (
    PROOF_WORD,
    colour_adherence,
    fit_material_classifier,
    lora_word_proof,
    material_adherence,
    nearest_colour,
    neutral_scene,
    paint_proof_word,
    prompt_model_adherence,
    texture_features,
    vae_material_ceiling,
)
from studio.training.mini.recipe import (
    HELD_OUT_PAIRS,
    MODEL_FOLDER,
    PROBE_COLOURS,
    MiniRecipe,
    build_components,
    mini_words,
    null_captions,
    prompt_style_caption,
)
from studio.training.mini.run import export_model, train_mini
from studio.training.mini.vae import latent_scaling_factor, psnr, reconstruct, train_vae

__all__ = [
    "HELD_OUT_PAIRS", "MODEL_FOLDER", "PROBE_COLOURS", "PROOF_WORD", "MiniRecipe", "SceneArrays", "build_components",
    "colour_adherence", "evaluate_mini", "export_model", "fit_material_classifier", "latent_scaling_factor",
    "lora_word_proof", "material_adherence", "mini_words", "nearest_colour", "neutral_scene", "null_captions",
    "paint_proof_word", "prompt_model_adherence", "prompt_style_caption", "psnr", "reconstruct", "texture_features",
    "train_mini", "train_vae", "vae_material_ceiling",
]
