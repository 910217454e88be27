"""`python -m studio.training.mini --v2 --device cuda --minutes 7 --out DIR`: the studio-mini v2 run, one command.

The v1 recipe, where the shipped v2 started, stays `studio train-mini`. Prints JSON lines while training and the
gate's JSON at the end; --gate-only MODEL runs the v2 gate on an existing folder (e.g. a v1 one, as a baseline).
"""

from __future__ import annotations

import argparse
import json
import sys

from studio.core.errors import InputError, StudioError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio.training.mini", description=__doc__.splitlines()[0])
    parser.add_argument("--v2", action="store_true", help="the v2 recipe (timed run, 77-token CLIP BPE, buckets)")
    parser.add_argument("--out", default="runs/studio-mini-v2", help="run folder (v2: OUT/model is the pipeline)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--minutes", type=float, default=6.0, help="training wall-clock budget (v2)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (v2)")
    parser.add_argument("--batch-size", type=int, default=None, help="v2 default: 256")
    parser.add_argument("--side", type=int, default=None, help="native pixel budget, side x side (v2 default 64)")
    parser.add_argument("--workers", type=int, default=None, help="dataloader processes (default: CPUs-2 on cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--decoder-share", type=float, default=None,
                        help="v2: share of the budget spent first on fine-tuning the VAE decoder (default 0.2; 0: off)")
    parser.add_argument("--decoder-gradient-weight", type=float, default=None,
                        help="v2: weight of the decoder stage's neighbouring-pixel-difference term (default 10; 0: off)")
    parser.add_argument("--init-from", default=None,
                        help="pipeline folder to start from: a v1 one (studio train-mini writes RUN/model; the shipped "
                             "v2 started from one) or a v2 one, to fine-tune it, its text encoder too (default: the "
                             "shipped studio-mini, v2)")
    parser.add_argument("--heldout", default=None, help="held-out image folder from --export-heldout")
    parser.add_argument("--no-select", action="store_true",
                        help="v2: do not choose the model's guidance scale on the selection probe (it paints at 7.5)")
    parser.add_argument("--no-gate", action="store_true", help="skip the gate after training")
    parser.add_argument("--gate-quick", action="store_true", help="a small gate (smoke test, not a measurement)")
    parser.add_argument("--gate-only", default=None, metavar="MODEL", help="only run the v2 gate on MODEL")
    parser.add_argument("--pack", action="store_true",
                        help="v2: leave OUT/studio-mini-v2.tar.NN parts (<16 MiB each) instead of OUT/model")
    parser.add_argument("--export-heldout", default=None, metavar="DIR", help="write the held-out images to DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.export_heldout:
            from studio.training.mini.v2_heldout import export_heldout

            print(json.dumps({"heldout": str(export_heldout(args.export_heldout))}))
            return 0
        if args.gate_only:
            from studio.training.mini.v2_gate import evaluate_v2

            print(json.dumps(evaluate_v2(args.gate_only, device=args.device, quick=args.gate_quick,
                                         heldout=args.heldout), indent=1))
            return 0
        if not args.v2:
            raise InputError("pass --v2 for the v2 recipe; the v1 recipe is `studio train-mini`")
        from studio.training.mini.v2_run import V2Recipe, train_v2

        recipe = V2Recipe()
        for field, value in (("batch_size", args.batch_size), ("side", args.side), ("init_from", args.init_from),
                             ("decoder_share", args.decoder_share),
                             ("decoder_gradient_weight", args.decoder_gradient_weight)):
            if value is not None:
                setattr(recipe, field, value)
        report = train_v2(args.out, device=args.device, minutes=args.minutes, recipe=recipe, workers=args.workers,
                          max_steps=args.max_steps, gate=not args.no_gate, gate_quick=args.gate_quick,
                          heldout=args.heldout, threads=args.threads, pack=args.pack, select=not args.no_select)
        print(json.dumps(report.get("gate", report), indent=1))
        return 0
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
