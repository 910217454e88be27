"""`studio generate` and `studio inspect` end to end, as a user runs them (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # loads models


def studio(*arguments: str, cache) -> subprocess.CompletedProcess:
    environment = dict(os.environ, XDG_CACHE_HOME=str(cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "studio.cli", *arguments], capture_output=True, text=True, env=environment, timeout=300
    )


def test_generate_json_then_inspect(product_photo, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "out"
    result = studio(
        "generate", "--product", str(product_photo), "--prompt", "a teal marble table", "--n", "2", "--seed", "4",
        "--steps", "2", "--size", "128", "--scheduler", "dpm++", "--model", str(tiny_pipeline_dir),
        "--out", str(out), "--json", cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["random_init"] is True and "randomly initialised" in summary["note"]
    assert summary["model"] == str(tiny_pipeline_dir) and summary["weights_hash"].startswith("sha256:")
    assert [c["seed"] for c in summary["creatives"]] == [4, 5]
    for creative in summary["creatives"]:
        assert Image.open(creative["path"]).size == (128, 128)
        assert creative["timings_s"]["total"] > 0
    assert "creatives" in result.stderr  # the tqdm bar goes to stderr, leaving stdout to the JSON
    assert "randomly initialised" in result.stderr

    shown = studio("inspect", summary["creatives"][1]["path"], "--json", cache=tmp_path / "cache")
    assert shown.returncode == 0, shown.stderr
    recipe = json.loads(shown.stdout)
    assert (recipe["seed"], recipe["prompt"], recipe["scheduler"]) == (5, "a teal marble table", "dpm++")
    assert recipe["random_init"] is True and recipe["weights_hash"] == summary["weights_hash"]

    text = studio("inspect", summary["creatives"][0]["path"], cache=tmp_path / "cache")
    assert text.returncode == 0 and "seed" in text.stdout and "randomly initialised" in text.stdout


def test_bad_product_is_one_line_on_stderr_and_a_non_zero_exit(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    out = tmp_path / "out"
    result = studio("generate", "--product", str(broken), "--prompt", "a red table", "--out", str(out),
                    cache=tmp_path / "cache")
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("studio: error:") and "broken.png" in lines[0]
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_model_is_one_line(product_photo, tmp_path):
    result = studio("generate", "--product", str(product_photo), "--prompt", "a red table", "--model",
                    "nobody-here/no-such-model", "--out", str(tmp_path / "out"), cache=tmp_path / "cache")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1
    assert "huggingface-cli download nobody-here/no-such-model" in lines[0]


def test_inspect_a_png_without_a_recipe(tmp_path):
    plain = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain)
    result = studio("inspect", str(plain), cache=tmp_path / "cache")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "has no Creative Studio recipe" in lines[0]


def test_generate_says_what_studio_mini_read_of_a_sentence(product_photo, tmp_path):
    result = studio(
        "generate", "--product", str(product_photo), "--prompt", "a crimson marble table in a sunny kitchen",
        "--steps", "2", "--size", "64", "--out", str(tmp_path / "out"), "--json", cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)["prompt_reading"]
    # studio-mini v2 keeps every word and reads colour names as its own colours
    assert reading == {"prompt_read": "a red marble table in a sunny kitchen", "prompt_replaced": {"crimson": "red"},
                       "prompt_dropped": []}
    note = next(line for line in result.stderr.splitlines() if "read as 'red'" in line)
    assert "'crimson' read as 'red'" in note and "left out" not in note
