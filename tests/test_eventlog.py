"""The SQLite event log: impressions and clicks, written transactionally, read back for learning."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from studio.core.errors import InputError
from studio.learning.eventlog import IMPRESSION_COLUMNS, EventLog, EventLogError


def impressions(start, n, bucket="control"):
    return pd.DataFrame({
        "impression_id": [f"imp-{i}" for i in range(start, start + n)],
        "ts": np.arange(start, start + n, dtype=float),
        "user_id": [f"user-{i % 7}" for i in range(start, start + n)],
        "group_id": [i % 3 for i in range(start, start + n)],
        "product_id": "mug-1",
        "creative_id": [f"mug-1/arm-{i % 4}" for i in range(start, start + n)],
        "arm": [i % 4 for i in range(start, start + n)],
        "propensity": 0.25,
        "policy": "uniform",
        "bucket": bucket,
        "model_version": "v1",
    })


def test_log_impressions_and_clicks_then_read_them_back(database_url):
    with EventLog(database_url) as log:
        assert log.log_impressions(impressions(0, 10)) == 10
        assert log.log_impressions(impressions(10, 5, bucket="treatment").assign(policy="linucb", propensity=1.0)) == 5
        assert log.log_clicks(["imp-1", "imp-12"], ts=100.0) == 2
        frame = log.read()
        assert list(frame.columns) == [*IMPRESSION_COLUMNS, "clicked", "click_ts"]
        assert frame["clicked"].sum() == 2 and frame.loc[frame["clicked"] == 1, "click_ts"].tolist() == [100.0, 100.0]
        control = log.arrays(bucket="control")
        assert len(control) == 10 and control.reward.tolist() == [0, 1] + [0] * 8
        assert control.propensity.tolist() == [0.25] * 10 and control.group_id[:4].tolist() == [0, 1, 2, 0]
        assert control.arm[:3].tolist() == ["0", "1", "2"]
        assert log.arrays(policy="linucb").reward.sum() == 1
        assert log.counts() == {"impressions": 15, "clicks": 2}


def test_duplicate_clicks_are_idempotent(database_url):
    with EventLog(database_url) as log:
        log.log_impressions(impressions(0, 3))
        assert log.log_clicks(["imp-0"]) == 1
        assert log.log_clicks(["imp-0", "imp-0", "imp-2"]) == 1
        assert log.counts()["clicks"] == 2


def test_click_for_an_unknown_impression_is_refused_and_writes_nothing(database_url):
    with EventLog(database_url) as log:
        log.log_impressions(impressions(0, 3))
        with pytest.raises(InputError, match="never logged"):
            log.log_clicks(["imp-0", "imp-999"])
        assert log.counts()["clicks"] == 0


def test_bad_impression_batches_are_rejected_whole(database_url):
    with EventLog(database_url) as log:
        log.log_impressions(impressions(0, 3))
        with pytest.raises(InputError, match="nothing written"):
            log.log_impressions(impressions(2, 3))  # imp-2 exists: the new imp-3 and imp-4 must not be written
        with pytest.raises(InputError, match="propensity"):
            log.log_impressions(impressions(10, 2).assign(propensity=[0.5, 0.0]))
        with pytest.raises(InputError, match="lack columns"):
            log.log_impressions(impressions(10, 2).drop(columns="arm"))
        with pytest.raises(InputError, match="unknown columns"):
            log.log_impressions(impressions(10, 2).assign(colour="red"))
        with pytest.raises(InputError, match="repeat"):
            log.log_impressions(pd.concat([impressions(10, 2), impressions(10, 2)]))
        assert log.counts() == {"impressions": 3, "clicks": 0}


def test_a_file_that_is_not_a_database_gets_a_clear_error(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EventLogError, match="not a usable event log"):
        EventLog(tmp_path / "junk.db")


WRITER = textwrap.dedent("""
    import sys
    import pandas as pd
    from studio.learning.eventlog import EventLog

    log = EventLog(sys.argv[1])
    batch = 0
    while True:
        ids = [f"b{batch}-{i}" for i in range(500)]
        log.log_impressions(pd.DataFrame({"impression_id": ids, "user_id": "u", "product_id": "p",
                                          "creative_id": "c", "arm": 0, "propensity": 1.0}))
        print(f"ack {batch}", flush=True)  # acknowledged: log_impressions returned after the commit
        batch += 1
""")


def test_a_writer_killed_mid_write_loses_no_acknowledged_batch(tmp_path):
    path = tmp_path / "events.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        for line in writer.stdout:
            acknowledged.append(int(line.split()[1]))
            if len(acknowledged) == 8:
                break
    finally:
        writer.send_signal(signal.SIGKILL)  # no chance to clean up, mid-way through the next batch
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    per_batch = dict(connection.execute(
        "SELECT substr(impression_id, 2, instr(impression_id, '-') - 2), COUNT(*) FROM impressions GROUP BY 1"))
    connection.close()
    for batch in acknowledged:
        assert per_batch[str(batch)] == 500
    assert set(per_batch.values()) == {500}  # a batch is all there or not at all
    # The log opens and appends normally after the crash.
    with EventLog(path) as log:
        log.log_impressions(impressions(0, 2))
        assert log.counts()["impressions"] == 500 * len(per_batch) + 2


def test_an_impression_and_its_clicks_commit_together(database_url):
    with EventLog(database_url) as log:
        assert log.log_impressions(impressions(0, 4), clicked=["imp-1", "imp-3"], click_ts=[9.0, 9.5]) == 4
        frame = log.read()
        assert frame["clicked"].tolist() == [0, 1, 0, 1] and frame["click_ts"].dropna().tolist() == [9.0, 9.5]
        with pytest.raises(InputError, match="not on impressions of this batch"):
            log.log_impressions(impressions(10, 2), clicked=["imp-0"])
        assert log.counts() == {"impressions": 4, "clicks": 2}  # the rejected batch wrote nothing


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_timestamps_are_refused_and_nothing_is_written(database_url, bad):
    with EventLog(database_url) as log:
        log.log_impressions(impressions(0, 2))
        if not np.isnan(bad):  # a missing (NaN) impression time means "now", as documented
            with pytest.raises(InputError, match="finite"):
                log.log_impressions(impressions(5, 2).assign(ts=[1.0, bad]))
        with pytest.raises(InputError, match="finite"):
            log.log_clicks(["imp-0"], ts=bad)
        with pytest.raises(InputError, match="finite"):
            log.log_impressions(impressions(5, 2), clicked=["imp-5"], click_ts=bad)
        assert log.counts() == {"impressions": 2, "clicks": 0}


def _open_and_log(path, barrier, name):
    barrier.wait()  # every process reaches the new file at the same moment
    with EventLog(path) as log:
        log.log_impressions(impressions(0, 1).assign(impression_id=name))


@pytest.mark.slow
def test_eight_processes_opening_one_new_log_at_once_all_succeed(tmp_path):
    """100 trials of 8 processes creating the same new log at once: 0 failures, every impression kept."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    failures = 0
    for trial in range(100):
        path = tmp_path / f"events-{trial}.db"
        barrier = context.Barrier(8)
        workers = [context.Process(target=_open_and_log, args=(path, barrier, f"w{i}")) for i in range(8)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        failures += sum(worker.exitcode != 0 for worker in workers)
        with EventLog(path) as log:
            assert log.counts()["impressions"] == sum(worker.exitcode == 0 for worker in workers)
    assert failures == 0


def test_a_foreign_database_is_refused_before_anything_is_written(tmp_path):
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE impressions (id INTEGER, colour TEXT)")
    connection.commit()
    connection.close()
    with pytest.raises(EventLogError, match="not a studio event log"):
        EventLog(path)
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        EventLog(tmp_path / "folder.db")


def test_a_full_disk_is_one_clear_error_and_the_log_stays_intact(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must mount a small tmpfs for this test")
        pytest.skip("mounting a small tmpfs to fill needs root; .ci/run sets CI=1, so CI runs this test as root")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], check=True)
    try:
        acknowledged = 0
        with EventLog(disk / "events.db") as log:
            with pytest.raises(EventLogError, match="disk is full") as caught:
                for batch in range(1000):
                    frame = impressions(batch * 50, 50).assign(model_version="x" * 200)
                    acknowledged += log.log_impressions(frame)
            assert "\n" not in str(caught.value)
        connection = sqlite3.connect(disk / "events.db")
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT COUNT(*) FROM impressions").fetchone()[0] == acknowledged > 0
        connection.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_rewards_are_written_once_by_a_click_or_by_the_closing_window(database_url):
    with EventLog(database_url) as log:
        log.log_impressions(impressions(0, 6))  # ts 0..5
        assert log.log_clicks(["imp-1"], ts=1.5) == 1
        assert log.close_windows(before=3.0) == 3  # imp-0, imp-2, imp-3 get 0.0; imp-1 already has its 1.0
        assert log.log_clicks(["imp-2", "imp-4"], ts=6.0) == 2  # imp-2's window was closed first: it stays 0.0
        assert log.close_windows(before=10.0, since=3.0) == 1  # imp-5 (imp-4 was clicked in time)
        rewards = log.rewards_since(0)
        assert rewards["impression_id"].tolist() == ["imp-1", "imp-0", "imp-2", "imp-3", "imp-4", "imp-5"]
        assert rewards["reward"].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        assert rewards["seq"].is_monotonic_increasing and rewards["arm"].tolist()[:2] == ["1", "0"]
        watermark = int(rewards["seq"].iloc[2])
        assert log.rewards_since(watermark)["impression_id"].tolist() == ["imp-3", "imp-4", "imp-5"]
        assert log.close_windows(before=10.0) == 0  # idempotent
        assert log.counts() == {"impressions": 6, "clicks": 3}  # the late click still counts as a click


def test_an_old_log_without_the_rewards_table_is_refused(tmp_path):
    path = tmp_path / "old.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE impressions (impression_id TEXT PRIMARY KEY, ts REAL)")
    connection.commit()
    connection.close()
    with pytest.raises(EventLogError, match="not a studio event log"):
        EventLog(path)


def test_eight_workers_opening_one_new_log_at_once_all_succeed_on_both_engines(database_url):
    """Workers of a deployment start together: the schema is created once, every impression is kept."""
    import threading

    barrier, errors = threading.Barrier(8), []

    def open_and_log(name):
        try:
            barrier.wait()
            with EventLog(database_url) as log:
                log.log_impressions(impressions(0, 1).assign(impression_id=name))
        except Exception as error:  # noqa: BLE001 -- collected for the assertion
            errors.append(error)

    workers = [threading.Thread(target=open_and_log, args=(f"w{i}",)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    with EventLog(database_url) as log:
        assert log.counts()["impressions"] == 8
