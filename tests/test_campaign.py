"""The main job: prompts -> creatives -> CTR ranking per audience group, on the shipped prompt and reward models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.core.errors import InputError
from studio.imaging import creatives as creatives_module
from studio.imaging import images as images_module
from studio.imaging.canvas import place_product, product_mask
from studio.imaging.images import load_image
from studio.jobs import pipeline as pipeline_module
from studio.jobs.campaign import run_campaign

pytestmark = pytest.mark.slow  # loads models

GROUPS = [
    {"group_id": "0", "summary": "young travellers", "top_tags": ["travel", "beach"], "demographics": {"age": 24}},
    {"group_id": "2", "summary": "eco luxury", "top_tags": ["luxury", "eco"],
     "demographics": {"region": {"value": "central", "share": 0.34}}},
]


def small_campaign(product, out, **kwargs):
    return run_campaign(product, out_dir=out, category="bottle", groups=GROUPS, prompts_per_group=2, size=96,
                        steps=2, progress=False, **kwargs)


def test_campaign_ranks_creatives_per_group_and_keeps_the_product(tiny_pipeline_dir, product_photo, tmp_path):
    report = small_campaign(product_photo, tmp_path, generator=str(tiny_pipeline_dir))

    written = json.loads((tmp_path / "campaign.json").read_text())
    assert [g["group_id"] for g in written["groups"]] == ["0", "2"]
    assert written["category"] == "beverage" and written["random_init"] is True
    photo = load_image(product_photo)
    canvas = place_product(photo, product_mask(photo), aspect="1:1", size=96)
    for group in report.groups:
        scores = [c.predicted_ctr for c in group.creatives]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True)
        assert all(0.0 < s < 1.0 for s in scores)
        assert group.best.rank == 1 and len({c.prompt for c in group.creatives}) == 2
        for creative in group.creatives:
            pixels = np.asarray(Image.open(creative.path).convert("RGB"))
            assert np.array_equal(pixels[canvas.keep], np.asarray(canvas.image)[canvas.keep])  # product bit-exact
    assert written["groups"][1]["best"] == report.groups[1].best.path


@pytest.mark.parametrize("prompts_per_group", [1, 3])
def test_one_decode_one_canvas_and_one_engine_per_product(tiny_pipeline_dir, product_photo, tmp_path, monkeypatch,
                                                           prompts_per_group):
    calls = {"decode": 0, "canvas": 0, "engine": 0}

    def counted(module, name, key):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(images_module, "_open", "decode")
    counted(creatives_module, "place_product", "canvas")
    counted(creatives_module, "load_engine", "engine")
    counted(pipeline_module, "load_engine", "engine")
    report = run_campaign(product_photo, out_dir=tmp_path, category="bottle", groups=GROUPS,
                          prompts_per_group=prompts_per_group, generator=str(tiny_pipeline_dir), size=64, steps=1,
                          progress=False)
    assert sum(len(group.creatives) for group in report.groups) == 2 * prompts_per_group
    assert calls == {"decode": 1, "canvas": 1, "engine": 1}


def test_campaign_refuses_bad_input_before_writing(tiny_pipeline_dir, product_photo, tmp_path):
    with pytest.raises(InputError, match="prompts_per_group"):
        run_campaign(product_photo, out_dir=tmp_path / "a", groups=GROUPS, prompts_per_group=0, progress=False)
    assert not (tmp_path / "a").exists()
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError):
        run_campaign(corrupt, out_dir=tmp_path / "b", groups=GROUPS, progress=False)
    assert not (tmp_path / "b").exists()


def test_a_busy_photo_needs_a_mask_and_works_with_one(tiny_pipeline_dir, tmp_path):
    busy = tmp_path / "busy.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(busy)
    with pytest.raises(InputError, match="supply a mask"):
        run_campaign(busy, out_dir=tmp_path / "no-mask", groups=GROUPS[:1], progress=False)
    assert not (tmp_path / "no-mask").exists()
    mask = np.zeros((96, 96), bool)
    mask[30:70, 40:60] = True
    report = run_campaign(busy, out_dir=tmp_path / "masked", mask=mask, groups=GROUPS[:1], prompts_per_group=1,
                          generator=str(tiny_pipeline_dir), size=96, steps=1, progress=False)
    photo = load_image(busy)
    canvas = place_product(photo, mask, aspect="1:1", size=96)
    pixels = np.asarray(Image.open(report.groups[0].best.path).convert("RGB"))
    assert np.array_equal(pixels[canvas.keep], np.asarray(canvas.image)[canvas.keep])


def test_campaign_names_an_unknown_group(tiny_pipeline_dir, product_photo, tmp_path):
    unknown = [{"group_id": "nobody", "summary": "x", "top_tags": ["tech"]}]
    with pytest.raises(InputError, match="unknown audience group 'nobody'"):
        run_campaign(product_photo, out_dir=tmp_path, groups=unknown, generator=str(tiny_pipeline_dir), size=64,
                     steps=1, progress=False)
    assert not (tmp_path / "campaign.json").exists()


def test_studio_campaign_cli_end_to_end(tiny_pipeline_dir, product_photo, tmp_path):
    import subprocess
    import sys

    studio = [sys.executable, "-m", "studio.cli"]
    done = subprocess.run([*studio, "campaign", "--product", str(product_photo), "--category", "bottle",
                           "--model", str(tiny_pipeline_dir), "--prompts-per-group", "1", "--size", "64",
                           "--steps", "1", "--out", str(tmp_path / "out"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [g["group_id"] for g in report["groups"]] == ["0", "1", "2", "3"]  # reward-mini's own groups
    assert all(Path(g["best"]).is_file() for g in report["groups"])
    assert "randomly initialised" in done.stderr

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"")
    done = subprocess.run([*studio, "demo", "--out", str(tmp_path / "demo"), "--prompts-per-group", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "prompts-per-group" in done.stderr and not (tmp_path / "demo").exists()
    done = subprocess.run([*studio, "campaign", "--product", str(corrupt), "--out", str(tmp_path / "bad")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.startswith("studio: error:")
    assert not (tmp_path / "bad").exists()
