"""Benchmark: the real inpainting architectures at native size (random weights, built locally, no hub).

CPU (the default): per architecture, build it (`studio.imaging.architectures`, fp16 on disk), then in a fresh child
process load it through `load_engine(FOLDER)` in fp32 and paint one creative at native size; print the median seconds
per denoising step (from the step callback's clock), the child's peak RSS (wait4), and as the baseline ratio the step
in units of one 2048^3 fp32 matrix product timed in the same child just before and after (median), which makes the
figure comparable across machines and loads.

    python benchmarks/real_models.py                                   # all four, 3 steps each
    python benchmarks/real_models.py --architectures sd15-inpaint --steps 5

GPU (`--device cuda`): per architecture (FLUX Fill at full depth), in memory, images/s at `--steps` steps for
diffusers' default settings (fp32 weights, the pipeline called directly) against the studio's engine in fp16 (bf16
for FLUX), then with channels-last, and (`--compile`) with torch.compile; the ratios are against the diffusers default
in the same run. Also checks that fp16 SDXL decodes without NaNs (its VAE is upcast, `force_upcast`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROMPT = "a red marble table, soft light"


def product_photo(folder: Path) -> Path:
    """A 600x800 product photo on a plain background (a bottle with a label)."""
    pixels = np.full((800, 600, 3), 236, np.uint8)
    pixels[200:700, 200:400] = (200, 30, 35)
    pixels[400:500, 200:400] = (235, 210, 45)
    path = folder / "bottle.png"
    Image.fromarray(pixels).save(path)
    return path


def model_canvas(photo: Path, engine, size: int):
    """The canvas image and paint mask at the model's size, as the studio builds them for a creative."""
    from studio.imaging.creatives import CreativeSettings, build_canvas, model_inputs
    from studio.imaging.images import load_image

    return model_inputs(build_canvas(load_image(photo), CreativeSettings(size=size)), engine)


def timed_generate(engine, image, mask, *, steps: int, guidance: float, seed: int = 0):
    """Paint one image through the engine; return it and the clock after each denoising step."""
    from studio.imaging.engine import GenerationSettings

    clock = [time.perf_counter()]

    def on_step() -> bool:
        clock.append(time.perf_counter())
        return False  # never cancel: the hook is only a clock

    painted = engine.generate(image, mask, prompt=PROMPT, seed=seed, cancel=on_step,
                              settings=GenerationSettings(steps=steps, guidance=guidance))
    return painted, clock


def matmul_seconds(repeats: int = 5) -> float:
    """The median time of one 2048 x 2048 x 2048 fp32 matrix product: this machine's speed, right now."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def child(arch_name: str, folder: str, steps: int, guidance: float, photo: str) -> None:
    """One architecture in its own process: load through the studio, time the steps, print one JSON line."""
    import torch

    from studio.imaging.architectures import ARCHITECTURES
    from studio.imaging.engine import load_engine

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    engine = load_engine(folder, device="cpu", dtype="fp32")
    loaded = time.perf_counter() - started
    size = ARCHITECTURES[arch_name].native_size if arch_name in ARCHITECTURES else engine.native_size
    image, mask = model_canvas(Path(photo), engine, size)
    before = matmul_seconds()
    _, clock = timed_generate(engine, image, mask, steps=steps, guidance=guidance)
    matmul = statistics.median([before, matmul_seconds()])
    per_step = [b - a for a, b in itertools.pairwise(clock[1:])] or [clock[1] - clock[0]]  # after the first
    print(json.dumps({"load_s": loaded, "step_s": statistics.median(per_step), "size": size, "steps": steps,
                      "matmul_s": matmul}))


def run_child(arch_name: str, folder: Path, steps: int, guidance: float, photo: Path) -> dict:
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen([sys.executable, __file__, "--child", arch_name, str(folder), str(steps),
                                    str(guidance), str(photo)], stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        stdout.seek(0)
        stderr.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{arch_name} failed:\n{stderr.read().decode()[-3000:]}")
        result = json.loads(stdout.read().decode().strip().splitlines()[-1])
    result["peak_rss_gb"] = usage.ru_maxrss / 2**20
    return result


def cpu_table(names: list[str], steps: int) -> None:
    import shutil

    from studio.imaging.architectures import ARCHITECTURES

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photo = product_photo(scratch)
        print(f"CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {steps} steps, median s/step "
              "(the first step, which also encodes the prompt and the canvas, left out)")
        print(f"{'architecture':14} {'size':>5} {'s/step':>8} {'x matmul':>9} {'load s':>7} {'peak RSS GB':>12}")
        for name in names:
            arch = ARCHITECTURES[name]
            folder = scratch / name
            subprocess.run([sys.executable, "-m", "studio.imaging.architectures", name, str(folder)], check=True,
                           capture_output=True)
            guidance = 1.0 if name == "sdxl-inpaint" else arch.guidance  # SDXL at 1: one UNet pass per step
            row = run_child(name, folder, steps, guidance, photo)
            print(f"{name:14} {row['size']:5d} {row['step_s']:8.2f} {row['step_s'] / row['matmul_s']:9.0f} "
                  f"{row['load_s']:7.1f} {row['peak_rss_gb']:12.1f}", flush=True)
            shutil.rmtree(folder)


def gpu_rows(name: str, photo: Path, scratch: Path, steps: int, repeats: int, compile_: bool) -> None:
    """One architecture at full size on the GPU: diffusers' default, then the studio's engine settings."""
    import torch

    from studio.imaging.architectures import ARCHITECTURES, build_random_pipeline
    from studio.imaging.engine import Engine, EngineOptions, _apply_options

    def images_per_second(call) -> float:
        call()  # warm-up (and compilation)
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            started = time.perf_counter()
            call()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return 1 / statistics.median(times)

    arch = ARCHITECTURES[name]
    size = arch.native_size
    torch.cuda.reset_peak_memory_stats()
    pipeline = build_random_pipeline(name, scratch / name, full_depth=True, device="cuda", save=False)
    pipeline.set_progress_bar_config(disable=True)
    image, mask = model_canvas(photo, Engine(pipeline, name, folder=None, device="cuda", dtype=torch.float32), size)

    def plain() -> None:  # diffusers' defaults: fp32 weights, the pipeline called as its docs show
        pipeline(prompt=PROMPT, image=image, mask_image=mask, height=size, width=size, num_inference_steps=steps,
                 guidance_scale=arch.guidance, generator=torch.Generator("cpu").manual_seed(0))

    baseline = images_per_second(plain)
    rows = [("diffusers default (fp32)", baseline, torch.cuda.max_memory_allocated() / 2**30)]
    low = torch.bfloat16 if name == "flux-fill" else torch.float16
    pipeline.to(low)
    variants = [(f"studio {'bf16' if low == torch.bfloat16 else 'fp16'}", EngineOptions()),
                ("+ channels-last", EngineOptions(channels_last=True))]
    if compile_:
        variants.append(("+ channels-last + compile", EngineOptions(channels_last=True, compile=True)))
    for label, options in variants:
        torch.cuda.reset_peak_memory_stats()
        _apply_options(pipeline, options, "cuda")
        engine = Engine(pipeline, name, folder=None, device="cuda", dtype=low, options=options)
        rate = images_per_second(lambda e=engine: timed_generate(e, image, mask, steps=steps, guidance=arch.guidance))
        rows.append((label, rate, torch.cuda.max_memory_allocated() / 2**30))
    if name == "sdxl-inpaint":  # fp16 SDXL: the VAE must not overflow into NaNs
        with torch.inference_mode():
            array = pipeline(prompt=PROMPT, image=image, mask_image=mask, height=size, width=size,
                             num_inference_steps=2, output_type="np",
                             generator=torch.Generator("cpu").manual_seed(0)).images
        print(f"sdxl-inpaint fp16: output finite: {bool(np.isfinite(array).all())}; VAE config force_upcast="
              f"{pipeline.vae.config.force_upcast}")
    for label, rate, peak in rows:
        print(f"{name:14} {size:5d} {label:34} {rate:9.3f} {rate / baseline:10.2f} {peak:8.1f}", flush=True)


def gpu_table(names: list[str], steps: int, repeats: int, compile_: bool) -> None:
    import torch

    print(f"GPU {torch.cuda.get_device_name()}; {steps} steps per image, median of {repeats}, batch 1")
    print(f"{'architecture':14} {'size':>5} {'settings':34} {'images/s':>9} {'x default':>10} {'peak GB':>8}")
    with tempfile.TemporaryDirectory() as scratch:
        photo = product_photo(Path(scratch))
        for name in names:
            gpu_rows(name, photo, Path(scratch), steps, repeats, compile_)
            torch.cuda.empty_cache()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, name, folder, steps, guidance, photo = sys.argv
        child(name, folder, int(steps), float(guidance), photo)
        return 0
    from studio.imaging.architectures import ARCHITECTURES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES), help="comma-separated names")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 3 on CPU, 20 on GPU)")
    parser.add_argument("--repeats", type=int, default=3, help="GPU: timed images per setting, after a warm-up")
    parser.add_argument("--compile", action="store_true", help="GPU: add a torch.compile row")
    args = parser.parse_args()
    names = [name.strip() for name in args.architectures.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ARCHITECTURES))
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; choose from {', '.join(ARCHITECTURES)}")
    from studio.core.quiet import quiet_libraries

    quiet_libraries()
    if args.device == "cuda":
        gpu_table(names, args.steps or 20, args.repeats, args.compile)
    else:
        cpu_table(names, args.steps or 3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
