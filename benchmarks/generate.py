"""Benchmark: the studio's creative path against a plain diffusers pipeline call on the same model.

Both sides paint the same model-size canvas with the same prompt, seeds, scheduler and step count. The studio side
adds everything a user gets on top (loading the photo, finding the product, placement, paste-back at full resolution,
a lossless PNG with its recipe written atomically). Runs alternate between the two sides so background load hits both
alike. Prints medians per image, the overhead ratio (goal <= 1.10) and the process's peak RSS.

    python benchmarks/generate.py                  # the default model (studio-mini, or the tiny random pipeline)
    python benchmarks/generate.py --model PATH --steps 30 --size 1024 --batches 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def product_photo(folder: Path) -> Path:
    """A 600x800 product photo on a plain background (a bottle with a label)."""
    pixels = np.full((800, 600, 3), 236, np.uint8)
    pixels[200:700, 200:400] = (200, 30, 35)
    pixels[120:200, 260:340] = (200, 30, 35)
    pixels[400:500, 200:400] = (235, 210, 45)
    path = folder / "bottle.png"
    Image.fromarray(pixels).save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="hub id or folder (default: studio.imaging.engine.default_model())")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=4, help="creatives per batch (one generate_creatives call)")
    parser.add_argument("--batches", type=int, default=5, help="timed batches per side, after one warm-up each")
    parser.add_argument("--size", type=int, default=1024, help="long side of the creative, in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--prompt", default="a teal marble table, soft light")
    args = parser.parse_args()

    import torch

    from studio.imaging.canvas import model_size
    from studio.imaging.creatives import CreativeSettings, build_canvas, generate_creatives
    from studio.imaging.engine import default_model, load_engine
    from studio.imaging.images import load_image

    torch.set_num_threads(args.threads)
    model = args.model or default_model()
    engine = load_engine(model)
    pipeline = engine.pipeline

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photo = product_photo(scratch)

        # The plain call's inputs: the very canvas the studio builds, shrunk to the model size.
        settings = CreativeSettings(steps=args.steps, size=args.size)
        canvas = build_canvas(load_image(photo), settings)
        width, height = model_size(canvas.size, multiple=engine.size_multiple, max_side=engine.native_size)
        image = canvas.image.resize((width, height), Image.Resampling.LANCZOS)
        mask = canvas.paint_mask.resize((width, height), Image.Resampling.BILINEAR)

        def plain_batch(seed: int) -> None:
            for index in range(args.n):
                generator = torch.Generator("cpu").manual_seed(seed + index)
                with torch.inference_mode():
                    pipeline(
                        prompt=args.prompt, image=image, mask_image=mask, height=height, width=width,
                        num_inference_steps=args.steps, guidance_scale=7.5, generator=generator,
                    )

        parts: dict[str, list[float]] = {"generate": [], "paste": [], "write": []}

        def studio_batch(seed: int) -> None:
            # The photo's path, not the canvas: the studio side pays for decoding and placing it, as a user does.
            creatives = generate_creatives(
                photo, args.prompt, settings=settings, n=args.n, seed=seed, engine=engine,
                out_dir=scratch / f"out-{seed}", progress=False,
            )
            for creative in creatives:
                for key in parts:
                    parts[key].append(creative.timings[key])

        def timed(batch, seed: int) -> float:
            started = time.perf_counter()
            batch(seed)
            return (time.perf_counter() - started) / args.n

        timed(plain_batch, 0), timed(studio_batch, 0)  # warm-up: first-call allocations, caches
        plain, studio = [], []
        for repeat in range(1, args.batches + 1):
            plain.append(timed(plain_batch, repeat * 100))
            studio.append(timed(studio_batch, repeat * 100))

    plain_median, studio_median = statistics.median(plain), statistics.median(studio)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"model: {model} (random_init={engine.random_init}), device={engine.device}, threads={args.threads}")
    print(f"creative {canvas.size[0]}x{canvas.size[1]}, painted at {width}x{height}, {args.steps} steps, "
          f"{args.n} images x {args.batches} batches per side")
    print(f"plain pipeline call : median {plain_median:.3f} s/image")
    print(f"studio creative path: median {studio_median:.3f} s/image")
    breakdown = ", ".join(f"{key} {statistics.median(values[args.n:]):.3f} s" for key, values in parts.items())
    print(f"  studio per image  : {breakdown} (paste and write overlap the next image's generation)")
    print(f"overhead ratio      : {studio_median / plain_median:.3f}  (goal <= 1.10)")
    print(f"peak RSS            : {peak_mib:.0f} MiB")
    print(f"load average        : {' '.join(f'{value:.1f}' for value in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
