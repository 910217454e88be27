"""Shared fixtures: a tiny random-weight inpainting pipeline and a product photo, built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny random StableDiffusionInpaintPipeline saved with save_pretrained (a few MB, never from the hub)."""
    import torch

    from studio.imaging.tiny import build_tiny_pipeline

    torch.set_num_threads(1)  # two shared cores: one thread is much faster than fighting for both
    folder = tmp_path_factory.mktemp("tiny-random")
    build_tiny_pipeline(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_lora_path(tiny_pipeline_dir, tmp_path_factory) -> Path:
    """A random LoRA for the tiny pipeline's UNet (diffusers LoRA safetensors)."""
    from studio.imaging.tiny import build_tiny_lora

    return build_tiny_lora(tiny_pipeline_dir, tmp_path_factory.mktemp("tiny-lora"), rank=4, seed=0)


@pytest.fixture(scope="session")
def product_photo(tmp_path_factory) -> Path:
    """A 120x160 product photo: a red bottle-like shape with a yellow label on a plain light-grey background."""
    pixels = np.full((160, 120, 3), 235, np.uint8)
    pixels[40:140, 40:80] = (200, 30, 35)
    pixels[25:40, 52:68] = (200, 30, 35)
    pixels[80:100, 40:80] = (235, 210, 45)
    path = tmp_path_factory.mktemp("product") / "bottle.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path
