"""The worker's store threads: a request cancelled while it waits is dropped and the thread keeps serving, and
impression commits do not wait behind other database work."""

import fcntl
import threading
import time

from studio.learning.eventlog import EventLog
from studio.serving.config import ServeConfig
from studio.serving.service import Store


def impression(name):
    return {"impression_id": name, "user_id": "u", "product_id": "p", "creative_id": "c", "arm": "c",
            "propensity": 0.5, "bucket": "control", "group_id": 0, "placement": "feed"}


def test_a_cancelled_request_is_dropped_and_the_store_thread_survives(tmp_path):
    store = Store(ServeConfig(db=str(tmp_path / "events.db"), cache=str(tmp_path / "cache")))
    try:
        with open(tmp_path / "events.db.lock", "a+b") as writers:  # SQLite's writer lock (EventLog._writer_lock)
            fcntl.flock(writers, fcntl.LOCK_EX)  # the impression thread's next commit waits here
            first = store.log_impression(impression("first"))
            deadline = time.monotonic() + 10
            while not first.running() and time.monotonic() < deadline:  # taken up, blocked on the lock
                time.sleep(0.01)
            gone, kept = store.log_impression(impression("gone")), store.log_impression(impression("kept"))
            assert gone.cancel()  # its client went away before the commit
            fcntl.flock(writers, fcntl.LOCK_UN)
        assert first.result(10) is None and kept.result(10) is None and gone.cancelled()
        # The thread is alive and the cancelled impression was never written (it was never acknowledged).
        assert store.log_impression(impression("after")).result(10) is None
    finally:
        store.close()
    with EventLog(tmp_path / "events.db") as log:
        assert sorted(log.read()["impression_id"]) == ["after", "first", "kept"]


def test_an_impression_commits_while_a_slow_call_holds_the_other_thread(tmp_path):
    """Catching up, clicks and reports run beside the impression commits: a decision never waits behind them."""
    store = Store(ServeConfig(db=str(tmp_path / "events.db"), cache=str(tmp_path / "cache")))
    try:
        release = threading.Event()
        busy = store.call(lambda log, cache: release.wait(10))
        assert store.log_impression(impression("served")).result(10) is None
        assert not busy.done()  # the slow call still holds its thread
        release.set()
        assert busy.result(10) is True
        assert store.call(lambda log, cache: log.counts()).result(10) == {"impressions": 1, "clicks": 0}
    finally:
        store.close()
