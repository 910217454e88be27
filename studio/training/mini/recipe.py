"""studio-mini's recipe: every knob, the caption vocabulary and the untrained pipeline it starts from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prompts.data import (
    BASE_NEGATIVE,
    PROMPT_TEMPLATES,
    PROMPT_WORDS,
    TONE_NEGATIVE,
    TONES,
    all_mood_words,
    negative_prompt,
)
from studio.core.errors import InputError
from studio.core.vocabulary import COLOURS, LAYOUTS, LIGHTING, MATERIALS, PRODUCTS
from studio.sim.renderer import (
    CAPTION_WORDS,
)

MODEL_FOLDER = Path(__file__).parents[2] / "models" / "studio-mini"
# The training probe's material check uses these colours only (a quarter of the gate's cases).
PROBE_COLOURS: tuple[str, ...] = ("red", "teal", "white", "black")
# Never rendered for training: the LoRA proof teaches it afterwards.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (("pink", "wood"),)


@dataclass
class MiniRecipe:
    """Every knob of the studio-mini recipe. Sizes in pixels, learning rates per optimiser step."""

    resolution: int = 64
    n_train: int = 12_000
    n_heldout: int = 256
    seed: int = 0
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_psnr_goal: float = 30.0
    unet_steps: int = 20_000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    unet_warmup: int = 200
    unet_ema_decay: float = 0.999
    # No min-SNR weighting: on a zero-terminal-SNR schedule it would give the noisiest steps, where the global colour
    # is decided, almost no weight.
    unet_snr_gamma: float | None = None
    caption_dropout: float = 0.1
    # Share of training captions written in the prompt model's style (its templates, mood words, commas), so the
    # prompts `studio campaign` sends are in-distribution; dropped captions become "" or one of its negative prompts.
    prompt_style_captions: float = 0.5
    checkpoint_every: int = 500
    text_width: int = 64
    text_length: int = 32
    unet_channels: tuple[int, ...] = (32, 64, 128)
    # Cross-attention per UNet level: none at the full latent size, where it costs most (as SD leaves it out of its
    # lowest-resolution level).
    unet_attention: tuple[bool, ...] = (False, True, True)
    # Also pool the caption into the time embedding (diffusers' addition_embed_type="text", as in DeepFloyd IF), so
    # every ResNet block is scaled and shifted by it: global attributes such as colour are learnt far sooner.
    unet_pooled_text: bool = True
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4  # StableDiffusionInpaintPipeline accepts 9-channel (4 + 1 + 4) UNets only
    inference_steps: int = 20
    held_out: tuple[tuple[str, str], ...] = field(default_factory=lambda: HELD_OUT_PAIRS)



def mini_words() -> list[str]:
    """Every word a studio-mini caption can hold: the scene vocabulary, the caption grammar's words and every word
    the prompt model writes (prompts and negative prompts)."""
    words = [*COLOURS, *MATERIALS, *LIGHTING, *LAYOUTS, *PRODUCTS, *CAPTION_WORDS, *PROMPT_WORDS, *all_mood_words(),
             *BASE_NEGATIVE, *(word for extra in TONE_NEGATIVE.values() for word in extra)]
    return list(dict.fromkeys(words))


def null_captions() -> tuple[str, ...]:
    """What a dropped training caption becomes: "" and each negative prompt the prompt model writes."""
    return ("", *dict.fromkeys(negative_prompt(tone) for tone in TONES))


def prompt_style_caption(attributes: dict, rng: np.random.Generator) -> str:
    """A caption for a scene's attributes in the prompt model's style: one of its templates, random mood words."""
    moods = all_mood_words()
    mood, mood2 = (str(word) for word in rng.choice(moods, size=2, replace=False))
    template = PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))]
    return template.format(**{key: attributes[key] for key in ("colour", "material", "lighting", "layout")},
                           mood=mood, mood2=mood2)


def build_components(folder: str | os.PathLike, recipe: MiniRecipe):
    """Fresh, seeded components: word-level CLIP tokenizer (written to folder/tokenizer), CLIP text encoder,
    AutoencoderKL, 9-channel UNet and the inference scheduler. Returns a StableDiffusionInpaintPipeline."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.imaging.tiny import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(mini_words(), Path(folder) / "tokenizer", model_max_length=recipe.text_length)
    torch.manual_seed(recipe.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.text_width, intermediate_size=2 * recipe.text_width,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=recipe.text_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    levels = len(recipe.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=recipe.vae_channels, layers_per_block=1,
        latent_channels=recipe.latent_channels, norm_num_groups=16, sample_size=recipe.resolution,
        mid_block_add_attention=False)
    latent_size = recipe.resolution // 2 ** (levels - 1)
    if len(recipe.unet_attention) != len(recipe.unet_channels):
        raise InputError("unet_attention needs one flag per UNet level (unet_channels)")
    pooled = dict(addition_embed_type="text", addition_embed_type_num_heads=4,
                  resnet_time_scale_shift="scale_shift") if recipe.unet_pooled_text else {}
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=2 * recipe.latent_channels + 1, out_channels=recipe.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in recipe.unet_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(recipe.unet_attention)),
        block_out_channels=recipe.unet_channels, layers_per_block=1, cross_attention_dim=recipe.text_width,
        attention_head_dim=8, norm_num_groups=16, **pooled)
    # v-prediction on a zero-terminal-SNR schedule: at the first inference step the model sees pure noise, as in
    # training, so the global colour comes from the prompt rather than from leaked low frequencies.
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


