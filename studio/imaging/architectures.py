"""Real inpainting architectures at their published sizes, built locally with random weights (no hub).

Users bring real weights with `--model`; this module lets the studio check that path without them: the tests and
`benchmarks/real_models.py` build each architecture from its published configuration values, `save_pretrained` it
into a folder and load it back through the studio's own `--model FOLDER` path. Outputs are noise (the folder carries
the random-init marker); shapes, memory and speed are the real ones.

    python -m studio.imaging.architectures sdxl-inpaint /tmp/sdxl      # build one into a folder

FLUX Fill's transformer keeps its real widths (3072 hidden, 24 heads of 128, joint attention 4096) but, unless
`full_depth=True`, only 1 double-stream and 1 single-stream block of its 19 + 38, and its T5-XXL text encoder keeps
its width (4096) with 1 of 24 layers: at full depth it needs ~48 GB in fp32, more than the CI machine has.
The CLIP tokenizers are the studio's offline word-level ones (the real 49,408-entry embedding tables are kept).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from studio.imaging.tiny import RANDOM_INIT_MARKER, build_clip_tokenizer, tiny_words

CLIP_VOCAB = 49_408  # the CLIP BPE vocabulary size every Stable Diffusion text encoder embeds
T5_VOCAB = 32_128


@dataclass(frozen=True)
class Architecture:
    """One real inpainting model family: how to build it and how to run the real weights well."""

    name: str
    hub_id: str  # the public model id whose architecture this is
    pipeline: str  # the diffusers pipeline class
    native_size: int  # the side length in pixels it was trained at
    steps: int  # sampler steps its authors recommend
    guidance: float
    fp16_memory_gb: float  # weights alone in fp16 (the GPU needs this much plus activations)
    reduced: str = ""  # what the CPU build leaves out, if anything


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture("sd15-inpaint", "stable-diffusion-v1-5/stable-diffusion-inpainting",
                     "StableDiffusionInpaintPipeline", 512, 30, 7.5, 2.1),
        Architecture("sd2-inpaint", "stabilityai/stable-diffusion-2-inpainting",
                     "StableDiffusionInpaintPipeline", 512, 30, 7.5, 2.6),
        Architecture("sdxl-inpaint", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
                     "StableDiffusionXLInpaintPipeline", 1024, 30, 8.0, 6.9),
        Architecture("flux-fill", "black-forest-labs/FLUX.1-Fill-dev", "FluxFillPipeline", 1024, 50, 30.0, 33.5,
                     reduced="transformer 1+1 of 19+38 blocks, T5-XXL 1 of 24 layers (real widths)"),
    )
}


def _clip_text(hidden: int, layers: int, heads: int, intermediate: int, act: str, *, tokenizer, projection=None):
    """A CLIP text encoder at a published size (ViT-L/14: 768 wide; OpenCLIP ViT-H: 1024; ViT-bigG: 1280)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _sd_vae(*, latent_channels: int = 4, scaling_factor: float = 0.18215, sample_size: int = 512, **extra):
    """The KL autoencoder of Stable Diffusion (8x down-sampling, 128-256-512-512 channels, 2 blocks per level)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=latent_channels, sample_size=sample_size, scaling_factor=scaling_factor, **extra,
    )


def _scheduler(name: str):
    """The architecture's published scheduler (built outside any device context: schedulers keep CPU tensors)."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler

    if name == "flux-fill":
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    if name == "sdxl-inpaint":
        return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                      steps_offset=1, timestep_spacing="leading")
    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         set_alpha_to_one=False, steps_offset=1)


def _build_sd(tokenizer, *, text_width: int, text_layers: int, text_heads: int, act: str, head_dims, linear: bool):
    """SD 1.x (ViT-L text, 8 heads) or SD 2.x (OpenCLIP ViT-H text, 64-dim heads) inpainting components."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text_width, attention_head_dim=head_dims, use_linear_projection=linear,
    )
    text_encoder = _clip_text(text_width, text_layers, text_heads, text_width * 4, act, tokenizer=tokenizer)
    return {"unet": unet, "text_encoder": text_encoder, "vae": _sd_vae(), "tokenizer": tokenizer,
            "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def _build_sdxl(tokenizer):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=9, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,  # 6 size/crop ids x 256 + the 1280-wide pooled text embedding
    )
    return {
        "unet": unet, "tokenizer": tokenizer, "tokenizer_2": tokenizer,
        "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", tokenizer=tokenizer),
        "text_encoder_2": _clip_text(1280, 32, 20, 5120, "gelu", tokenizer=tokenizer, projection=1280),
        "vae": _sd_vae(scaling_factor=0.13025, sample_size=1024, force_upcast=True),
        "requires_aesthetics_score": False, "force_zeros_for_empty_prompt": True,
    }


def _t5_tokenizer(folder: Path):
    """An offline word-level tokenizer in T5's role (pad 0, end 1, unknown 2), 512 tokens long."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in tiny_words():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=512)
    tokenizer.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(folder)


def _build_flux(tokenizer, t5_tokenizer, *, full_depth: bool):
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=384, out_channels=64,  # 64 packed latents + 320 packed mask/masked-image channels
        num_layers=19 if full_depth else 1, num_single_layers=38 if full_depth else 1,
        attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
        guidance_embeds=True, axes_dims_rope=(16, 56, 56),
    )
    t5 = T5EncoderModel(T5Config(
        vocab_size=T5_VOCAB, d_model=4096, d_kv=64, d_ff=10240, num_layers=24 if full_depth else 1, num_heads=64,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
    ))
    vae = _sd_vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, sample_size=1024,
                  use_quant_conv=False, use_post_quant_conv=False)
    return {"transformer": transformer, "vae": vae, "tokenizer": tokenizer,
            "tokenizer_2": t5_tokenizer, "text_encoder": _clip_text(768, 12, 12, 3072, "quick_gelu", tokenizer=tokenizer),
            "text_encoder_2": t5}


def build_random_pipeline(name: str, folder: str | os.PathLike, *, full_depth: bool = False, seed: int = 0,
                          device: str = "cpu", dtype=None, save: bool = True):
    """Build architecture `name` (a key of ARCHITECTURES) with random weights and `save_pretrained` it to `folder`.

    Args:
        folder: where the tokenizers (always) and, with `save`, the whole pipeline are written.
        full_depth: FLUX Fill with all its blocks and T5 layers (a GPU's worth of memory); ignored for the others.
        device, dtype: where the weights live and in which precision (fp16 halves the folder; the studio loads it in
            whatever precision it is asked for). Weights are initialised in fp32 on `device`, then cast.
        save: False keeps the pipeline in memory only (the GPU benchmark at full depth).

    Returns:
        The diffusers pipeline.
    """
    import diffusers
    import torch

    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    folder = Path(folder)
    tokenizer = build_clip_tokenizer(tiny_words(), folder / "tokenizer")
    torch.manual_seed(seed)
    with torch.device(device):
        if name == "sd15-inpaint":
            parts = _build_sd(tokenizer, text_width=768, text_layers=12, text_heads=12, act="quick_gelu",
                              head_dims=8, linear=False)
        elif name == "sd2-inpaint":
            parts = _build_sd(tokenizer, text_width=1024, text_layers=23, text_heads=16, act="gelu",
                              head_dims=(5, 10, 20, 20), linear=True)
        elif name == "sdxl-inpaint":
            parts = _build_sdxl(tokenizer)
        else:
            parts = _build_flux(tokenizer, _t5_tokenizer(folder / "tokenizer_2"), full_depth=full_depth)
    if dtype is not None:
        for part in parts.values():
            if isinstance(part, torch.nn.Module):
                part.to(dtype)
    pipeline = getattr(diffusers, arch.pipeline)(scheduler=_scheduler(name), **parts)
    if save:
        # 1 GB shards: loading then holds one shard at a time beside the weights, not a whole 5 GB UNet file
        pipeline.save_pretrained(folder, safe_serialization=True, max_shard_size="1GB")
        marker = {"random_init": True, "seed": seed, "architecture": name, "full_depth": full_depth or not arch.reduced}
        (folder / RANDOM_INIT_MARKER).write_text(json.dumps(marker) + "\n")
    return pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a real inpainting architecture with random weights.")
    parser.add_argument("architecture", choices=sorted(ARCHITECTURES))
    parser.add_argument("folder")
    parser.add_argument("--full-depth", action="store_true", help="FLUX Fill with all 19+38 blocks")
    parser.add_argument("--fp32", action="store_true", help="save fp32 weights (default fp16: half the disk)")
    args = parser.parse_args(argv)
    import torch

    from studio.core.quiet import quiet_libraries

    quiet_libraries()
    build_random_pipeline(args.architecture, args.folder, full_depth=args.full_depth,
                          dtype=None if args.fp32 else torch.float16)
    print(args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
