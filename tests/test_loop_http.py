"""`studio loop --serve-url`: the "loop" arm served by a real `studio serve` subprocess over HTTP (simulated users,
the simulator's clicks), its reward retrains reading the server's event log; checked against that log, the server's
cache and an independently rebuilt simulator, on the tiny world of tests/test_loop.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from studio.cli import main
from studio.core.errors import InputError
from studio.jobs.loop import LoopConfig, prepare_server, run_loop
from studio.serving.drive import LoopClient

TOKEN = "loop-http-test-token"
TINY = LoopConfig(rounds=2, seed=3, users=300, groups=2, impressions=1000, initial_per_group=2, candidates_per_group=4,
                  top_k=1, steps=2, lora_steps=2, reward_epochs=20, prompt_steps=3, draft_steps=0,
                  arms=("loop", "no_loop"), serve_seconds=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not come up")


# -- bad input: one clear error before anything is painted ------------------------------------------------------------


def test_a_non_loopback_url_is_one_cli_error_and_nothing_is_written(tmp_path, capsys):
    for url in ("http://10.1.2.3:8000", "http://example.com", "file:///etc/passwd"):
        assert main(["loop", "--rounds", "1", "--serve-url", url, "--serve-dir", str(tmp_path / "server"), "--out",
                     str(tmp_path / "out")]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("studio: error")]
        assert len(errors) == 1 and "--serve-url" in errors[0] and "loopback" in errors[0]
    assert main(["loop", "--rounds", "1", "--serve-url", "http://127.0.0.1:9", "--out", str(tmp_path / "out")]) == 2
    assert "--serve-dir" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unreachable_server_is_one_input_error_before_any_painting(tmp_path):
    summary = prepare_server(TINY, tmp_path / "server")
    assert summary["world"] == TINY.world() and summary["salt"] == "loop-3"
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    config = replace(TINY, serve_url=url, serve_dir=str(tmp_path / "server"))
    with pytest.raises(InputError, match="no studio serve answers at"):
        run_loop(config, tmp_path / "out", progress=False, client=LoopClient(url, TOKEN))
    assert not (tmp_path / "out").exists()
    # a folder prepared for another world is refused before the server is even asked
    with pytest.raises(InputError, match="prepared for the world"):
        run_loop(replace(config, seed=4), tmp_path / "out", progress=False, client=LoopClient(url, TOKEN))
    assert not (tmp_path / "out").exists()


# -- one tiny run against a real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite, one worker", "postgresql, two workers"])
def live(request, tmp_path_factory):
    """One tiny loop run against a real server: on its SQLite file with one worker, and on a PostgreSQL schema
    with two workers (every worker learns from the shared log, and the loop's retrains read it)."""
    from studio.learning.eventlog import EventLog

    root = tmp_path_factory.mktemp("loop-http")
    server_dir, out = root / "server", root / "run"
    summary = prepare_server(TINY, server_dir)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # the command prepare_server prints, on a free port
    command = [sys.executable, "-m", "studio.cli", *summary["serve_command"][1:], "--port", str(port)]
    if request.param.startswith("sqlite"):
        db = str(server_dir / "events.db")
        command += ["--sqlite-sync", "normal"]
    else:
        base = request.getfixturevalue("postgres_url")
        schema = f"loop_http_{os.getpid()}"
        import psycopg

        def drop() -> None:
            with psycopg.connect(base, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

        drop()
        with psycopg.connect(base, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {schema}")
        request.addfinalizer(drop)
        db = f"{base}?options=-csearch_path%3D{schema}"
        command[command.index("--db") + 1] = db
        command += ["--workers", "2"]
    server = subprocess.Popen(command, env={**os.environ, "STUDIO_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"})
    try:
        _wait_healthy(url)
        config = replace(TINY, serve_url=url, serve_dir=str(server_dir), serve_db=None if db.endswith(".db") else db)
        report = run_loop(config, out, progress=False, client=LoopClient(url, TOKEN, seconds=120)).to_dict()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    with EventLog(db) as log:
        events = log.read().set_index("impression_id")
    served = {r: pd.read_csv(out / "loop" / f"round-{r}" / "served.csv") for r in range(3)}
    return report, out, server_dir, events, served


def _cache_id(image: str) -> str:
    return hashlib.sha256(Path(image).read_bytes()).hexdigest()


@pytest.mark.slow
def test_every_impression_the_report_counts_is_in_the_servers_log(live):
    report, out, _, events, served = live
    assert report["finished"] is True and report["config"]["serve_url"].startswith("http://127.0.0.1:")
    assert not (out / "loop" / "events.db").exists()  # the live arm has no log of its own: the server's is its log
    assert (out / "no_loop" / "events.db").is_file()  # the baseline stays in-process
    catalogue = {c["creative_id"]: c for c in json.loads((out / "loop" / "catalogue.json").read_text())}
    for record in report["rounds"]["loop"]:
        rows = served[record["round"]]
        treated = rows[rows["bucket"] == "treatment"]
        counted = record["true_ctr"]["n"] + record["control_true_ctr"]["n"]
        assert counted == record["server"]["impressions"] == len(rows) == TINY.impressions
        assert record["realised_treatment_ctr"]["impressions"] == len(treated)
        assert record["realised_treatment_ctr"]["clicks"] == int(treated["clicked"].sum())
        logged = events.loc[rows["impression_id"]]  # a KeyError if the server's log misses one
        assert (logged["creative_id"].to_numpy() == rows["cache_id"].to_numpy()).all()
        assert (logged["clicked"].to_numpy() == rows["clicked"].to_numpy()).all()
        assert (logged["group_id"].astype(int).to_numpy() == rows["group_id"].to_numpy()).all()
        assert (logged["bucket"].to_numpy() == rows["bucket"].to_numpy()).all()
        # the served cache id is the PNG of the loop creative the loop mapped it to
        assert all(_cache_id(catalogue[c]["image"]) == h for c, h in zip(rows["creative_id"], rows["cache_id"]))
    assert len(events) == 3 * TINY.impressions  # nothing else reached the server


@pytest.mark.slow
def test_true_ctr_of_served_rows_matches_an_independently_rebuilt_oracle_and_the_baseline_saw_the_same_requests(live):
    from studio.learning.eventlog import EventLog
    from studio.sim.simulator import AudienceSimulator

    report, out, _, _, served = live
    simulator = AudienceSimulator(n_segments=TINY.segments, seed=TINY.seed)
    simulator.sample_users(TINY.users)
    mask = np.asarray(Image.open(out / "products" / "bottle-0.mask.png")) > 127
    index = {c["creative_id"]: simulator.add_creative(np.asarray(Image.open(c["image"]).convert("RGB")), mask,
                                                      c["category"])
             for c in json.loads((out / "loop" / "catalogue.json").read_text())}
    with EventLog(out / "no_loop" / "events.db") as log:
        baseline = log.read()
    for record in report["rounds"]["loop"]:
        rows = served[record["round"]]
        treated = rows[rows["bucket"] == "treatment"]
        p = simulator.click_probability(treated["user_id"].to_numpy(), treated["creative_id"].map(index).to_numpy())
        assert record["true_ctr"]["mean"] == pytest.approx(p.mean(), rel=1e-9)
        same_round = baseline[baseline["model_version"] == f"no_loop-round-{record['round']}"]
        assert (same_round["user_id"].astype(int).to_numpy() == rows["user_id"].to_numpy()).all()
        assert (same_round["bucket"].to_numpy() == rows["bucket"].to_numpy()).all()
    assert report["comparisons"]["loop_vs_no_loop"]["paired"] is True


@pytest.mark.slow
def test_each_rounds_new_creatives_are_served_by_the_server_and_retired_ones_are_not(live):
    from studio.jobs.cache import CreativeCache

    report, out, server_dir, events, served = live
    catalogue = {c["creative_id"]: c for c in json.loads((out / "loop" / "catalogue.json").read_text())}
    cache_of = {c: _cache_id(entry["image"]) for c, entry in catalogue.items()}
    pool = {c for c in catalogue if c.startswith("r0/")}
    assert len(pool) == 4
    by_round = {r: set(events.loc[rows["impression_id"], "creative_id"]) for r, rows in served.items()}
    assert by_round[0] == {cache_of[c] for c in pool}
    for record in report["rounds"]["loop"][1:]:
        r, new = record["round"], {cache_of[c] for c in record["selected"]}
        assert len(new) == 2  # top-1 x 2 groups
        assert not new & set().union(*(by_round[q] for q in range(r)))  # never served before it was added
        pool = (pool - set(record["retired"])) | set(record["selected"])
        assert by_round[r] == {cache_of[c] for c in pool}  # the new arms served, the retired ones not
    with CreativeCache(server_dir / "cache") as cache:
        entries = {e.creative_id: e for e in cache.all_creatives()}
    assert set(entries) == set(cache_of.values())  # the round-0 pool and every selected creative
    assert {c for c, e in entries.items() if e.status == "accepted"} == {cache_of[c] for c in pool}


@pytest.mark.slow
def test_the_reward_retrain_of_each_round_read_the_earlier_rounds_from_the_servers_log(live):
    report, _, _, events, served = live
    for record in report["rounds"]["loop"][1:]:
        r, ranker = record["round"], record["ranker"]
        earlier = pd.concat([served[q] for q in range(r)])
        assert ranker["log"] == "server" and ranker["trained_rounds"] == list(range(r))
        assert ranker["log_rows"] == len(earlier) == len(events.loc[earlier["impression_id"]])
        assert set(ranker["trained_creatives"]) <= set(earlier["creative_id"])
        assert ranker["overlap"] == []
