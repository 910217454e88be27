"""`studio reward train --log LOG --cache CACHE`: the reward model trained straight from a serving event log, with the
creative cache the server served from as its catalogue (`studio.jobs.serving_log`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from studio.cli import main
from studio.jobs.cache import CreativeCache
from studio.learning.eventlog import EventLog
from studio.serving.drive import prepare_world
from studio.sim.experiment import ExperimentConfig

N = 6000
COLD = 300  # cold-start requests (group -1): no group to learn for


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A served world (cache + audience) and an event log as `studio serve` writes it: creative ids are cache ids."""
    folder = tmp_path_factory.mktemp("served")
    summary = prepare_world(ExperimentConfig(impressions=1000, products=1, arms=8, users=300, image_size=16),
                            folder / "world")
    with CreativeCache(folder / "world" / "cache") as cache:
        ids = [entry.creative_id for entry in cache.all_creatives()]
    rng = np.random.default_rng(0)
    creative = rng.integers(len(ids), size=N)
    group = rng.integers(summary["groups"], size=N)
    group[:COLD] = -1
    clicked = rng.random(N) < np.where(creative == 0, 0.3, 0.03)
    impression_ids = np.array([f"imp-{i}" for i in range(N)])
    with EventLog(folder / "events.db") as log:
        log.log_impressions(pd.DataFrame({
            "impression_id": impression_ids, "ts": np.arange(N, dtype=float), "user_id": rng.integers(300, size=N).astype(str),
            "group_id": group, "product_id": "bottle-0", "creative_id": np.array(ids)[creative],
            "arm": np.array(ids)[creative], "propensity": 1.0 / len(ids), "policy": "uniform", "bucket": "control",
            "model_version": "serve",
        }), clicked=impression_ids[clicked].tolist(), click_ts=np.flatnonzero(clicked) + 0.5)
    return folder, summary, ids


def test_the_dataset_is_the_log_joined_with_the_cache(served):
    from studio.jobs.serving_log import load_serving_dataset

    folder, summary, ids = served
    dataset = load_serving_dataset(folder / "events.db", folder / "world" / "cache", folder / "world" / "audience")
    assert len(dataset.impressions) == N - COLD  # cold-start requests left out
    assert sorted(dataset.creatives.index) == sorted(ids)
    assert set(dataset.creatives["category"]) == {"beverage"}  # bottle-0 -> bottle -> beverage
    assert sorted(dataset.group_vectors) == [str(g) for g in range(summary["groups"])]
    with CreativeCache(folder / "world" / "cache") as cache:
        prompts = {entry.creative_id: entry.key.prompt for entry in cache.all_creatives()}
    assert dataset.creatives["prompt"].to_dict() == prompts


@pytest.mark.slow
def test_cli_trains_from_a_serving_log(served, tmp_path, capsys):
    folder, summary, ids = served
    out = tmp_path / "model"
    code = main(["reward", "train", "--log", str(folder / "events.db"), "--cache", str(folder / "world" / "cache"),
                 "--out", str(out), "--max-epochs", "30", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["group_ids"] == [str(g) for g in range(summary["groups"])]
    training = json.loads((out / "training.json").read_text())
    assert training["log"] == str((folder / "events.db").resolve())
    split = training["creatives"]
    assert sorted(split["train"] + split["validation"] + split["test"]) == sorted(ids)


def test_cli_bad_serving_input_is_one_line(served, tmp_path, capsys):
    folder, _, _ = served
    cache = str(folder / "world" / "cache")
    assert main(["reward", "train", "--log", "postgresql://u:secret@localhost/db"]) == 2
    assert main(["reward", "train", "--log", str(tmp_path / "missing.db"), "--cache", cache,
                 "--out", str(tmp_path / "m")]) == 2
    assert not (tmp_path / "missing.db").exists()  # a missing log is not created empty
    other = tmp_path / "other.db"
    with EventLog(other) as log:
        log.log_impressions(pd.DataFrame({
            "impression_id": ["a"], "ts": [0.0], "user_id": ["1"], "group_id": [0], "product_id": ["bottle-0"],
            "creative_id": ["f" * 64], "arm": ["f" * 64], "propensity": [1.0], "policy": ["uniform"],
            "bucket": ["control"], "model_version": ["serve"]}), clicked=["a"], click_ts=[0.5])
    assert main(["reward", "train", "--log", str(other), "--cache", cache, "--out", str(tmp_path / "m")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("studio: error")]
    assert len(errors) == 3
    assert "--cache" in errors[0] and "secret" not in errors[0]
    assert "no event log" in errors[1]
    assert "no creative" in errors[2]


def test_a_postgresql_serving_log_gives_the_same_dataset(served, database_url):
    """The same events in the other engine (`database_url` runs this on SQLite and on a fresh PostgreSQL schema):
    the reward model's dataset is the same rows."""
    from studio.jobs.serving_log import load_serving_dataset

    folder, _, _ = served
    cache, audience = folder / "world" / "cache", folder / "world" / "audience"
    with EventLog(folder / "events.db") as source, EventLog(database_url) as copy:
        events = source.read()
        columns = ["impression_id", "ts", "user_id", "group_id", "product_id", "creative_id", "arm", "propensity",
                   "policy", "bucket", "model_version"]
        clicked = events[events["clicked"] == 1]
        copy.log_impressions(events[columns], clicked=clicked["impression_id"].tolist(),
                             click_ts=clicked["ts"].to_numpy() + 0.5)
    expected = load_serving_dataset(folder / "events.db", cache, audience)
    found = load_serving_dataset(database_url, cache, audience)
    key = ["impression_id"]
    pd.testing.assert_frame_equal(found.impressions.sort_values(key).reset_index(drop=True)[expected.impressions.columns],
                                  expected.impressions.sort_values(key).reset_index(drop=True), check_dtype=False)
    assert found.creatives.equals(expected.creatives)
