"""The UI's helpers (studio.ui) against known truths: click-to-select, mask upload, the reward model's own CTR, the
cache, the zip, the token counter, the experiment figures (equal to GET /v1/report), the campaign, the audience and
the models tabs."""

import dataclasses
import json
import time
import zipfile
from pathlib import Path

import experiment_log
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from studio.core.errors import InputError, ModelNotFoundError
from studio.imaging.creatives import CreativeSettings
from studio.imaging.editor import PREVIEW_MAX_SIDE
from studio.imaging.engine import GenerationCancelled
from studio.imaging.provenance import read_recipe, weights_hash
from studio.jobs.cache import CreativeCache
from studio.learning.abtest import bucket_stats, compare, wilson_interval
from studio.serving.app import create_app
from studio.ui import audience, campaign, create, experiments, masks, models

# -- click-to-select and masks ----------------------------------------------------------------------------------------


def two_squares() -> tuple[Image.Image, np.ndarray]:
    """Grey backdrop with two separate red squares (one with JPEG-like noise) and a thin blue line; the known region
    is the first square."""
    pixels = np.full((60, 80, 3), 200, dtype=np.uint8)
    region = np.zeros((60, 80), dtype=bool)
    region[10:30, 10:30] = True
    noise = np.random.default_rng(0).integers(-6, 7, (20, 20, 3))
    pixels[10:30, 10:30] = np.clip(np.array([200, 20, 20]) + noise, 0, 255)
    pixels[35:55, 50:70] = (200, 20, 20)  # same colour, not connected: must not be selected
    pixels[5:58, 40] = (20, 20, 200)
    return Image.fromarray(pixels), region


def test_a_click_selects_exactly_the_connected_region_of_similar_colour():
    image, region = two_squares()
    selected = masks.select_region(image, (15, 20), tolerance=32)
    assert np.array_equal(selected, region)
    # Tolerance 0 keeps only pixels of exactly the clicked colour (the noisy square splits up).
    assert selected.sum() > masks.select_region(image, (15, 20), tolerance=0).sum()


def test_click_modes_add_remove_and_backdrop():
    image, region = two_squares()
    backdrop = masks.select_region(image, (0, 0), tolerance=10)
    assert np.array_equal(masks.apply_click(None, region, "add"), region)
    assert not masks.apply_click(region, region, "remove").any()
    product = masks.apply_click(None, backdrop, "background")
    assert np.array_equal(product, ~backdrop) and product[region].all() and product[35:55, 50:70].all()
    with pytest.raises(InputError, match="click mode"):
        masks.apply_click(None, region, "paint")
    with pytest.raises(InputError, match="outside"):
        masks.select_region(image, (80, 0))


def test_a_click_on_the_preview_maps_to_the_photo():
    assert masks.preview_to_photo((512, 256), (2048, 1024)) == (1024, 512)  # the preview is 1024 px wide
    assert masks.preview_to_photo((PREVIEW_MAX_SIDE - 1, 0), (2048, 1024)) == (2046, 0)
    assert masks.preview_to_photo((30, 40), (80, 60)) == (30, 40)  # a small photo is shown as it is


def test_an_uploaded_mask_is_read_exactly_and_bad_masks_are_one_line_errors(tmp_path):
    _, region = two_squares()
    Image.fromarray(region.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    assert np.array_equal(masks.uploaded_mask(tmp_path / "mask.png", (80, 60)), region)
    Image.new("L", (80, 60), 0).save(tmp_path / "black.png")
    with pytest.raises(InputError, match="all black"):
        masks.uploaded_mask(tmp_path / "black.png", (80, 60))
    with pytest.raises(InputError, match="same size"):
        masks.uploaded_mask(tmp_path / "mask.png", (40, 30))


def test_true_colours_show_the_photo_untinted():
    image, region = two_squares()
    true = np.asarray(masks.preview(image, region, tinted=False)["background"])
    tinted = np.asarray(masks.preview(image, region, tinted=True)["background"])
    assert np.array_equal(true, np.asarray(image))
    changed = np.any(tinted != true, axis=2)
    assert np.array_equal(changed, region)


# -- groups, prompts, tokens ------------------------------------------------------------------------------------------


def test_groups_carry_the_reward_models_profiles_and_sizes():
    found = create.groups()
    clustering = audience.clustering_of()
    assert [g["group_id"] for g in found] == [p.group_id for p in clustering.profiles_]
    assert [g["size"] for g in found] == [p.size for p in clustering.profiles_]
    label, value = create.group_choices(found)[0]
    assert value == "0" and f"{found[0]['size']:,} users" in label
    text = create.profile_text(found[0])
    assert ", ".join(found[0]["top_tags"]) in text and "Age: about" in text
    with pytest.raises(InputError, match="unknown audience group"):
        create.find_group(found, "99")


def test_suggestions_are_the_prompt_models_own_for_the_group():
    from studio.jobs.pipeline import write_prompts

    profile = create.groups()[1]
    shown = create.suggest(profile, title="cold brew", category="beverage", n=3, seed=4)
    brief = {k: v for k, v in profile.items() if k != "size"}
    direct = write_prompts(create.prompt_writer(None), brief, title="cold brew", category="beverage", n=3, seed=4)
    assert shown == [p.positive for p in direct] and len(shown) == 3


def test_the_token_counter_counts_as_the_generator_reads_and_knows_its_limit():
    from studio.imaging.engine import load_engine

    tokenizer = load_engine(None).pipeline.tokenizer
    text = "a teal marble backdrop, soft light"  # studio-mini's own words: read as typed
    counted = create.token_count(text)
    assert counted == create.TokenCount(len(tokenizer(text).input_ids), tokenizer.model_max_length)
    assert counted.text() == f"{counted.count} / {counted.limit} tokens"
    # a marketer's sentence: counted as the model reads it, and the reading shown
    sentence = create.token_count("a crimson marble table in a kitchen, soft light")
    read = "a red marble table in a kitchen, soft light"  # studio-mini v2 keeps every word, maps colour names
    assert sentence == create.TokenCount(len(tokenizer(read).input_ids), tokenizer.model_max_length, read,
                                         (("crimson", "red"),), ())
    assert sentence.text().endswith(f"the model reads “{read}” (crimson → red)")
    assert tokenizer.model_max_length == 77
    long = create.token_count(" ".join(["marble"] * 80))
    assert long.count == 82 and "too long by 5" in long.text()  # 80 words + start and end tokens


# -- creatives, CTR, cache, zip ---------------------------------------------------------------------------------------


def product_photo() -> Image.Image:
    pixels = np.full((96, 96, 3), 245, dtype=np.uint8)
    pixels[20:80, 35:60] = (30, 80, 200)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """Three creatives streamed for group 2, with every intermediate list the stream yielded."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("create")
    settings = CreativeSettings(steps=2, size=256)
    steps = list(create.stream_creatives(product_photo(), "a teal marble table, soft light", settings=settings, n=3,
                                         seed=7, group_id="2", category="bottle", out_dir=out, name="bottle"))
    return out, steps


def test_creatives_stream_in_one_at_a_time_ranked_by_predicted_ctr(streamed):
    _, steps = streamed
    assert [len(step) for step in steps] == [1, 2, 3]
    assert [c.seed for c in steps[-1]] == [7, 8, 9] and steps[0][0].path == steps[-1][0].path
    final = steps[-1]
    by_ctr = sorted(final, key=lambda c: -c.predicted_ctr)
    assert [c.rank for c in by_ctr] == [1, 2, 3]
    assert all(c.group_id == 2 and c.category == "beverage" for c in final)  # "bottle" reads as its category


def test_predicted_ctr_is_the_reward_models_own_prediction_of_the_written_png(streamed):
    from reward.data import load_pixels

    _, steps = streamed
    scorer = create.reward_model()
    final = steps[-1]
    pixels, _ = load_pixels([c.path for c in final], scorer.config.image_size)
    with torch.no_grad():
        expected = scorer.predict_ctr(pixels, [c.prompt for c in final], ["2"] * 3, ["beverage"] * 3)
    assert [c.predicted_ctr for c in final] == pytest.approx([float(v) for v in expected], abs=1e-7)
    assert create.predict_ctr([final[0].path], [final[0].prompt], 2, "beverage") == \
        pytest.approx([final[0].predicted_ctr], abs=1e-7)
    with pytest.raises(InputError, match="unknown category"):
        create.predict_ctr([final[0].path], [final[0].prompt], 2, "spaceships")


def test_accept_puts_the_creative_in_the_campaign_cache(streamed, tmp_path):
    _, steps = streamed
    best = min(steps[-1], key=lambda c: c.rank)
    with CreativeCache(tmp_path / "cache") as cache:
        entry = create.accept(cache, best, product_id="sku-1")
        again = create.accept(cache, best, product_id="sku-1")  # idempotent
        stored = cache.creatives("sku-1", group_id=2, placement="1:1")
        png = cache.read_png(entry.creative_id)
    assert again == entry and stored == [entry]
    assert entry.status == "accepted" and entry.rank == 1 and entry.predicted_ctr == pytest.approx(best.predicted_ctr)
    assert entry.key.prompt == best.prompt and entry.key.reward_version.startswith("reward-mini@")
    assert png == Path(best.path).read_bytes()
    unscored = create.ScoredCreative(best.path, best.prompt, best.seed, None, "beverage", None, None)
    with CreativeCache(tmp_path / "cache") as cache, pytest.raises(InputError, match="choose an audience group"):
        create.accept(cache, unscored, product_id="sku-1")


def test_the_zip_holds_exactly_the_gallerys_pngs_with_their_recipes(streamed, tmp_path):
    _, steps = streamed
    final = steps[-1]
    path = create.zip_creatives(final, tmp_path / "all.zip")
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
        pngs = {name: archive.read(name) for name in names if name.endswith(".png")}
        infos = {name: json.loads(archive.read(name)) for name in names if name.endswith(".json")}
    stems = sorted(Image.open(c.path).filename.rsplit("/", 1)[1] for c in final)
    assert sorted(pngs) == stems and len(names) == 2 * len(final)
    for creative in final:
        name = creative.path.rsplit("/", 1)[1]
        assert pngs[name] == Path(creative.path).read_bytes()
        info = infos[name.removesuffix(".png") + ".json"]
        assert info["recipe"]["seed"] == creative.seed == read_recipe(creative.path).seed
        assert info["predicted_ctr"] == creative.predicted_ctr and info["rank"] == creative.rank
    with pytest.raises(InputError, match="generate first"):
        create.zip_creatives([], tmp_path / "none.zip")


def test_a_cancelled_stream_keeps_what_it_yielded(tmp_path):
    import threading

    flag = threading.Event()
    stream = create.stream_creatives(product_photo(), "a red wooden table", settings=CreativeSettings(steps=2, size=256),
                                     n=3, seed=0, group_id=None, category="", out_dir=tmp_path, name="p", cancel=flag,
                                     progress=False)
    first = next(stream)
    assert first[0].predicted_ctr is None and first[0].rank is None and first[0].caption() == "seed 0"
    flag.set()
    with pytest.raises(GenerationCancelled):
        next(stream)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [first[0].path.rsplit("/", 1)[1]]


def test_recent_runs_keep_the_latest_first_and_give_their_settings_back():
    run = dict(zip(create.HISTORY_FIELDS, ("a teal table", "", "2", "beverage", "4:5", 0.6, 2, 7, 30, 7.5, "",
                                           0.3, 0.7, "", 1.0, True, 0.0, ""), strict=True))
    history = create.remember([], run)
    history = create.remember(history, {**run, "seed": 8})
    history = create.remember(history, run)  # a repeat moves to the top, not in twice
    assert [h["seed"] for h in history] == [7, 8]
    assert create.reuse(history, "1") == tuple({**run, "seed": 8}.values())
    assert create.history_choices(history)[0] == ("#0 · group 2 · 4:5 · seed 7 · a teal table", "0")
    for i in range(20):
        history = create.remember(history, {**run, "seed": 100 + i})
    assert len(history) == create.HISTORY_LIMIT and history[0]["seed"] == 119
    with pytest.raises(InputError, match="no recent run"):
        create.reuse(history, 10)
    personal = create.remember(history, {**run, "personal_group": "1", "history_guidance": 2.5, "keep_colours": False,
                                         "category_guidance": 1.5})
    assert create.reuse(personal, "0")[-5:] == ("1", 2.5, False, 1.5, "")  # the personal conditions come back
    assert create.history_choices(personal)[0][0] == "#0 · group 2 · 4:5 · seed 7 · for group 1 ×2.5 · a teal table"


# -- personal conditions on the Create tab ------------------------------------------------------------------------------

CREATE_ARGS = dict(mode="background", placement="1:1", extend=None, steps=2, guidance=7.5, negative_prompt="",
                   scale=0.6, position=(0.5, 0.55))


def test_personalising_for_a_group_passes_its_history_and_scale_into_the_settings(tmp_path, monkeypatch):
    from studio.sim.histories import history_for_group

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the seeded world is built here, once
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    settings = create.creative_settings(**CREATE_ARGS, personal_group="2", history_guidance=2.5,
                                        history_adapter=f" {adapter} ")
    assert settings.history_guidance == 2.5 and settings.history_adapter == str(adapter)
    assert settings.history.source == "group:2" and settings.history.digest == history_for_group(2).digest
    # "Keep the prompt's colours" (on by default): the measured setting that keeps the colour up to scale 2
    assert (settings.history_projection, settings.history_interval) == ("perpendicular", 1.0)
    free = create.creative_settings(**CREATE_ARGS, personal_group="2", history_guidance=2.5, keep_colours=False)
    assert (free.history_projection, free.history_interval) == ("none", 1.0)
    plain = create.creative_settings(**CREATE_ARGS, personal_group="", history_guidance=2.5)
    assert plain == CreativeSettings(steps=2, guidance=7.5, scale=0.6)  # no group: the prompt alone, the slider unused
    # the category condition: the product's category (a product kind reads as its category) at its own scale
    bottle = create.creative_settings(**CREATE_ARGS, category="bottle", category_guidance=1.5)
    assert (bottle.category, bottle.category_guidance, bottle.history) == ("beverage", 1.5, None)
    assert create.creative_settings(**CREATE_ARGS, category="bottle", category_guidance=0).category is None
    with pytest.raises(InputError, match="category guidance needs the product's category"):
        create.creative_settings(**CREATE_ARGS, category="", category_guidance=1.0)
    with pytest.raises(InputError, match="unknown product category 'spaceship'"):
        create.creative_settings(**CREATE_ARGS, category="spaceship", category_guidance=1.0)
    with pytest.raises(InputError, match="category guidance must be a finite number"):
        create.creative_settings(**CREATE_ARGS, category="beverage", category_guidance=-1)
    assert create.personal_choices([{"group_id": 0}, {"group_id": 3}]) == [
        ("None: the prompt alone", ""), ("Group 0 (its clicked creatives)", "0"),
        ("Group 3 (its clicked creatives)", "3")]
    with pytest.raises(InputError, match="history guidance must be a finite number"):
        create.creative_settings(**CREATE_ARGS, personal_group="2", history_guidance=float("nan"))
    with pytest.raises(InputError, match="unknown group"):
        create.creative_settings(**CREATE_ARGS, personal_group="9", history_guidance=1.0)
    with pytest.raises(InputError, match="is not a folder"):
        create.creative_settings(**CREATE_ARGS, personal_group="2", history_guidance=1.0,
                                 history_adapter=str(tmp_path / "nope"))


@pytest.mark.slow
def test_the_create_button_passes_the_history_scale_into_the_settings(tmp_path, monkeypatch):
    """The app's Generate handler, called as Gradio calls it, hands the group's history and the slider's scale to
    the creatives it streams."""
    import app as app_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    seen = []

    def fake_stream(product, prompt, *, settings, **kwargs):
        seen.append(settings)
        return iter(())

    monkeypatch.setattr(create, "stream_creatives", fake_stream)
    blocks = app_module.build_app(tmp_path / "ui")
    (handler,) = [f.fn for f in blocks.fns.values() if f.api_name == "generate"]
    photo = tmp_path / "photo.png"
    product_photo().save(photo)
    request = type("Request", (), {"session_hash": "test"})()
    base = [str(photo), None, None, "a teal table", "", "outpaint", "1:1", ["left"], 64, 1, 0, 2, 7.5, "", "",
            "beverage", 0.6, 0.5, 0.55]
    assert list(handler(*base, "1", 3.0, True, 0, "", request=request)) == []
    assert list(handler(*base, "", 3.0, True, 1.5, "", request=request)) == []
    personal, plain = seen
    assert personal.history_guidance == 3.0 and personal.history.source == "group:1"
    assert personal.history_projection == "perpendicular" and personal.category is None
    assert plain.history is None and plain.history_guidance == 0.0
    assert (plain.category, plain.category_guidance) == ("beverage", 1.5)  # the category dropdown's, at its slider


# -- experiments ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return experiment_log.build(tmp_path_factory.mktemp("serving"))


def test_experiment_cells_and_lift_are_the_known_counts_with_their_intervals(served):
    config, _ = served
    found = experiments.read_experiment(config)
    assert found.impressions == sum(i for i, _ in experiment_log.TRAFFIC.values())
    for bucket in ("control", "treatment"):
        for group in (0, 1):
            impressions, clicks = experiment_log.totals(bucket, group)
            row = found.cells[(found.cells["bucket"] == bucket) & (found.cells["group_id"] == group)].iloc[0]
            assert (row["impressions"], row["clicks"]) == (impressions, clicks)
            assert row["ctr"] == clicks / impressions
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_interval(clicks, impressions))
    control, treatment = experiment_log.totals("control"), experiment_log.totals("treatment")
    expected = compare(bucket_stats("control", control[1], control[0]),
                       bucket_stats("treatment", treatment[1], treatment[0]))
    assert found.lift["lift"] == pytest.approx(expected.lift) and found.lift["ci_low"] == pytest.approx(
        expected.lift_ci_low)
    assert f"{expected.lift:+.1%}" in found.lift_text()


def test_experiment_figures_equal_the_services_report(served):
    config, _ = served
    found = experiments.read_experiment(config)
    with TestClient(create_app(config)) as client:
        report = client.get("/v1/report").json()
    assert found.cells.to_dict("records") == [{k: cell[k] for k in experiments.CELL_COLUMNS}
                                              for cell in report["cells"]]
    assert found.lift == report["lift"]


def test_ctr_over_time_ends_at_each_buckets_ctr(served):
    config, _ = served
    curve = experiments.read_experiment(config, windows=10).over_time
    for bucket in ("control", "treatment"):
        impressions, clicks = experiment_log.totals(bucket)
        last = curve[curve["bucket"] == bucket].iloc[-1]
        assert last["impressions"] == impressions and last["ctr"] == pytest.approx(clicks / impressions)
        assert curve[curve["bucket"] == bucket]["impressions"].is_monotonic_increasing


def test_arm_scores_and_why_this_creative_wins(served):
    config, ids = served
    arms = experiments.read_experiment(config).arms
    for arm in "AB":  # the bandit learned both buckets, per group (cold start: none)
        for group in (0, 1, -1):
            served = sum(experiment_log.TRAFFIC[(bucket, group, arm)][0] for bucket in ("control", "treatment")
                         ) if group >= 0 else 0
            row = (arms["creative_id"] == ids[arm]) & (arms["group_id"] == group)
            assert arms.loc[row, "learned"].tolist() == [served]
    for group, winner, loser in ((0, "A", "B"), (1, "B", "A")):
        part = arms[arms["group_id"] == group].set_index("creative_id")
        assert part.loc[ids[winner], "estimate"] > part.loc[ids[loser], "estimate"]
        text = experiments.why_wins(arms, experiment_log.PRODUCT, experiment_log.PLACEMENT, group)
        assert text.startswith(f"For group {group}, creative `{ids[winner][:12]}` leads")
        assert f"predicted {part.loc[ids[winner], 'predicted_ctr']:.2%}" in text
        theirs = experiment_log.PROMPTS[winner].replace(",", "").split()
        assert f"'{next(w for w in theirs if w not in experiment_log.PROMPTS[loser])}'" in text
    with pytest.raises(InputError, match="no creatives learned"):
        experiments.why_wins(arms, "other", "1:1", 0)


def test_an_empty_log_shows_no_figures_rather_than_failing(tmp_path):
    from studio.learning.eventlog import EventLog
    from studio.serving.config import ServeConfig

    EventLog(tmp_path / "events.db").close()
    found = experiments.read_experiment(ServeConfig(db=str(tmp_path / "events.db"), cache=str(tmp_path / "cache")))
    assert found.impressions == 0 and found.cells.empty and found.over_time.empty and found.arms.empty
    assert found.lift is None and found.lift_text().startswith("No lift yet")


# -- campaign, audience, models ---------------------------------------------------------------------------------------


def test_contact_sheet_orders_by_predicted_ctr_and_status_changes_by_id_prefix(served):
    config, ids = served
    with CreativeCache(config.cache) as cache:
        sheet = campaign.contact_sheet(cache, 0)
        assert [caption.split(" · ")[-1] for _, caption in sheet] == [ids["A"][:12], ids["B"][:12]]
        assert "predicted CTR 4.00%" in sheet[0][1] and sheet[0][0].size == (16, 16)
        assert campaign.set_status(cache, ids["B"][:12], "retired") == ids["B"]
        assert cache.get(ids["B"]).status == "retired"
        assert next(c for _, c in campaign.contact_sheet(cache, 0, "retired")).endswith(ids["B"][:12])
        campaign.set_status(cache, ids["B"], "accepted")
        with pytest.raises(InputError, match="no creative"):
            campaign.set_status(cache, "f" * 12, "retired")


def test_a_catalogue_with_a_bad_row_is_one_clear_error(tmp_path):
    product_photo().save(tmp_path / "bottle.png")
    (tmp_path / "bad.csv").write_text("image,product_id,title,category\nbottle.png,sku 1,Bottle,beverage\n")
    with pytest.raises(InputError) as error:
        campaign.gather_catalogue(tmp_path / "bad.csv", [str(tmp_path / "bottle.png")], tmp_path / "job")
    assert "sku 1" in str(error.value) and "\n" not in str(error.value)


def test_a_whole_folder_is_a_catalogue_when_it_holds_one_csv(tmp_path):
    uploaded = tmp_path / "upload"
    uploaded.mkdir()
    product_photo().save(uploaded / "bottle.png")
    (uploaded / "shop.csv").write_text("image,product_id,title,category\nbottle.png,sku-1,Bottle,beverage\n")
    files = [str(uploaded / "bottle.png"), str(uploaded / "shop.csv")]
    target = campaign.gather_catalogue(None, files, tmp_path / "job")
    assert target.read_text() == (uploaded / "shop.csv").read_text()
    assert (tmp_path / "job" / "bottle.png").read_bytes() == (uploaded / "bottle.png").read_bytes()
    (uploaded / "other.csv").write_text("image,product_id,title,category\n")
    with pytest.raises(InputError, match=r"exactly one CSV .*other.csv, shop.csv"):
        campaign.gather_catalogue(None, [*files, str(uploaded / "other.csv")], tmp_path / "job2")


@pytest.mark.slow
def test_a_catalogue_job_fills_the_cache_and_stops_when_cancelled(tmp_path):
    torch.set_num_threads(1)
    product_photo().save(tmp_path / "bottle.png")
    product_photo().rotate(90).save(tmp_path / "other.png")
    (tmp_path / "cat.csv").write_text("image,product_id,title,category\nbottle.png,sku-1,Bottle,beverage\n"
                                      "other.png,sku-2,Other,beverage\n")
    catalogue = campaign.gather_catalogue(tmp_path / "cat.csv", [str(tmp_path / p) for p in ("bottle.png",
                                                                                          "other.png")], tmp_path / "job")
    config = campaign.BatchConfig(catalogue=str(catalogue), cache=str(tmp_path / "cache"), out=str(tmp_path / "job"),
                                  groups=(0, 1), prompts_per_group=1, steps=2, size=128, progress=False)
    steps = []
    for progress in campaign.run_catalogue(config, cancelled=lambda: len(steps) >= 2):  # cancel after one product
        steps.append(dataclasses.replace(progress, failures=list(progress.failures)))
    assert [(s.done, s.total, s.cancelled) for s in steps] == [(0, 2, False), (1, 2, False), (1, 2, True)]
    with CreativeCache(tmp_path / "cache") as cache:
        assert {c.key.product_id for c in cache.all_creatives()} == {"sku-1"}
        assert sorted(c.key.group_id for c in cache.all_creatives()) == [0, 1]
    assert steps[-1].text().startswith("**Cancelled:** 1 of 2 products, 2 creatives")


def test_audience_table_map_and_reclustering(tmp_path):
    clustering = audience.clustering_of()
    table = audience.groups_table(clustering)
    assert list(table["size"]) == [p.size for p in clustering.profiles_]
    assert table["share"].sum() == pytest.approx(1.0, abs=0.01)
    users = audience.sample_users(200)
    points = audience.user_map(clustering, users)
    assert len(points) == 200 and list(points["group"]) == [f"group {g}" for g in clustering.predict(users)]
    users.to_csv(tmp_path / "users.csv", index=False)
    fitted = audience.recluster(tmp_path / "users.csv", tmp_path / "audience", n_groups=3)
    again = type(fitted).from_pretrained(tmp_path / "audience")
    assert again.n_groups_ == 3 and np.array_equal(again.predict(users), fitted.predict(users))
    with pytest.raises(InputError, match="suffix"):
        audience.recluster(tmp_path / "audience" / "config.json", tmp_path / "x")


def test_models_show_versions_and_a_missing_hub_model_fails_fast_offline(monkeypatch):
    described = models.describe("reward model", None)
    folder = described["location"]
    assert described["version"] == weights_hash(folder).removeprefix("sha256:")[:12]
    assert described["size_mb"] == round(models.folder_bytes(Path(folder)) / 2**20, 2)
    assert models.describe("generator", None)["name"] == "studio-mini"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="offline") as error:
        models.describe("generator", "someone/no-such-model")
    assert time.monotonic() - started < 2 and "\n" not in str(error.value)
    assert models.local_folders(Path(models.resolve("generator", None)).parent) == \
        [models.resolve("generator", None)]


def test_placement_presets_name_each_channels_aspect_and_paint_at_it():
    from studio.imaging.canvas import parse_aspect

    assert sorted(create.PLACEMENT_PRESETS.values()) == ["16:9", "1:1", "4:5", "9:16"]
    for label, aspect in create.PLACEMENT_PRESETS.items():
        assert label.endswith(aspect)
        CreativeSettings(placement=aspect).check()
        ratio = parse_aspect(aspect)  # width / height
        assert (ratio > 1) == label.startswith("Banner") and (ratio < 1) == (aspect in ("4:5", "9:16"))


def test_regret_is_the_gap_to_the_best_estimated_arm_accumulated_over_time():
    from studio.ui.experiments import ARM_COLUMNS, regret_over_time

    arms = pd.DataFrame([("p", "1:1", 0, "A", 0.20, 0.01, 0.21, 100, None, ""),
                         ("p", "1:1", 0, "B", 0.05, 0.01, 0.06, 100, None, ""),
                         ("p", "1:1", 1, "A", 0.02, 0.01, 0.03, 100, None, ""),
                         ("p", "1:1", 1, "B", 0.10, 0.01, 0.11, 100, None, "")], columns=ARM_COLUMNS)
    events = pd.DataFrame({"ts": [1.0, 2.0, 3.0, 4.0, 4.0], "bucket": ["treatment"] * 3 + ["control"] * 2,
                           "product_id": "p", "placement": "1:1", "group_id": [0, 0, 1, 1, 0],
                           "creative_id": ["A", "B", "A", "B", "Z"]})  # Z: no estimate, counts 0
    regret = regret_over_time(events, arms, windows=3)
    treatment = regret[regret["bucket"] == "treatment"]
    assert treatment["ts"].tolist() == [2.0, 3.0, 4.0]
    assert np.allclose(treatment["regret"], [0.15, 0.15 + 0.08, 0.15 + 0.08])
    control = regret[regret["bucket"] == "control"]
    assert control["ts"].tolist() == [4.0] and np.allclose(control["regret"], [0.0])


def test_favourites_toggle_by_path_and_keep_their_order():
    a, b = {"path": "/x/a.png", "seed": 0}, {"path": "/x/b.png", "seed": 1}
    favourites = create.toggle_favourite([], a)
    favourites = create.toggle_favourite(favourites, b)
    assert favourites == [a, b]
    assert create.toggle_favourite(favourites, dict(a)) == [b]  # marking it again removes it


def test_a_loop_runs_rounds_and_gains_are_read_from_its_report(tmp_path):
    report = {"rounds": {"loop": [
        {"round": 0, "true_ctr": {"mean": 0.05, "ci": [0.04, 0.06], "n": 1000}, "added": ["a", "b"], "retired": []},
        {"round": 1, "true_ctr": {"mean": 0.06, "ci": [0.05, 0.07], "n": 1000}, "added": ["c"], "retired": ["a"],
         "hacking": {"gap_points": 2.5}, "lora": {"final_loss": 0.8}}]},
        "comparisons": {"round": 1, "loop_vs_round_0": {"gain": 0.2, "ci": [0.1, 0.3], "paired": False}}}
    (tmp_path / "loop.json").write_text(json.dumps(report))
    (tmp_path / "loop" / "round-1" / "lora").mkdir(parents=True)
    rounds, gains = models.loop_rounds(tmp_path)
    assert rounds[["arm", "round", "true_ctr", "ci_low", "impressions", "new_creatives", "retired"]].values.tolist() \
        == [["loop", 0, 0.05, 0.04, 1000, 2, 0], ["loop", 1, 0.06, 0.05, 1000, 1, 1]]
    assert rounds["lora"].tolist() == ["", str(tmp_path / "loop" / "round-1" / "lora")]
    assert gains.values.tolist() == [["loop_vs_round_0", 0.2, 0.1, 0.3, False]]
    with pytest.raises(InputError, match="no loop report"):
        models.loop_rounds(tmp_path / "elsewhere")
    (tmp_path / "loop.json").write_text("[]")
    with pytest.raises(InputError, match="is not a loop report"):
        models.loop_rounds(tmp_path)
