"""Benchmark: torch CPU threads for the embedded generator, 1 thread against all cores, on an idle and a busy machine.

One process, one model, the same creative (studio generate's defaults: 30 steps, 512 x 512 output) painted in turns
with 1 and with all cores' threads; then again while a second process keeps one core busy (what a shared 2-core
machine looks like). Prints the median seconds per creative and the ratio all-cores / 1-thread for each condition,
and whether the pixels differ between thread counts.

    python benchmarks/threads.py [--runs 5] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import numpy as np
import torch

from studio.imaging.creatives import CreativeSettings, build_canvas, generate_creatives
from studio.imaging.engine import default_model, load_engine
from studio.sim.renderer import render_product


def spin(stop) -> None:
    """Keep one core busy until told to stop."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def paint(engine, canvas, threads: int) -> tuple[float, np.ndarray]:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    creative = generate_creatives(canvas, "a teal marble backdrop, soft light", settings=CreativeSettings(size=512),
                                  n=1, seed=0, engine=engine, progress=False)[0]
    return time.perf_counter() - started, np.asarray(creative.image)


def measure(engine, canvas, runs: int, cores: int) -> dict:
    seconds = {1: [], cores: []}
    pixels = {}
    for _ in range(runs):
        for threads in (1, cores):  # alternate, so load changes hit both alike
            elapsed, pixels[threads] = paint(engine, canvas, threads)
            seconds[threads].append(elapsed)
    one, many = statistics.median(seconds[1]), statistics.median(seconds[cores])
    return {"1 thread s": round(one, 3), f"{cores} threads s": round(many, 3), "ratio": round(many / one, 2),
            "max pixel difference": int(np.abs(pixels[1].astype(int) - pixels[cores].astype(int)).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    engine = load_engine(args.model or default_model())
    canvas = build_canvas(render_product("bottle", size=256, seed=0), CreativeSettings(size=512))  # RGBA: the mask
    paint(engine, canvas, 1)  # warm-up
    print(f"model {engine.model}; {cores} cores; load average {os.getloadavg()[0]:.2f} at start")
    print("idle:", measure(engine, canvas, args.runs, cores))
    stop = multiprocessing.Event()
    hog = multiprocessing.Process(target=spin, args=(stop,), daemon=True)
    hog.start()
    try:
        print("busy (one core taken by another process):", measure(engine, canvas, args.runs, cores))
    finally:
        stop.set()
        hog.join()


if __name__ == "__main__":
    main()
