"""Write a diffusers Stable Diffusion 1.x pipeline as one original-layout (CompVis/A1111) `.safetensors` checkpoint.

The single-file form most model sites distribute: `model.diffusion_model.*` (UNet), `first_stage_model.*` (VAE) and
`cond_stage_model.transformer.*` (CLIP text encoder) in one file. The tests convert a random full-size pipeline with
this and load it back through diffusers' `from_single_file`, which runs the opposite mapping.
"""

from __future__ import annotations

import re
from pathlib import Path

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key(key: str, up_has_attention: list[bool]) -> str:
    def resnet(inner: str) -> str:
        head, _, rest = inner.partition(".")
        return f"{RESNET.get(head, head)}.{rest}"

    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for new, old in fixed.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if match := re.match(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.*)", key):
        block, kind, index, inner = int(match[1]), match[2], int(match[3]), match[4]
        layer = 3 * block + index + 1
        return f"input_blocks.{layer}.0.{resnet(inner)}" if kind == "resnets" else f"input_blocks.{layer}.1.{inner}"
    if match := re.match(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{3 * (int(match[1]) + 1)}.0.op.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d)\.(.*)", key):
        return f"middle_block.{2 * int(match[1])}.{resnet(match[2])}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{match[1]}"
    if match := re.match(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.*)", key):
        block, kind, index, inner = int(match[1]), match[2], int(match[3]), match[4]
        layer = 3 * block + index
        return f"output_blocks.{layer}.0.{resnet(inner)}" if kind == "resnets" else f"output_blocks.{layer}.1.{inner}"
    if match := re.match(r"up_blocks\.(\d)\.upsamplers\.0\.(.*)", key):
        block = int(match[1])
        return f"output_blocks.{3 * block + 2}.{2 if up_has_attention[block] else 1}.{match[2]}"
    raise KeyError(f"no original-layout name for UNet key {key}")


def _vae_key(key: str, levels: int) -> str:
    side, _, rest = key.partition(".")
    for new, old in {"conv_norm_out": "norm_out"}.items():
        if rest.startswith(new + "."):
            return f"{side}.{old}{rest[len(new):]}"
    if match := re.match(r"(down|up)_blocks\.(\d)\.resnets\.(\d)\.(.*)", rest):
        level = int(match[2]) if match[1] == "down" else levels - 1 - int(match[2])
        return f"{side}.{match[1]}.{level}.block.{match[3]}.{match[4].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"down_blocks\.(\d)\.downsamplers\.0\.(.*)", rest):
        return f"{side}.down.{match[1]}.downsample.{match[2]}"
    if match := re.match(r"up_blocks\.(\d)\.upsamplers\.0\.(.*)", rest):
        return f"{side}.up.{levels - 1 - int(match[1])}.upsample.{match[2]}"
    if match := re.match(r"mid_block\.resnets\.(\d)\.(.*)", rest):
        return f"{side}.mid.block_{int(match[1]) + 1}.{match[2].replace('conv_shortcut', 'nin_shortcut')}"
    if match := re.match(r"mid_block\.attentions\.0\.(.*)\.(weight|bias)", rest):
        return f"{side}.mid.attn_1.{VAE_ATTENTION[match[1]]}.{match[2]}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names


def write_single_file(pipeline, path: str | Path) -> Path:
    """Save a loaded SD 1.x (inpainting) pipeline's UNet, VAE and text encoder as one original-layout file."""
    from safetensors.torch import save_file

    unet, vae = pipeline.unet, pipeline.vae
    up_has_attention = ["CrossAttn" in name for name in unet.config.up_block_types]
    levels = len(vae.config.block_out_channels)
    tensors = {}
    for key, value in unet.state_dict().items():
        tensors["model.diffusion_model." + _unet_key(key, up_has_attention)] = value
    for key, value in vae.state_dict().items():
        name = _vae_key(key, levels)
        if ".mid.attn_1." in name and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        tensors["first_stage_model." + name] = value
    for key, value in pipeline.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key  # transformers 5 drops the wrapper name
        tensors["cond_stage_model.transformer." + key] = value
    path = Path(path)
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
    return path
