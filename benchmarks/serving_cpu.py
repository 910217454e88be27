"""CPU per request of one serving worker, without sockets: the ASGI app called directly, /healthz (the baseline: the
same app, a dependency, a response model, no decision, no database) against GET /v1/creative (a decision and its
commit). CPU time of the process counts the worker's event loop and its store thread, and little of what other
programs on a shared machine do, so the ratio is steadier there than wrk's rates.

    python benchmarks/serving_cpu.py [--requests 3000] [--runs 3] [--sqlite-sync full|normal]
    python benchmarks/serving_cpu.py --commits 300         # what one SQLite commit waits for, full and normal
    python benchmarks/serving_cpu.py --report 50000        # GET /v1/report's time on a log of that many impressions

The world is `benchmarks/serving.py`'s (4 products x 6 creatives, 4 audience groups); 8 requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from studio.serving.app import create_app
from studio.serving.config import ServeConfig
from studio.serving.drive import prepare_world
from studio.sim.experiment import ExperimentConfig

PROFILES = [{"age": 25, "region": "north", "device": "mobile"}, {"age": 41, "region": "east", "device": "desktop"},
            {"age": 63, "region": "west", "device": "tablet"}, {"age": 33, "region": "south", "device": "mobile"}]


async def call(app, path: str, query: str) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"127.0.0.1")], "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
    status = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    if status != [200]:
        raise SystemExit(f"{path}?{query} answered {status}")


async def measure(app, queries: list[tuple[str, str]], in_flight: int = 8) -> float:
    """CPU seconds of this process per request, `in_flight` requests at a time."""
    async def worker(start: int) -> None:
        for path, query in queries[start::in_flight]:
            await call(app, path, query)

    started = time.process_time()
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    return (time.process_time() - started) / len(queries)


async def run(config: ServeConfig, products: list[str], requests: int, runs: int) -> list[dict]:
    app = create_app(config)
    features = [quote(json.dumps(p)) for p in PROFILES]
    decisions = [("/v1/creative", (f"user_id=u{i}&product_id={products[i % len(products)]}&features="
                                   f"{features[i % len(features)]}")) for i in range(requests)]
    health = [("/healthz", "")] * requests
    results = []
    async with app.router.lifespan_context(app):
        await measure(app, decisions[:300] + health[:300])  # warm-up: arms loaded, groups cached
        for _ in range(runs):  # alternating, so both see the same machine
            decision, baseline = await measure(app, decisions), await measure(app, health)
            results.append({"decision_us": decision * 1e6, "healthz_us": baseline * 1e6,
                            "ratio": decision / baseline, "load_average_1min": os.getloadavg()[0]})
            print(f"  decision {decision * 1e6:.0f} us CPU, /healthz {baseline * 1e6:.0f} us, ratio "
                  f"{decision / baseline:.2f} (load average {os.getloadavg()[0]:.2f})", flush=True)
    return results


def commit_times(folder: Path, commits: int) -> None:
    """One-row commits in a loop on this disk, as `EventLog` opens SQLite: WAL, synchronous FULL or NORMAL."""
    import sqlite3

    for sync in ("FULL", "NORMAL"):
        connection = sqlite3.connect(folder / f"{sync}.db", isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={sync}")
        connection.execute("CREATE TABLE t (a TEXT, b REAL)")
        times = []
        for i in range(commits):
            started = time.perf_counter()
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t VALUES (?, ?)", ("x" * 100, i))
            connection.execute("COMMIT")
            times.append(time.perf_counter() - started)
        connection.close()
        times.sort()
        print(f"synchronous={sync}: commit median {statistics.median(times) * 1e3:.3f} ms, "
              f"p99 {times[int(0.99 * len(times))] * 1e3:.3f} ms ({commits} commits)")


async def report_time(config: ServeConfig, products: list[str], impressions: int) -> None:
    """A log of `impressions` served half by control (uniform over 6), then GET /v1/report 5 times."""
    import numpy as np
    import pandas as pd

    from studio.learning.eventlog import EventLog

    rng = np.random.default_rng(0)
    with EventLog(config.db) as log:
        for start in range(0, impressions, 10_000):
            n = min(10_000, impressions - start)
            ids = [f"i{start + k}" for k in range(n)]
            control = rng.random(n) < 0.5
            arm = rng.integers(6, size=n)
            log.log_impressions(pd.DataFrame({
                "impression_id": ids, "user_id": [f"u{k}" for k in rng.integers(4000, size=n)],
                "group_id": rng.integers(4, size=n), "product_id": [products[k] for k in rng.integers(4, size=n)],
                "creative_id": [f"c{a}" for a in arm], "arm": [f"c{a}" for a in arm],
                "propensity": np.where(control, 1 / 6, 0.9), "bucket": np.where(control, "control", "treatment"),
                "policy": np.where(control, "uniform", "linucb"), "placement": "feed"}),
                clicked=[i for i, hit in zip(ids, rng.random(n) < 0.03) if hit])
    app = create_app(config)
    async with app.router.lifespan_context(app):
        times = []
        for _ in range(6):
            started = time.perf_counter()
            await call(app, "/v1/report", "")
            times.append(time.perf_counter() - started)
    print(f"GET /v1/report on {impressions} impressions: median {statistics.median(times[1:]) * 1e3:.1f} ms "
          f"(5 calls after a first one)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sqlite-sync", choices=["full", "normal"], default="full")
    parser.add_argument("--commits", type=int, default=0, help="only time this many SQLite commits")
    parser.add_argument("--report", type=int, default=0, help="only time the report on a log this long")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="studio-serving-cpu-"))
    try:
        measure_all(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_all(args, root: Path) -> None:
    if args.commits:
        commit_times(root, args.commits)
        return
    summary = prepare_world(ExperimentConfig(products=4, arms=6, users=4000, seed=0), root / "world")
    config = ServeConfig(db=str(root / "events.db"), cache=str(root / "world" / "cache"),
                         audience=str(root / "world" / "audience"), attribution_window=1, sync_seconds=0.5)
    if hasattr(config, "sqlite_sync"):
        config.sqlite_sync = args.sqlite_sync
    if args.report:
        asyncio.run(report_time(config, summary["products"], args.report))
        return
    results = asyncio.run(run(config, summary["products"], args.requests, args.runs))
    median = {key: statistics.median(r[key] for r in results) for key in results[0]}
    print(json.dumps({"sqlite_sync": args.sqlite_sync, "requests": args.requests, "median": median,
                      "runs": results}, indent=2))


if __name__ == "__main__":
    main()
