"""The batch job users run (from the CLI and the UI): one product photo in, n creatives with provenance out.

    load_image -> product_mask -> place_product | outpaint_canvas -> model size -> engine -> paste_back -> PNG + recipe

The product's pixels come out bit-exact. Files are written into a hidden folder inside `out_dir` and moved into place
only when the whole batch has succeeded, so a bad input, a cancel or a crash leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from studio.imaging.canvas import Canvas, extend_to_aspect, model_size, outpaint_canvas, paste_back, place_product, product_mask
from studio.imaging.engine import CancelHook, GenerationSettings, LoraSpec, load_engine
from studio.core.errors import InputError
from studio.imaging.images import ImageSource, load_image
from studio.imaging.provenance import Recipe, save_png, weights_hash

MODES = ("background", "outpaint")
SIDES = ("left", "right", "top", "bottom")
MAX_IMAGES = 64


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


def _format_extend(amounts: dict[str, int]) -> str:
    return ",".join(f"{side}={amounts[side]}" for side in SIDES if amounts.get(side))


def _make_canvas(
    product: ImageSource,
    *,
    mode: str,
    placement: str,
    mask: ImageSource | None,
    extend: dict[str, int] | str | None,
    size: int,
    scale: float | None,
) -> tuple[Canvas, str]:
    """Build the canvas for `mode`; returns it with the placement text the recipe records."""
    image = load_image(product)
    if mode == "background":
        canvas = place_product(image, product_mask(image, mask), aspect=placement, size=size, scale=scale)
        return canvas, placement
    if extend is None:
        canvas = extend_to_aspect(image, placement)
        left, top, right, bottom = canvas.box
        amounts = {"left": left, "top": top, "right": canvas.size[0] - right, "bottom": canvas.size[1] - bottom}
    else:
        amounts = parse_extend(extend) if isinstance(extend, str) else dict(extend)
        unknown = set(amounts) - set(SIDES)
        if unknown:
            raise InputError(f"unknown extension side(s) {sorted(unknown)}; use left, right, top, bottom")
        canvas = outpaint_canvas(image, **amounts)
    return canvas, _format_extend(amounts)


def generate_creatives(
    product: ImageSource,
    *,
    prompt: str,
    mode: str = "background",
    placement: str = "1:1",
    n: int = 4,
    seed: int = 0,
    model: str | None = None,
    mask: ImageSource | None = None,
    out_dir: str | os.PathLike | None = None,
    steps: int = 30,
    guidance: float = 7.5,
    strength: float = 1.0,
    scheduler: str | None = None,
    negative_prompt: str = "",
    lora: str | os.PathLike | None = None,
    lora_scale: float = 1.0,
    extend: dict[str, int] | str | None = None,
    size: int = 1024,
    scale: float | None = 0.6,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    cancel: CancelHook | None = None,
) -> list[Creative]:
    """Make `n` creatives of one product and (with `out_dir`) write them as lossless PNGs carrying their recipe.

    Args:
        product: the product photo (path, bytes or PIL image).
        prompt: the scene to paint around the product.
        mode: "background" places the cut-out product on a new frame of aspect `placement` ("1:1", "4:5", "16:9",
            "9:16"), `size` pixels on the long side, the product `scale` of the frame; "outpaint" extends the photo's
            frame by `extend` ({"left": 256} or "left=256,right=256"), or to aspect `placement` when `extend` is None.
        n: how many creatives; image i uses seed `seed + i`, so any one can be made again alone.
        model: hub id or pipeline folder; None for `studio.imaging.engine.default_model()`.
        mask: the product mask (white = product) when the photo has no transparency or plain background.
        out_dir: folder for the PNGs (created if needed); None keeps them in memory only.
        steps, guidance, strength, scheduler, negative_prompt: sampler settings (see `GenerationSettings`).
        lora, lora_scale: a LoRA weights file or folder and its strength.
        device, dtype: "auto" or explicit, see `studio.imaging.engine.resolve_device` / `resolve_dtype`.
        progress: show a tqdm bar over images (on stderr).
        cancel: Event-like or callable; when it fires, GenerationCancelled is raised and nothing is written.

    Returns:
        The creatives, in seed order.

    Raises:
        InputError for bad inputs, ModelNotFoundError for a model that is not available, GenerationCancelled.
    """
    # 1. Check inputs (cheap checks first, before any model loads or any file is touched)
    if mode not in MODES:
        raise InputError(f"mode must be 'background' or 'outpaint', got {mode!r}")
    if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise InputError(f"n must be a whole number from 1 to {MAX_IMAGES}, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a whole number >= 0, got {seed!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt is empty; describe the scene to paint, e.g. 'a red marble table, soft light'")
    settings = GenerationSettings(
        steps=steps, guidance=guidance, strength=strength, scheduler=scheduler, negative_prompt=negative_prompt
    )
    settings.check()
    lora_spec = None
    if lora is not None:
        if not Path(lora).expanduser().exists():
            raise InputError(f"LoRA {str(lora)!r} does not exist; pass a LoRA weights file or folder")
        lora_spec = LoraSpec(str(lora), float(lora_scale))

    # 2. Product, mask and canvas at the output size
    canvas, placement_text = _make_canvas(
        product, mode=mode, placement=placement, mask=mask, extend=extend, size=size, scale=scale
    )

    # 3. Load the generator (cached) and check the prompts against its tokenizer
    engine = load_engine(model, device=device, dtype=dtype)
    engine.check_prompt(prompt)
    engine.check_prompt(negative_prompt, name="negative prompt", allow_empty=True)

    # 4. Shrink the canvas to the size the model paints at; paste-back restores full resolution
    width, height = model_size(canvas.size, multiple=engine.size_multiple, max_side=engine.native_size)
    model_image = canvas.image.resize((width, height), Image.Resampling.LANCZOS)
    model_mask = canvas.paint_mask.resize((width, height), Image.Resampling.BILINEAR)

    lora_record = None
    if lora_spec is not None:
        lora_record = {"path": lora_spec.path, "scale": lora_spec.scale, "hash": weights_hash(lora_spec.path)}
    stem = Path(product).stem if isinstance(product, (str, os.PathLike)) else "creative"
    staging = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".studio-staging-", dir=out_dir))
        except OSError as error:
            raise InputError(f"cannot write creatives to {out_dir} ({error.strerror}); pass a writable folder") from None

    def recipe_for(image_seed: int) -> Recipe:
        return Recipe(
            model=engine.model,
            weights_hash=engine.weights_hash,
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=image_seed,
            steps=steps,
            scheduler=scheduler or type(engine.default_scheduler).__name__,
            guidance=float(guidance),
            strength=float(strength),
            mode=mode,
            placement=placement_text,
            random_init=engine.random_init,
            lora=lora_record,
            size=canvas.size,
            model_size=(width, height),
        )

    def finish(generated: Image.Image, recipe: Recipe, generate_seconds: float) -> Creative:
        """Paste the product back at full resolution and write the PNG (runs beside the next generation)."""
        started = time.perf_counter()
        final = paste_back(generated, canvas)
        pasted = time.perf_counter()
        path = None
        if staging is not None:
            path = save_png(final, recipe, staging / f"{stem}-{mode}-s{recipe.seed}-{recipe.digest()}.png")
        written = time.perf_counter()
        timings = {"generate": generate_seconds, "paste": pasted - started, "write": written - pasted}
        timings["total"] = sum(timings.values())
        return Creative(image=final, recipe=recipe, path=path, timings=timings)

    try:
        # 5. One image per seed. While the model paints image i+1, a worker thread pastes back and writes image i:
        #    that work is CPU and disk while the model is busy on the GPU (or on the other CPU cores).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-finish") as finisher:
            pending: list[Future] = []
            for index in tqdm(range(n), desc="creatives", unit="image", disable=not progress):
                if pending and pending[-1].done() and pending[-1].exception() is not None:
                    break  # a write failed: stop painting, the error is raised below
                started = time.perf_counter()
                generated = engine.generate(
                    model_image, model_mask, prompt=prompt, seed=seed + index, settings=settings, lora=lora_spec,
                    cancel=cancel,
                )
                seconds = time.perf_counter() - started
                pending.append(finisher.submit(finish, generated, recipe_for(seed + index), seconds))
            creatives = [future.result() for future in pending]

        # 6. The whole batch succeeded: move the files into place
        if staging is not None:
            for creative in creatives:
                target = out_dir / creative.path.name
                os.replace(creative.path, target)
                creative.path = target
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return creatives
