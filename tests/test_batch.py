"""`studio batch`: bad input is one line before any model loads; the job caches the top k per (product, group,
placement) with the product's pixels bit-exact; a job killed with SIGKILL anywhere and resumed ends with exactly the
bytes of an uninterrupted run; Ray makes the same cache as the in-process run."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.cli import main
from studio.imaging.canvas import place_product, product_mask
from studio.imaging.images import load_image
from studio.imaging.provenance import read_recipe
from studio.jobs import batch as batch_module
from studio.jobs.batch import BatchConfig, run_batch
from studio.jobs.cache import FORMAT_VERSION, CreativeCache
from studio.core.db import Database

STUDIO = [sys.executable, "-m", "studio.cli"]


def bottle(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    """A plain-background product photo, each a little different."""
    offset = seed % 7
    pixels = np.full((160, 120, 3), 235, np.uint8)
    pixels[40 + offset:140, 40:80 + offset] = colour
    pixels[25 + offset:40 + offset, 52:68] = colour
    pixels[80:100, 40:80] = (235, 210, 45)
    Image.fromarray(pixels).save(path)


def catalogue(folder: Path, products: int, *, bad_rows: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,product_id,title,category,brand"]
    rng = np.random.default_rng(0)
    for i in range(products):
        colour = tuple(int(v) for v in rng.integers(20, 220, 3))
        bottle(folder / f"p{i}.png", colour, i)
        brand = '"{""banned_words"": [""neon""]}"' if i % 2 else ""
        rows.append(f"p{i}.png,sku-{i},bottle {i},{['beverage', 'bottle', 'kitchen', 'cosmetics'][i % 4]},{brand}")
    if bad_rows:
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / "busy.png")
        (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
        rows += ["busy.png,sku-busy,noisy box,cosmetics,", "corrupt.png,sku-corrupt,broken mug,kitchen,"]
    path = folder / "catalogue.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def snapshot(cache_dir: Path) -> tuple[list, dict[str, bytes], set[str]]:
    """Every entry, every blob's bytes, and the blob files on disk."""
    with CreativeCache(cache_dir) as cache:
        entries = cache.all_creatives()
        blobs = {entry.creative_id: cache.read_png(entry.creative_id) for entry in entries}
    files = {str(p.relative_to(cache_dir)) for p in (cache_dir / "blobs").rglob("*") if p.is_file()}
    return entries, blobs, files


# -- bad input: one line, before any model loads, nothing written ---------------------------------------------------


@pytest.fixture
def no_models(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a job that should have been refused")

    monkeypatch.setattr(batch_module, "load_models", refuse)


def refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("studio: error: ") and "\n" not in err, err
    return err


def cli(catalogue_path: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["batch", "--catalogue", str(catalogue_path), "--cache", str(tmp_path / "cache"), "--out",
            str(tmp_path / "out"), "--no-progress", *extra]


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist"),
    ("corrupt-parquet", "not a readable CSV or Parquet"),
    ("no-column", "lacks column"),
    ("duplicate", "repeats row"),
    ("category", "unknown category 'furniture'"),
    ("brand", "brand rules"),
    ("hostile-id", "product_id"),
    ("empty", "no rows"),
])
def test_bad_catalogues(case, expected, tmp_path, capsys, no_models):
    good = catalogue(tmp_path / "cat", 2)
    header, first, second = good.read_text().splitlines()
    path = tmp_path / "cat" / "bad.csv"
    if case == "missing":
        path = tmp_path / "nope.csv"
    elif case == "corrupt-parquet":
        path = tmp_path / "cat" / "bad.parquet"
        path.write_bytes(b"PAR1 garbage")
    else:
        text = {
            "no-column": "image,product_id,title\np0.png,a,t\n",
            "duplicate": f"{header}\n{first}\n{first}\n",
            "category": f"{header}\np0.png,a,t,furniture,\n",
            "brand": f'{header}\np0.png,a,t,beverage,"{{not json"\n',
            "hostile-id": f"{header}\np0.png,../../etc,t,beverage,\n",
            "empty": f"{header}\n",
        }[case]
        path.write_text(text)
    assert expected in refused(capsys, cli(path, tmp_path))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_parquet_and_excel_csv_catalogues_read_the_same(tmp_path):
    import pandas as pd

    from studio.jobs.work import read_catalogue

    path = catalogue(tmp_path / "cat", 3)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.to_parquet(tmp_path / "cat" / "shop.parquet")
    (tmp_path / "cat" / "excel.csv").write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a BOM, as Excel writes
    products = read_catalogue(path)
    assert [p.product_id for p in products] == ["sku-0", "sku-1", "sku-2"]
    assert products[1].brand == {"banned_words": ["neon"]} and products[1].category == "beverage"  # bottle -> beverage
    assert products[0].image == str(tmp_path / "cat" / "p0.png")
    assert [(p.product_id, p.brand, p.image) for p in read_catalogue(tmp_path / "cat" / "shop.parquet")] == \
        [(p.product_id, p.brand, p.image) for p in products]
    assert read_catalogue(tmp_path / "cat" / "excel.csv") == products


def test_unknown_group_unwritable_cache_and_newer_cache(tmp_path, capsys, no_models):
    path = catalogue(tmp_path / "cat", 2)
    assert "unknown audience group(s) [9]" in refused(capsys, cli(path, tmp_path, "--groups", "0,9"))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    refused(capsys, ["batch", "--catalogue", str(path), "--cache", str(a_file / "cache"), "--out",
                     str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()

    with CreativeCache(tmp_path / "newer"):
        pass
    with Database(tmp_path / "newer" / "index.db") as database, database.transaction() as cursor:
        cursor.execute("UPDATE cache_meta SET value = ? WHERE name = 'format_version'", (str(FORMAT_VERSION + 1),))
    before = (tmp_path / "newer" / "index.db").read_bytes()
    err = refused(capsys, ["batch", "--catalogue", str(path), "--cache", str(tmp_path / "newer"), "--out",
                           str(tmp_path / "out")])
    assert "newer studio" in err and not (tmp_path / "out").exists()
    assert (tmp_path / "newer" / "index.db").read_bytes() == before
    assert "top k" in refused(capsys, cli(path, tmp_path, "--prompts-per-group", "2", "--top-k", "3"))
    assert "aspect" in refused(capsys, cli(path, tmp_path, "--placements", "1:1,wide"))


# -- the job --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_batched_generation_repeats_each_single_call(tiny_pipeline_dir, product_photo):
    """One prompt per call is bit-identical to Engine.generate; a batch draws the same noise (within float sums)."""
    from studio.imaging.creatives import CreativeSettings, build_canvas, model_inputs
    from studio.imaging.engine import GenerationSettings, load_engine

    engine = load_engine(str(tiny_pipeline_dir))
    image, mask = model_inputs(build_canvas(load_image(product_photo), CreativeSettings(size=96)), engine)
    settings = GenerationSettings(steps=3)
    prepared = engine.prepare_canvas(image, mask)
    prompts, negatives, seeds = ["a red table", "a blue sofa", "a beach"], ["", "blurry", ""], [5, 6, 7]
    singles = [np.asarray(engine.generate(image, mask, prompt=p, seed=s, settings=GenerationSettings(
        steps=3, negative_prompt=n))).astype(int) for p, n, s in zip(prompts, negatives, seeds)]
    alone = np.asarray(engine.generate_many(prepared, prompts=prompts[1:2], negative_prompts=negatives[1:2],
                                            seeds=seeds[1:2], settings=settings)[0]).astype(int)
    assert np.array_equal(alone, singles[1])
    batched = [np.asarray(i).astype(int) for i in engine.generate_many(
        prepared, prompts=prompts, negative_prompts=negatives, seeds=seeds, settings=settings)]
    for single, many in zip(singles, batched):
        assert np.abs(single - many).max() <= 1  # same draws; only batched float sums may round differently
    assert np.abs(singles[0] - singles[1]).max() > 10  # and the images do differ from each other


@pytest.mark.slow
def test_batch_job_caches_top_k_keeps_products_and_resumes(tiny_pipeline_dir, tmp_path):
    path = catalogue(tmp_path / "cat", 2, bad_rows=True)
    config = BatchConfig(catalogue=str(path), cache=str(tmp_path / "cache"), out=str(tmp_path / "out"),
                         placements=("1:1", "9:16"), groups=(0, 2), prompts_per_group=3, top_k=2, size=96, steps=2,
                         generator=str(tiny_pipeline_dir), batch_size=4, progress=False)
    report = run_batch(config)

    assert (report.items, report.made, report.failed, report.skipped) == (8, 4, 4, 0)
    assert {(f["product_id"], f["placement"]) for f in report.failures} == {
        (p, pl) for p in ("sku-busy", "sku-corrupt") for pl in ("1:1", "9:16")}
    assert "supply a mask" in report.failures[0]["error"]
    assert report.creatives == 2 * 2 * 2 * 3 and report.accepted == 16 and report.candidates == 8
    written = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert written["creatives"] == 24 and written["storage"]["creatives"] == 24
    assert sorted(written["contact_sheets"]) == ["0", "2"]
    assert all(Image.open(p).size[0] > 0 for p in written["contact_sheets"].values())

    with CreativeCache(tmp_path / "cache") as cache:
        for i in range(2):
            photo = load_image(path.parent / f"p{i}.png")
            for placement in ("1:1", "9:16"):
                canvas = place_product(photo, product_mask(photo), aspect=placement, size=96)
                for group in (0, 2):
                    entries = cache.creatives(f"sku-{i}", group, placement, status=None)
                    assert [e.rank for e in entries] == [1, 2, 3]
                    assert [e.status for e in entries] == ["accepted", "accepted", "candidate"]
                    scores = [e.predicted_ctr for e in entries]
                    assert scores == sorted(scores, reverse=True) and len({e.key.prompt for e in entries}) == 3
                    for entry in entries:
                        data = cache.read_png(entry.creative_id)
                        blob = tmp_path / "cache" / "blobs" / entry.creative_id[:2] / f"{entry.creative_id}.png"
                        recipe = read_recipe(blob)
                        assert recipe.prompt == entry.key.prompt and recipe.placement == placement
                        pixels = np.asarray(Image.open(blob).convert("RGB"))
                        assert blob.read_bytes() == data
                        assert np.array_equal(pixels[canvas.keep], np.asarray(canvas.image)[canvas.keep])
        before = cache.all_creatives()

    again = run_batch(config)  # everything made is cached: nothing is painted again
    assert (again.skipped, again.made, again.creatives, again.failed) == (4, 0, 0, 4)
    with CreativeCache(tmp_path / "cache") as cache:
        assert cache.all_creatives() == before


@pytest.mark.slow
def test_adding_groups_later_keeps_what_serving_already_has(tiny_pipeline_dir, tmp_path):
    path = catalogue(tmp_path / "cat", 2)
    common = dict(catalogue=str(path), cache=str(tmp_path / "cache"), out=str(tmp_path / "out"), prompts_per_group=2,
                  size=96, steps=2, generator=str(tiny_pipeline_dir), progress=False)
    run_batch(BatchConfig(groups=(0,), **common))
    with CreativeCache(tmp_path / "cache") as cache:
        first = {p: cache.creatives(p, 0, status=None) for p in ("sku-0", "sku-1")}
    report = run_batch(BatchConfig(groups=(0, 3), **common))  # new items: group 0 is painted in a larger batch
    assert report.made == 2 and report.failed == 0
    with CreativeCache(tmp_path / "cache") as cache:
        for product, entries in first.items():
            assert cache.creatives(product, 0, status=None) == entries  # unchanged, no conflict
            assert len(cache.creatives(product, 3, status=None)) == 2
        assert cache.storage_report()["creatives"] == 8


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tiny_pipeline_dir, tmp_path):
    path = catalogue(tmp_path / "cat", 12)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the test process also paints on one thread (conftest)
    common = dict(catalogue=str(path), groups=(0, 1), placements=("1:1", "4:5"), prompts_per_group=2, size=96,
                  steps=2, generator=str(tiny_pipeline_dir), progress=False)
    run_batch(BatchConfig(cache=str(tmp_path / "reference"), out=str(tmp_path / "reference-out"), **common))

    resumed = tmp_path / "resumed"
    command = [*STUDIO, "batch", "--catalogue", str(path), "--cache", str(resumed), "--out", str(tmp_path / "out"),
               "--model", str(tiny_pipeline_dir), "--groups", "0,1", "--placements", "1:1,4:5",
               "--prompts-per-group", "2", "--size", "96", "--steps", "2", "--no-progress"]
    rng = random.Random(7)
    # Three kills at random moments of start-up (imports, model loading), seven at random moments of the work:
    # after 1-3 further items were committed, plus up to a quarter second (inside painting, scoring, committing).
    plan = ["start"] * 3 + ["work"] * 7
    rng.shuffle(plan)
    landed = []
    for moment in plan:
        before = committed(resumed)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if moment == "start":
            time.sleep(rng.uniform(0.2, 4.0))
        else:
            target = min(before + rng.randint(1, 3), 23)
            deadline = time.monotonic() + 60
            while committed(resumed) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.25))
        process.send_signal(signal.SIGKILL)
        process.wait()
        landed.append(committed(resumed))
    assert len(landed) == 10 and sum(0 < done < 24 for done in landed) >= 5, landed  # most kills hit mid-work
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr

    ref_entries, ref_blobs, ref_files = snapshot(tmp_path / "reference")
    entries, blobs, files = snapshot(resumed)
    assert len(ref_entries) == 12 * 2 * 2 * 2
    assert entries == ref_entries  # 0 missing, 0 extra, same keys, scores, ranks and statuses
    assert len({e.key for e in entries}) == len(entries)  # 0 duplicates
    assert blobs == ref_blobs  # identical bytes
    assert files == ref_files  # no orphan blob and no temporary left behind


def committed(cache: Path) -> int:
    """Work items a (possibly running) job has committed, read without importing the studio's stack."""
    try:
        with closing(sqlite3.connect(f"file:{cache / 'index.db'}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute("SELECT COUNT(*) FROM cache_units").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_ray_makes_the_same_cache_as_the_local_run(tiny_pipeline_dir, tmp_path):
    ray = pytest.importorskip("ray")
    import torch

    torch.set_num_threads(1)
    path = catalogue(tmp_path / "cat", 3, bad_rows=True)
    common = dict(catalogue=str(path), placements=("1:1", "9:16"), groups=(1, 3), prompts_per_group=2, top_k=1,
                  size=96, steps=2, generator=str(tiny_pipeline_dir), progress=False)
    local = run_batch(BatchConfig(cache=str(tmp_path / "local"), out=str(tmp_path / "local-out"), **common))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_batch(BatchConfig(cache=str(tmp_path / "ray"), out=str(tmp_path / "ray-out"), engine="ray",
                                       workers=2, **common))
    finally:
        ray.shutdown()
    assert (remote.made, remote.failed, remote.creatives) == (local.made, local.failed, local.creatives) == (6, 4, 24)
    assert remote.failures == local.failures
    local_entries, local_blobs, local_files = snapshot(tmp_path / "local")
    entries, blobs, files = snapshot(tmp_path / "ray")
    assert entries == local_entries and blobs == local_blobs and files == local_files
