"""studio.imaging.threads: one thread for small models, every core for large ones, the user's choice first."""

import os

import pytest

from studio.core.errors import InputError
from studio.imaging.engine import default_model
from studio.imaging.threads import SMALL_MODEL_BYTES, cpu_threads


def test_the_embedded_model_paints_on_one_thread_and_a_large_one_on_every_core(tmp_path):
    assert cpu_threads(None) == 1
    assert cpu_threads(default_model()) == 1  # studio-mini: 20 MB of weights
    large = tmp_path / "large"
    (large / "unet").mkdir(parents=True)
    with open(large / "unet" / "diffusion_pytorch_model.safetensors", "wb") as handle:
        handle.truncate(SMALL_MODEL_BYTES + 1)  # sparse: the size is what counts
    assert cpu_threads(large) == (os.cpu_count() or 1)
    assert cpu_threads("runwayml/stable-diffusion-inpainting") == (os.cpu_count() or 1)


def test_the_users_choice_wins_and_is_checked():
    assert cpu_threads(None, 2) == 2
    for bad in (0, -1, 10_000, 1.5, True):
        with pytest.raises(InputError, match="threads must be"):
            cpu_threads(None, bad)
