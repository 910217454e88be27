"""Why `studio simulate` batches: event-log writes and bandit decisions, batched against one at a time.

Two measurements, each against its baseline in the same process, medians over repeats:

1. Event log: impressions per second written in batches of `--log-batch` per transaction, against one transaction
   per impression (each commit is an fsync: ``synchronous=FULL``).
2. The experiment's serving loop (decide, log, draw clicks, learn): impressions per second with decisions and bandit
   updates in mini-batches of 256, against a mini-batch of 1 (decide, click, learn per request).

    python benchmarks/simulate.py
    python benchmarks/simulate.py --impressions 5000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from studio.learning.eventlog import EventLog
from studio.sim.experiment import ExperimentConfig, run_experiment


def impressions(n: int, start: int) -> pd.DataFrame:
    ids = np.arange(start, start + n)
    return pd.DataFrame({"impression_id": np.char.add("imp-", ids.astype(str)), "ts": ids.astype(float),
                         "user_id": (ids % 997).astype(str), "group_id": ids % 5, "product_id": "mug-0",
                         "creative_id": "mug-0/arm-1", "arm": "1", "propensity": 1 / 6, "policy": "uniform",
                         "bucket": "control", "model_version": "bench"})


def log_rate(folder: Path, n: int, batch: int) -> float:
    """Impressions per second written to a fresh event log, `batch` per transaction."""
    frame = impressions(n, 0)
    with EventLog(folder / f"events-{batch}-{time.perf_counter_ns()}.db") as log:
        start = time.perf_counter()
        for first in range(0, n, batch):
            log.log_impressions(frame.iloc[first: first + batch])
        return n / (time.perf_counter() - start)


def serving_rate(folder: Path, n: int, users: int, batch_size: int) -> float:
    """Impressions per second of the experiment's serving loop (setup and read-out excluded)."""
    config = ExperimentConfig(impressions=n, users=users, batch_size=batch_size)
    report = run_experiment(config, folder / f"run-{batch_size}-{time.perf_counter_ns()}", progress=False)
    return report.timings["serving_impressions_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500, help="impressions written per event-log repeat")
    parser.add_argument("--log-batch", type=int, default=8192)
    parser.add_argument("--impressions", type=int, default=10_000, help="requests per experiment repeat")
    parser.add_argument("--users", type=int, default=2_000, help="simulated users per experiment repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        batched = statistics.median(log_rate(folder, args.rows, args.log_batch) for _ in range(args.repeats))
        single = statistics.median(log_rate(folder, args.rows, 1) for _ in range(args.repeats))
        print(f"event log: {batched:,.0f} impressions/s in batches of {args.log_batch}, {single:,.0f} impressions/s "
              f"one per transaction -> {batched / single:.1f}x")
        fast = statistics.median(serving_rate(folder, args.impressions, args.users, 256) for _ in range(args.repeats))
        slow = statistics.median(serving_rate(folder, args.impressions, args.users, 1) for _ in range(args.repeats))
        print(f"serving loop: {fast:,.0f} impressions/s in mini-batches of 256, {slow:,.0f} impressions/s one request "
              f"at a time -> {fast / slow:.1f}x")


if __name__ == "__main__":
    main()
