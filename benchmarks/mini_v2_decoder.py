"""Does fine-tuning studio-mini's VAE decoder on the v2 data lower the gate's VAE floors (ghost, seam)?

Baseline and candidate in one run: the shipped v1 VAE's floors, then the same VAE after `finetune_decoder` for
--seconds on the CPU (batch --batch-size, v2 data drawn in-process). Prints JSON. Conditions go next to the figures
(docs/training.md#studio-mini-v2).

    OMP_NUM_THREADS=1 python benchmarks/mini_v2_decoder.py --seconds 180 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from studio.training.mini.v2_data import batch_stream
from studio.training.mini.v2_gate import vae_floors
from studio.training.mini.v2_run import V2Recipe, build_v2_pipeline, finetune_decoder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = V2Recipe(batch_size=args.batch_size, decoder_lr=args.lr)
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = build_v2_pipeline(recipe, Path(scratch))
        before = vae_floors(pipeline)
        batches = iter(batch_stream(recipe.side, recipe.batch_size, recipe.seed, 0))
        trained = finetune_decoder(pipeline.vae, batches, args.seconds, recipe, "cpu",
                                   torch.autocast("cpu", enabled=False), Path(scratch) / "log.jsonl",
                                   lambda *a, **k: None)
        after = vae_floors(pipeline)
    print(json.dumps({"v1_vae": before, "decoder_finetuned": after, "decoder": trained,
                      "batch_size": args.batch_size, "lr": args.lr}, indent=1))


if __name__ == "__main__":
    main()
