"""Real architectures at their published sizes (random weights, built locally) through `studio generate --model`.

Each one is built with `python -m studio.imaging.architectures`, saved with `save_pretrained` and loaded back by the
CLI in its own process, so the peak memory read from the operating system is that architecture's alone. Slow: one
or two denoising steps at native size on the CPU (SDXL and FLUX Fill at 1024 x 1024).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from original_layout import write_single_file  # tests/ is on sys.path (pytest's rootdir-less test folder)
from PIL import Image

from studio.imaging.architectures import ARCHITECTURES
from studio.imaging.creatives import CreativeSettings, build_canvas
from studio.imaging.engine import INPAINTING_MODEL, model_weights_hash
from studio.imaging.images import load_image
from studio.imaging.provenance import read_recipe

STUDIO = [sys.executable, "-m", "studio.cli"]
PROMPT = "a red marble table, soft light"
# Steps and guidance kept cheap: SDXL at guidance 1 skips the unconditional pass; FLUX's guidance is an input, free.
RUNS = {"sd15-inpaint": (2, 7.5), "sd2-inpaint": (2, 7.5), "sdxl-inpaint": (1, 1.0), "flux-fill": (1, 30.0)}
PEAK_RSS_BUDGET_GB = 22.0  # the CI machine has 24 GB

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes each on a busy 2-core machine


@pytest.fixture(scope="module")
def painted() -> dict[str, dict]:
    """`studio generate --json` summaries per architecture, reused by later tests of the module."""
    return {}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build an architecture once per module, in a child process (fp16 on disk; the parent stays small)."""
    folders: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in folders:
            for other in [key for key in folders if key != "sd15-inpaint"]:  # disk: SDXL alone is 7 GB
                shutil.rmtree(folders.pop(other), ignore_errors=True)
            folder = tmp_path_factory.mktemp(name)
            subprocess.run([sys.executable, "-m", "studio.imaging.architectures", name, str(folder)], check=True,
                           capture_output=True, timeout=900)
            folders[name] = folder
        return folders[name]

    return build


def run_measured(command: list[str], timeout: float = 1500) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command; return its result and its own peak resident memory in GB (from wait4: this child only)."""
    import tempfile
    import threading

    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        result = subprocess.CompletedProcess(command, process.returncode, stdout.read().decode(), stderr.read().decode())
    return result, usage.ru_maxrss / 2**20  # kB on Linux


def generate(folder_or_file: Path, out: Path, product: Path, *, size: int, steps: int, guidance: float,
             extra: list[str] = ()) -> tuple[dict, float]:
    result, peak_gb = run_measured([
        *STUDIO, "generate", "--product", str(product), "--prompt", PROMPT, "--model", str(folder_or_file),
        "--steps", str(steps), "--guidance", str(guidance), "--n", "1", "--size", str(size), "--dtype", "fp32",
        "--seed", "3", "--out", str(out), "--json", *extra,
    ])
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout), peak_gb


def assert_product_exact(path: str, product: Path, size: int) -> None:
    canvas = build_canvas(load_image(product), CreativeSettings(size=size))
    on_disk = np.asarray(Image.open(path).convert("RGB"))
    assert on_disk.shape[:2] == (size, size)
    assert canvas.keep.sum() > 1000
    assert np.array_equal(on_disk[canvas.keep], np.asarray(canvas.image)[canvas.keep])


@pytest.mark.parametrize("name", list(RUNS))
def test_architecture_paints_a_bit_exact_creative_at_native_size(name, built, painted, product_photo, tmp_path,
                                                                 record_property):
    arch = ARCHITECTURES[name]
    folder = built(name)
    steps, guidance = RUNS[name]
    summary, peak_gb = generate(folder, tmp_path / "out", product_photo, size=arch.native_size, steps=steps,
                                guidance=guidance)
    painted[name] = summary
    record_property("peak_rss_gb", round(peak_gb, 2))
    print(f"\n{name}: peak RSS {peak_gb:.1f} GB at {arch.native_size}x{arch.native_size}, {steps} step(s)")

    assert summary["inpaint_method"] == INPAINTING_MODEL
    (creative,) = summary["creatives"]
    assert creative["size"] == [arch.native_size, arch.native_size]
    assert_product_exact(creative["path"], product_photo, arch.native_size)
    recipe = read_recipe(creative["path"])
    assert (recipe.model, recipe.steps, recipe.guidance) == (str(folder), steps, guidance)
    assert recipe.model_size == (arch.native_size, arch.native_size)  # painted at native size, not shrunk
    assert recipe.inpaint_method == INPAINTING_MODEL and recipe.random_init
    assert recipe.weights_hash == model_weights_hash(str(folder))
    assert peak_gb < PEAK_RSS_BUDGET_GB


def test_a_single_file_checkpoint_paints_the_same_pixels_as_its_folder(built, painted, product_photo, tmp_path):
    """SD 1.5 inpainting written in the original (A1111) single-file layout loads through from_single_file with the
    configuration of a local folder, offline, and paints exactly what the diffusers folder paints."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    folder = built("sd15-inpaint")
    pipeline = StableDiffusionInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float16)
    checkpoint = write_single_file(pipeline, tmp_path / "sd15-inpainting.safetensors")
    del pipeline
    config = tmp_path / "config"  # the configuration only: no weight files in it
    for item in folder.rglob("*"):
        if item.is_file() and item.suffix != ".safetensors":
            target = config / item.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())

    steps, guidance = RUNS["sd15-inpaint"]
    from_folder = painted.get("sd15-inpaint") or generate(folder, tmp_path / "a", product_photo, size=512,
                                                          steps=steps, guidance=guidance)[0]
    from_file, _ = generate(checkpoint, tmp_path / "b", product_photo, size=512, steps=steps, guidance=guidance,
                            extra=["--model-config", str(config)])
    first, second = (np.asarray(Image.open(s["creatives"][0]["path"])) for s in (from_folder, from_file))
    assert np.array_equal(first, second)
    recipe = read_recipe(from_file["creatives"][0]["path"])
    assert recipe.model == str(checkpoint)
    assert recipe.weights_hash == model_weights_hash(str(checkpoint)) != model_weights_hash(str(folder))
