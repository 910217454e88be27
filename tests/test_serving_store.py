"""The worker's store thread: a request cancelled while it waits is dropped, and the thread keeps serving."""

import threading

from studio.learning.eventlog import EventLog
from studio.serving.config import ServeConfig
from studio.serving.service import Store


def impression(name):
    return {"impression_id": name, "user_id": "u", "product_id": "p", "creative_id": "c", "arm": "c",
            "propensity": 0.5, "bucket": "control", "group_id": 0, "placement": "feed"}


def test_a_cancelled_request_is_dropped_and_the_store_thread_survives(tmp_path):
    store = Store(ServeConfig(db=str(tmp_path / "events.db"), cache=str(tmp_path / "cache")))
    try:
        release = threading.Event()
        busy = store.call(lambda log, cache: release.wait(10))  # holds the thread while the next ones queue
        gone, kept = store.log_impression(impression("gone")), store.log_impression(impression("kept"))
        assert gone.cancel()  # its client went away before the commit
        release.set()
        assert busy.result(10) is True and kept.result(10) is None and gone.cancelled()
        # The thread is alive and the cancelled impression was never written (it was never acknowledged).
        assert store.call(lambda log, cache: log.counts()).result(10) == {"impressions": 1, "clicks": 0}
    finally:
        store.close()
    with EventLog(tmp_path / "events.db") as log:
        assert log.read()["impression_id"].tolist() == ["kept"]
