"""Creative Studio's web UI for marketers: a product photo in, ranked ad creatives per audience group out.

Run `python app.py` (127.0.0.1:7860; see `--help` for host, port, the output folder, the campaign cache and the
serving database). Five tabs; the layout lives here and every event handler is a short call into a library function
that is tested on its own (`studio.ui` and the packages below it):

- Create: upload -> `studio.imaging.editor.open_for_editing`; click-to-select, mask upload and the tint toggle ->
  `studio.ui.masks`; groups, prompt suggestions, the token counter, personalising for a group's clicked creatives
  (history guidance), creatives streamed one by one with predicted CTR and rank, accept, the zip -> `studio.ui.create`; Cancel -> `studio.core.cancellation.CancelFlags`;
- Campaign: the catalogue batch job, contact sheets, retire / promote -> `studio.ui.campaign`;
- Audience: groups, sizes, profiles, the user map, re-clustering -> `studio.ui.audience`;
- Experiments: CTR per bucket and group, lift, CTR over time, arm scores, why a creative wins -> `studio.ui.experiments`;
- Models: the models in use and checking another -> `studio.ui.models`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
import torch

from studio.core.cancellation import CancelFlags
from studio.core.errors import InputError, StudioError
from studio.core.quiet import quiet_libraries
from studio.imaging.creatives import CreativeSettings
from studio.imaging.editor import ADD_COLOUR, REMOVE_COLOUR, TINT_OPACITY, mask_from_editor, open_for_editing
from studio.imaging.engine import GenerationCancelled
from studio.imaging.images import load_image
from studio.imaging.provenance import disclosure
from studio.imaging.threads import cpu_threads
from studio.jobs.batch import BatchConfig
from studio.jobs.cache import CreativeCache
from studio.serving.config import ServeConfig
from studio.ui import audience as audience_ui
from studio.ui import campaign as campaign_ui
from studio.ui import create as create_ui
from studio.ui import experiments as experiments_ui
from studio.ui import masks as masks_ui
from studio.ui import models as models_ui

MODES = [("Background replacement", "background"), ("Outpaint (extend the frame)", "outpaint")]
DIRECTIONS = ["left", "right", "top", "bottom"]
CLICK_MODES = [("Add the clicked area to the product", "add"), ("Remove the clicked area", "remove"),
               ("I clicked the backdrop: the product is the rest", "background")]
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


def _one_line(error: BaseException) -> str:
    return f"**Error:** {' '.join(str(error).split())}"


def _reports_errors(*blank: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Show the library's user errors in the status line, replacing the last message (never a traceback, never a
    pile of error pop-ups). On an error the handler's outputs become `blank`; on success the status line clears.
    A generator handler (creatives that stream in) keeps what it yielded so far and adds the message."""

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(handler):
            @functools.wraps(handler)  # keeps the signature, so Gradio still sees gr.Progress and gr.Request
            def streamed(*args, **kwargs):
                shown = False
                try:
                    for outputs in handler(*args, **kwargs):
                        shown = True
                        yield (*outputs, "")
                except StudioError as error:
                    kept = [gr.skip() for _ in blank] if shown else list(blank)
                    yield (*kept, _one_line(error))

            return streamed

        @functools.wraps(handler)
        def wrapped(*args, **kwargs):
            try:
                return (*handler(*args, **kwargs), "")
            except StudioError as error:
                return (*blank, _one_line(error))

        return wrapped

    return decorate


def _generator_notice() -> str:
    from studio.imaging.engine import default_model, is_random_init

    return NOISE_NOTICE if is_random_init(default_model()) else MINI_NOTICE


def _user_file(path: str, error: InputError) -> InputError:
    """Name the user's file, not Gradio's upload cache path."""
    return InputError(str(error).replace(path, Path(path).name))


def build_app(out_dir: str | os.PathLike = DEFAULT_OUT, *, cache: str | os.PathLike | None = None,
              serving: ServeConfig | None = None, reward_model: str = create_ui.DEFAULT_REWARD_MODEL) -> gr.Blocks:
    """The Creative Studio UI as a gr.Blocks.

    out_dir: where creatives (PNG), zips, catalogue jobs and re-clusterings are written. cache: the campaign's
    creative cache (default `out_dir/cache`; `studio serve --cache` serves from it). serving: the serving database
    the Experiments tab reads (default: `out_dir/events.db` with the cache above). reward_model: the model whose
    audience groups and predicted CTR the UI shows.
    """
    out_dir = Path(out_dir)
    cache_dir = str(cache or out_dir / "cache")
    serving = serving or ServeConfig(db=str(out_dir / "events.db"), cache=cache_dir)
    cancel_flags = CancelFlags()
    job_flags = CancelFlags()  # catalogue jobs stop between products
    try:
        profiles, categories, models_note = create_ui.groups(reward_model), create_ui.categories(reward_model), ""
    except StudioError as error:  # the UI still starts: creatives without predicted CTR, and the reason on the page
        profiles, categories, models_note = [], [], f"**No audience groups:** {' '.join(str(error).split())}"
    group_choices = create_ui.group_choices(profiles)

    # --- Create: the photo and its mask ----------------------------------------------------------------------------

    @_reports_errors(None, None, "", None)
    def open_photo(path: str | None, tinted: bool):
        if path is None:
            return None, None, "", None
        try:
            image, detected, _, message = open_for_editing(path)
        except InputError as error:
            raise _user_file(path, error) from None
        shown = masks_ui.preview(image, detected, tinted)
        return shown, shown["background"], message, detected

    @_reports_errors(gr.skip(), gr.skip())
    def show_mask(path: str | None, detected, tinted: bool):
        if path is None:
            return None, None
        shown = masks_ui.preview(load_image(path), detected, tinted)
        return shown, shown["background"]

    @_reports_errors(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    def click_select(path: str | None, detected, mode: str, tolerance: float, tinted: bool, event: gr.SelectData):
        if path is None:
            raise InputError("No product photo yet: upload one first.")
        image = load_image(path)
        point = masks_ui.preview_to_photo(tuple(event.index), image.size)
        mask = masks_ui.apply_click(detected, masks_ui.select_region(image, point, float(tolerance)), mode)
        shown = masks_ui.preview(image, mask, tinted)
        message = f"Selected {int(mask.sum()):,} pixels as the product (click again to add or remove areas)."
        return shown, shown["background"], message, mask

    @_reports_errors(gr.skip(), gr.skip(), gr.skip(), gr.skip())
    def upload_mask(path: str | None, mask_path: str | None, tinted: bool):
        if mask_path is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if path is None:
            raise InputError("No product photo yet: upload the photo first, then its mask.")
        image = load_image(path)
        try:
            mask = masks_ui.uploaded_mask(mask_path, image.size)
        except InputError as error:
            raise _user_file(mask_path, error) from None
        shown = masks_ui.preview(image, mask, tinted)
        return shown, shown["background"], f"Mask uploaded: {int(mask.sum()):,} product pixels.", mask

    # --- Create: audience, prompts, tokens -------------------------------------------------------------------------

    def show_profile(group: str | None) -> str:
        if not group:
            return "No group chosen: creatives get no predicted CTR."
        return create_ui.profile_text(create_ui.find_group(profiles, group))

    @_reports_errors(gr.skip())
    def suggest(group, title, category, placement, seed):
        found = create_ui.suggest(create_ui.find_group(profiles, group), title=title or "", category=category or "",
                                  n=4, seed=int(seed or 0), placement=placement)
        return (gr.update(choices=found, value=None, visible=True),)

    def use_suggestion(event: gr.SelectData) -> str:
        return event.value

    def count_tokens(prompt: str | None, model: str | None) -> str:
        try:
            return create_ui.token_count(prompt or "", (model or "").strip() or None).text()
        except StudioError as error:
            return f"Token count unavailable: {' '.join(str(error).split())}"

    # --- Create: generate, select, accept, zip ---------------------------------------------------------------------

    @_reports_errors([], [], None, None, [])
    def generate(path, editor, detected, prompt, negative_prompt, mode, placement, directions, amount, count, seed,
                 steps, guidance, model, group, category, scale, position_x, position_y, personal_group,
                 history_guidance, keep_colours, category_guidance, history_adapter, request: gr.Request,
                 progress=gr.Progress(track_tqdm=True)):  # noqa: B008 -- Gradio injects it by this default
        # An untouched Textbox (e.g. inside the closed Advanced panel) sends None, not "".
        prompt, negative_prompt, model = prompt or "", negative_prompt or "", (model or "").strip()
        if not path:
            raise InputError("No product photo yet: upload one first.")
        product = load_image(path)  # decoded once: the mask and the creatives both use this image
        # Background replacement keeps the painted product; outpainting keeps the whole photo, so needs no mask.
        mask = mask_from_editor(editor, product.size, detected) if mode == "background" else None
        extend = outpaint_extension(directions, amount) if mode == "outpaint" else None
        settings = create_ui.creative_settings(
            mode=mode, placement=placement, extend=extend, steps=int(steps), guidance=float(guidance),
            negative_prompt=negative_prompt, scale=float(scale) if scale else CreativeSettings.scale,
            position=(float(position_x), float(position_y)), personal_group=personal_group,
            history_guidance=history_guidance, keep_colours=bool(keep_colours), category=category or "",
            category_guidance=category_guidance or 0.0, history_adapter=history_adapter)
        cancel = cancel_flags.start(request.session_hash)
        shown: list = []
        try:
            for made in create_ui.stream_creatives(
                    product, prompt, settings=settings, n=int(count), seed=int(seed), group_id=group or None,
                    category=category or "", out_dir=out_dir, name=Path(path).stem, mask=mask,
                    engine=model or None, cancel=cancel):
                shown = made
                yield _creative_outputs(made)
        except GenerationCancelled:
            if not shown:
                raise
            raise InputError(f"generation cancelled after {len(shown)} creative(s); they are kept above") from None
        finally:
            cancel_flags.finish(request.session_hash, cancel)

    def personalise(chosen: str | None, scale: float):
        # The slider and the colour switch show once a group is chosen, at the default unless the marketer set another
        if not chosen:
            return gr.update(visible=False), gr.update(visible=False)
        return gr.update(visible=True, value=scale or create_ui.DEFAULT_HISTORY_GUIDANCE), gr.update(visible=True)

    def remember(runs: list[dict], made: list[dict], *settings):
        if not made:  # a failed run, or one cancelled before its first image, is not worth reusing
            return runs, gr.skip()
        runs = create_ui.remember(runs, dict(zip(create_ui.HISTORY_FIELDS, settings)))
        return runs, gr.update(choices=create_ui.history_choices(runs), value="0")

    @_reports_errors(*[gr.skip()] * len(create_ui.HISTORY_FIELDS))
    def reuse(runs: list[dict], index: str | None):
        return create_ui.reuse(runs, index)

    def cancel(request: gr.Request):
        cancel_flags.cancel(request.session_hash)  # the running Generate stops at its next step

    def show_recipe(recipes: list[dict], event: gr.SelectData):
        if recipes and 0 <= event.index < len(recipes):
            return recipes[event.index], event.index
        return None, None

    def badge(recipe: dict | None) -> str:
        """The selected creative's disclosure as a label a marketer sees before anything else."""
        if not recipe or "disclosure" not in recipe:
            return ""
        shown = recipe["disclosure"]
        return (f"**{shown['label']}** · content credentials: {shown['credentials']} · "
                f"watermark id `{shown['watermark_id']}`")

    @_reports_errors("")
    def accept(made: list[dict], selected: int | None, product_id: str | None):
        creatives = create_ui.from_dicts(made)
        if not creatives:
            raise InputError("no creatives yet: generate first, then click one and accept it")
        creative = creatives[selected if selected is not None and 0 <= selected < len(creatives) else
                             min(range(len(creatives)), key=lambda i: creatives[i].rank or 0)]
        with CreativeCache(cache_dir) as store:
            entry = create_ui.accept(store, creative, product_id=product_id or "", reward_model_name=reward_model)
        return ((f"Accepted into the campaign cache: `{entry.creative_id[:12]}` for product **{entry.key.product_id}**, "
                f"group {entry.key.group_id}, {entry.key.placement}, predicted CTR {entry.predicted_ctr:.2%}, "
                f"rank {entry.rank}."),)

    @_reports_errors(gr.skip(), gr.skip())
    def favourite(favourites: list[dict], made: list[dict], selected: int | None):
        if not made or selected is None or not 0 <= selected < len(made):
            raise InputError("click a creative first, then mark it as a favourite")
        favourites = create_ui.toggle_favourite(favourites, made[selected])
        return favourites, [(item["path"], create_ui.ScoredCreative(**item).caption()) for item in favourites]

    @_reports_errors(None)
    def download(made: list[dict]):
        folder = out_dir / "zips"
        return (str(create_ui.zip_creatives(create_ui.from_dicts(made), folder / f"creatives-{time.time_ns()}.zip")),)

    # --- Campaign ----------------------------------------------------------------------------------------------------

    @_reports_errors(gr.skip(), gr.skip())
    def run_catalogue(csv, images, placements, prompts_per_group, steps, folder_files, request: gr.Request,
                      bar=gr.Progress()):  # noqa: B008 -- Gradio injects it by this default
        folder = out_dir / "campaigns" / time.strftime("%Y%m%d-%H%M%S")
        catalogue = campaign_ui.gather_catalogue(csv, [*(images or []), *(folder_files or [])], folder)
        config = BatchConfig(catalogue=str(catalogue), cache=cache_dir, out=str(folder),
                             placements=tuple(placements or ["1:1"]), prompts_per_group=int(prompts_per_group),
                             steps=int(steps), reward_model=reward_model, size=512, progress=False)
        flag = job_flags.start(request.session_hash)
        try:
            for progress in campaign_ui.run_catalogue(config, flag.is_set):
                bar((progress.done, progress.total), desc="products", unit="product")
                with CreativeCache(cache_dir) as store:
                    storage = store.storage_report()
                yield progress.text(), storage
        finally:
            job_flags.finish(request.session_hash, flag)

    def cancel_catalogue(request: gr.Request):
        job_flags.cancel(request.session_hash)

    @_reports_errors(gr.skip(), gr.skip())
    def show_sheet(group, status):
        with CreativeCache(cache_dir) as store:
            return (campaign_ui.contact_sheet(store, int(group), None if status == "all" else status),
                    store.storage_report())

    def set_status(status: str):
        @_reports_errors("")
        def change(creative_id: str | None):
            with CreativeCache(cache_dir) as store:
                found = campaign_ui.set_status(store, creative_id or "", status)
            return (f"Creative `{found[:12]}` is now **{status}**.",)

        return change

    # --- Audience ----------------------------------------------------------------------------------------------------

    def audience_view(clustering, users) -> tuple:
        return audience_ui.groups_table(clustering), audience_ui.user_map(clustering, users)

    @_reports_errors(gr.skip(), gr.skip(), "")
    def show_audience():
        clustering = audience_ui.clustering_of(reward_model)
        return (*audience_view(clustering, audience_ui.sample_users()),
                f"The reward model's groups; the map shows {audience_ui.MAP_USERS} simulated users.")

    @_reports_errors(gr.skip(), gr.skip(), "")
    def recluster(table: str | None, n_groups: str | None):
        if not table:
            raise InputError("upload a user table (CSV: user_id, age, region, device, interests) first")
        folder = out_dir / "audience" / time.strftime("%Y%m%d-%H%M%S")
        try:
            clustering = audience_ui.recluster(table, folder, None if n_groups in (None, "", "best") else int(n_groups))
        except InputError as error:
            raise _user_file(table, error) from None
        return (*audience_view(clustering, audience_ui.read_table(table)),
                (f"Re-clustered into {clustering.n_groups_} groups, saved to `{folder}` "
                "(serve with it: `studio serve --audience` that folder)."))

    # --- Experiments -------------------------------------------------------------------------------------------------

    @_reports_errors(*[gr.skip()] * 8)
    def show_experiment(db: str, cache_path: str, audience_path: str):
        config = dataclasses.replace(serving, db=(db or "").strip() or serving.db,
                                     cache=(cache_path or "").strip() or serving.cache,
                                     audience=(audience_path or "").strip() or serving.audience)
        if "://" not in config.db and not Path(config.db).is_file():
            raise InputError(f"no serving database at {config.db}; start `studio serve --db {config.db}` or give "
                             "the path of its event log")
        found = experiments_ui.read_experiment(config)
        keys = sorted({(p, pl) for p, pl in zip(found.arms["product_id"], found.arms["placement"])})
        key_choices = [f"{p} · {pl}" for p, pl in keys]
        over_time = found.over_time.assign(time=pd.to_datetime(found.over_time["ts"], unit="s"))
        regret = found.regret.assign(time=pd.to_datetime(found.regret["ts"], unit="s"))
        summary = f"**{found.impressions:,} impressions, {found.clicks:,} clicks** in `{config.db}`"
        arms = found.arms.drop(columns=["prompt"]).assign(creative_id=found.arms["creative_id"].str[:12])
        return (summary, found.cells.round(4), found.lift_text(), over_time, regret, arms.round(4),
                gr.update(choices=key_choices, value=key_choices[0] if key_choices else None),
                found.arms.to_dict("records"))

    @_reports_errors("")
    def explain(arms: list[dict], key: str | None, group: str | None):
        if not arms or not key:
            raise InputError("refresh the experiment first, then choose a product")
        product, placement = key.split(" · ", 1)
        return (experiments_ui.why_wins(pd.DataFrame(arms), product, placement, int(group)),)

    # --- Models ------------------------------------------------------------------------------------------------------

    @_reports_errors(gr.skip())
    def show_models(generator: str | None):
        return (pd.DataFrame([models_ui.describe("generator", generator),
                              models_ui.describe("prompt model", None),
                              models_ui.describe("reward model", reward_model)]),)

    @_reports_errors(gr.skip())
    def list_folders(root: str | None):
        found = models_ui.local_folders(root or ".", "generator")
        if not found:
            raise InputError(f"no diffusers pipeline folder (with model_index.json) in {root}")
        return (gr.update(choices=found, value=found[0]),)

    @_reports_errors(None, None)
    def show_loop(folder: str | None):
        if not (folder or "").strip():
            raise InputError("give the --out folder of a `studio loop` run")
        rounds, gains = models_ui.loop_rounds(folder.strip())
        return rounds.round(4), gains.round(4)

    def follow_model_guidance(chosen: str | None):
        declared = create_ui.model_guidance_for(chosen)  # None (leave the slider) for anything it cannot read
        return gr.update() if declared is None else gr.update(value=declared)

    @_reports_errors(gr.skip(), gr.skip())
    def use_generator(choice: str | None):
        described = models_ui.describe("generator", choice)  # one line when unavailable; no download, no retries
        return choice, pd.DataFrame([described, models_ui.describe("prompt model", None),
                                     models_ui.describe("reward model", reward_model)])

    # --- layout ------------------------------------------------------------------------------------------------------

    with gr.Blocks(title="Creative Studio") as app:
        gr.Markdown("# Creative Studio\nCreatives per audience group, with their predicted CTR; the campaign, the "
                    "audience, live experiments and the models.")
        status = gr.Markdown(elem_id="status")  # the latest error or notice; each event replaces it
        with gr.Tabs():
            with gr.Tab("Create", id="create"):
                gr.Markdown(_generator_notice(), elem_id="generator-notice")
                if models_note:
                    gr.Markdown(models_note, elem_id="models-note")
                with gr.Row():
                    with gr.Column(scale=1):
                        photo = gr.File(label="Product photo (PNG, JPEG, WebP)", file_types=["image"],
                                        type="filepath", elem_id="product-photo")
                        mask_message = gr.Markdown(elem_id="mask-message")
                        tinted = gr.Checkbox(True, label="Show the mask tinted (off: true colours)", elem_id="tinted")
                        editor = gr.ImageEditor(
                            label="Product mask (magenta = product)",
                            type="pil", image_mode="RGBA", format="png", sources=(), transforms=(), layers=False,
                            interactive=True, elem_id="mask-editor", eraser=gr.Eraser(),
                            brush=gr.Brush(colors=[(_css(ADD_COLOUR), TINT_OPACITY),
                                                   (_css(REMOVE_COLOUR), TINT_OPACITY)], color_mode="fixed"),
                        )
                        with gr.Accordion("Select by click, or upload a mask", open=False):
                            click_view = gr.Image(label="Click the product (or the backdrop)", type="pil",
                                                  interactive=False, elem_id="click-select")
                            with gr.Row():
                                click_mode = gr.Radio(CLICK_MODES, value="add", label="A click")
                                tolerance = gr.Slider(0, 200, value=masks_ui.DEFAULT_TOLERANCE, step=1,
                                                      label="Colour tolerance")
                            mask_file = gr.File(label="Mask image (white = product, the photo's size)",
                                                file_types=["image"], type="filepath", elem_id="mask-upload")
                        detected = gr.State(None)  # the product mask, full resolution; strokes edit it
                    with gr.Column(scale=1):
                        with gr.Row():
                            title = gr.Textbox(label="Product name", placeholder="cold brew coffee", elem_id="title")
                            product_id = gr.Textbox(label="Product id (for the campaign)", placeholder="sku-123",
                                                    elem_id="product-id")
                            category = gr.Dropdown(categories, value=categories[0] if categories else None,
                                                   label="Category", elem_id="category")
                        group = gr.Dropdown(group_choices, value=group_choices[0][1] if group_choices else None,
                                            label="Audience group", elem_id="group")
                        profile = gr.Markdown(show_profile(group_choices[0][1]) if group_choices else "",
                                              elem_id="group-profile")
                        with gr.Row():  # DiFashion-style: paint for the taste of the creatives a group clicked
                            personal_group = gr.Dropdown(create_ui.personal_choices(profiles), value="",
                                                         label="Personalise for audience group",
                                                         elem_id="personal-group")
                            history_guidance = gr.Slider(0, create_ui.MAX_HISTORY_GUIDANCE,
                                                         value=create_ui.DEFAULT_HISTORY_GUIDANCE, step=0.25,
                                                         label="History guidance", visible=False,
                                                         elem_id="history-guidance")
                            keep_colours = gr.Checkbox(True, label="Keep the prompt's colours (the history shapes "
                                                       "only the last third of the steps)", visible=False,
                                                       elem_id="keep-colours")
                        suggest_button = gr.Button("Suggest prompts for this group", elem_id="suggest")
                        suggestions = gr.Radio([], label="Suggestions (click one to use it)", visible=False,
                                               interactive=True, elem_id="suggestions")
                        prompt = gr.Textbox(label="Prompt", placeholder="a warm wooden table in soft morning light",
                                            lines=2, elem_id="prompt")
                        tokens = gr.Markdown(elem_id="token-count")
                        negative_prompt = gr.Textbox(label="Negative prompt", placeholder="blurry, text, watermark")
                        mode = gr.Radio(MODES, value="background", label="Mode")
                        placement = gr.Radio(list(create_ui.PLACEMENT_PRESETS.items()), value="1:1",
                                             label="Placement (channel)", elem_id="placement")
                        scale = gr.Slider(0.2, 0.95, value=CreativeSettings.scale, step=0.05,
                                          label="Product scale (share of the frame)")
                        with gr.Row():  # where the product's centre goes, as shares of the frame
                            position_x = gr.Slider(0, 1, value=CreativeSettings.position[0], step=0.05,
                                                   label="Product position: left to right", elem_id="position-x")
                            position_y = gr.Slider(0, 1, value=CreativeSettings.position[1], step=0.05,
                                                   label="Product position: top to bottom", elem_id="position-y")
                        with gr.Row(visible=False) as outpaint_options:
                            directions = gr.CheckboxGroup(DIRECTIONS, value=["left", "right"], label="Extend towards")
                            amount = gr.Slider(16, 1024, value=256, step=16, label="Extend by (pixels per side)")
                        with gr.Row():
                            count = gr.Slider(1, 8, value=4, step=1, label="Count", elem_id="count")
                            seed = gr.Number(0, precision=0, minimum=0, label="Seed")
                        with gr.Accordion("Advanced", open=False):
                            steps = gr.Slider(1, 100, value=30, step=1, label="Steps", elem_id="steps")
                            guidance = gr.Slider(0, 20, value=create_ui.model_guidance_for(None) or 7.5, step=0.5,
                                                 label="Guidance (follows the model's own)", elem_id="guidance")
                            model = gr.Textbox(label="Model (hub id or local folder; empty = the embedded default)")
                            history_adapter = gr.Textbox("", label="History adapter for personalising (folder; "
                                                         "empty = the model's own)", elem_id="history-adapter")
                            category_guidance = gr.Slider(0, create_ui.MAX_HISTORY_GUIDANCE, value=0, step=0.25,
                                                          label="Category guidance (studio-mini: paint for the "
                                                                "product's category; 0 = off)",
                                                          elem_id="category-guidance")
                        with gr.Row():
                            generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                            cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                gallery = gr.Gallery(label="Creatives (lossless PNG), best predicted CTR first in the table",
                                     type="filepath", format="png", columns=4, object_fit="contain",
                                     elem_id="creatives")
                scores = gr.Dataframe(label="Predicted CTR for the group, and rank", elem_id="scores",
                                      interactive=False)
                with gr.Row():
                    accept_button = gr.Button("Accept the selected creative into the campaign", elem_id="accept")
                    favourite_button = gr.Button("☆ Favourite (again to remove)", elem_id="favourite")
                    zip_button = gr.Button("Download all as a zip", elem_id="download")
                    zip_file = gr.File(label="Zip", interactive=False, elem_id="zip")
                accepted = gr.Markdown(elem_id="accepted")
                favourites = gr.State([])
                favourite_gallery = gr.Gallery(label="Favourites (this session)", columns=8, height=160,
                                               object_fit="contain", preview=False, elem_id="favourites")
                favourite_zip_button = gr.Button("Download the favourites as a zip", elem_id="download-favourites")
                disclosed = gr.Markdown(elem_id="ai-badge")  # "AI-generated" and the credentials of the selection
                recipe = gr.JSON(label="AI-generated · disclosure and recipe of the selected creative (also inside "
                                       "its PNG)")
                with gr.Row():
                    past_run = gr.Dropdown([], label="Recent runs", interactive=True, elem_id="history")
                    reuse_button = gr.Button("Reuse settings", elem_id="reuse")
                recipes = gr.State([])
                made = gr.State([])  # the run's ScoredCreatives as dicts
                selected = gr.State(None)
                history = gr.State([])  # this session's recent runs, latest first

            with gr.Tab("Campaign", id="campaign"):
                gr.Markdown("Upload a catalogue (CSV: image, product_id, title, category; images by file name), or a "
                            "folder holding it beside its photos, to make ranked creatives for every group into the "
                            "campaign cache. **Cancel** stops after the product being made; running again resumes.")
                with gr.Row():
                    catalogue = gr.File(label="Catalogue CSV", file_types=[".csv"], type="filepath",
                                        elem_id="catalogue")
                    catalogue_folder = gr.File(label="…or a whole folder (the CSV beside its photos)",
                                               file_count="directory", type="filepath", elem_id="catalogue-folder")
                    catalogue_images = gr.File(label="Product photos", file_count="multiple", file_types=["image"],
                                               type="filepath", elem_id="catalogue-images")
                with gr.Row():
                    job_placements = gr.CheckboxGroup(list(create_ui.PLACEMENT_PRESETS.items()), value=["1:1"],
                                                      label="Placements")
                    job_prompts = gr.Slider(1, 8, value=2, step=1, label="Creatives per group", elem_id="job-prompts")
                    job_steps = gr.Slider(1, 50, value=20, step=1, label="Steps", elem_id="job-steps")
                with gr.Row():
                    run_button = gr.Button("Run the batch job", variant="primary", elem_id="run-job")
                    stop_button = gr.Button("Cancel", variant="stop", elem_id="cancel-job")
                job_progress = gr.Markdown(elem_id="job-progress")
                with gr.Row():
                    sheet_group = gr.Dropdown(group_choices, value=group_choices[0][1] if group_choices else None,
                                              label="Group", elem_id="sheet-group")
                    sheet_status = gr.Radio(["all", "accepted", "candidate", "retired"], value="all", label="Status")
                    sheet_button = gr.Button("Show the contact sheet", elem_id="show-sheet")
                sheet = gr.Gallery(label="Cached creatives of the group, best predicted CTR first", columns=6,
                                   object_fit="contain", preview=False, height=420, elem_id="contact-sheet")
                with gr.Row():
                    creative_id = gr.Textbox(label="Creative id (first 12+ characters)", elem_id="creative-id")
                    retire_button = gr.Button("Retire", elem_id="retire")
                    promote_button = gr.Button("Promote (accept)", elem_id="promote")
                status_change = gr.Markdown(elem_id="status-change")
                storage = gr.JSON(label="Storage report", elem_id="storage")

            with gr.Tab("Audience", id="audience"):
                audience_note = gr.Markdown(elem_id="audience-note")
                audience_groups = gr.Dataframe(label="Groups", interactive=False, elem_id="audience-groups")
                audience_plot = gr.ScatterPlot(x="x", y="y", color="group", label="Users in 2-D (PCA), by group",
                                               elem_id="audience-plot")
                with gr.Row():
                    user_table = gr.File(label="User table (CSV or Parquet)", file_types=[".csv", ".parquet"],
                                         type="filepath", elem_id="user-table")
                    n_groups = gr.Dropdown([("best silhouette", "best"), *[(str(k), str(k)) for k in range(2, 9)]],
                                           value="best", label="Groups")
                    recluster_button = gr.Button("Re-cluster", elem_id="recluster")

            with gr.Tab("Experiments", id="experiments"):
                with gr.Row():
                    db = gr.Textbox(serving.db, label="Serving database (event log)", elem_id="experiment-db")
                    experiment_cache = gr.Textbox(serving.cache, label="Creative cache")
                    experiment_audience = gr.Textbox(serving.audience or "", label="Audience clustering (optional)")
                with gr.Row():
                    refresh_button = gr.Button("Refresh", variant="primary", elem_id="refresh-experiment")
                    live = gr.Checkbox(False, label="Live (refresh every 5 s)", elem_id="live")
                timer = gr.Timer(5.0, active=False)
                experiment_summary = gr.Markdown(elem_id="experiment-summary")
                cells = gr.Dataframe(label="CTR per bucket and group (95 % Wilson intervals)", interactive=False,
                                     elem_id="experiment-cells")
                lift = gr.Markdown(elem_id="experiment-lift")
                over_time = gr.LinePlot(x="time", y="ctr", color="bucket", label="Cumulative CTR over time",
                                        elem_id="experiment-ctr")
                regret_plot = gr.LinePlot(x="time", y="regret", color="bucket", elem_id="experiment-regret",
                                          label="Cumulative regret in expected clicks (hindsight: the bandit's "
                                                "estimates of the best creative per group minus the one served)")
                arms_table = gr.Dataframe(label="Each arm's LinUCB estimate, uncertainty and score per group",
                                          interactive=False, elem_id="experiment-arms")
                with gr.Row():
                    why_key = gr.Dropdown([], label="Product · placement", interactive=True, elem_id="why-key")
                    why_group = gr.Dropdown([(f"Group {g['group_id']}", str(g["group_id"])) for g in profiles]
                                            + [("Cold start", "-1")], value="0" if profiles else "-1",
                                            label="Group", elem_id="why-group")
                    why_button = gr.Button("Why does this creative win?", elem_id="why")
                why = gr.Markdown(elem_id="why-text")
                arms_state = gr.State([])

            with gr.Tab("Models", id="models"):
                gr.Markdown(models_ui.offline_note())
                models_table = gr.Dataframe(label="Models in use", interactive=False, elem_id="models")
                with gr.Row():
                    models_root = gr.Textbox(label="Look for generator folders in", placeholder="/models")
                    list_button = gr.Button("List folders")
                with gr.Row():
                    model_choice = gr.Dropdown([], label="Generator (a folder, or type a hub id)",
                                               allow_custom_value=True, elem_id="model-choice")
                    use_button = gr.Button("Use this generator", elem_id="use-model")
                with gr.Row():
                    loop_folder = gr.Textbox(label="A closed-loop run (the --out folder of `studio loop`)",
                                             placeholder="out/loop", elem_id="loop-folder")
                    loop_button = gr.Button("Show its rounds", elem_id="show-loop")
                loop_table = gr.Dataframe(label="Rounds per arm: true CTR (simulator oracle) with 95 % interval, "
                                                "creatives added and retired, hacking gap, the round's LoRA",
                                          interactive=False, elem_id="loop-rounds")
                loop_gains = gr.Dataframe(label="Measured gains (relative, 95 % interval)", interactive=False,
                                          elem_id="loop-gains")

        # --- events ------------------------------------------------------------------------------------------------
        photo.change(open_photo, [photo, tinted], [editor, click_view, mask_message, detected, status],
                     api_name="open_photo")
        tinted.change(show_mask, [photo, detected, tinted], [editor, click_view, status], api_name=False)
        click_view.select(click_select, [photo, detected, click_mode, tolerance, tinted],
                          [editor, click_view, mask_message, detected, status], api_name=False)
        mask_file.change(upload_mask, [photo, mask_file, tinted], [editor, click_view, mask_message, detected, status],
                         api_name="upload_mask")
        mode.change(lambda chosen: (gr.update(visible=chosen == "background"), gr.update(visible=chosen == "outpaint")),
                    mode, [placement, outpaint_options], api_name=False)
        group.change(show_profile, group, profile, api_name=False)
        personal_group.change(personalise, [personal_group, history_guidance], [history_guidance, keep_colours],
                              api_name=False)
        suggest_button.click(suggest, [group, title, category, placement, seed], [suggestions, status],
                             api_name="suggest")
        suggestions.select(use_suggestion, None, prompt, api_name=False)
        prompt.change(count_tokens, [prompt, model], tokens, api_name=False, show_progress="hidden",
                      trigger_mode="always_last")
        app.load(count_tokens, [prompt, model], tokens, api_name=False)
        model.change(follow_model_guidance, model, guidance, api_name=False, show_progress="hidden",
                     trigger_mode="always_last")
        results = [gallery, recipes, recipe, scores, made, status]
        run_settings = [prompt, negative_prompt, group, category, placement, scale, count, seed, steps, guidance, model,
                        position_x, position_y, personal_group, history_guidance, keep_colours, category_guidance,
                        history_adapter]
        generate_button.click(  # clear the last run's creatives first, so none linger under a new prompt
            lambda: ([], [], None, None, [], "Generating…"), None, results, queue=False, api_name=False,
        ).then(
            generate,
            [photo, editor, detected, prompt, negative_prompt, mode, placement, directions, amount, count, seed, steps,
             guidance, model, group, category, scale, position_x, position_y, personal_group, history_guidance,
             keep_colours, category_guidance, history_adapter],
            results,
            api_name="generate",
        ).then(
            remember, [history, made, *run_settings], [history, past_run], api_name=False,
        )
        reuse_button.click(reuse, [history, past_run], [*run_settings, status], api_name=False)
        cancel_button.click(cancel, None, None, api_name="cancel")
        gallery.select(show_recipe, recipes, [recipe, selected], api_name=False)
        recipe.change(badge, recipe, disclosed, api_name=False)
        accept_button.click(accept, [made, selected, product_id], [accepted, status], api_name="accept")
        zip_button.click(download, made, [zip_file, status], api_name="download")
        favourite_button.click(favourite, [favourites, made, selected], [favourites, favourite_gallery, status],
                               api_name="favourite")
        favourite_zip_button.click(download, favourites, [zip_file, status], api_name="download_favourites")

        job = run_button.click(run_catalogue, [catalogue, catalogue_images, job_placements, job_prompts, job_steps,
                                               catalogue_folder],
                               [job_progress, storage, status], api_name="run_catalogue")
        stop_button.click(cancel_catalogue, None, None, api_name="cancel_catalogue")
        # After a job, refresh the sheet without touching the status line: it may hold the job's own message
        job.then(lambda *chosen: show_sheet(*chosen)[:2], [sheet_group, sheet_status], [sheet, storage],
                 api_name=False)
        sheet_button.click(show_sheet, [sheet_group, sheet_status], [sheet, storage, status], api_name="contact_sheet")
        retire_button.click(set_status("retired"), creative_id, [status_change, status], api_name="retire")
        promote_button.click(set_status("accepted"), creative_id, [status_change, status], api_name="promote")

        app.load(show_audience, None, [audience_groups, audience_plot, audience_note, status], api_name=False)
        recluster_button.click(recluster, [user_table, n_groups], [audience_groups, audience_plot, audience_note,
                                                                   status], api_name="recluster")

        experiment_outputs = [experiment_summary, cells, lift, over_time, regret_plot, arms_table, why_key, arms_state,
                              status]
        refresh_button.click(show_experiment, [db, experiment_cache, experiment_audience], experiment_outputs,
                             api_name="experiment")
        timer.tick(show_experiment, [db, experiment_cache, experiment_audience], experiment_outputs, api_name=False,
                   show_progress="hidden")
        live.change(lambda on: gr.Timer(active=bool(on)), live, timer, api_name=False)
        why_button.click(explain, [arms_state, why_key, why_group], [why, status], api_name="why")

        app.load(show_models, model, [models_table, status], api_name=False)
        list_button.click(list_folders, models_root, [model_choice, status], api_name=False)
        use_button.click(use_generator, model_choice, [model, models_table, status], api_name="use_model")
        loop_button.click(show_loop, loop_folder, [loop_table, loop_gains, status], api_name="loop_rounds")
    return app


def _creative_outputs(made: list[create_ui.ScoredCreative]) -> tuple:
    """Gallery, recipes, the first recipe, the score table and the state, for the creatives made so far."""
    # The disclosure first: the recipe view opens with the "AI-generated" label and the credentials' summary.
    from studio.imaging.provenance import read_recipe

    recipes = [{"disclosure": disclosure(c.path), **dataclasses.asdict(read_recipe(c.path))} for c in made]
    gallery = [(c.path, c.caption()) for c in made]
    table = pd.DataFrame([{"rank": c.rank, "predicted CTR": None if c.predicted_ctr is None
                           else f"{c.predicted_ctr:.2%}", "seed": c.seed, "file": Path(c.path).name} for c in made])
    table = table.sort_values("rank", kind="stable") if made and made[0].rank is not None else table
    return gallery, recipes, recipes[0], table, [dataclasses.asdict(c) for c in made]


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
    parser.add_argument("--cache", default=os.environ.get("STUDIO_UI_CACHE"),
                        help="the campaign's creative cache (env STUDIO_UI_CACHE; default OUT/cache)")
    parser.add_argument("--db", default=os.environ.get("STUDIO_UI_DB"),
                        help="the serving database the Experiments tab reads (env STUDIO_UI_DB; default "
                             "OUT/events.db)")
    parser.add_argument("--audience", default=None, help="the audience clustering `studio serve` uses (optional)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 for the embedded studio-mini, else all cores)")
    args = parser.parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(cpu_threads(None, args.threads))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or str(out / "cache")
    serving = ServeConfig(db=args.db or str(out / "events.db"), cache=cache, audience=args.audience)
    build_app(out, cache=cache, serving=serving).queue().launch(
        server_name=args.host, server_port=args.port, allowed_paths=[str(out)])


if __name__ == "__main__":
    main()
