"""Training-step speed of the studio-mini UNet: pre-encoded latents vs encoding every batch, 1 vs 2 threads, and the
recipe's UNet vs the first recipe's (cross-attention at every level, no pooled caption).

Prints medians and ratios against the baseline measured in the same process (the trainer encoding on the fly with
one thread). Run: python benchmarks/train_mini_speed.py [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from studio.training.mini import MiniRecipe, build_components
from studio.training.trainer import Components, InpaintingTrainer, RendererData, TrainConfig, encode_dataset, inpainting_loss


def median_step_seconds(trainer: InpaintingTrainer, data, steps: int) -> float:
    """Median seconds of one optimiser step (batch drawing/encoding, forward, backward, AdamW update)."""
    optimizer = torch.optim.AdamW([p for p in trainer.unet.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        latents, masks, masked, embeds = trainer._batch(data, step, 0)
        loss = inpainting_loss(trainer.unet, trainer.components.noise_scheduler, latents, masks, masked, embeds,
                               trainer._generator, 5.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])  # the first step pays for warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pipeline = build_components(folder, MiniRecipe())
    config = TrainConfig(batch_size=args.batch, resolution=64)
    trainer = InpaintingTrainer(pipeline, config)
    renders = RendererData(n=256, size=64)
    encoded = encode_dataset(Components.from_pipeline(pipeline), renders, config, progress=False)

    torch.set_num_threads(1)
    baseline = median_step_seconds(trainer, renders, args.steps)
    print(f"baseline: encode every batch, 1 thread: {baseline:.3f} s/step (batch {args.batch})")
    cached = median_step_seconds(trainer, encoded, args.steps)
    print(f"pre-encoded latents, 1 thread:        {cached:.3f} s/step  speed-up x{baseline / cached:.2f}")
    torch.set_num_threads(2)
    two = median_step_seconds(trainer, encoded, args.steps)
    print(f"pre-encoded latents, 2 threads:       {two:.3f} s/step  speed-up x{baseline / two:.2f}")

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        first = build_components(folder, MiniRecipe(unet_attention=(True, True, True), unet_pooled_text=False))
    first.text_encoder, first.vae = pipeline.text_encoder, pipeline.vae  # same cache, only the UNet differs
    old = median_step_seconds(InpaintingTrainer(first, config), encoded, args.steps)
    print(f"first recipe's UNet, pre-encoded, 1 thread: {old:.3f} s/step; the recipe's UNet is x{old / cached:.2f} "
          "faster")


if __name__ == "__main__":
    main()
