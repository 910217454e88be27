"""Personal conditions (DiFashion-style): paint for a group's taste from the creatives it clicked.

A *history* is a set of creatives a group clicked. It conditions the denoiser through a *history adapter*:

- studio-mini: a `PersonalConditioner` (its own artefact folder). The history's VAE latents are averaged (the pooled
  history latent) and enter the UNet as extra, zero-initialised input channels of its first convolution (a bias-free
  convolution added to `conv_in`'s output, which is the same as widening `conv_in`) and, pooled over space, through a
  small zero-initialised MLP added to the time embedding; the product category is a learned embedding added there
  too. Without a condition the adapter adds exactly nothing, so the text-only output is the bare model's, bit for bit.
- a diffusers model: an IP-Adapter (`load_ip_adapter`), whose image prompt is the mean CLIP image embedding of the
  history; `set_ip_adapter_scale` switches it off (0) for the text-only passes and on (1) for the history pass.

Each condition has its own classifier-free guidance scale; the conditions nest (text, then category, then history):

    eps = eps(∅) + s_text·(eps(t) − eps(∅)) + s_cat·(eps(t, c) − eps(t)) + s_hist·(eps(t, c, h) − eps(t, c))

With ``history_projection="perpendicular"`` the history's difference is first made orthogonal to the text's,
eps(t) − eps(∅), per image (as Perp-Neg, Armandpour et al. 2023, does for negative prompts): the history can add to
what the prompt asks for but not cancel any of it, so the prompt's colour survives higher history scales.
With ``history_interval=τ`` below 1 the history guides only the denoising steps whose timestep is at most τ × the
schedule's length (a guidance interval, as Kynkäänniemi et al. 2024 limit classifier-free guidance): the prompt sets
the backdrop's colour in the noisy first steps, and the history then shifts its tone and texture; the steps outside
the interval cost no extra pass.

A condition that is absent or has scale 0 is left out (no extra pass, and the output equals the text-only one
bit-exactly). The pipeline computes eps(∅) and eps(t) as usual; `personal_guidance` adds the extra UNet passes from a
forward hook on the UNet: one text-only pass shaped like the conditioned ones (so a condition that changes nothing
adds exactly nothing), then one pass per condition — 1 + K extra passes per step for K conditions.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from studio.core.artefact import read_config
from studio.core.errors import InputError, ModelNotFoundError
from studio.core.vocabulary import CATEGORIES
from studio.imaging.images import ImageSource, load_image

MAX_GUIDANCE = 20.0
MAX_HISTORY = 256
HISTORY_PROJECTIONS = ("none", "perpendicular")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Category 0 is "no category"; its embedding is fixed at zero.
CATEGORY_NAMES: tuple[str, ...] = tuple(sorted(set(CATEGORIES.values())))  # as studio.imaging.conditioner's
CONDITIONER_FORMAT = 1
IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"


def check_scale(name: str, value: Any) -> float:
    """A guidance scale as a float; InputError for NaN, negative or huge ones."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(scale) and 0.0 <= scale <= MAX_GUIDANCE):
        raise InputError(f"{name} must be a finite number from 0 to {MAX_GUIDANCE:g}, got {value!r}")
    return scale


def check_interval(value: Any) -> float:
    """`history_interval` as a float in (0, 1], or InputError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"history_interval must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < number <= 1.0:  # NaN fails too
        raise InputError(f"history_interval must be in (0, 1] (1: every denoising step), got {value!r}")
    return number


def check_category(category: str | None) -> str | None:
    if category is not None and category not in CATEGORY_NAMES:
        raise InputError(f"unknown product category {category!r}; choose one of {', '.join(CATEGORY_NAMES)}")
    return category


# --------------------------------------------------------------------------------------------------------------------
# Histories


@dataclass
class History:
    """The creatives a group clicked, decoded to RGB. `source` says where they came from ("folder:...", "group:...");
    `digest` is a hash of their pixels (recorded in the recipe)."""

    images: list[Image.Image]
    source: str
    digest: str = ""
    weights: list[float] | None = None  # per image (e.g. click counts); None = equal

    def __post_init__(self) -> None:
        if not self.images:
            raise InputError(f"the history {self.source} holds no images; a history needs at least one clicked "
                             "creative (or leave it out to paint from the text alone)")
        if len(self.images) > MAX_HISTORY:
            raise InputError(f"the history {self.source} holds {len(self.images)} images; at most {MAX_HISTORY}")
        if self.weights is not None and (len(self.weights) != len(self.images)
                                         or not all(math.isfinite(w) and w > 0 for w in self.weights)):
            raise InputError("history weights must be one positive number per image")
        if not self.digest:
            sha = hashlib.sha256()
            for image in self.images:
                sha.update(f"{image.size}".encode())
                sha.update(image.tobytes())
            self.digest = sha.hexdigest()[:16]

    def record(self, method: str | None) -> dict:
        """The recipe's `history` entry."""
        return {"source": self.source, "count": len(self.images), "hash": self.digest, "method": method}

    def normalised_weights(self) -> np.ndarray:
        weights = np.ones(len(self.images)) if self.weights is None else np.asarray(self.weights, float)
        return weights / weights.sum()


def load_history(source: History | str | Path | Sequence[ImageSource], *, label: str | None = None) -> History:
    """A History from a folder of images (PNG, JPEG, WebP; sorted by name), a list of paths/bytes/PIL images, or a
    History (returned as is). Images of any size and mode are accepted: they are converted to RGB here and resized to
    the model's size where they are encoded. An empty folder or list is one clear error."""
    if isinstance(source, History):
        return source
    if isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise InputError(f"history {str(source)!r} is not a folder; pass a folder of clicked creatives (PNG/JPEG)")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise InputError(f"history folder {str(source)!r} holds no PNG, JPEG or WebP images")
        return History([_rgb(load_image(p)) for p in files], label or f"folder:{folder}")
    images = list(source)
    return History([_rgb(load_image(item)) for item in images], label or "images")


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA":  # transparent parts count as white, as on a page
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        return white
    return image.convert("RGB")


# --------------------------------------------------------------------------------------------------------------------
# The studio-mini history adapter


def _torch():
    import torch

    return torch


def new_conditioner(unet, **kwargs):
    """A zero-initialised PersonalConditioner for `unet` (the training recipe's starting point)."""
    from studio.imaging.conditioner import PersonalConditioner

    return PersonalConditioner.for_unet(unet, **kwargs)


def load_conditioner(folder):
    from studio.imaging.conditioner import PersonalConditioner

    return PersonalConditioner.from_pretrained(folder)


def category_index(category: str | None, batch: int = 1):
    torch = _torch()
    return torch.full((batch,), 0 if category is None else CATEGORY_NAMES.index(category) + 1, dtype=torch.long)


def pooled_history_latent(vae, history: History, size: tuple[int, int], device=None, dtype=None):
    """The mean (weighted by `history.weights`) of the history's VAE posterior means at `size` pixels, scaled like
    the UNet's latents: (1, C, h, w)."""
    torch = _torch()
    pixels = np.stack([np.asarray(image.resize(size, Image.Resampling.BICUBIC), np.float32) for image in history.images])
    x = torch.from_numpy(pixels / 127.5 - 1).permute(0, 3, 1, 2)
    device = device or vae.device
    with torch.inference_mode():
        means = []
        for start in range(0, len(x), 32):
            chunk = x[start:start + 32].to(device=device, dtype=vae.dtype)
            means.append(vae.encode(chunk).latent_dist.mean.float())
        latents = torch.cat(means) * float(vae.config.scaling_factor)
    weights = torch.from_numpy(history.normalised_weights()).float().to(latents.device)
    pooled = (latents * weights[:, None, None, None]).sum(dim=0, keepdim=True)
    return pooled.to(dtype=dtype or vae.dtype)


# --------------------------------------------------------------------------------------------------------------------
# Guidance: the extra UNet passes


@dataclass
class ConditionStep:
    """One nested condition: its scale and how a UNet pass is conditioned on it (and on the steps before it).

    `enter()` returns a context manager active during the pass; `kwargs(kwargs)` returns the UNet keyword arguments
    for the pass (e.g. IP-Adapter image embeddings or a prompt with the category)."""

    name: str
    scale: float
    enter: Callable[[], Any] = field(default=contextlib.nullcontext)
    kwargs: Callable[[dict], dict] = field(default=lambda kwargs: kwargs)
    perpendicular: bool = False  # project its difference orthogonal to the text's (see the module docstring)
    until: float | None = None  # guide only at timesteps <= until (None: every step; see the module docstring)


@contextlib.contextmanager
def personal_guidance(unet, steps: list[ConditionStep], text_guidance: float, cfg: bool):
    """Within the block, every call of `unet` adds sum_k s_k·(eps(steps ≤ k) − eps(steps < k)) to the text-only
    prediction, so the pipeline's own guidance step yields the nested formula of the module docstring.

    cfg: whether the pipeline runs an unconditional half (guidance > 1): the batch is [∅, text] and the added term
    is divided by the text guidance, which the pipeline multiplies back.
    """
    torch = _torch()
    steps = [step for step in steps if step.scale > 0]

    def hook(module, args, kwargs, output):
        names = ("sample", "timestep", "encoder_hidden_states")
        call = dict(zip(names, args))
        call.update({key: value for key, value in kwargs.items()})
        call["return_dict"] = False
        prediction = output[0] if isinstance(output, tuple) else output.sample
        timestep = float(torch.as_tensor(call["timestep"]).flatten()[0])
        active = [step for step in steps if step.until is None or timestep <= step.until]
        if not active:  # a noise level no condition guides: the text-only prediction, untouched
            return output
        half = prediction.shape[0] // 2 if cfg else 0
        text = {key: _text_half(value, half) for key, value in call.items()}
        # eps(t) again, in a call shaped like the conditioned ones: the differences are then exactly 0 where a
        # condition changes nothing (a batch of 2 and a batch of 1 may round differently).
        previous = module.forward(**text)[0]
        added = torch.zeros_like(previous)
        stacked: list[ConditionStep] = []
        for step in active:
            stacked.append(step)
            with contextlib.ExitStack() as stack:
                pass_kwargs = dict(text)
                for active in stacked:
                    stack.enter_context(active.enter())
                    pass_kwargs = active.kwargs(pass_kwargs)
                current = module.forward(**pass_kwargs)[0]
            difference = current - previous
            if step.perpendicular:
                difference = _orthogonal(difference, prediction[half:] - prediction[:half])
            added = added + step.scale * difference
            previous = current
        conditioned = prediction[half:] + (added / text_guidance if cfg else added)
        guided = torch.cat([prediction[:half], conditioned]) if cfg else conditioned
        if isinstance(output, tuple):
            return (guided, *output[1:])
        output.sample = guided
        return output

    handle = unet.register_forward_hook(hook, with_kwargs=True) if steps else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def _orthogonal(difference, text_direction):
    """`difference` less its component along `text_direction`, per image (computed in float32)."""
    flat, along = difference.float().flatten(1), text_direction.float().flatten(1)
    coefficient = (flat * along).sum(dim=1, keepdim=True) / along.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (flat - coefficient * along).view_as(difference).to(difference.dtype)


def _text_half(value, half: int):
    """The conditional (second) half of a CFG batch, for tensors and the lists/dicts the UNet takes."""
    torch = _torch()
    if half == 0:
        return value
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 2 * half:
        return value[half:]
    if isinstance(value, dict):
        return {key: _text_half(item, half) for key, item in value.items()}
    if isinstance(value, list):
        return [_text_half(item, half) for item in value]
    return value


# --------------------------------------------------------------------------------------------------------------------
# History adapters: what a folder holds


MINI_ADAPTER, IP_ADAPTER = "latent-channels", "ip-adapter"


def adapter_kind(folder: str | Path) -> str:
    """MINI_ADAPTER for a PersonalConditioner folder, IP_ADAPTER for an IP-Adapter folder (ip-adapter.safetensors
    and image_encoder/); one clear error otherwise."""
    folder = Path(folder).expanduser()
    if (folder / "config.json").is_file() and not (folder / IP_ADAPTER_WEIGHTS).is_file():
        read_config(folder, "PersonalConditioner", CONDITIONER_FORMAT)
        return MINI_ADAPTER
    if (folder / IP_ADAPTER_WEIGHTS).is_file():
        if not (folder / "image_encoder" / "config.json").is_file():
            raise ModelNotFoundError(f"the IP-Adapter folder {folder} has no image_encoder/ (a CLIP vision model); "
                                     "copy it next to ip-adapter.safetensors")
        return IP_ADAPTER
    raise ModelNotFoundError(f"{folder} is no history adapter: expected a PersonalConditioner folder (config.json) "
                             f"or an IP-Adapter folder ({IP_ADAPTER_WEIGHTS} and image_encoder/)")


def build_tiny_ip_adapter(unet, folder: str | Path, *, seed: int = 0, image_size: int = 32,
                          embed_dim: int = 32) -> Path:
    """Save a random IP-Adapter for `unet` and a tiny random CLIPVisionModelWithProjection into `folder`, in the
    layout `load_ip_adapter` reads (ip-adapter.safetensors with image_proj.* and ip_adapter.<n>.to_k_ip/to_v_ip.*
    keys, n = 1, 3, 5, ... over the UNet's cross-attention processors in order; image_encoder/). For tests."""
    torch = _torch()
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=image_size,
        patch_size=8, projection_dim=embed_dim))
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    cross = int(unet.config.cross_attention_dim)
    tensors = {"image_proj.proj.weight": torch.randn(4 * cross, embed_dim) * 0.2,
               "image_proj.proj.bias": torch.zeros(4 * cross),
               "image_proj.norm.weight": torch.ones(cross), "image_proj.norm.bias": torch.zeros(cross)}
    key = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue  # self-attention: no image tokens
        block = name.split(".")[0]
        if block == "mid_block":
            hidden = unet.config.block_out_channels[-1]
        elif block == "up_blocks":
            hidden = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
        else:
            hidden = unet.config.block_out_channels[int(name.split(".")[1])]
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.3
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.3
        key += 2
    save_file({name: value.contiguous() for name, value in tensors.items()}, str(folder / IP_ADAPTER_WEIGHTS))
    return folder
