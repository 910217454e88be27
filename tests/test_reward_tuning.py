"""DRaFT reward tuning (`studio.training.reward_tuning`) on the embedded studio-mini: its painting is the engine's,
it follows the reward it is given (and only moves the LoRA), and bad input is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.core.errors import InputError
from studio.imaging.canvas import outpaint_canvas
from studio.imaging.creatives import CreativeSettings, build_canvas, generate_creatives
from studio.imaging.engine import default_model, load_engine
from studio.sim.renderer import render_product
from studio.training.reward_tuning import RewardCase, RewardTuneConfig, RewardTuner
from studio.training.trainer import InpaintingTrainer, TrainConfig, load_pipeline

pytestmark = pytest.mark.slow  # each test loads studio-mini

SETTINGS = CreativeSettings(size=64, steps=6, guidance=7.5)
PROMPTS = ["a red plain background, soft light", "a blue marble table, studio light"]


@pytest.fixture(scope="module")
def canvas():
    return build_canvas(render_product("bottle", seed=0, size=128), SETTINGS)


@pytest.fixture(scope="module")
def engine():
    return load_engine(default_model())


def _tuner(config: RewardTuneConfig) -> RewardTuner:
    pipeline = load_pipeline(default_model())
    InpaintingTrainer(pipeline, TrainConfig(lora=True, lora_rank=4, seed=0))  # adds the LoRA (identity at start)
    return RewardTuner(pipeline, config)


def _brightness(pixels, indices):
    return pixels.mean(dim=(1, 2, 3))


def test_it_paints_what_the_engine_paints(canvas, engine):
    """Same canvas, prompt, seed and settings: the tuner's creative is the engine's, up to the masked-image latent
    (the engine samples it, the tuner takes its mean)."""
    tuner = _tuner(RewardTuneConfig(denoising_steps=SETTINGS.steps, guidance=SETTINGS.guidance))
    cases = [RewardCase(canvas, engine.read_prompt(PROMPTS[0]).text)]
    mine = tuner.paint(cases, [0], [5], grad=False)[0].permute(1, 2, 0).numpy() * 255
    theirs = np.asarray(generate_creatives(canvas, PROMPTS[0], settings=SETTINGS, n=1, seed=5, engine=engine,
                                           progress=False)[0].image, dtype=float)
    assert np.abs(mine - theirs).mean() < 1.0  # of 255
    assert np.abs(mine - theirs)[canvas.keep].max() < 0.5  # the product's own pixels, as paste_back keeps them


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_it_follows_the_reward_and_moves_only_the_lora(canvas, engine, sign):
    """Brightness as the reward (a known truth): ascending it brightens the painted background at fixed seeds the
    tuning never drew, ascending its negative darkens it; the product pixels stay exact and the base UNet weights
    do not move."""
    tuner = _tuner(RewardTuneConfig(steps=8, batch_size=2, learning_rate=3e-3, denoising_steps=SETTINGS.steps,
                                    guidance=SETTINGS.guidance, seed=1))
    cases = [RewardCase(canvas, engine.read_prompt(p).text) for p in PROMPTS]
    base = {name: p.detach().clone() for name, p in tuner.unet.named_parameters() if "lora" not in name}
    held_out = [1000, 1001]
    before = tuner.score(cases, [_brightness], held_out)[0]
    tuner.fit(cases, lambda pixels, indices: sign * _brightness(pixels, indices), progress=False)
    after = tuner.score(cases, [_brightness], held_out)[0]
    assert sign * (after - before) > 0.03  # of a 0-1 brightness
    assert len(tuner.rewards_) == 8
    pixels = tuner.paint(cases, [0, 1], held_out, grad=False).permute(0, 2, 3, 1).numpy()
    kept = np.asarray(canvas.image, dtype=np.float32)[canvas.keep] / 255
    assert all(np.abs(p[canvas.keep] - kept).max() < 1e-6 for p in pixels)
    assert all(torch.equal(p, base[name]) for name, p in tuner.unet.named_parameters() if name in base)


def test_bad_input_is_one_clear_error(canvas):
    pipeline = load_pipeline(default_model())
    pipeline.unet.requires_grad_(False)  # no LoRA added
    with pytest.raises(InputError, match="no trainable parameters"):
        RewardTuner(pipeline)
    tuner = _tuner(RewardTuneConfig(steps=1))
    with pytest.raises(InputError, match="at least one case"):
        tuner.fit([], _brightness, progress=False)
    wide = outpaint_canvas(canvas.image, right=16)
    with pytest.raises(InputError, match="outpainting canvas"):
        tuner.fit([RewardCase(wide, "a red plain backdrop")], _brightness, progress=False)
    with pytest.raises(InputError, match="backprop_steps"):
        RewardTuneConfig(denoising_steps=2, backprop_steps=3).check()
    with pytest.raises(InputError, match="steps"):
        RewardTuneConfig(steps=0).check()
