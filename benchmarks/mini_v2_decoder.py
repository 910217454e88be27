"""Does fine-tuning studio-mini's VAE decoder lower the ghost's VAE floor, and does the gradient term help?

One run, one start: the --init-from VAE's floor (the baseline), then a copy of it after `finetune_decoder` for
--seconds with each --weights value of `decoder_gradient_weight` (0 = MSE + L1 only), same data, same seed. The floor
is measured at seeds off the gate's (renderer products on plain studio sweeps; no held-out cut-outs or photos), so
choosing a recipe with it does not touch the gate. Prints JSON. Conditions go next to the figures
(docs/training.md#studio-mini-v2).

    OMP_NUM_THREADS=1 python benchmarks/mini_v2_decoder.py --seconds 300 --weights 0 3 10
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from studio.training.mini.v2_data import batch_stream
from studio.training.mini.v2_gate import vae_floors
from studio.training.mini.v2_run import V2Recipe, build_v2_pipeline, finetune_decoder

SELECTION_SEED_BASE = 10**6  # the gate's seeds start at 2**30


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init-from", default=V2Recipe.init_from, help="pipeline folder (default: shipped v1)")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 3.0, 10.0])
    parser.add_argument("--batch-size", type=int, default=V2Recipe.decoder_batch_size)
    parser.add_argument("--lr", type=float, default=V2Recipe.decoder_lr)
    args = parser.parse_args()
    torch.set_num_threads(1)
    floor = lambda pipeline: vae_floors(pipeline, seed_base=SELECTION_SEED_BASE, real=False)["ghost_vae_floor"]
    with tempfile.TemporaryDirectory() as scratch:
        pipeline = build_v2_pipeline(V2Recipe(init_from=args.init_from), Path(scratch))
        start = copy.deepcopy(pipeline.vae.state_dict())
        report = {"init_from": args.init_from, "seconds": args.seconds, "batch_size": args.batch_size,
                  "lr": args.lr, "ghost_vae_floor": {"before": floor(pipeline)}, "decoder": {}}
        for weight in args.weights:
            pipeline.vae.load_state_dict(start)
            recipe = V2Recipe(decoder_batch_size=args.batch_size, decoder_lr=args.lr, decoder_gradient_weight=weight)
            images = iter(batch_stream(recipe.side, recipe.decoder_batch_size, recipe.seed + 1, 0))
            report["decoder"][weight] = finetune_decoder(
                pipeline.vae, images, args.seconds, recipe, "cpu", torch.autocast("cpu", enabled=False),
                Path(scratch) / "log.jsonl", lambda *a, **k: None)
            report["ghost_vae_floor"][f"gradient weight {weight:g}"] = floor(pipeline)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
