"""Creative Studio's web UI for marketers: a product photo in, ad creatives out.

Run `python app.py` (127.0.0.1:7860; see `--help` for host, port and the output folder). The layout lives here; every
event handler is a short call into a library function that is tested on its own:

- upload  -> `studio.imaging.editor.open_for_editing` (load safely, auto-detect the product mask, show it for editing);
- Generate -> `studio.imaging.editor.mask_from_editor` and `studio.imaging.creatives.generate_creatives` (lossless PNGs
  with their provenance recipe), with progress, and a Cancel button that stops the pipeline at its next step
  (`studio.core.cancellation.CancelFlags`);
- selecting a creative -> its recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from studio.core.cancellation import CancelFlags
from studio.core.errors import InputError, StudioError
from studio.core.quiet import quiet_libraries
from studio.imaging.creatives import CreativeSettings, generate_creatives
from studio.imaging.editor import (
    ADD_COLOUR,
    REMOVE_COLOUR,
    TINT_OPACITY,
    mask_from_editor,
    open_for_editing,
)
from studio.imaging.images import load_image
from studio.imaging.provenance import disclosure
from studio.imaging.threads import cpu_threads

PLACEMENTS = ["1:1", "4:5", "16:9", "9:16"]
MODES = [("Background replacement", "background"), ("Outpaint (extend the frame)", "outpaint")]
DIRECTIONS = ["left", "right", "top", "bottom"]
DEFAULT_OUT = Path("out") / "ui"

NOISE_NOTICE = (
    "**Notice:** the embedded studio-mini model is missing, so the default generator is a tiny, randomly "
    "initialised model: outputs are noise. "
    "Enter a real inpainting model (hub id or local folder) under *Model* for real pictures."
)
MINI_NOTICE = (
    "Default generator: **studio-mini**, the small embedded model this project trained on rendered scenes. It paints "
    "simple 64 x 64 backdrops (colours, materials such as marble, wood or fabric, lighting, layouts) that are upscaled "
    "around your product. Enter a real inpainting model (hub id or local folder) under *Model* for photographic scenes."
)


def _reports_errors(*blank: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Show the library's user errors in the status line, replacing the last message (never a traceback, never a
    pile of error pop-ups). On an error the handler's outputs become `blank`; on success the status line clears."""

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)  # keeps the signature, so Gradio still sees gr.Progress and gr.Request parameters
        def wrapped(*args, **kwargs):
            try:
                return (*handler(*args, **kwargs), "")
            except StudioError as error:
                return (*blank, f"**Error:** {' '.join(str(error).split())}")

        return wrapped

    return decorate


def _generator_notice() -> str:
    from studio.imaging.engine import default_model, is_random_init

    return NOISE_NOTICE if is_random_init(default_model()) else MINI_NOTICE


def build_app(out_dir: str | os.PathLike = DEFAULT_OUT) -> gr.Blocks:
    """The Creative Studio UI as a gr.Blocks; creatives are written as PNGs under `out_dir`."""
    out_dir = Path(out_dir)
    cancel_flags = CancelFlags()

    # --- event handlers: thin calls into the library ---------------------------------------------------------------

    @_reports_errors(None, "", None)
    def open_photo(path: str | None):
        if path is None:
            return None, "", None
        try:
            _, detected, value, message = open_for_editing(path)
        except InputError as error:  # name the user's file, not Gradio's upload cache path
            raise InputError(str(error).replace(path, Path(path).name)) from None
        return value, message, detected

    @_reports_errors([], [], None)
    def generate(path, editor, detected, prompt, negative_prompt, mode, placement, directions, amount, count, seed,
                 steps, guidance, model, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        # An untouched Textbox (e.g. inside the closed Advanced panel) sends None, not "".
        prompt, negative_prompt, model = prompt or "", negative_prompt or "", (model or "").strip()
        if not path:
            raise InputError("No product photo yet: upload one first.")
        product = load_image(path)  # decoded once: the mask and the creatives both use this image
        # Background replacement keeps the painted product; outpainting keeps the whole photo, so needs no mask.
        mask = mask_from_editor(editor, product.size, detected) if mode == "background" else None
        extend = outpaint_extension(directions, amount) if mode == "outpaint" else None
        settings = CreativeSettings(mode=mode, placement=placement, extend=extend, steps=int(steps),
                                    guidance=float(guidance), negative_prompt=negative_prompt)
        cancel = cancel_flags.start(request.session_hash)
        try:
            creatives = generate_creatives(
                product, prompt, settings=settings, n=int(count), seed=int(seed), engine=model or None,
                mask=mask, out_dir=out_dir, name=Path(path).stem, progress=True, cancel=cancel,
            )
        finally:
            cancel_flags.finish(request.session_hash, cancel)
        # The disclosure first: the recipe view opens with the "AI-generated" label and the credentials' summary.
        recipes = [{"disclosure": disclosure(creative.path), **dataclasses.asdict(creative.recipe)}
                   for creative in creatives]
        gallery = [(str(creative.path), f"seed {creative.recipe.seed}") for creative in creatives]
        return gallery, recipes, recipes[0]

    def cancel(request: gr.Request):
        cancel_flags.cancel(request.session_hash)  # the running Generate stops at its next step and clears the gallery

    def show_recipe(recipes: list[dict], event: gr.SelectData):
        return recipes[event.index] if recipes and 0 <= event.index < len(recipes) else None

    def badge(recipe: dict | None) -> str:
        """The selected creative's disclosure as a label a marketer sees before anything else."""
        if not recipe or "disclosure" not in recipe:
            return ""
        shown = recipe["disclosure"]
        return (f"**{shown['label']}** · content credentials: {shown['credentials']} · "
                f"watermark id `{shown['watermark_id']}`")

    # --- layout ----------------------------------------------------------------------------------------------------

    with gr.Blocks(title="Creative Studio") as app:
        gr.Markdown("# Creative Studio\nUpload a product photo, check its mask, describe a scene, generate creatives.")
        gr.Markdown(_generator_notice(), elem_id="generator-notice")
        with gr.Row():
            with gr.Column(scale=1):
                photo = gr.File(label="Product photo (PNG, JPEG, WebP)", file_types=["image"], type="filepath",
                                elem_id="product-photo")
                mask_message = gr.Markdown(elem_id="mask-message")
                editor = gr.ImageEditor(
                    label="Product mask (magenta = product)",
                    type="pil", image_mode="RGBA", format="png", sources=(), transforms=(), layers=False,
                    interactive=True, elem_id="mask-editor", eraser=gr.Eraser(),
                    brush=gr.Brush(colors=[(_css(ADD_COLOUR), TINT_OPACITY), (_css(REMOVE_COLOUR), TINT_OPACITY)],
                                   color_mode="fixed"),
                )
                detected = gr.State(None)  # the auto-detected mask, full resolution; strokes edit it
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", placeholder="a warm wooden table in soft morning light",
                                    lines=2, elem_id="prompt")
                negative_prompt = gr.Textbox(label="Negative prompt", placeholder="blurry, text, watermark")
                mode = gr.Radio(MODES, value="background", label="Mode")
                placement = gr.Radio(PLACEMENTS, value="1:1", label="Placement (aspect ratio)")
                with gr.Row(visible=False) as outpaint_options:
                    directions = gr.CheckboxGroup(DIRECTIONS, value=["left", "right"], label="Extend towards")
                    amount = gr.Slider(16, 1024, value=256, step=16, label="Extend by (pixels per side)")
                with gr.Row():
                    count = gr.Slider(1, 8, value=4, step=1, label="Count", elem_id="count")
                    seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                with gr.Accordion("Advanced", open=False):
                    steps = gr.Slider(1, 100, value=30, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0, 20, value=7.5, step=0.5, label="Guidance")
                    model = gr.Textbox(label="Model (hub id or local folder; empty = the embedded default)")
                with gr.Row():
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
        gallery = gr.Gallery(label="Creatives (lossless PNG)", type="filepath", format="png", columns=4,
                             object_fit="contain", elem_id="creatives")
        status = gr.Markdown(elem_id="status")  # the latest error or notice; each event replaces it
        disclosed = gr.Markdown(elem_id="ai-badge")  # "AI-generated" and the credentials of the selected creative
        recipe = gr.JSON(label="AI-generated · disclosure and recipe of the selected creative (also inside its PNG)")
        recipes = gr.State([])

        # --- events ----------------------------------------------------------------------------------------------
        photo.change(open_photo, photo, [editor, mask_message, detected, status], api_name="open_photo")
        mode.change(lambda chosen: (gr.update(visible=chosen == "background"), gr.update(visible=chosen == "outpaint")),
                    mode, [placement, outpaint_options], api_name=False)
        results = [gallery, recipes, recipe, status]
        generating = generate_button.click(  # clear the last run's creatives first, so none linger under a new prompt
            lambda: ([], [], None, "Generating…"), None, results, queue=False, api_name=False,
        ).then(
            generate,
            [photo, editor, detected, prompt, negative_prompt, mode, placement, directions, amount, count, seed, steps,
             guidance, model],
            results,
            api_name="generate",
        )
        cancel_button.click(cancel, None, None, cancels=[generating], api_name="cancel")
        gallery.select(show_recipe, recipes, recipe, api_name=False)
        recipe.change(badge, recipe, disclosed, api_name=False)
    return app


def outpaint_extension(directions: list[str], amount: float) -> dict[str, int]:
    """The `extend` argument of `generate_creatives`: `amount` pixels towards each ticked direction."""
    if not directions:
        raise InputError("Outpaint needs a direction: tick at least one side to extend towards.")
    return {side: int(amount) for side in directions}


def _css(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Creative Studio web UI.")
    parser.add_argument("--host", default=os.environ.get("STUDIO_UI_HOST", "127.0.0.1"),
                        help="address to listen on (env STUDIO_UI_HOST; default 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_UI_PORT", "7860")),
                        help="port (env STUDIO_UI_PORT; default 7860)")
    parser.add_argument("--out", default=os.environ.get("STUDIO_UI_OUT", str(DEFAULT_OUT)),
                        help=f"folder for the generated PNGs (env STUDIO_UI_OUT; default {DEFAULT_OUT})")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 for the embedded studio-mini, else all cores)")
    args = parser.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(cpu_threads(None, args.threads))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    build_app(out).queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(out)])


if __name__ == "__main__":
    main()
