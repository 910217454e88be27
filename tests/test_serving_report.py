"""`GET /v1/report` from running sums: equal to a full recomputation from the log, on both engines."""

import sqlite3

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_serving import AUTH, audience, world  # noqa: F401 -- the fixtures of the serving tests

from studio.learning.audience import AudienceClustering
from studio.learning.eventlog import FULL_REPORT_QUERY, REPORT_COLUMNS, EventLog
from studio.learning.offpolicy import BanditLog, snips, snips_from_sums
from studio.serving.app import create_app
from studio.serving.drive import user_features

SUMS = ["impressions", "clicks", "weight", "click_weight", "weight_sq", "click_weight_sq"]


def impressions(start, n, **columns):
    frame = pd.DataFrame({
        "impression_id": [f"imp-{i}" for i in range(start, start + n)],
        "ts": np.arange(start, start + n, dtype=float),
        "user_id": [f"user-{i % 7}" for i in range(start, start + n)],
        "group_id": [i % 3 for i in range(start, start + n)],
        "product_id": "mug-1",
        "creative_id": [f"mug-1/arm-{i % 4}" for i in range(start, start + n)],
        "arm": [i % 4 for i in range(start, start + n)],
        "propensity": [(0.25, 0.5, 0.8, 1.0)[i % 4] for i in range(start, start + n)],
        "policy": "uniform", "bucket": "control", "model_version": "v1", "placement": "feed",
    })
    return frame.assign(**columns)


def full(log: EventLog) -> pd.DataFrame:
    """The sums recomputed from every impression and click."""
    rows = log._read(FULL_REPORT_QUERY)
    frame = pd.DataFrame(rows, columns=list(REPORT_COLUMNS)).astype({"group_id": np.int64, "impressions": np.int64,
                                                                     "clicks": np.int64})
    return frame.sort_values(list(REPORT_COLUMNS[:5])).reset_index(drop=True)


def assert_equal_sums(running: pd.DataFrame, recomputed: pd.DataFrame) -> None:
    running = running.sort_values(list(REPORT_COLUMNS[:5])).reset_index(drop=True)
    pd.testing.assert_frame_equal(running[list(REPORT_COLUMNS[:7])], recomputed[list(REPORT_COLUMNS[:7])],
                                  check_dtype=False)  # keys and counts: exactly
    np.testing.assert_allclose(running[SUMS[2:]].to_numpy(float), recomputed[SUMS[2:]].to_numpy(float),
                               rtol=1e-12, atol=0)  # float sums: up to the order of additions


def write_known_log(log: EventLog) -> None:
    log.log_impressions(impressions(0, 24), clicked=["imp-1", "imp-5", "imp-6"])
    log.log_impressions(impressions(24, 12, bucket="treatment", policy="linucb"))
    log.log_impressions(impressions(36, 4, group_id=None, placement=None))  # cold start, no placement
    assert log.log_clicks(["imp-25", "imp-26", "imp-1", "imp-37", "imp-25"]) == 3  # imp-1 again: not new
    log.close_windows(before=100.0)
    assert log.log_clicks(["imp-30"], ts=200.0) == 1  # after its window: still a click in the report


def test_running_sums_equal_a_full_recomputation_and_known_counts(database_url):
    with EventLog(database_url) as log:
        write_known_log(log)
        running = log.report_cells()
        assert_equal_sums(running, full(log))
        assert int(running["impressions"].sum()) == 40 and int(running["clicks"].sum()) == 7
        # A hand-counted cell: control, group 1, arm 1 (propensity 0.5): imp-1, 13 (group 1 % 3 == 1, arm 1 % 4 == 1)
        # are 1 and 13; 1 was clicked.
        cell = running[(running["bucket"] == "control") & (running["group_id"] == 1) & (running["arm"] == "1")
                       & (running["placement"] == "feed")].iloc[0]
        assert (cell["impressions"], cell["clicks"]) == (2, 1)
        assert (cell["weight"], cell["click_weight"], cell["weight_sq"], cell["click_weight_sq"]) == (4.0, 2.0, 8.0, 4.0)
        cold = running[running["group_id"] == -1]
        assert set(cold["placement"]) == {""} and int(cold["impressions"].sum()) == 4
        assert int(cold["clicks"].sum()) == 1  # imp-37


def test_a_log_written_before_the_sums_existed_is_summed_once_when_opened(tmp_path):
    path = tmp_path / "old.db"
    with EventLog(path) as log:
        write_known_log(log)
        before = log.report_cells()
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE report_cells")  # what a log from before this table looks like
    connection.commit()
    connection.close()
    with EventLog(path) as log, EventLog(path) as second:  # the second opening finds the sums there: no double count
        assert_equal_sums(before, full(log))
        assert_equal_sums(log.report_cells(), full(log))
        log.log_clicks(["imp-2"])
        assert_equal_sums(second.report_cells(), full(second))


def test_snips_from_sums_is_snips_on_the_events_with_a_delta_method_interval():
    rng = np.random.default_rng(0)
    n = 3000
    cell = rng.integers(6, size=n)  # (group, arm) cells
    propensity = np.array([0.25, 0.5, 0.2, 0.25, 0.5, 0.2])[cell]
    reward = (rng.random(n) < 0.03 + 0.01 * (cell % 3)).astype(float)
    target = np.array([0.9, 0.05, 0.05, 0.1, 0.1, 0.8])  # pi(arm of the cell | group of the cell)
    sums = {name: np.bincount(cell, weights=values, minlength=6) for name, values in (
        ("weight", 1 / propensity), ("click_weight", reward / propensity), ("weight_sq", 1 / propensity**2),
        ("click_weight_sq", reward / propensity**2))}
    estimate = snips_from_sums(target, n=n, **sums)
    # The same events one by one: two pseudo-arms, "the logged one" (pi = target of its cell) and "any other".
    log = BanditLog(contexts=np.zeros((n, 1)), arms=np.zeros(n, dtype=object), rewards=reward, propensities=propensity)
    row_target = target[cell]
    reference = snips(log, np.column_stack([row_target, 1 - row_target]), [0, 1], n_bootstrap=2000)
    assert estimate.estimate == pytest.approx(reference.estimate, rel=1e-12)
    assert estimate.effective_sample_size == pytest.approx(reference.effective_sample_size, rel=1e-12)
    w = row_target / propensity
    se = np.sqrt(np.sum(w**2 * (reward - estimate.estimate) ** 2)) / w.sum()
    assert estimate.ci_high - estimate.estimate == pytest.approx(1.959963984540054 * se, rel=1e-9)
    # The delta-method interval agrees with the bootstrap's to within a tenth of its width.
    width = reference.ci_high - reference.ci_low
    assert abs(estimate.ci_low - reference.ci_low) < 0.1 * width and abs(estimate.ci_high - reference.ci_high) < 0.1 * width


def test_the_report_equals_one_recomputed_from_the_whole_log(world):  # noqa: F811 -- the fixture
    config, _, ids, users = world
    payloads = user_features(users, AudienceClustering.from_pretrained(config.audience))
    with TestClient(create_app(config)) as client:
        served = [client.post("/v1/creative", json={"user_id": f"u{i}", "product_id": "bottle-1",
                                                    "features": payloads[i] if i % 5 else None}).json()
                  for i in range(150)]
        clicked = [s["impression_id"] for s in served if s["arm"] in (ids[0], ids[2]) and int(s["impression_id"], 16) % 3]
        client.post("/v1/clicks", json={"impression_ids": clicked}, headers=AUTH)
        client.post("/v1/admin/refresh", headers=AUTH)
        report = client.get("/v1/report").json()
        policy = client.app.state.service.policy
        with EventLog(config.db) as log:
            summary = log.summary()
            control = log.read(bucket="control")
    # CTR cells: the full scan's counts exactly.
    expected = sorted((str(b), -1 if g is None else int(g), int(n), int(c)) for b, g, n, c in summary)
    got = sorted((c["bucket"], c["group_id"], c["impressions"], c["clicks"]) for c in report["cells"])
    assert got == expected and sum(c[3] for c in got) == len(clicked) > 0
    # Off-policy: the treatment policy's SNIPS over the control events one by one.
    groups = control["group_id"].fillna(-1).astype(np.int64).to_numpy()
    probabilities = policy.probabilities(("bottle-1", "feed"), groups)
    arms = policy.arms(("bottle-1", "feed"))
    target = probabilities[np.arange(len(control)), [arms.index(a) for a in control["arm"]]]
    log = BanditLog(contexts=np.zeros((len(control), 1)), arms=np.zeros(len(control), dtype=object),
                    rewards=control["clicked"].to_numpy(float), propensities=control["propensity"].to_numpy())
    reference = snips(log, np.column_stack([target, 1 - target]), [0, 1], n_bootstrap=100)
    assert report["off_policy"]["n"] == len(control)
    assert report["off_policy"]["estimate"] == pytest.approx(reference.estimate, rel=1e-12)
    assert report["off_policy"]["effective_sample_size"] == pytest.approx(reference.effective_sample_size, rel=1e-12)


def test_concurrent_writers_keep_the_sums_equal_to_the_log(database_url):
    """Four writers (connections) log batches touching the same cells in different orders and click the same shared
    impressions at once: no deadlock, no lost or doubled increment."""
    import threading

    with EventLog(database_url) as log:
        log.log_impressions(impressions(0, 40))  # shared impressions every writer clicks
    errors, barrier = [], threading.Barrier(4)

    def write(worker: int) -> None:
        rng = np.random.default_rng(worker)
        try:
            with EventLog(database_url) as log:
                log._shard = worker  # as four processes would: rows of their own, summed by readers
                barrier.wait()
                for batch in range(15):
                    start = 1000 * (worker + 1) + 10 * batch
                    log.log_impressions(impressions(start, 10).sample(frac=1.0, random_state=int(rng.integers(99))))
                    log.log_clicks([f"imp-{k}" for k in rng.integers(40, size=3)])
        except Exception as error:  # noqa: BLE001 -- collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    with EventLog(database_url) as log:
        sums = log.report_cells()
        assert_equal_sums(sums, full(log))
        assert int(sums["impressions"].sum()) == 40 + 4 * 15 * 10
        assert int(sums["clicks"].sum()) == log.counts()["clicks"] > 0
