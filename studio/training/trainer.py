"""Fine-tune a diffusers inpainting pipeline: full UNet fine-tune or LoRA (peft), with the 9-channel objective.

The objective follows `StableDiffusionInpaintPipeline` at inference exactly, so what the UNet learns is what it sees:
- the mask is binarised at 0.5, 1 means "repaint", and is resized to the latent grid by nearest-neighbour interpolation;
- the masked image is `image * (mask < 0.5)` and is encoded by the VAE with a *sampled* latent (`latent_dist.sample`),
  times `vae.config.scaling_factor`;
- the UNet input is `cat([noisy_latents, mask, masked_image_latents])` along channels;
- the noise schedule and prediction type come from the pipeline's own scheduler config;
- prompts are tokenised to `tokenizer.model_max_length` and encoded to the text encoder's last hidden state; dropped
  captions become "" (what classifier-free guidance uses as the unconditional prompt).

The VAE and the text encoder stay frozen, so a dataset can be encoded once (`encode_dataset`) and every UNet step then
costs the UNet only. Data: `RendererData` (procedural scenes) or `FolderData` (image + caption .txt + optional mask).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from studio.core import hub
from studio.core.artefact import LORA_CLASS, PIPELINE_CLASS, PIPELINE_FORMAT, write_manifest
from studio.core.atomic import staged_folder, write_file
from studio.core.errors import InputError, ModelNotFoundError
from studio.core.quiet import quiet_loading

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class TrainConfig:
    """Hyper-parameters of one fine-tuning run.

    mask_modes: probabilities of the product (background replacement), outpaint and random masks.
    snr_gamma: min-SNR loss weighting (None: plain MSE). ema_decay: EMA of the UNet weights (full mode only).
    mixed_precision: "no", "fp16" or "bf16" (GPU only; the CPU always trains in fp32).
    """

    steps: int = 1000
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int | None = None
    resolution: int | None = None
    mask_modes: dict[str, float] = field(default_factory=lambda: {"product": 0.7, "outpaint": 0.2, "random": 0.1})
    caption_dropout: float = 0.1
    # What a dropped caption becomes, drawn uniformly: "" as in Stable Diffusion; adding typical negative prompts
    # teaches the model to read them as "no condition", as classifier-free guidance then uses them.
    null_captions: tuple[str, ...] = ("",)
    snr_gamma: float | None = 5.0
    ema_decay: float | None = None
    mixed_precision: str = "no"
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise InputError("steps, batch_size and gradient_accumulation_steps must be >= 1")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.caption_dropout <= 1:
            raise InputError(f"caption_dropout must be a probability in [0, 1], got {self.caption_dropout}")
        if not self.null_captions:
            raise InputError("null_captions needs at least one caption (\"\" as in Stable Diffusion)")
        unknown = set(self.mask_modes) - {"product", "outpaint", "random"}
        if unknown or sum(self.mask_modes.values()) <= 0:
            raise InputError(f"mask_modes must weigh 'product', 'outpaint' and/or 'random', got {self.mask_modes}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise InputError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")


# ----------------------------------------------------------------------------------------------------------- data


class RendererData:
    """Procedural product scenes as training examples: index i is always the same scene.

    Each example is a dict: image (RGB PIL, size x size), product_mask ("L", 255 on the product), caption (str).
    exclude: (colour, material) pairs never drawn (held out for tests of generalisation and LoRA).
    """

    def __init__(self, n: int = 10_000, size: int = 64, seed: int = 0, exclude=frozenset()):
        if n < 1:
            raise InputError(f"RendererData needs n >= 1 scenes, got {n}")
        self.n, self.size, self.seed, self.exclude = n, size, seed, set(exclude)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        from studio.sim.renderer import render_scene, sample_attributes

        rng = np.random.default_rng([self.seed, int(index)])
        attributes = sample_attributes(rng, self.exclude)
        scene = render_scene(size=self.size, seed=int(rng.integers(2**31)), **attributes)
        return {"image": scene.image, "product_mask": scene.product_mask, "caption": scene.caption}


class FolderData:
    """A brand's folder: `name.png` (or .jpg/.webp) + `name.txt` caption + optional `name.mask.png` product mask.

    The mask, when present, is white (255) on the product; it enables background-replacement masks.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"training data folder {self.folder} does not exist; pass a folder of images + .txt captions")
        self.images = sorted(
            path for path in self.folder.iterdir()
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.stem.endswith(".mask")
        )
        if not self.images:
            raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.folder}; add image + .txt caption pairs")
        missing = [path.name for path in self.images if not path.with_suffix(".txt").is_file()]
        if missing:
            raise InputError(f"{len(missing)} image(s) in {self.folder} lack a caption file, e.g. {missing[0]} needs "
                             f"{Path(missing[0]).with_suffix('.txt').name}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        path = self.images[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"cannot read training image {path}: {error}; replace or remove it") from error
        caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        mask_path = path.with_name(path.stem + ".mask.png")
        product_mask = None
        if mask_path.is_file():
            with Image.open(mask_path) as opened:
                product_mask = opened.convert("L")
            if product_mask.size != image.size:
                raise InputError(f"mask {mask_path.name} is {product_mask.size} but image {path.name} is {image.size};"
                                 " masks must match their image")
        return {"image": image, "product_mask": product_mask, "caption": caption}


def make_mask(mode: str, size: int, rng: np.random.Generator, product_mask: Image.Image | None = None) -> Image.Image:
    """An inpainting mask ("L", size x size, 255 = repaint) of the given mode.

    product: everything but the product (falls back to random when no product mask is known); outpaint: everything
    outside a random kept frame of 40-80 % of the width or height; random: one to three random boxes and ellipses.
    """
    if mode == "product" and product_mask is not None:
        return product_mask.resize((size, size), Image.NEAREST).point(lambda value: 0 if value >= 128 else 255)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if mode == "outpaint":
        mask.paste(255, (0, 0, size, size))
        keep = rng.uniform(0.4, 0.8)
        if rng.uniform() < 0.5:  # extend left and right
            left = rng.uniform(0, 1 - keep) * size
            draw.rectangle([left, 0, left + keep * size - 1, size], fill=0)
        else:  # extend top and bottom
            top = rng.uniform(0, 1 - keep) * size
            draw.rectangle([0, top, size, top + keep * size - 1], fill=0)
        return mask
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(0, 0.7, 2) * size
        x1, y1 = x0 + rng.uniform(0.2, 0.6) * size, y0 + rng.uniform(0.2, 0.6) * size
        (draw.rectangle if rng.uniform() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=255)
    return mask


def _example_tensors(example: dict, size: int, mask_mode: str, rng: np.random.Generator):
    """(pixels (3, S, S) in [-1, 1], mask (1, S, S) in {0, 1}) from a data example, with the drawn mask mode."""
    import torch

    image = example["image"].convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    mask = make_mask(mask_mode, size, rng, example.get("product_mask"))
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)
    binary = torch.from_numpy((np.asarray(mask) >= 128).astype(np.float32))[None]
    return pixels, binary


# -------------------------------------------------------------------------------------------------------- encoding


@dataclass
class Components:
    """The frozen parts of a pipeline the trainer reads: VAE, tokenizer, text encoder, and the noise schedule."""

    vae: object
    tokenizer: object
    text_encoder: object
    noise_scheduler: object

    @classmethod
    def from_pipeline(cls, pipeline) -> "Components":
        from diffusers import DDPMScheduler

        # Training noise comes from DDPM with the pipeline's own betas and prediction type.
        return cls(pipeline.vae, pipeline.tokenizer, pipeline.text_encoder,
                   DDPMScheduler.from_config(pipeline.scheduler.config))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def encode_prompts(components: Components, captions: list[str]):
    """Text embeddings (B, tokens, hidden) exactly as the pipeline's `encode_prompt` makes them."""
    import torch

    ids = components.tokenizer(captions, padding="max_length", max_length=components.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return components.text_encoder(ids.to(components.text_encoder.device))[0].float()


def _posterior(components: Components, pixels):
    """VAE posterior (mean, std), each (B, C, h, w), unscaled."""
    import torch

    with torch.no_grad():
        dist = components.vae.encode(pixels.to(components.vae.device, components.vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


@dataclass
class EncodedData:
    """A dataset encoded once by the frozen VAE and text encoder (tensors on CPU).

    latent_mean/std and masked_mean/std: (N, C, h, w) VAE posteriors of the images and masked images (unscaled; a
    fresh latent is sampled every step, as the pipeline samples). masks: (N, 1, h, w) latent-grid masks.
    prompt_embeds: (N, T, D). empty_embeds: (K, T, D), the config's null captions for caption dropout.
    """

    latent_mean: object
    latent_std: object
    masked_mean: object
    masked_std: object
    masks: object
    prompt_embeds: object
    empty_embeds: object

    def __len__(self) -> int:
        return int(self.latent_mean.shape[0])

    def save(self, path: str | os.PathLike) -> None:
        """Write as one safetensors file (atomically)."""
        from safetensors.torch import save_file

        write_file(path, lambda tmp: save_file({name: value.contiguous() for name, value in asdict(self).items()},
                                               str(tmp)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EncodedData":
        from safetensors.torch import load_file

        return cls(**load_file(str(path)))


def encode_dataset(components: Components, data, config: TrainConfig, batch_size: int = 128,
                   progress: bool = True) -> EncodedData:
    """Encode every example of `data` once (one mask per example, drawn with `config.mask_modes`, seeded)."""
    import torch
    from tqdm.auto import tqdm

    size = config.resolution or components.vae.config.sample_size
    latent_size = size // components.vae_scale_factor
    rng = np.random.default_rng([config.seed, 1])
    modes, weights = zip(*config.mask_modes.items())
    weights = np.asarray(weights, float) / sum(weights)
    parts: dict[str, list] = {key: [] for key in ("latent_mean", "latent_std", "masked_mean", "masked_std",
                                                  "masks", "prompt_embeds")}
    for start in tqdm(range(0, len(data), batch_size), desc="encode", disable=not progress):
        examples = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        pairs = [_example_tensors(e, size, str(rng.choice(modes, p=weights)), rng) for e in examples]
        pixels = torch.stack([p for p, _ in pairs])
        masks = torch.stack([m for _, m in pairs])
        for key, value in zip(("latent_mean", "latent_std"), _posterior(components, pixels)):
            parts[key].append(value)
        for key, value in zip(("masked_mean", "masked_std"), _posterior(components, pixels * (masks < 0.5))):
            parts[key].append(value)
        parts["masks"].append(torch.nn.functional.interpolate(masks, size=(latent_size, latent_size)))
        parts["prompt_embeds"].append(encode_prompts(components, [e["caption"] for e in examples]))
    tensors = {key: torch.cat(value) for key, value in parts.items()}
    return EncodedData(**tensors, empty_embeds=encode_prompts(components, list(config.null_captions)))


# ------------------------------------------------------------------------------------------------------- objective


def inpainting_loss(unet, noise_scheduler, latents, masks, masked_latents, prompt_embeds, generator,
                    snr_gamma: float | None = None):
    """The denoising loss of a 9-channel (or 2C+1-channel) inpainting UNet on one batch.

    latents, masked_latents: (B, C, h, w), already times the VAE scaling factor. masks: (B, 1, h, w), 1 = repaint.
    prompt_embeds: (B, T, D). Returns the scalar loss (min-SNR weighted when snr_gamma is set).
    """
    import torch
    import torch.nn.functional as F

    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator,
                              device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    model_input = torch.cat([noisy, masks, masked_latents], dim=1)
    prediction = unet(model_input, timesteps, prompt_embeds).sample.float()
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise InputError(f"the trainer supports epsilon and v_prediction schedulers, not {prediction_type!r}")
    per_sample = F.mse_loss(prediction, target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return per_sample.mean()
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(latents.device)[timesteps]
    snr = alphas_cumprod / (1 - alphas_cumprod).clamp(min=1e-8)
    clipped = torch.minimum(snr, torch.full_like(snr, snr_gamma))
    # min-SNR-gamma (Hang et al. 2023): for v-prediction the weight is min(snr, g) / (snr + 1).
    weights = clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr.clamp(min=1e-8)
    return (per_sample * weights).mean()


# --------------------------------------------------------------------------------------------------------- trainer


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class InpaintingTrainer:
    """Fine-tunes the UNet of a diffusers inpainting pipeline on (image, mask, caption) data.

    Usage:
        trainer = InpaintingTrainer(pipeline, TrainConfig(steps=500, lora=True))
        trainer.fit(FolderData("brand/"), out="runs/brand-lora")   # checkpoints in out/checkpoints
        trainer.save("models/brand-lora")                           # LoRA: pytorch_lora_weights.safetensors
    """

    def __init__(self, pipeline, config: TrainConfig | None = None):
        import torch

        self.pipeline = pipeline
        self.config = config or TrainConfig()
        self.components = Components.from_pipeline(pipeline)
        self.unet = pipeline.unet
        expected = 2 * pipeline.vae.config.latent_channels + 1
        if self.unet.config.in_channels != expected:
            raise InputError(f"the UNet takes {self.unet.config.in_channels} input channels, but inpainting needs "
                             f"{expected} (noisy latents + mask + masked image); load an inpainting checkpoint")
        for frozen in (pipeline.vae, pipeline.text_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        if self.config.lora:
            from peft import LoraConfig

            self.unet.requires_grad_(False)
            with torch.random.fork_rng(devices=[]):  # seeded LoRA init, without touching the caller's RNG
                torch.manual_seed(self.config.seed)
                self.unet.add_adapter(LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha or
                                                 self.config.lora_rank, init_lora_weights="gaussian",
                                                 target_modules=LORA_TARGETS))
        else:
            self.unet.requires_grad_(True)
        self.ema = None
        if self.config.ema_decay and not self.config.lora:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.unet.parameters(), decay=self.config.ema_decay,
                                model_cls=type(self.unet), model_config=self.unet.config)
        self.step_ = 0
        self.losses_: list[float] = []
        self._generator = torch.Generator()

    # -- one batch ---------------------------------------------------------------------------------------------

    def _batch(self, data, step: int, process: int):
        """Draw and encode the batch of `step` (deterministic in seed, step and process: resume-exact)."""
        import torch

        cfg = self.config
        rng = np.random.default_rng([cfg.seed, step, process])
        self._generator.manual_seed(int(rng.integers(2**62)))
        indices = rng.integers(len(data), size=cfg.batch_size)
        drop = torch.from_numpy(rng.uniform(size=cfg.batch_size) < cfg.caption_dropout)
        null = rng.integers(len(cfg.null_captions), size=cfg.batch_size)
        scale = self.components.vae.config.scaling_factor
        if isinstance(data, EncodedData):
            index = torch.from_numpy(indices)
            g = self._generator
            latents = data.latent_mean[index] + data.latent_std[index] * torch.randn(
                data.latent_std[index].shape, generator=g)
            masked = data.masked_mean[index] + data.masked_std[index] * torch.randn(
                data.masked_std[index].shape, generator=g)
            masks, embeds = data.masks[index], data.prompt_embeds[index].clone()
            embeds[drop] = data.empty_embeds[torch.from_numpy(null % len(data.empty_embeds))][drop].to(embeds.dtype)
            return latents * scale, masks, masked * scale, embeds
        size = cfg.resolution or self.components.vae.config.sample_size
        latent_size = size // self.components.vae_scale_factor
        modes, weights = zip(*cfg.mask_modes.items())
        weights = np.asarray(weights, float) / sum(weights)
        examples = [data[int(i)] for i in indices]
        pairs = [_example_tensors(e, size, str(rng.choice(modes, p=weights)), rng) for e in examples]
        pixels = torch.stack([p for p, _ in pairs])
        full_masks = torch.stack([m for _, m in pairs])
        mean, std = _posterior(self.components, pixels)
        masked_mean, masked_std = _posterior(self.components, pixels * (full_masks < 0.5))
        latents = mean + std * torch.randn(std.shape, generator=self._generator)
        masked = masked_mean + masked_std * torch.randn(masked_std.shape, generator=self._generator)
        captions = [cfg.null_captions[n] if d else e["caption"] for e, d, n in zip(examples, drop.tolist(), null)]
        masks = torch.nn.functional.interpolate(full_masks, size=(latent_size, latent_size))
        return latents * scale, masks, masked * scale, encode_prompts(self.components, captions)

    # -- the loop ----------------------------------------------------------------------------------------------

    def fit(self, data, out: str | os.PathLike, resume: bool = False,
            callback: Callable[["InpaintingTrainer", int], None] | None = None, progress: bool = True):
        """Train for `config.steps` optimiser steps on `data` (RendererData, FolderData or EncodedData).

        Checkpoints go to out/checkpoints/step-N every `checkpoint_every` steps and at the end; with resume=True the
        newest one is loaded first and training continues to `config.steps`. callback(trainer, step) runs after each
        checkpoint (probes). Returns self; `losses_` holds the loss of every step of this session.
        """
        import torch
        from accelerate import Accelerator
        from tqdm.auto import tqdm

        cfg = self.config
        if len(data) == 0:
            raise InputError("the training data is empty")
        out = Path(out)
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision if torch.cuda.is_available() else "no",
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            cpu=not torch.cuda.is_available(),
        )
        for frozen in (self.components.vae, self.components.text_encoder):
            frozen.to(accelerator.device)
        parameters = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps)))
        unet, optimizer, schedule = accelerator.prepare(self.unet, optimizer, schedule)
        if self.ema is not None:
            self.ema.to(accelerator.device)
        if resume:
            self._load_checkpoint(accelerator, out)
        self.components.noise_scheduler.alphas_cumprod = self.components.noise_scheduler.alphas_cumprod.to(
            accelerator.device)
        unet.train()
        bar = tqdm(total=cfg.steps, initial=self.step_, desc="train", disable=not progress or
                   not accelerator.is_local_main_process)
        started = time.perf_counter()
        while self.step_ < cfg.steps:
            total = 0.0
            for micro in range(cfg.gradient_accumulation_steps):
                latents, masks, masked, embeds = (t.to(accelerator.device) for t in self._batch(
                    data, self.step_ * cfg.gradient_accumulation_steps + micro, accelerator.process_index))
                with accelerator.accumulate(unet), accelerator.autocast():
                    loss = inpainting_loss(unet, self.components.noise_scheduler, latents, masks, masked, embeds,
                                           self._generator if latents.device.type == "cpu" else None,
                                           cfg.snr_gamma)
                    if not torch.isfinite(loss):
                        raise RuntimeError(f"the loss became {loss.item()} at step {self.step_}; lower the "
                                           "learning rate or use mixed_precision='bf16'")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(parameters, cfg.max_grad_norm)
                    optimizer.step()
                    schedule.step()
                    optimizer.zero_grad(set_to_none=True)
                total += loss.item() / cfg.gradient_accumulation_steps
            if self.ema is not None:
                self.ema.step(unet.parameters())
            self.step_ += 1
            self.losses_.append(total)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}")
            if self.step_ % cfg.checkpoint_every == 0 or self.step_ == cfg.steps:
                self._save_checkpoint(accelerator, out, time.perf_counter() - started)
                if callback is not None:
                    callback(self, self.step_)
        bar.close()
        self.unet = accelerator.unwrap_model(unet)
        self.pipeline.unet = self.unet
        return self

    # -- checkpoints -------------------------------------------------------------------------------------------

    def _save_checkpoint(self, accelerator, out: Path, seconds: float) -> None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return
        folder = out / "checkpoints" / f"step-{self.step_:07d}"
        state = {"step": self.step_, "config": asdict(self.config), "seconds_this_session": seconds,
                 "recent_losses": self.losses_[-100:]}
        with staged_folder(folder) as staging:  # a crash mid-save never leaves a checkpoint that resume would trust
            accelerator.save_state(str(staging))
            if self.ema is not None:
                self.ema.save_pretrained(str(staging / "ema"))
            (staging / "trainer_state.json").write_text(json.dumps(state, indent=1) + "\n")
        for old in sorted((out / "checkpoints").glob("step-???????"))[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_checkpoint(self, accelerator, out: Path) -> None:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            return
        accelerator.load_state(str(checkpoint))
        if self.ema is not None and (checkpoint / "ema").is_dir():
            from diffusers.training_utils import EMAModel

            loaded = EMAModel.from_pretrained(str(checkpoint / "ema"), model_cls=type(self.unet))
            self.ema.load_state_dict(loaded.state_dict())
        self.step_ = json.loads((checkpoint / "trainer_state.json").read_text())["step"]

    # -- export ------------------------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike) -> Path:
        """Save the result atomically: the full pipeline (EMA weights when kept), or the LoRA weights alone."""
        with staged_folder(folder) as staging:
            if self.config.lora:
                from diffusers.utils import convert_state_dict_to_diffusers
                from peft.utils import get_peft_model_state_dict

                layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
                type(self.pipeline).save_lora_weights(str(staging), unet_lora_layers=layers, safe_serialization=True)
                write_manifest(staging, LORA_CLASS, PIPELINE_FORMAT, rank=self.config.lora_rank, steps=self.step_)
            else:
                with self.averaged_weights():
                    self.pipeline.save_pretrained(str(staging), safe_serialization=True)
                write_manifest(staging, PIPELINE_CLASS, PIPELINE_FORMAT, steps=self.step_)
        return Path(folder)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within the block the UNet holds its EMA weights (when kept); its training weights come back after."""
        if self.ema is None:
            yield self.unet
            return
        self.ema.store(self.unet.parameters())
        self.ema.copy_to(self.unet.parameters())
        try:
            yield self.unet
        finally:
            self.ema.restore(self.unet.parameters())


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under out/checkpoints, or None."""
    found = sorted(Path(out).glob("checkpoints/step-???????"))
    return found[-1] if found else None


def load_pipeline(model: str | os.PathLike):
    """Load an inpainting pipeline from a local folder (or a hub id, from the local cache first) on CPU, fp32."""
    from diffusers import AutoPipelineForInpainting

    how = "pass a local diffusers folder or a hub id already in the local cache"
    resolved = hub.resolve_model(model, kind="diffusers pipeline", needs="model_index.json", how_to_get=how)
    try:
        with quiet_loading():
            return AutoPipelineForInpainting.from_pretrained(resolved.path_or_id, local_files_only=resolved.is_local)
    except Exception as error:  # noqa: BLE001 - diffusers, transformers and safetensors each raise their own
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(f"cannot load an inpainting pipeline from {str(model)!r} ({detail}); {how}") from error
