"""`studio serve`: the decision path, clicks, online learning from the shared log, bad input, the OpenAPI fuzz."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from studio.cli import main
from studio.jobs.cache import CacheKey, CreativeCache
from studio.learning.hybrid import HybridLinUCB
from studio.learning.audience import AudienceClustering
from studio.learning.eventlog import EventLog
from studio.serving.app import create_app
from studio.serving.config import ServeConfig
from studio.serving.drive import acknowledged_load, prepare_world
from studio.serving.service import rebuild_policy
from studio.sim.experiment import ExperimentConfig
from studio.sim.renderer import render_scene
from studio.sim.simulator import AudienceSimulator

CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
TOKEN = "secret-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BACKDROPS = [("teal", "marble"), ("red", "wood"), ("white", "fabric"), ("black", "stripes")]


def png_of(colour, material, seed=0):
    scene = render_scene(colour, material, "soft", "studio", "bottle", size=32, seed=seed)
    buffer = io.BytesIO()
    scene.image.save(buffer, format="PNG")
    return buffer.getvalue()


def put(cache, product, backdrop, rank, status="accepted", placement="feed", seed=0):
    key = CacheKey(product, 0, placement, f"a {backdrop[0]} {backdrop[1]} table", "sim-1", "none")
    return cache.put(png_of(*backdrop, seed=seed), key, predicted_ctr=0.03 - rank * 0.001, rank=rank + 1, status=status)


@pytest.fixture(scope="module")
def audience(tmp_path_factory):
    users = AudienceSimulator(seed=0).sample_users(600)
    folder = tmp_path_factory.mktemp("audience") / "audience"
    AudienceClustering(n_groups=3, seed=0, columns=["age", "region", "device"]).fit(users).save_pretrained(folder)
    return folder, users


@pytest.fixture
def world(tmp_path, audience, database_url):
    cache = CreativeCache(tmp_path / "cache")
    ids = [put(cache, "bottle-1", backdrop, rank).creative_id for rank, backdrop in enumerate(BACKDROPS[:3])]
    put(cache, "draft-only", BACKDROPS[3], 0, status="candidate")
    config = ServeConfig(db=database_url, cache=str(tmp_path / "cache"), audience=str(audience[0]), token=TOKEN,
                         sync_seconds=3600, attribution_window=3600, seed=0)
    yield config, cache, ids, audience[1]
    cache.close()


def features(users, i):
    row = users.iloc[i % len(users)]
    return {"age": int(row["age"]), "region": row["region"], "device": row["device"]}


def test_a_decision_is_logged_with_the_propensity_the_policy_gave_it(world):
    config, cache, ids, users = world
    with TestClient(create_app(config)) as client:
        service = client.app.state.service
        seen = []
        for i in range(60):
            # The policy's distribution for this request, before it decides (nothing learns in between).
            reply = client.post("/v1/creative", json={"user_id": f"u{i}", "product_id": "bottle-1",
                                                      "features": features(users, i)})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            key = ("bottle-1", "feed")
            if body["bucket"] == "treatment":
                arms = service.policy.arms(key)
                expected = service.policy.probabilities(key, np.array([body["group_id"]]))[0, arms.index(body["arm"])]
                assert body["propensity"] == pytest.approx(expected, abs=1e-12) and body["policy"] == "linucb"
            else:
                assert body["propensity"] == pytest.approx(1 / 3) and body["policy"] == "uniform"
            assert body["creative_id"] in ids and body["creative_url"] == f"/v1/creatives/{body['creative_id']}.png"
            assert body["group_id"] == int(service.clustering.predict(pd.DataFrame([features(users, i)]))[0])
            seen.append(body)
        cold = client.get("/v1/creative", params={"user_id": "stranger", "product_id": "bottle-1"}).json()
        assert cold["group_id"] == -1 and cold["cold_start"] is True
        # Buckets are a stable hash of the user: the same user always lands in the same one.
        again = client.get("/v1/creative", params={"user_id": "u0", "product_id": "bottle-1",
                                                   "features": json.dumps(features(users, 0))}).json()
        assert again["bucket"] == seen[0]["bucket"] and again["group_id"] == seen[0]["group_id"]
        png = client.get(seen[0]["creative_url"])
        assert png.status_code == 200 and png.content == cache.read_png(seen[0]["creative_id"])
    with EventLog(config.db) as log:
        logged = log.read().set_index("impression_id")
    assert len(logged) == 62
    for body in seen:
        row = logged.loc[body["impression_id"]]
        assert row["propensity"] == body["propensity"] and row["arm"] == body["arm"]
        assert row["bucket"] == body["bucket"] and int(row["group_id"]) == body["group_id"]
    assert {b["bucket"] for b in seen} == {"control", "treatment"}


def test_clicks_teach_the_bandit_and_a_rebuild_from_the_log_equals_the_live_state(world):
    config, cache, ids, users = world
    config.attribution_window = 0.2
    with TestClient(create_app(config)) as client:
        service = client.app.state.service
        served, clicked, learned = [], [], 0
        for round_ in range(3):  # the live bandit learns in several steps, clicks before the closed windows' zeros
            batch = [client.post("/v1/creative", json={"user_id": f"u{i}", "product_id": "bottle-1",
                                                       "features": features(users, i)}).json()
                     for i in range(40 * round_, 40 * round_ + 40)]
            hits = [s["impression_id"] for s in batch if s["arm"] == ids[1]]
            assert client.post("/v1/clicks", json={"impression_ids": hits}, headers=AUTH).json() == \
                {"received": len(hits), "new": len(hits)}
            learned += client.post("/v1/admin/refresh", headers=AUTH).json()["learned"]  # the clicks
            # Idempotent: the same clicks again (and a repeat inside the batch) add nothing.
            again = client.post("/v1/clicks", json={"impression_ids": hits + hits[:1]}, headers=AUTH).json()
            assert again["new"] == 0
            time.sleep(0.3)  # every attribution window closes: the rest count as 0
            learned += client.post("/v1/admin/refresh", headers=AUTH).json()["learned"]
            served, clicked = served + batch, clicked + hits
        assert learned == len(served)  # each impression of either bucket taught once, clicked or not
        live = service.policy.model
        with EventLog(config.db) as log:
            rebuilt = rebuild_policy(config, log, cache).model
        assert sorted(live.arms_) == sorted(rebuilt.arms_) == sorted(ids)
        assert live.described_.all()  # every creative measured from its cached PNG
        assert live.max_difference(rebuilt) < 1e-9
        clicks_on_1 = sum(s["arm"] == ids[1] for s in served)
        # the sums count each impression and click once, per (creative, group)
        assert live.s_[live.arms_.index(ids[1])].sum() == pytest.approx(clicks_on_1)
        assert live.n_.sum() == pytest.approx(len(served))
        report = client.get("/v1/report").json()
        assert "cells" in report, report
        total = {b: sum(c["impressions"] for c in report["cells"] if c["bucket"] == b) for b in ("control", "treatment")}
        assert sum(total.values()) == 120 and report["lift"] is not None
        assert sum(c["clicks"] for c in report["cells"]) == len(clicked)
        for cell in report["cells"]:
            assert cell["ci_low"] <= cell["ctr"] <= cell["ci_high"]


def test_new_creatives_join_and_retired_ones_leave_without_a_restart(world):
    config, cache, ids, users = world
    with TestClient(create_app(config)) as client:
        service = client.app.state.service
        client.get("/v1/creative", params={"user_id": "u1", "product_id": "bottle-1"})
        assert sorted(service.policy.arms(("bottle-1", "feed"))) == sorted(ids)
        new = put(cache, "bottle-1", BACKDROPS[3], 3, seed=1).creative_id
        cache.set_status(ids[0], "retired")
        client.post("/v1/admin/refresh", headers=AUTH)
        assert sorted(service.policy.arms(("bottle-1", "feed"))) == sorted([*ids[1:], new])
        arms = {client.get("/v1/creative", params={"user_id": f"x{i}", "product_id": "bottle-1"}).json()["arm"]
                for i in range(60)}
        assert ids[0] not in arms and new in arms
        for creative in [*ids[1:], new]:  # every creative retired: the product has nothing to serve
            cache.set_status(creative, "retired")
        client.post("/v1/admin/refresh", headers=AUTH)
        reply = client.get("/v1/creative", params={"user_id": "u1", "product_id": "bottle-1"})
        assert reply.status_code == 404 and "no accepted creatives" in reply.json()["error"]


@pytest.mark.parametrize("method, path, kwargs, status, words", [
    ("get", "/v1/creative", {"params": {"user_id": "u", "product_id": "no-such-product"}}, 404, "unknown product"),
    ("get", "/v1/creative", {"params": {"user_id": "u", "product_id": "draft-only"}}, 404, "no accepted creatives"),
    ("get", "/v1/creative", {"params": {"user_id": "u"}}, 422, "product_id"),
    ("get", "/v1/creative", {"params": {"user_id": "u", "product_id": "bottle-1", "features": "{not json"}}, 400,
     "JSON object"),
    ("get", "/v1/creative", {"params": {"user_id": "u", "product_id": "bottle-1", "features": '{"age": "old"}'}},
     400, "audience clustering"),
    ("post", "/v1/creative", {"json": {"user_id": "u", "product_id": "bottle-1", "extra": 1}}, 422, "extra"),
    ("post", "/v1/creative", {"content": b"x" * 70_000, "headers": {"content-type": "application/json"}}, 413,
     "larger than"),
    ("post", "/v1/clicks", {"json": {"impression_ids": ["abc"]}}, 401, "token"),
    ("post", "/v1/clicks", {"json": {"impression_ids": ["abc"]}, "headers": {"Authorization": "Bearer wrong-one"}},
     401, "token"),
    ("post", "/v1/clicks", {"json": {"impression_ids": ["abcdef"]}, "headers": AUTH}, 404, "never logged"),
    ("post", "/v1/clicks", {"json": {"impression_ids": []}, "headers": AUTH}, 422, "impression_ids"),
    ("post", "/v1/clicks", {"json": {"impression_ids": ["../etc"]}, "headers": AUTH}, 422, "impression_ids"),
    ("get", "/v1/creatives/..%2F..%2Fetc%2Fpasswd.png", {}, 404, ""),
    ("get", "/v1/creatives/" + "0" * 64 + ".png", {}, 404, "no creative"),
    ("get", "/v1/creatives/%2e%2e.png", {}, 404, "not a creative id"),
    ("get", "/nowhere", {}, 404, "Not Found"),
])
def test_bad_requests_get_one_clear_json_error_never_a_500(world, method, path, kwargs, status, words):
    config, *_ = world
    with TestClient(create_app(config)) as client:
        reply = getattr(client, method)(path, **kwargs)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and words.lower() in body["error"].lower()


def test_health_and_prometheus_metrics(world):
    config, *_ = world
    with TestClient(create_app(config)) as client:
        client.get("/v1/creative", params={"user_id": "u1", "product_id": "bottle-1"})
        assert client.get("/healthz").json()["status"] == "ok"
        text = client.get("/metrics").text
    assert "studio_decisions_total{bucket=" in text and "studio_request_seconds_bucket" in text


def test_a_snapshot_is_written_atomically_and_a_restart_catches_up_from_its_watermark(world, tmp_path):
    config, cache, ids, users = world
    config.snapshot, config.attribution_window = str(tmp_path / "snapshot"), 0.05
    with TestClient(create_app(config)) as client:
        for i in range(30):
            client.post("/v1/creative", json={"user_id": f"u{i}", "product_id": "bottle-1",
                                              "features": features(users, i)})
        time.sleep(0.1)
        client.post("/v1/admin/refresh", headers=AUTH)
        assert client.post("/v1/admin/snapshot", headers=AUTH).status_code == 200
        for i in range(30, 50):
            client.post("/v1/creative", json={"user_id": f"u{i}", "product_id": "bottle-1",
                                              "features": features(users, i)})
        time.sleep(0.1)
    assert sorted(p.name for p in (tmp_path / "snapshot").iterdir()) == ["bandit", "state.json"]
    with TestClient(create_app(config)) as client:  # loads the snapshot, then learns the rest from the log
        live = client.app.state.service.policy.model
        with EventLog(config.db) as log:
            rebuilt = rebuild_policy(config, log, cache).model
        assert live.max_difference(rebuilt) < 1e-9
        assert client.app.state.service.watermark == 50


def test_the_api_survives_a_fuzz_of_its_own_openapi_spec(world):
    """Schemathesis generates requests from the OpenAPI spec: no 500, every error is one JSON line, and every
    response has a documented status, content type and schema."""
    config, *_ = world
    app = create_app(config)
    with TestClient(app):  # the worker starts with the app's lifespan
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures = []
        for operation in schema.get_all_operations():
            operation = operation.ok()

            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy())
            def check(case):
                response = case.call(headers=AUTH)
                if response.status_code >= 500:
                    failures.append((case.method, case.formatted_path, response.status_code, response.text[:200]))
                if response.status_code >= 400:
                    assert list(response.json()) == ["error"]
                try:
                    case.validate_response(response, checks=CONFORMANCE)
                except Exception as error:  # noqa: BLE001 -- collected and shown below
                    failures.append((case.method, case.formatted_path, response.status_code, str(error)[:300]))

            check()
    assert failures == []


def _free_port():

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url, timeout=60):

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(url + "/healthz", timeout=1)
            if reply.status_code == 200:
                return reply.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not come up")


@pytest.mark.slow
@pytest.mark.parametrize("sqlite_sync", ["full", "normal"])
def test_killing_a_worker_under_load_loses_no_acknowledged_event_and_state_equals_a_rebuild(tmp_path, sqlite_sync):
    """Two uvicorn workers on one SQLite log; kill -9 one under load; uvicorn restarts it; nothing acknowledged is
    lost, the report's running sums equal the log, and the bandit a worker snapshots equals a rebuild from the log
    to 1e-9. With --sqlite-sync normal too: a commit skips the fsync but is in the WAL file before the answer."""


    world = tmp_path / "world"
    summary = prepare_world(ExperimentConfig(impressions=1000, products=2, arms=3, users=300, image_size=16), world)
    port, db, snapshot = _free_port(), tmp_path / "events.db", tmp_path / "snapshot"
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "studio.cli", "serve", "--cache", str(world / "cache"), "--audience",
         str(world / "audience"), "--db", str(db), "--workers", "2", "--port", str(port), "--attribution-window",
         "0.5", "--sync-seconds", "0.2", "--snapshot", str(snapshot), "--sqlite-sync", sqlite_sync],
        env={**os.environ, "STUDIO_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"})
    try:
        _wait_healthy(url)
        before = set()
        while len(before) < 2:  # both workers are up (the connection pool of a new client lands on either)
            before.add(httpx.get(url + "/healthz", headers={"Connection": "close"}).json()["pid"])
        result = {}
        load = threading.Thread(target=lambda: result.update(acknowledged_load(
            url, summary["products"], seconds=6, concurrency=4, click_rate=0.2, token=TOKEN)))
        load.start()
        time.sleep(2)
        victim = httpx.get(url + "/healthz").json()["pid"]
        os.kill(victim, signal.SIGKILL)
        load.join(60)
        assert len(result["impressions"]) > 200, result["errors"]
        time.sleep(1.5)  # uvicorn replaces the dead worker; every window closes; both workers catch up
        with EventLog(db) as log:
            frame = log.read()
            rewards = log.rewards_since(0)
            sums = log.report_cells()
        assert set(result["impressions"]) <= set(frame["impression_id"])
        assert int(sums["impressions"].sum()) == len(frame) and int(sums["clicks"].sum()) == int(frame["clicked"].sum())
        assert set(result["clicks"]) <= set(frame.loc[frame["clicked"] == 1, "impression_id"])
        assert len(rewards) == len(frame)  # every impression got its reward: its click, or 0 when its window closed
        # The survivor learned incrementally, the replacement rebuilt from the log: both must equal a rebuild.
        checked = set()
        config = ServeConfig(db=str(db), cache=str(world / "cache"), audience=str(world / "audience"))
        for _ in range(40):
            reply = httpx.post(url + "/v1/admin/snapshot", headers={**AUTH, "Connection": "close"})
            assert reply.status_code == 200, reply.text
            state = json.loads((snapshot / "state.json").read_text())
            assert state["watermark"] == int(rewards["seq"].max())
            with EventLog(db) as log, CreativeCache(world / "cache") as cache:
                rebuilt = rebuild_policy(config, log, cache, upto=state["watermark"])
            live = HybridLinUCB.from_pretrained(snapshot / "bandit")
            assert live.max_difference(rebuilt.model) < 1e-9
            assert {tuple(key): arms for key, arms in state["keys"]} == {
                key: list(arms) for key, arms in rebuilt.candidates.items()}
            checked.add(reply.json()["pid"])
            if len(checked) == 2:
                break
        assert len(checked) == 2 and victim not in checked and (before - {victim}) <= checked
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_the_cli_refuses_a_public_bind_without_a_token_and_the_driver_stays_on_loopback(tmp_path, capsys, monkeypatch):

    monkeypatch.delenv("STUDIO_API_TOKEN", raising=False)
    assert main(["serve", "--cache", str(tmp_path / "cache"), "--host", "0.0.0.0", "--print-config"]) == 2
    assert "STUDIO_API_TOKEN" in capsys.readouterr().err
    assert main(["serve", "--cache", str(tmp_path / "cache"), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["db"] == str(tmp_path / "cache" / "events.db") and "token" not in printed
    for url in ("http://10.1.2.3:8000", "http://example.com", "file:///etc/passwd"):
        assert main(["simulate", "--via-http", url, "--world", str(tmp_path)]) == 2
        assert "loopback" in capsys.readouterr().err


@pytest.mark.slow
def test_simulate_via_http_drives_a_real_server_and_reports_lift_and_oracle(tmp_path, capsys):


    world = tmp_path / "world"
    assert main(["simulate", "--prepare-world", str(world), "--products", "2", "--arms", "3", "--users", "400"]) == 0
    capsys.readouterr()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "studio.cli", "serve", "--cache", str(world / "cache"), "--audience",
         str(world / "audience"), "--db", str(tmp_path / "events.db"), "--port", str(port), "--attribution-window",
         "0.5", "--sync-seconds", "0.2"], env={**os.environ, "STUDIO_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"})
    try:
        _wait_healthy(url)
        os.environ["STUDIO_API_TOKEN"] = TOKEN
        try:
            assert main(["simulate", "--via-http", url, "--world", str(world), "--impressions", "1500",
                         "--max-seconds", "60", "--json"]) == 0
        finally:
            del os.environ["STUDIO_API_TOKEN"]
        result = json.loads(capsys.readouterr().out)
        report = httpx.get(url + "/v1/report").json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert result["errors"] == {} and result["requests"] == 1500
    buckets = result["buckets"]
    assert buckets["control"]["impressions"] + buckets["treatment"]["impressions"] == 1500
    assert sum(c["impressions"] for c in report["cells"]) == 1500  # every served request was logged
    assert sum(c["clicks"] for c in report["cells"]) == buckets["control"]["clicks"] + buckets["treatment"]["clicks"]
    assert 0 < result["oracle"]["ratio_last_quarter"] <= 1 and "lift" in result


def test_a_batch_placement_such_as_an_aspect_ratio_is_served(world):
    """studio batch caches creatives under their aspect ("9:16"); requests name it the same way."""
    config, cache, _, users = world
    story = put(cache, "bottle-1", BACKDROPS[3], 0, placement="9:16", seed=5).creative_id
    with TestClient(create_app(config)) as client:
        body = client.get("/v1/creative", params={"user_id": "u1", "product_id": "bottle-1", "placement": "9:16"})
        assert body.status_code == 200, body.text
        assert body.json()["creative_id"] == story and body.json()["placement"] == "9:16"
