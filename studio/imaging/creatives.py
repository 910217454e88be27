"""The batch job users run (from the CLI and the UI): one product photo in, n creatives with provenance out.

    load_image -> product_mask -> place_product | outpaint_canvas -> model size -> engine -> paste_back -> PNG + recipe

`generate_creatives(product_or_canvas, prompt, settings=CreativeSettings(...), n=4, seed=0)` is called like a diffusers
pipeline: the inputs, one settings object, and a body of numbered steps. The photo is decoded once, where it enters;
a caller painting many prompts around one product (the campaign) builds the canvas once with `build_canvas` and passes
it instead of the photo.

The product's pixels come out bit-exact. Files are written into a hidden folder inside `out_dir` and moved into place
only when the whole batch has succeeded, so a bad input, a cancel or a crash leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from studio.core.atomic import new_staging
from studio.core.errors import InputError
from studio.imaging.canvas import (
    SIDES,
    Canvas,
    extend_to_aspect,
    model_size,
    outpaint_canvas,
    paste_back,
    place_product,
    product_mask,
)
from studio.imaging.engine import CancelHook, Engine, GenerationSettings, LoraSpec, load_engine
from studio.imaging.images import ImageSource, load_image
from studio.imaging.personal import check_category, load_history
from studio.imaging.provenance import Recipe, save_png, weights_hash

MODES = ("background", "outpaint")
MAX_IMAGES = 64
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes seeds up to here


@dataclass
class CreativeSettings(GenerationSettings):
    """Everything but the prompt and the seed that decides a creative: one object, passed on to the engine as is.

    The sampler settings are `GenerationSettings`' own (steps, guidance, strength, scheduler, negative_prompt); added:

    mode:      "background" places the cut-out product on a new frame of aspect `placement` ("1:1", "4:5", "16:9",
               "9:16"), `size` pixels on the long side, the product `scale` of the frame with its centre at
               `position` (x, y fractions of the frame); "outpaint" extends the
               photo's frame by `extend` ({"left": 256} or "left=256,right=256"), or to aspect `placement` when
               `extend` is None.
    lora:      a LoRA weights file or folder and its strength, or None for the bare model.
    history:   the creatives a group clicked (a folder, a list of images or a `studio.imaging.personal.History`),
               guided by `history_guidance`; None paints from the text alone. category: the product category,
               guided by `category_guidance`. history_adapter: the history adapter folder (None: the model's own).
    """

    mode: str = "background"
    placement: str = "1:1"
    size: int = 1024
    scale: float | None = 0.6
    position: tuple[float, float] = (0.5, 0.55)
    extend: dict[str, int] | str | None = None
    lora: LoraSpec | None = None
    history: Any = None
    category: str | None = None
    history_adapter: str | None = None

    def check(self) -> None:
        """Raise InputError for settings that cannot make a creative (before any photo is decoded or model loads)."""
        if self.mode not in MODES:
            raise InputError(f"mode must be 'background' or 'outpaint', got {self.mode!r}")
        super().check()
        if self.lora is not None:
            self.lora.check()
            if not Path(self.lora.path).expanduser().exists():
                raise InputError(f"LoRA {str(self.lora.path)!r} does not exist; pass a LoRA weights file or folder")
        check_category(self.category)
        if self.history is not None:
            self.history = load_history(self.history)  # decoded once, here


@dataclass
class Creative:
    """One generated creative.

    image: PIL RGB at the creative's full size, product pixels bit-exact. recipe: how it was made (also inside the PNG).
    path: where the PNG was written (None without `out_dir`). timings: seconds spent in "generate" (the diffusion
    pipeline), "paste" (paste-back), "write" (PNG encoding) and "total".
    """

    image: Image.Image
    recipe: Recipe
    path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    keep: np.ndarray | None = None  # the product's pixels (Canvas.keep): encode_png never watermarks them


def parse_extend(text: str) -> dict[str, int]:
    """Parse an outpaint extension such as "left=256,right=256" into {"left": 256, "right": 256}."""
    amounts: dict[str, int] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        match = re.fullmatch(r"(left|right|top|bottom)\s*=\s*(\d+)", part)
        if match is None:
            raise InputError(f"cannot read extension {part!r}; write it like left=256,right=256 (pixels per side)")
        amounts[match.group(1)] = int(match.group(2))
    if not amounts:
        raise InputError("the extension is empty; write it like left=256,right=256 (pixels per side)")
    return amounts


def build_canvas(
    image: Image.Image, settings: CreativeSettings, *, mask: ImageSource | np.ndarray | None = None
) -> Canvas:
    """The canvas `settings` asks for, around a photo as `load_image` returned it.

    `mask` (white/True = product) is for background mode, when the photo has neither transparency nor a plain
    background. Build it once to paint many prompts around one product: `generate_creatives` takes it in the
    photo's place.
    """
    settings.check()
    if settings.mode == "background":
        found = product_mask(image, mask)
        return place_product(image, found, aspect=settings.placement, size=settings.size, scale=settings.scale,
                             anchor=tuple(settings.position))
    if settings.extend is None:
        return extend_to_aspect(image, settings.placement)
    amounts = parse_extend(settings.extend) if isinstance(settings.extend, str) else dict(settings.extend)
    unknown = set(amounts) - set(SIDES)
    if unknown:
        raise InputError(f"unknown extension side(s) {sorted(unknown)}; use left, right, top, bottom")
    return outpaint_canvas(image, **amounts)


def model_inputs(canvas: Canvas, engine: Engine) -> tuple[Image.Image, Image.Image]:
    """The canvas image and paint mask shrunk to the size the model paints at (paste-back restores full size)."""
    width, height = model_size(canvas.size, multiple=engine.size_multiple, max_side=engine.native_size)
    return (canvas.image.resize((width, height), Image.Resampling.LANCZOS),
            canvas.paint_mask.resize((width, height), Image.Resampling.BILINEAR))


def make_recipe(engine: Engine, canvas: Canvas, settings: CreativeSettings, *, prompt: str, seed: int,
                model_size: tuple[int, int], lora_record: dict | None = None) -> Recipe:
    """The recipe of one creative (what goes into its PNG): the same for a single call and a batch job."""
    return Recipe(
        model=engine.model,
        weights_hash=engine.weights_hash,
        prompt=prompt,
        negative_prompt=settings.negative_prompt,
        seed=seed,
        steps=settings.steps,
        scheduler=settings.scheduler or type(engine.default_scheduler).__name__,
        guidance=float(engine.resolve(settings).guidance),
        strength=float(settings.strength),
        mode=canvas.kind,
        placement=canvas.placement,
        random_init=engine.random_init,
        lora=lora_record,
        size=canvas.size,
        model_size=model_size,
        inpaint_method=engine.inpaint_method,
        engine_options=engine.options.describe(),
        prompt_reading=engine.read_prompt(prompt).record() or None,
        **personal_record(engine, settings),
    )


def personal_record(engine: Engine, settings: CreativeSettings) -> dict:
    """The recipe's personal-condition fields: what was applied, and the text-only fallback when no history came."""
    history_guidance = float(settings.history_guidance) if settings.history is not None else 0.0
    category_guidance = float(settings.category_guidance) if settings.category is not None else 0.0
    if settings.history is not None:
        history = settings.history.record(engine.history_method(settings.history_adapter) if history_guidance else
                                          "unused (history guidance 0)")
        if history_guidance and settings.history_projection != "none":
            history["projection"] = settings.history_projection
        if history_guidance and float(settings.history_interval) < 1.0:
            history["interval"] = float(settings.history_interval)
    elif float(settings.history_guidance) > 0:
        history = {"source": None, "note": "no history given: painted from the text alone"}
    else:
        history = None
    return {"history": history, "history_guidance": history_guidance, "category": settings.category,
            "category_guidance": category_guidance}


def generate_creatives(
    product_or_canvas: ImageSource | Canvas,
    prompt: str,
    *,
    settings: CreativeSettings | None = None,
    n: int = 4,
    seed: int = 0,
    engine: Engine | str | None = None,
    mask: ImageSource | np.ndarray | None = None,
    out_dir: str | os.PathLike | None = None,
    name: str | None = None,
    progress: bool = True,
    cancel: CancelHook | None = None,
    models: dict[str, str] | None = None,
) -> list[Creative]:
    """Make `n` creatives of one product and (with `out_dir`) write them as lossless PNGs carrying their recipe.

    Args:
        product_or_canvas: the product photo (path, bytes or PIL image; decoded here, once), or a canvas from
            `build_canvas` to paint again without rebuilding it.
        prompt: the scene to paint around the product.
        settings: mode, placement, size, sampler settings and LoRA (see `CreativeSettings`); None for the defaults.
        n: how many creatives; image i uses seed `seed + i`, so any one can be made again alone.
        seed: the first image's seed.
        engine: a loaded `Engine` (`load_engine(model, device=..., dtype=...)`), a hub id or pipeline folder loaded
            on the default device, or None for `studio.imaging.engine.default_model()`.
        mask: the product mask (white = product) when the photo has no transparency or plain background; only with a
            photo (a canvas holds its own).
        out_dir: folder for the PNGs (created if needed); None keeps them in memory only.
        name: the PNG file names' stem; None for the photo file's own stem, or "creative".
        progress: show a tqdm bar over images (on stderr).
        cancel: Event-like or callable; when it fires, GenerationCancelled is raised and nothing is written.
        models: the other models named in each PNG's C2PA manifest, e.g. {"prompt_model": ..., "reward_model": ...}.

    Returns:
        The creatives, in seed order.

    Raises:
        InputError for bad inputs, ModelNotFoundError for a model that is not available, GenerationCancelled.
    """
    # 1. Check inputs: cheap checks first, before the photo is decoded, a model loads or any file is touched
    settings = CreativeSettings() if settings is None else settings
    if not isinstance(settings, CreativeSettings):
        raise InputError(f"settings must be a CreativeSettings, got {type(settings).__name__}; pass CreativeSettings()")
    if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise InputError(f"n must be a whole number from 1 to {MAX_IMAGES}, got {n!r}")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - (n - 1):  # each image i uses seed + i
        raise InputError(f"seed must be a whole number from 0 to {MAX_SEED - (n - 1)} for n={n}, got {seed!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt is empty; describe the scene to paint, e.g. 'a red marble table, soft light'")
    settings.check()
    if isinstance(product_or_canvas, Canvas):
        if mask is not None:
            raise InputError("mask: a canvas already holds its product pixels; pass the mask with the photo instead")
        if product_or_canvas.kind != settings.mode:
            raise InputError(
                f"the canvas is for mode {product_or_canvas.kind!r} but settings.mode is {settings.mode!r}; "
                "build it with build_canvas(photo, settings)"
            )

    # 2. Build the canvas: the photo is decoded here, once, unless the caller passed a canvas built before
    if isinstance(product_or_canvas, Canvas):
        canvas = product_or_canvas
    else:
        canvas = build_canvas(load_image(product_or_canvas), settings, mask=mask)

    # 3. Load the generator (cached) and check the prompts against its tokenizer
    if not isinstance(engine, Engine):
        engine = load_engine(engine)
    settings = engine.resolve(settings)  # the model's own guidance where the settings leave it open
    engine.check_prompt(prompt)
    engine.check_prompt(settings.negative_prompt, name="negative prompt", allow_empty=True)

    # 4. Shrink the canvas to the size the model paints at; paste-back restores full resolution
    model_image, model_mask = model_inputs(canvas, engine)
    width, height = model_image.size

    # 5. The recipe every image shares, and a hidden staging folder so a failed batch leaves nothing behind
    lora = settings.lora
    lora_record = None if lora is None else {"path": lora.path, "scale": lora.scale, "hash": weights_hash(lora.path)}
    if name is None:
        name = Path(product_or_canvas).stem if isinstance(product_or_canvas, (str, os.PathLike)) else "creative"
    staging = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            staging = new_staging(out_dir, "creatives")
        except OSError as error:
            raise InputError(
                f"cannot write creatives to {out_dir} ({error.strerror}); pass a writable folder"
            ) from None

    def recipe_for(image_seed: int) -> Recipe:
        return make_recipe(engine, canvas, settings, prompt=prompt, seed=image_seed, model_size=(width, height),
                           lora_record=lora_record)

    def finish(generated: Image.Image, recipe: Recipe, generate_seconds: float) -> Creative:
        """Paste the product back at full resolution and write the PNG (runs beside the next generation)."""
        started = time.perf_counter()
        final = paste_back(generated, canvas)
        pasted = time.perf_counter()
        path = None
        if staging is not None:
            path = save_png(final, recipe, staging / f"{name}-{canvas.kind}-s{recipe.seed}-{recipe.digest()}.png",
                            keep=canvas.keep, models=models)
        written = time.perf_counter()
        timings = {"generate": generate_seconds, "paste": pasted - started, "write": written - pasted}
        timings["total"] = sum(timings.values())
        return Creative(image=final, recipe=recipe, path=path, timings=timings, keep=canvas.keep)

    try:
        # 6. One image per seed. While the model paints image i+1, a worker thread pastes back and writes image i:
        #    that work is CPU and disk while the model is busy on the GPU (or on the other CPU cores).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-finish") as finisher:
            pending: list[Future] = []
            for index in tqdm(range(n), desc="creatives", unit="image", disable=not progress):
                if pending and pending[-1].done() and pending[-1].exception() is not None:
                    break  # a write failed: stop painting, the error is raised below
                started = time.perf_counter()
                generated = engine.generate(
                    model_image, model_mask, prompt=prompt, seed=seed + index, settings=settings, lora=lora,
                    cancel=cancel, history=settings.history, category=settings.category,
                    history_adapter=settings.history_adapter,
                )
                seconds = time.perf_counter() - started
                pending.append(finisher.submit(finish, generated, recipe_for(seed + index), seconds))
            creatives = [future.result() for future in pending]

        # 7. The whole batch succeeded: move the files into place
        if staging is not None:
            for creative in creatives:
                target = out_dir / creative.path.name
                os.replace(creative.path, target)
                creative.path = target
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return creatives
