"""Serving variants side by side under the same machine load: each a real `studio serve --workers 2`, all started at
once, wrk alternating between them round by round (on a shared machine one run's rate can differ from the next by a
factor of 2–3; alternating puts every variant in the same conditions).

    python benchmarks/serving_ab.py [--before SRC] [--postgres URL] [--rounds 3] [--seconds 5] [--paced]

Variants: SQLite with ``--sqlite-sync full`` and ``normal``; with ``--before SRC``, an older source tree (e.g.
``git archive <commit> | tar -x -C SRC``) run with its own code; with ``--postgres``, PostgreSQL (for both
trees with ``--before``). Closed loop: 8
connections, each followed by the same load on /healthz (the ratio's baseline); ``--paced``: 32 connections at ~1,000
requests/s as in `benchmarks/serving.py`. Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import serving as bench  # the wrk runner and Lua script of benchmarks/serving.py

from studio.serving.drive import prepare_world
from studio.sim.experiment import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]


def start(name: str, source: Path, db: str, world: Path, extra: list[str]) -> tuple[str, subprocess.Popen]:
    port = bench.free_port()
    command = [sys.executable, "-m", "studio.cli", "serve", "--cache", str(world / "cache"), "--audience",
               str(world / "audience"), "--db", db, "--workers", "2", "--port", str(port), "--attribution-window",
               "1", "--sync-seconds", "0.5", *extra]
    env = {**os.environ, "STUDIO_API_TOKEN": bench.TOKEN, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(source)}
    return f"http://127.0.0.1:{port}", subprocess.Popen(command, cwd=source, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=None, help="an older source tree to compare with")
    parser.add_argument("--postgres", default=None, help="also a PostgreSQL variant (a database URL)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--paced", action="store_true", help="32 connections at ~1,000 requests/s")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="studio-serving-ab-"))
    world = root / "world"
    products = prepare_world(ExperimentConfig(products=4, arms=6, users=4000, seed=0), world)["products"]
    variants = {"sqlite-full": (ROOT, str(root / "full.db"), ["--sqlite-sync", "full"]),
                "sqlite-normal": (ROOT, str(root / "normal.db"), ["--sqlite-sync", "normal"])}
    if args.before is not None:
        variants = {"before": (args.before.resolve(), str(root / "before.db"), []), **variants}
    schemas: list[str] = []
    if args.postgres:
        import psycopg

        sources = {"postgresql": ROOT, **({"before-postgresql": args.before.resolve()} if args.before else {})}
        for name, source in sources.items():
            schemas.append(f"bench_ab_{len(schemas)}_{os.getpid()}")
            with psycopg.connect(args.postgres, autocommit=True) as connection:
                connection.execute(f"CREATE SCHEMA {schemas[-1]}")
            variants[name] = (source, f"{args.postgres}?options=-csearch_path%3D{schemas[-1]}", [])
    profiles = [{"age": a, "region": r, "device": d} for a, r, d in
                [(25, "north", "mobile"), (41, "east", "desktop"), (63, "west", "tablet"), (33, "south", "mobile")]]
    encoded = [str(httpx.QueryParams({"f": json.dumps(p)}))[2:] for p in profiles]
    connections = 32 if args.paced else 8
    delay = bench.paced_lua(1000.0) if args.paced else ""
    script = root / "decide.lua"
    script.write_text(bench.LUA % (", ".join(f'"{p}"' for p in products), ", ".join(f'"{e}"' for e in encoded), 0,
                                   delay))
    servers = {name: start(name, source, db, world, extra) for name, (source, db, extra) in variants.items()}
    results: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        for url, _ in servers.values():
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            bench.wrk(url, script, 3, connections)  # warm-up
        for _ in range(args.rounds):
            for name, (url, _) in servers.items():
                result = bench.wrk(url, script, args.seconds, connections)
                if not args.paced:
                    result["ratio_to_healthz"] = (result["requests_per_second"]
                                                  / bench.wrk(url + "/healthz", None, args.seconds, 8)["requests_per_second"])
                results[name].append(result)
                print(f"{name}: {result['requests_per_second']:.0f}/s, p99 {result['p99_ms']:.1f} ms, "
                      f"{result['errors']} errors"
                      + (f", {result['ratio_to_healthz']:.2f} of /healthz" if not args.paced else "")
                      + f" (load average {result['load_average_1min']:.2f})", flush=True)
    finally:
        for _, server in servers.values():
            bench.stop(server)
        if schemas:
            with psycopg.connect(args.postgres, autocommit=True) as connection:
                for schema in schemas:
                    connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        shutil.rmtree(root, ignore_errors=True)
    for name, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(f"{name} median: {json.dumps(median)}")


if __name__ == "__main__":
    main()
