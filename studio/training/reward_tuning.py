"""Fine-tune an inpainting UNet's LoRA through a differentiable reward: DRaFT-K (Clark et al. 2024, "Directly
fine-tuning diffusion models on differentiable rewards"; ReFL of Xu et al. 2023 is the one-step case).

Each step paints a batch of cases from fresh noise with the pipeline's own scheduler, classifier-free guidance and
9-channel conditioning, keeps gradients only through the last K denoising steps (K = 1 is DRaFT-1, the paper's most
efficient variant), decodes with the frozen VAE, pastes the kept product pixels back as `paste_back` does for a
product canvas (the reward sees what would be served), and ascends the reward. The VAE and the text encoder stay
frozen; only parameters that require gradients (a LoRA added by `InpaintingTrainer(..., TrainConfig(lora=True))`)
move.

Usage:
    trainer = InpaintingTrainer(pipeline, TrainConfig(lora=True, steps=100)).fit(data, "runs/lora")  # optional start
    tuner = RewardTuner(pipeline, RewardTuneConfig(steps=30)).fit(cases, reward)
    trainer.save("models/lora")   # the same LoRA, now reward-tuned
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from studio.core.errors import InputError
from studio.imaging.canvas import Canvas, paste_alpha
from studio.training.trainer import Components, encode_prompts


@dataclass
class RewardTuneConfig:
    """steps: optimiser steps; batch_size: cases painted per step; denoising_steps and guidance: how each case is
    painted (use the settings it will be served with); backprop_steps: K, the last denoising steps that carry
    gradients; seed: draws the cases and the noise of every step."""

    steps: int = 30
    batch_size: int = 4
    learning_rate: float = 3e-4
    denoising_steps: int = 15
    guidance: float = 7.5
    backprop_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0

    def check(self) -> None:
        for name in ("steps", "batch_size", "denoising_steps", "backprop_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.backprop_steps > self.denoising_steps:
            raise InputError(f"backprop_steps ({self.backprop_steps}) cannot exceed denoising_steps "
                             f"({self.denoising_steps})")
        if not (self.learning_rate > 0 and self.max_grad_norm > 0 and self.guidance >= 0):
            raise InputError("learning_rate and max_grad_norm must be > 0, guidance >= 0")


@dataclass(frozen=True)
class RewardCase:
    """One thing to paint: a canvas at the model's size, the prompt as the generator reads it, its negative prompt."""

    canvas: Canvas
    prompt: str
    negative_prompt: str = ""


# (pixels (B, 3, H, W) in [0, 1], the painted cases' indices) -> rewards (B,) to maximise, differentiable in pixels
Reward = Callable[["torch.Tensor", list[int]], "torch.Tensor"]  # noqa: F821 - torch is imported lazily


class RewardTuner:
    """Ascends a differentiable reward of the painted creatives (see the module docstring). `rewards_` holds the
    mean reward of every step's batch, before that step's update."""

    def __init__(self, pipeline, config: RewardTuneConfig | None = None):
        self.pipeline = pipeline
        self.config = config or RewardTuneConfig()
        self.config.check()
        self.unet = pipeline.unet
        expected = 2 * pipeline.vae.config.latent_channels + 1
        if self.unet.config.in_channels != expected:
            raise InputError(f"the UNet takes {self.unet.config.in_channels} input channels, but inpainting needs "
                             f"{expected}; load an inpainting checkpoint")
        self.parameters = [p for p in self.unet.parameters() if p.requires_grad]
        if not self.parameters:
            raise InputError("the UNet has no trainable parameters: add a LoRA first "
                             "(InpaintingTrainer(pipeline, TrainConfig(lora=True)))")
        self.components = Components.from_pipeline(pipeline)
        for frozen in (pipeline.vae, pipeline.text_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        self.rewards_: list[float] = []
        self._conditions: dict[int, tuple] = {}  # id(case) -> (case, its conditioning), computed once

    # -- painting --------------------------------------------------------------------------------------------------

    def _condition(self, case: RewardCase):
        """(mask, masked-image latents, canvas pixels, paste-back alpha, text, negative text) of a case, once."""
        import torch

        cached = self._conditions.get(id(case))
        if cached is None or cached[0] is not case:
            if case.canvas.kind == "outpaint":  # paste_back Poisson-blends those (blend_seam); this paste would not
                raise InputError("reward tuning paints background-replacement canvases (place_product); an "
                                 "outpainting canvas is composited by a Poisson blend it does not reproduce")
            vae = self.components.vae
            width, height = case.canvas.size
            factor = self.components.vae_scale_factor
            if width % factor or height % factor:
                raise InputError(f"canvas {case.canvas.size} must be multiples of {factor} pixels")
            image = torch.from_numpy(np.asarray(case.canvas.image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)
            paint = torch.from_numpy(np.asarray(case.canvas.paint_mask.convert("L"), np.float32) / 255 >= 0.5)
            with torch.no_grad():  # as the pipeline: the masked image is the canvas outside the paint mask
                masked = (image * 2 - 1) * (~paint)
                latents = vae.encode(masked[None].to(vae.device, vae.dtype)).latent_dist.mean
            mask = torch.nn.functional.interpolate(paint[None, None].float(), size=latents.shape[-2:])
            keep = torch.from_numpy(paste_alpha(case.canvas).astype(np.float32))[None]  # as `paste_back` blends
            embeds = encode_prompts(self.components, [case.prompt, case.negative_prompt])
            cached = case, (mask, latents.float() * vae.config.scaling_factor, image, keep, embeds[:1], embeds[1:])
            self._conditions[id(case)] = cached
        return cached[1]

    def paint(self, cases: Sequence[RewardCase], indices: Sequence[int], seeds: Sequence[int],
              grad: bool = True):
        """Paint cases[indices] from the noise of `seeds`; pixels (B, 3, H, W) in [0, 1] with the kept pixels
        pasted back. With grad, the last `backprop_steps` denoising steps carry gradients to the trainable weights."""
        import torch

        cfg = self.config
        device = self.unet.device
        conditions = [self._condition(cases[i]) for i in indices]
        if len({c[0].shape for c in conditions}) > 1:
            raise InputError("a batch of cases must share one canvas size")
        mask = torch.cat([c[0] for c in conditions]).to(device)
        masked = torch.cat([c[1] for c in conditions]).to(device)
        positive = torch.cat([c[4] for c in conditions]).to(device)
        negative = torch.cat([c[5] for c in conditions]).to(device)
        guided = cfg.guidance > 1.0
        embeds = torch.cat([negative, positive]) if guided else positive
        scheduler = type(self.pipeline.scheduler).from_config(self.pipeline.scheduler.config)
        scheduler.set_timesteps(cfg.denoising_steps, device=device)
        shape = (1, self.components.vae.config.latent_channels, *mask.shape[-2:])
        latents = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])
        latents = latents.to(device) * scheduler.init_noise_sigma
        last = len(scheduler.timesteps) - cfg.backprop_steps
        for i, t in enumerate(scheduler.timesteps):
            with torch.set_grad_enabled(grad and i >= last):
                doubled = torch.cat([latents] * 2) if guided else latents
                model_input = torch.cat([scheduler.scale_model_input(doubled, t),
                                         torch.cat([mask] * (2 if guided else 1)),
                                         torch.cat([masked] * (2 if guided else 1))], dim=1)
                prediction = self.unet(model_input, t, encoder_hidden_states=embeds).sample
                if guided:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + cfg.guidance * (conditional - unconditional)
                latents = scheduler.step(prediction, t, latents).prev_sample
        vae = self.components.vae
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
        painted = ((decoded.float() + 1) / 2).clamp(0, 1)
        kept = torch.stack([c[2] for c in conditions]).to(device)
        keep = torch.stack([c[3] for c in conditions]).to(device)
        return keep * kept + (1 - keep) * painted

    # -- tuning ----------------------------------------------------------------------------------------------------

    def fit(self, cases: Sequence[RewardCase], reward: Reward, progress: bool = True) -> RewardTuner:
        """`config.steps` updates, each on `batch_size` cases drawn (with replacement) from `cases`."""
        import torch
        from tqdm.auto import tqdm

        cfg = self.config
        if not cases:
            raise InputError("reward tuning needs at least one case to paint")
        optimizer = torch.optim.AdamW(self.parameters, lr=cfg.learning_rate, weight_decay=0.0)
        rng = np.random.default_rng([cfg.seed, 7])
        self.unet.train()
        for _ in tqdm(range(cfg.steps), desc="reward tuning", disable=not progress):
            indices = rng.integers(len(cases), size=cfg.batch_size).tolist()
            seeds = rng.integers(2**31, size=cfg.batch_size).tolist()
            values = reward(self.paint(cases, indices, seeds), indices)
            loss = -values.mean()
            if not torch.isfinite(loss):
                raise RuntimeError(f"the reward became {values.mean().item()} at step {len(self.rewards_)}; lower "
                                   "the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, cfg.max_grad_norm)
            optimizer.step()
            self.rewards_.append(float(values.mean().detach()))
        self.unet.eval()
        return self

    def score(self, cases: Sequence[RewardCase], rewards: Sequence[Reward], seeds: Sequence[int]) -> list[float]:
        """Each reward's mean over every case painted once per seed, without gradients (fixed noise: a before/after
        comparison of one LoRA, or of the reward a tuner ascended against rewards it never saw)."""
        import torch

        totals = np.zeros(len(rewards))
        count = 0
        with torch.no_grad():
            for seed in seeds:
                for start in range(0, len(cases), self.config.batch_size):
                    indices = list(range(start, min(start + self.config.batch_size, len(cases))))
                    pixels = self.paint(cases, indices, [seed + i for i in indices], grad=False)
                    totals += [float(reward(pixels, indices).sum()) for reward in rewards]
                    count += len(indices)
        return (totals / max(count, 1)).tolist()
