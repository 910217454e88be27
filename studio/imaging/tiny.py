"""Tiny random-weight Stable-Diffusion inpainting components, built locally without the hub.

They exist so the engine can be exercised end to end on a CPU in tests, and as the last-resort default when the
embedded studio-mini is missing. Their outputs are noise: everything that shows results made by them says so (see
`studio.imaging.engine.is_random_init`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

# Written into the saved pipeline's model_index.json, so anyone can tell a random pipeline from a trained one.
RANDOM_INIT_MARKER = "random_init.json"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2 / CLIP convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + shift)
            shift += 1
    return [chr(code) for code in codes]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Split `word` with CLIP's BPE rule: repeatedly merge the adjacent pair with the lowest merge rank."""
    parts = list(word[:-1]) + [word[-1] + WORD_END]
    while len(parts) > 1:
        pairs = [(parts[i], parts[i + 1]) for i in range(len(parts) - 1)]
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_clip_tokenizer(words: Iterable[str], folder: str | os.PathLike, *, model_max_length: int = 77):
    """Write a CLIP tokenizer to `folder` in which every word of `words` is exactly one token.

    The vocabulary holds the 256 byte characters (alone and word-final), one token per word, and the two special
    tokens, so any other text still tokenizes (byte by byte). Merges are added word by word at the end of the merge
    list; a merge appended later never changes how an earlier word splits, so each word stays one token.

    Args:
        words: lower-case words without spaces (e.g. the scene vocabulary).
        folder: where to write vocab.json, merges.txt and the tokenizer config.
        model_max_length: the text encoder's context length, in tokens (with the start and end tokens).

    Returns:
        The loaded `transformers.CLIPTokenizer`.
    """
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in alphabet + [char + WORD_END for char in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        if not word or word != word.strip().lower() or " " in word or not word.isascii():
            raise ValueError(f"tokenizer words must be lower-case ASCII without spaces, got {word!r}")
        parts = _bpe(word, ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = _bpe(word, ranks)
    for special in (BOS_TOKEN, EOS_TOKEN):
        vocab[special] = len(vocab)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{left} {right}" for left, right in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=model_max_length
    )
    tokenizer.save_pretrained(folder)
    return CLIPTokenizer.from_pretrained(folder)


def tiny_words() -> list[str]:
    """The tiny pipeline's word list: the scene vocabulary plus a few common ad words."""
    from studio.core import vocabulary

    words = list(vocabulary.COLOURS) + list(vocabulary.MATERIALS) + list(vocabulary.LIGHTING)
    words += list(vocabulary.LAYOUTS) + [w for w in vocabulary.PRODUCTS if w.isalpha()]
    words += "a an the on in of with and background scene photo product studio light table".split()
    return [w.lower() for w in words if w.isascii() and w.isalpha()]


def build_tiny_pipeline(folder: str | os.PathLike, seed: int = 0):
    """Build a tiny random-weight StableDiffusionInpaintPipeline and `save_pretrained` it into `folder`.

    Components: an offline CLIP tokenizer, a 2-layer CLIPTextModel (width 32), an AutoencoderKL with 8x spatial
    down-sampling and 4 latent channels, a 9-input-channel UNet2DConditionModel (4 noisy latents + 1 mask + 4 masked
    image latents) with native resolution 256 px, and a DDIM scheduler with Stable Diffusion's noise schedule. A few MB
    of safetensors.

    Returns:
        The pipeline (on CPU, fp32), also saved at `folder`.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    tokenizer = build_clip_tokenizer(tiny_words(), folder / "tokenizer")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=256,
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    (folder / RANDOM_INIT_MARKER).write_text(json.dumps({"random_init": True, "seed": seed}) + "\n")
    return pipeline


def build_tiny_lora(
    model_folder: str | os.PathLike, folder: str | os.PathLike, *, rank: int = 4, seed: int = 0
) -> Path:
    """Save a random LoRA for the UNet of the pipeline in `model_folder` into `folder` (diffusers LoRA format).

    Unlike a fresh training LoRA (whose up-projection starts at zero), both projections are random, so the LoRA visibly
    changes the output: tests and benchmarks use it to exercise `load_lora_weights` and LoRA scales.
    Returns the path of the written `pytorch_lora_weights.safetensors`.
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_folder, subfolder="unet")
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionInpaintPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return Path(folder) / "pytorch_lora_weights.safetensors"
