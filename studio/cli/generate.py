"""`studio generate` (product photo -> creatives with provenance) and `studio inspect` (read a creative's recipe)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from studio.cli import arguments
from studio.cli.output import emit, printable
from studio.core.atomic import check_output_folder

PLACEMENTS = ("1:1", "4:5", "16:9", "9:16")


def register(subparsers) -> None:
    generate = subparsers.add_parser(
        "generate",
        help="paint scenes around a product photo and write creatives (PNG with their recipe)",
        description="Paint scenes around a product photo; the product's pixels are kept bit-exact.",
    )
    generate.add_argument("--product", required=True, help="product photo (PNG with transparency, or plain background)")
    generate.add_argument("--prompt", required=True, help="the scene to paint, e.g. 'a red marble table, soft light'")
    generate.add_argument("--mode", choices=("background", "outpaint"), default="background")
    generate.add_argument("--placement", choices=PLACEMENTS, default="1:1", help="aspect ratio of the creative")
    generate.add_argument("--n", type=arguments.whole(1, 64), default=4,
                          help="how many creatives (seeds SEED, SEED+1, ...)")
    generate.add_argument("--seed", type=arguments.seed, default=0)
    generate.add_argument("--model", default=None,
                          help="hub id, pipeline folder or single-file checkpoint (.safetensors/.ckpt; needs "
                               "--model-config) (default: the embedded model)")
    generate.add_argument("--model-config", default=None,
                          help="for a single-file --model: a local diffusers folder of the same architecture")
    generate.add_argument("--steps", type=arguments.whole(1, 1000), default=30)
    generate.add_argument("--guidance", type=arguments.number(0, 50), default=None,
                          help="classifier-free guidance scale (default: the model's own: 7.5 unless its studio.json "
                               "declares one)")
    generate.add_argument("--strength", type=arguments.number(0.01, 1), default=1.0)
    generate.add_argument("--scheduler", default=None, help="ddim, dpm++, euler, euler-a (default: the model's)")
    generate.add_argument("--negative-prompt", default="")
    generate.add_argument("--lora", default=None, help="LoRA weights file or folder")
    generate.add_argument("--lora-scale", type=arguments.number(-10, 10), default=1.0)
    generate.add_argument("--mask", default=None, help="product mask image (white = product)")
    generate.add_argument("--extend", default=None, help="outpaint: pixels per side, e.g. left=256,right=256")
    generate.add_argument("--size", type=arguments.whole(64, 4096, " pixels"), default=1024,
                          help="long side of a background creative, in pixels")
    generate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    generate.add_argument("--dtype", default="auto", help="auto, fp32, fp16 or bf16")
    generate.add_argument("--threads", type=arguments.whole(1, 256), default=None,
                          help="torch CPU threads (default: 1 for small models such as studio-mini, else all cores)")
    personal = generate.add_argument_group("personal conditions (DiFashion-style; each is recorded in the recipe)")
    source = personal.add_mutually_exclusive_group()
    source.add_argument("--history", metavar="DIR", default=None,
                        help="a folder of creatives a group clicked: paint for that group's taste")
    source.add_argument("--history-group", metavar="G", default=None,
                        help="the clicked creatives of group G of the simulated world (see --history-world)")
    personal.add_argument("--history-world", metavar="DIR", default=None,
                          help="the simulated world for --history-group (default: a seeded one in the user cache)")
    personal.add_argument("--history-guidance", type=arguments.number(0, 20), default=0.0,
                          help="guidance scale of the history condition (0: text only)")
    personal.add_argument("--category", default=None, help="product category condition, e.g. beverage")
    personal.add_argument("--category-guidance", type=arguments.number(0, 20), default=0.0,
                          help="guidance scale of the category condition (0: left out)")
    arguments.history_variant(personal)
    personal.add_argument("--history-adapter", metavar="DIR", default=None,
                          help="history adapter: a PersonalConditioner (studio-mini) or an IP-Adapter folder "
                               "(ip-adapter.safetensors + image_encoder/); default: the model's own")
    speed = generate.add_argument_group("memory and speed (each is recorded in the recipe)")
    speed.add_argument("--attention-slicing", action="store_true", help="attention in slices: less peak memory")
    speed.add_argument("--vae-tiling", action="store_true", help="VAE tile by tile: bounded memory on large canvases")
    speed.add_argument("--cpu-offload", choices=("model", "sequential"), default=None,
                       help="keep only the running model (or layer) on the GPU: for small GPUs")
    speed.add_argument("--channels-last", action="store_true", help="channels-last convolutions (GPUs)")
    speed.add_argument("--compile", action="store_true", help="torch.compile the denoiser (first image pays for it)")
    generate.add_argument("--out", required=True, help="output folder")
    generate.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    generate.set_defaults(func=run_generate)

    inspect = subparsers.add_parser(
        "inspect", help="print a creative's recipe, check its content credentials, read its watermark",
        description="Print the recipe stored in a creative, verify its C2PA credentials (a tampered file is an "
                    "error) and, with --watermark, read the invisible watermark (also from a re-encoded JPEG).")
    inspect.add_argument("png", help="a creative written by the studio (PNG; JPEG/WebP for --watermark)")
    inspect.add_argument("--json", action="store_true", help="print the recipe as JSON")
    inspect.add_argument("--watermark", action="store_true", help="read the watermark and check it against the recipe")
    inspect.set_defaults(func=run_inspect)


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from studio.imaging.creatives import (
        CreativeSettings,
        build_canvas,
        generate_creatives,
    )
    from studio.imaging.engine import MASK_BLENDING, RANDOM_INIT_NOTE, EngineOptions, LoraSpec, load_engine
    from studio.imaging.images import load_image
    from studio.imaging.threads import cpu_threads

    # The photo and the settings are checked before the model loads, so a bad input fails fast.
    product = load_image(args.product)
    mask = load_image(args.mask) if args.mask else None
    settings = CreativeSettings(
        mode=args.mode,
        placement=args.placement,
        size=args.size,
        extend=args.extend,
        steps=args.steps,
        guidance=args.guidance,
        strength=args.strength,
        scheduler=args.scheduler,
        negative_prompt=args.negative_prompt,
        lora=LoraSpec(args.lora, args.lora_scale) if args.lora else None,
        history=_history(args),
        history_guidance=args.history_guidance,
        category=args.category,
        category_guidance=args.category_guidance,
        history_adapter=args.history_adapter,
        history_projection=args.history_projection,
        history_interval=args.history_interval,
    )
    settings.check()
    check_output_folder(args.out)
    canvas = build_canvas(product, settings, mask=mask)  # a bad photo, mask or extension fails before the model loads
    torch.set_num_threads(cpu_threads(args.model, args.threads))
    options = EngineOptions(attention_slicing=args.attention_slicing, vae_tiling=args.vae_tiling,
                            cpu_offload=args.cpu_offload, channels_last=args.channels_last, compile=args.compile)
    engine = load_engine(args.model, device=args.device, dtype=args.dtype, options=options,
                         model_config=args.model_config)
    creatives = generate_creatives(
        canvas,
        args.prompt,
        settings=settings,
        n=args.n,
        seed=args.seed,
        engine=engine,
        out_dir=args.out,
        name=Path(args.product).stem,
        progress=True,
    )
    first = creatives[0].recipe
    summary = {
        "model": first.model,
        "weights_hash": first.weights_hash,
        "random_init": first.random_init,
        "inpaint_method": first.inpaint_method,
        "engine_options": first.engine_options,
        "history": first.history,
        "history_guidance": first.history_guidance,
        "category": first.category,
        "category_guidance": first.category_guidance,
        "prompt_reading": first.prompt_reading,
        "note": RANDOM_INIT_NOTE if first.random_init else None,
        "creatives": [
            {"path": str(c.path), "seed": c.recipe.seed, "size": list(c.image.size), "timings_s": c.timings}
            for c in creatives
        ],
    }
    emit(summary, args.json, (f"{c.path}  seed={c.recipe.seed}  {c.timings['total']:.2f}s" for c in creatives))
    if first.random_init:
        print(f"studio: note: {RANDOM_INIT_NOTE}", file=sys.stderr)
    if first.prompt_reading:
        reading = first.prompt_reading
        mapped = "".join(f"; {word!r} read as {colour!r}" for word, colour in reading["prompt_replaced"].items())
        left_out = f"; left out: {', '.join(reading['prompt_dropped'])}" if reading["prompt_dropped"] else ""
        print(f"studio: note: the model reads only its own colours (and words) and read the prompt as "
              f"{reading['prompt_read']!r}"
              f"{mapped}{left_out} (docs/generation.md#what-studio-mini-reads)", file=sys.stderr)
    if first.inpaint_method == MASK_BLENDING:
        print("studio: note: a text-to-image model (4-channel UNet): painted with mask blending, which matches the "
              "product's surroundings less well than an inpainting model", file=sys.stderr)
    return 0


def _history(args: argparse.Namespace):
    """The history the flags name: a folder, a simulated group's clicks, or None."""
    if args.history is not None:
        return args.history
    if args.history_group is None:
        return None
    from studio.sim.histories import history_for_group

    return history_for_group(args.history_group, args.history_world)


def run_inspect(args: argparse.Namespace) -> int:
    from studio.imaging.engine import RANDOM_INIT_NOTE
    from studio.imaging.provenance import inspect_creative

    found = inspect_creative(args.png, read_watermark=args.watermark)
    recipe = found.recipe
    if args.json:
        summary = dataclasses.asdict(recipe) if recipe is not None else {}
        if args.watermark or found.credentials is not None:  # the plain recipe JSON stays as it was
            summary = {"recipe": summary or None,
                       "credentials": None if found.credentials is None else dataclasses.asdict(found.credentials),
                       "watermark": None if found.watermark is None else
                       {"id": found.watermark.hex, "z": round(found.watermark.z, 1), "scale": found.watermark.scale}}
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    if recipe is not None:
        for key, value in dataclasses.asdict(recipe).items():
            print(f"{key:16} {printable(value)}")  # a recipe is data from a file: never let it drive the terminal
        if recipe.random_init:
            print(f"note: {RANDOM_INIT_NOTE}")
    credentials = found.credentials
    if credentials is None:
        print("credentials      none (unsigned: no C2PA manifest)")
    else:
        print(f"credentials      {credentials.state}: signed by {printable(credentials.signer)} "
              f"({printable(credentials.issuer)}), source type {printable(credentials.source_type)}")
    if found.watermark is not None:
        print(f"watermark        id {found.watermark.hex} (sync score {found.watermark.z:.1f}, "
              f"scale {found.watermark.scale:g})")
    return 0
