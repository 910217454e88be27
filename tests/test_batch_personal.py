"""`studio batch` with personal conditions: each group painted with its own history at its own guidance scale, the
conditions recorded in every recipe, the product's pixels bit-exact, a group without a history painted from the text
alone (and its recipe says so), resumable units that never reuse creatives made without the conditions, and bad specs
refused in one line before any model loads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_batch import catalogue, cli, refused

from studio.core.errors import InputError, StudioError
from studio.imaging.canvas import place_product, product_mask
from studio.imaging.images import load_image
from studio.imaging.provenance import read_recipe
from studio.jobs import batch as batch_module
from studio.jobs.batch import BatchConfig, run_batch
from studio.jobs.cache import CreativeCache

NO_HISTORY_NOTE = {"source": None, "note": "no history given: painted from the text alone"}


@pytest.fixture(scope="module")
def conditioner_dir(tiny_pipeline_dir, tmp_path_factory):
    """A PersonalConditioner for the tiny UNet with random (non-zero) weights, so a history visibly acts."""
    import torch

    from studio.imaging.engine import load_engine
    from studio.imaging.personal import new_conditioner

    torch.manual_seed(1)
    conditioner = new_conditioner(load_engine(str(tiny_pipeline_dir), device="cpu").pipeline.unet)
    with torch.no_grad():
        for parameter in conditioner.parameters():
            parameter.normal_(0.0, 0.3)
    return conditioner.save_pretrained(tmp_path_factory.mktemp("conditioner"))


def histories(folder, groups: dict[str, tuple[int, int, int]]):
    """A history folder: one subfolder of clicked creatives (plain colours) per group id."""
    for group, colour in groups.items():
        (folder / group).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48 + 8 * i, 48), colour).save(folder / group / f"c{i}.png")
    return folder


def cached(cache_dir) -> list[tuple]:
    """(entry, png bytes) of every creative in the cache."""
    with CreativeCache(cache_dir) as cache:
        return [(entry, cache.read_png(entry.creative_id)) for entry in cache.all_creatives()]


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def recipe_of(data: bytes, tmp_path, name: str):
    path = tmp_path / f"{name}.png"
    path.write_bytes(data)
    return read_recipe(path)


@pytest.mark.slow
def test_history_guidance_in_a_batch_is_recorded_changes_the_scene_and_keeps_the_product(
        tiny_pipeline_dir, conditioner_dir, tmp_path):
    path = catalogue(tmp_path / "cat", 1)
    history = histories(tmp_path / "histories", {"0": (220, 40, 30)})  # group 1 has no history: text only
    common = dict(catalogue=str(path), cache=str(tmp_path / "cache"), out=str(tmp_path / "out"), groups=(0, 1),
                  prompts_per_group=2, size=96, steps=2, generator=str(tiny_pipeline_dir), progress=False)
    text_only = run_batch(BatchConfig(batched=False, **common))  # one call per image, as a personal job paints
    personal = BatchConfig(history=str(history), history_guidance=2.0, history_adapter=str(conditioner_dir), **common)
    report = run_batch(personal)

    # The same cache: the personal job's units are new (not skipped), its keys carry its conditions
    assert (text_only.made, report.made, report.skipped, report.failed) == (1, 1, 0, 0)
    assert report.personal["histories"] == {"0": f"folder:{history / '0'}", "1": None}
    entries = cached(tmp_path / "cache")
    plain = {(e.key.group_id, e.key.prompt): data for e, data in entries
             if e.key.generator_version == text_only.generator_version}
    painted = {(e.key.group_id, e.key.prompt): (e, data) for e, data in entries
               if e.key.generator_version != text_only.generator_version}
    assert len(entries) == 8 and sorted(painted) == sorted(plain)  # the same prompts (and seeds) per group
    assert all(e.key.generator_version.startswith(f"{report.generator_version}+") for e, _ in painted.values())

    photo = load_image(path.parent / "p0.png")
    canvas = place_product(photo, product_mask(photo), aspect="1:1", size=96)
    for (group, prompt), (entry, data) in painted.items():
        recipe = recipe_of(data, tmp_path, f"{group}-{entry.rank}")
        before = recipe_of(plain[group, prompt], tmp_path, f"plain-{group}-{entry.rank}")
        assert recipe.seed == before.seed and recipe.prompt == prompt
        pixels, text_pixels = decode(data), decode(plain[group, prompt])
        assert np.array_equal(pixels[canvas.keep], np.asarray(canvas.image).astype(int)[canvas.keep])
        if group == 0:
            assert recipe.history_guidance == 2.0
            assert recipe.history["source"] == f"folder:{history / '0'}" and recipe.history["count"] == 2
            assert recipe.history["method"] == "latent-channels"
            assert np.abs(pixels - text_pixels)[~canvas.keep].max() > 10  # the history repainted the scene
        else:  # the documented fallback: painted from the text alone, bit for bit, and the recipe says so
            assert recipe.history == NO_HISTORY_NOTE and recipe.history_guidance == 0.0
            assert np.array_equal(pixels, text_pixels)
        assert before.history is None and before.history_guidance == 0.0

    again = run_batch(personal)  # resumes: the conditioned units are done
    assert (again.skipped, again.made) == (1, 0)
    stronger = run_batch(BatchConfig(history=str(history), history_guidance=1.0, history_adapter=str(conditioner_dir),
                                     **common))
    assert (stronger.skipped, stronger.made) == (0, 1)  # another scale: a new unit
    after = cached(tmp_path / "cache")
    # group 0: two new creatives under new keys; group 1 (text alone, the same bytes): its keys and creatives kept
    before_keys = {e.key for e, _ in entries}
    assert len(after) == 10 and before_keys < {e.key for e, _ in after}
    assert sorted(e.key.group_id for e, _ in after if e.key not in before_keys) == [0, 0]
    projected = run_batch(BatchConfig(history=str(history), history_guidance=2.0, history_projection="perpendicular",
                                      history_adapter=str(conditioner_dir), **common))
    assert (projected.skipped, projected.made) == (0, 1)  # another formula: a new unit, new keys for group 0 only
    assert projected.personal["history_projection"] == "perpendicular"
    newest = {e.key: data for e, data in cached(tmp_path / "cache") if e.key not in {e.key for e, _ in after}}
    assert sorted(key.group_id for key in newest) == [0, 0]
    assert all(recipe_of(data, tmp_path, f"perp-{n}").history["projection"] == "perpendicular"
               for n, data in enumerate(newest.values()))
    known = {e.key for e, _ in cached(tmp_path / "cache")}
    late = run_batch(BatchConfig(history=str(history), history_guidance=2.0, history_interval=0.4,
                                 history_adapter=str(conditioner_dir), **common))
    assert (late.skipped, late.made) == (0, 1)  # another interval: a new unit, new keys for group 0 only
    assert late.personal["history_interval"] == 0.4
    latest = {e.key: data for e, data in cached(tmp_path / "cache") if e.key not in known}
    assert sorted(key.group_id for key in latest) == [0, 0]
    assert all(recipe_of(data, tmp_path, f"late-{n}").history["interval"] == 0.4
               for n, data in enumerate(latest.values()))


@pytest.mark.slow
def test_simulated_histories_and_the_category_condition(tiny_pipeline_dir, conditioner_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the seeded world is built here, once
    path = catalogue(tmp_path / "cat", 1)
    report = run_batch(BatchConfig(catalogue=str(path), cache=str(tmp_path / "cache"), out=str(tmp_path / "out"),
                                   groups=(2,), prompts_per_group=1, size=96, steps=2,
                                   generator=str(tiny_pipeline_dir), progress=False, history="simulated",
                                   history_guidance=1.0, category_guidance=1.5, history_adapter=str(conditioner_dir)))
    assert report.made == 1 and report.personal["histories"] == {"2": "group:2"}
    ((_, data),) = cached(tmp_path / "cache")
    recipe = recipe_of(data, tmp_path, "sim")
    assert recipe.history["source"] == "group:2" and recipe.history_guidance == 1.0
    assert recipe.category == "beverage" and recipe.category_guidance == 1.5  # the product's own category


# -- bad specs: one clear error, before any model loads, nothing written --------------------------------------------


@pytest.fixture
def no_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a job that should have been refused")

    monkeypatch.setattr(batch_module, "load_models", refuse)


@pytest.mark.parametrize("case, expected", [
    ("nan", "history_guidance must be a finite number"),
    ("negative", "category_guidance must be a finite number"),
    ("huge", "history_guidance must be a finite number from 0 to 20"),
    ("missing-folder", "is not a folder"),
    ("flat-folder", "no subfolder for any group"),
    ("world-without-simulated", "only read with history 'simulated'"),
    ("adapter-missing", "history adapter"),
    ("adapter-wrong-kind", "no history adapter"),
    ("category", "unknown product category 'cars'"),
    ("broken-history", "not an image PIL can read"),
    ("projection", "history_projection must be one of none, perpendicular"),
    ("interval", "history_interval must be in (0, 1]"),
])
def test_bad_personal_specs_are_one_clear_error(case, expected, tmp_path, no_models):
    path = catalogue(tmp_path / "cat", 1)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(flat / "a.png")
    broken = tmp_path / "broken"
    (broken / "0").mkdir(parents=True)
    (broken / "0" / "a.png").write_bytes(b"\x89PNG not really")
    spec = {
        "nan": dict(history_guidance=float("nan")),
        "negative": dict(category_guidance=-1.0),
        "huge": dict(history_guidance=1e6),
        "missing-folder": dict(history=str(tmp_path / "nope"), history_guidance=1.0),
        "flat-folder": dict(history=str(flat), history_guidance=1.0),
        "world-without-simulated": dict(history_world=str(tmp_path / "world")),
        "adapter-missing": dict(history_adapter=str(tmp_path / "nope")),
        "adapter-wrong-kind": dict(history_adapter=str(flat)),
        "category": dict(category="cars", category_guidance=1.0),
        "broken-history": dict(history=str(broken), history_guidance=1.0),
        "projection": dict(history_projection="sideways"),
        "interval": dict(history_interval=0.0),
    }[case]
    config = BatchConfig(catalogue=str(path), cache=str(tmp_path / "cache"), out=str(tmp_path / "out"), groups=(0,),
                         progress=False, **spec)
    with pytest.raises(StudioError) as raised:
        run_batch(config)
    message = str(raised.value)
    assert expected in message and "\n" not in message, message
    assert isinstance(raised.value, InputError) or case == "adapter-wrong-kind"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_bad_personal_flags_are_one_line(tmp_path, capsys, no_models):
    path = catalogue(tmp_path / "cat", 1)
    assert "--history-guidance" in refused(capsys, cli(path, tmp_path, "--history-guidance", "nan"))
    assert "history_projection must be one of none, perpendicular" in refused(
        capsys, cli(path, tmp_path, "--history-projection", "sideways"))
    assert "history_interval must be in (0, 1]" in refused(capsys, cli(path, tmp_path, "--history-interval", "1.5"))
    assert "is not a folder" in refused(capsys, cli(path, tmp_path, "--history", str(tmp_path / "nope"),
                                                    "--history-guidance", "1"))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_ray_makes_the_same_personal_cache_as_the_local_run(tiny_pipeline_dir, conditioner_dir, tmp_path):
    """Each actor loads the groups' histories itself; the keys carry each group's conditions, as in-process."""
    ray = pytest.importorskip("ray")
    import torch
    from test_batch import snapshot

    torch.set_num_threads(1)
    path = catalogue(tmp_path / "cat", 2)
    history = histories(tmp_path / "histories", {"1": (30, 60, 220)})  # group 3: text only
    common = dict(catalogue=str(path), groups=(1, 3), prompts_per_group=1, size=96, steps=2,
                  generator=str(tiny_pipeline_dir), progress=False, history=str(history), history_guidance=1.0,
                  history_adapter=str(conditioner_dir))
    local = run_batch(BatchConfig(cache=str(tmp_path / "local"), out=str(tmp_path / "local-out"), **common))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_batch(BatchConfig(cache=str(tmp_path / "ray"), out=str(tmp_path / "ray-out"), engine="ray",
                                       workers=2, **common))
    finally:
        ray.shutdown()
    assert (remote.made, remote.creatives) == (local.made, local.creatives) == (2, 4)
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    assert len({e.key.generator_version for e in snapshot(tmp_path / "local")[0]}) == 2  # one per group's conditions
