"""studio-mini's VAE stage: train the autoencoder to a held-out PSNR goal, then freeze it with its latent scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from studio.core.atomic import staged_folder, write_file
from studio.training.mini.recipe import MiniRecipe


def reconstruct(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 images (N, S, S, 3) through the VAE's posterior mean and back, in batches; uint8 (N, S, S, 3)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            out.append(((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr(vae, images: np.ndarray, batch: int = 64) -> float:
    """Mean reconstruction PSNR (dB) of uint8 images (N, S, S, 3) through the VAE's posterior mean."""
    error = (reconstruct(vae, images, batch).astype(np.float64) - images) / 255
    mse = np.maximum((error ** 2).mean(axis=(1, 2, 3)), 1e-10)
    return float(np.mean(10 * np.log10(1 / mse)))


def train_vae(vae, train: np.ndarray, heldout: np.ndarray, recipe: MiniRecipe, folder: Path,
              progress: bool = True) -> dict:
    """Train the AutoencoderKL on uint8 images (N, S, S, 3), resumable from folder/last; returns its report.

    Loss: MSE + L1 reconstruction + a small KL term (Stable Diffusion's VAE recipe without the GAN and LPIPS terms).
    Stops at `vae_steps` or as soon as the held-out PSNR reaches the goal at a checkpoint.
    """
    import torch
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    state_path = folder / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"step": 0, "psnr": []}
    if (folder / "last").is_dir():
        vae.load_state_dict(AutoencoderKL.from_pretrained(folder / "last").state_dict())
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng([recipe.seed, 11, state["step"]])
    bar = tqdm(total=recipe.vae_steps, initial=state["step"], desc="vae", disable=not progress)
    while state["step"] < recipe.vae_steps and not (state["psnr"] and state["psnr"][-1][1] >= recipe.vae_psnr_goal):
        step = state["step"]
        # Cosine decay over the step budget, after a short warm-up.
        lr = recipe.vae_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / recipe.vae_steps))
        for group in optimizer.param_groups:
            group["lr"] = max(lr, recipe.vae_lr * 0.02)
        batch = train[rng.integers(len(train), size=recipe.vae_batch)]
        if rng.uniform() < 0.5:
            batch = batch[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        loss = (y - x).pow(2).mean() + 0.1 * (y - x).abs().mean() + recipe.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if state["step"] % recipe.checkpoint_every == 0 or state["step"] >= recipe.vae_steps:
            vae.eval()
            state["psnr"].append([state["step"], psnr(vae, heldout)])
            vae.train()
            bar.write(f"vae step {state['step']}: held-out PSNR {state['psnr'][-1][1]:.2f} dB")
            save_atomically(vae, folder / "last")
            write_file(state_path, lambda tmp: tmp.write_text(json.dumps(state, indent=1) + "\n"))
    bar.close()
    vae.eval()
    return state


def save_atomically(model, folder: Path) -> None:
    """``model.save_pretrained`` (a VAE or a whole pipeline) into a staging folder, then swapped in place."""
    with staged_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)


def latent_scaling_factor(vae, images: np.ndarray, batch: int = 128) -> float:
    """1 / std of the VAE's sampled latents over uint8 images (N, S, S, 3): unit-variance latents for the UNet."""
    import torch

    samples = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            samples.append(vae.encode(x).latent_dist.sample().flatten())
    return float(1.0 / torch.cat(samples).std())


