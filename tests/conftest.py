"""Shared fixtures: a tiny random-weight inpainting pipeline, a product photo, and the databases (SQLite, PostgreSQL)."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL test database (``.ci/run`` starts one and makes these tests required there)."""
    url = os.environ.get("STUDIO_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("STUDIO_REQUIRE_POSTGRES"):
            pytest.fail("STUDIO_REQUIRE_POSTGRES is set but STUDIO_TEST_POSTGRES_URL is not")
        pytest.skip("no PostgreSQL server: set STUDIO_TEST_POSTGRES_URL (bash .ci/run starts one) to run this test")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each store test runs on both engines: a SQLite file and a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    url = request.getfixturevalue("postgres_url")
    schema = f"test_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        connection.execute(f"CREATE SCHEMA {schema}")
    request.addfinalizer(lambda: _drop_schema(url, schema))
    return f"{url}?options=-csearch_path%3D{schema}"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
