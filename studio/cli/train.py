"""`studio train`, `studio train-mini` and `studio eval-mini`: fine-tune generators and rebuild the embedded one."""

from __future__ import annotations

import argparse

from studio.cli.output import emit


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="fine-tune an inpainting model (full or LoRA) on a folder of images + captions, or on renders",
        description="Fine-tune the UNet of a diffusers inpainting pipeline. DIR holds name.png + name.txt (caption) "
                    "+ optional name.mask.png (white on the product); 'renderer' uses procedural scenes.")
    train.add_argument("--data", required=True, help="a folder of images + .txt captions, or 'renderer'")
    train.add_argument("--model", default=None, help="hub id or pipeline folder (default: the studio's default model)")
    train.add_argument("--out", required=True, help="output folder (checkpoints in OUT/checkpoints, result in OUT/final)")
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of the whole UNet")
    train.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    train.add_argument("--steps", type=int, default=500, help="optimiser steps (default 500)")
    train.add_argument("--batch-size", type=int, default=4)
    train.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4 LoRA, 1e-5 full)")
    train.add_argument("--accumulate", type=int, default=1, help="gradient accumulation steps")
    train.add_argument("--resolution", type=int, default=None, help="training size in px (default: the model's)")
    train.add_argument("--ema", type=float, default=None, help="EMA decay of the UNet weights (full mode), e.g. 0.999")
    train.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="GPU only")
    train.add_argument("--checkpoint-every", type=int, default=100)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(func=run_train)

    mini = subparsers.add_parser(
        "train-mini", help="train studio-mini v1 from scratch (resumable): the start of the v2 recipe",
        description="Runs or resumes the studio-mini v1 recipe in RUN and exports the best pipeline to --export. The "
                    "shipped studio-mini is v2, fine-tuned from a v1 model by python -m studio.training.mini --v2.")
    mini.add_argument("--run", default="runs/studio-mini", help="run folder (default runs/studio-mini)")
    mini.add_argument("--export", default=None, help="model folder to write (default: RUN/model)")
    mini.add_argument("--unet-steps", type=int, default=None, help="override the recipe's UNet step budget")
    mini.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    mini.add_argument("--export-best", action="store_true",
                      help="only copy the run's best pipeline so far (RUN/best) to the model folder, then stop")
    mini.add_argument("--json", action="store_true")
    mini.set_defaults(func=run_train_mini)

    gate = subparsers.add_parser(
        "eval-mini", help="the studio-mini quality gate: colour/material adherence, bit-exact product, latency",
        description="Benchmarks a studio-mini pipeline folder against the gate (not a test; takes minutes).")
    gate.add_argument("--model", default=None, help="pipeline folder (default: studio/models/studio-mini)")
    gate.add_argument("--steps", type=int, default=30, help="inference steps (default 30, as studio generate)")
    gate.add_argument("--guidance", type=float, default=None,
                      help="guidance scale (default: the model's own, as studio generate)")
    gate.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: the latency goal's cores)")
    gate.add_argument("--v2", action="store_true",
                      help="the independent v2 gate (held-out cut-outs and photos, every aspect ratio, natural prompts "
                           "and synonyms, ghost and seam, latency and memory) on --model (default: the shipped v2)")
    gate.add_argument("--heldout", default=None,
                      help="with --v2: the held-out images (python -m studio.training.mini --export-heldout DIR; "
                           "default: the sample images of the installed packages)")
    gate.add_argument("--quick", action="store_true", help="with --v2: fewer cases (a smoke test, not a measurement)")
    gate.add_argument("--json", action="store_true")
    gate.set_defaults(func=run_eval_mini)


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from studio.core.errors import InputError
    from studio.training.trainer import FolderData, InpaintingTrainer, RendererData, TrainConfig, load_pipeline

    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr or (1e-4 if args.lora else 1e-5),
        gradient_accumulation_steps=args.accumulate, lora=args.lora, lora_rank=args.rank,
        resolution=args.resolution, ema_decay=args.ema, mixed_precision=args.mixed_precision, seed=args.seed,
        checkpoint_every=args.checkpoint_every)
    if args.model is None:
        from studio.imaging.engine import default_model

        args.model = default_model()
    data = None if args.data == "renderer" else FolderData(args.data)
    out = Path(args.out)
    if out.exists() and not args.resume and any(out.glob("checkpoints/step-*")):
        raise InputError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out")
    pipeline = load_pipeline(args.model)
    if data is None:  # render at the size the model trains at, rather than resampling small renders
        data = RendererData(seed=args.seed, size=args.resolution or pipeline.vae.config.sample_size)
    trainer = InpaintingTrainer(pipeline, config)
    trainer.fit(data, out, resume=args.resume, progress=not args.json)
    final = trainer.save(out / "final")
    result = {"model": str(args.model), "mode": "lora" if args.lora else "full", "steps": trainer.step_,
              "first_loss": trainer.losses_[0] if trainer.losses_ else None,
              "last_loss": trainer.losses_[-1] if trainer.losses_ else None, "saved": str(final)}
    emit(result, args.json)
    return 0


def run_train_mini(args: argparse.Namespace) -> int:
    from pathlib import Path

    from studio.training.mini import MiniRecipe, export_model, train_mini

    export = args.export or Path(args.run) / "model"
    if args.export_best:
        folder = export_model(Path(args.run) / "best", export)
        emit({"exported": str(folder)}, args.json)
        return 0
    recipe = MiniRecipe() if args.unet_steps is None else MiniRecipe(unet_steps=args.unet_steps)
    result = train_mini(args.run, export=export, recipe=recipe, threads=args.threads,
                        progress=not args.json)
    emit(result, args.json)
    return 0


def run_eval_mini(args: argparse.Namespace) -> int:
    from studio.core.errors import InputError
    from studio.imaging.engine import model_guidance
    from studio.training.mini import MODEL_FOLDER, evaluate_mini

    if args.v2:
        import torch

        from studio.training.mini.v2_gate import evaluate_v2

        torch.set_num_threads(args.threads)
        report = evaluate_v2(args.model or MODEL_FOLDER, steps=args.steps, guidance=args.guidance, quick=args.quick,
                             heldout=args.heldout, progress=not args.json)
        emit(report, args.json)
        return 0
    if args.heldout or args.quick:
        raise InputError("--heldout and --quick go with --v2")
    model = args.model or MODEL_FOLDER
    guidance = model_guidance(str(model)) if args.guidance is None else args.guidance
    report = evaluate_mini(model, steps=args.steps, guidance=guidance,
                           threads=args.threads, progress=not args.json)
    emit(report, args.json)
    return 0
