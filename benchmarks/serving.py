"""Serving benchmark: decisions/s and p99 latency of a real `studio serve` (uvicorn, 2 workers) on loopback, driven
by wrk, on SQLite and PostgreSQL; then kill -9 of a worker under load: acknowledged events lost, and the bandit a
worker holds against a rebuild from the log.

    python benchmarks/serving.py [--seconds 10] [--connections 8] [--runs 3] [--postgres postgresql://...]

Needs Debian's ``wrk`` (apt-get install -y wrk). Each figure is the median of `--runs` runs; the 1-minute load average
is printed before each run, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from studio.jobs.cache import CreativeCache
from studio.learning.hybrid import HybridLinUCB
from studio.learning.eventlog import EventLog
from studio.serving.config import ServeConfig
from studio.serving.drive import acknowledged_load, prepare_world
from studio.serving.service import rebuild_policy
from studio.sim.experiment import ExperimentConfig

TOKEN = "benchmark-token"
LUA = """
local products = {%s}
local features = {%s}
local seed, threads = %d, 0
function setup(thread)  -- in the main state: number the threads
  threads = threads + 1
  thread:set("thread_number", threads)
end
function init(args)  -- each thread its own random stream (users, products, arrival gaps)
  math.randomseed(seed + thread_number)
end
%s
request = function()
  local u = math.random(1, 1000000)
  return wrk.format("GET", "/v1/creative?user_id=u" .. u .. "&product_id=" .. products[math.random(1, #products)]
                    .. "&features=" .. features[math.random(1, #features)])
end
"""


# Paced load without wrk2 (Debian has none): each wrk thread hands every request the next slot of its schedule, a
# Poisson process (exponential gaps, as independent users arrive) on a monotonic clock through LuaJIT's ffi, so the
# offered rate is the target whatever the latency, as long as a connection is free; a slot missed while all are busy
# is sent at once, late.
PACED = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } studio_timespec;
int clock_gettime(int clock_id, studio_timespec *tp);
]]
local clock = ffi.new("studio_timespec")
local interval, next_slot = %f, nil
delay = function()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  local now = tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
  local gap = -math.log(1 - math.random()) * interval
  next_slot = math.max(next_slot or now, now - 1000) + gap  -- at most a second of missed slots catches up
  return math.max(0, next_slot - now)
end
"""
WRK_THREADS = 2


def paced_lua(rate: float) -> str:
    """The Lua of a paced run at `rate` requests/s over all of wrk's threads."""
    return PACED % (WRK_THREADS * 1000.0 / rate)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SQLITE_SYNC = "full"  # --sqlite-sync


def start_server(world: Path, db: str, port: int, snapshot: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "studio.cli", "serve", "--cache", str(world / "cache"), "--audience",
               str(world / "audience"), "--db", db, "--workers", "2", "--port", str(port),
               "--attribution-window", "1", "--sync-seconds", "0.5", "--sqlite-sync", SQLITE_SYNC]
    if snapshot is not None:
        command += ["--snapshot", str(snapshot)]
    server = subprocess.Popen(command, env={**os.environ, "STUDIO_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start")


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def wrk(url: str, script: Path | None, seconds: int, connections: int) -> dict:
    """One wrk run: with `script` the decision requests it writes, without it a plain GET of `url`."""
    load = os.getloadavg()[0]
    lua = ["-s", str(script)] if script else []
    out = subprocess.run(["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency", *lua, url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": float(p99.group(1)) * scale[p99.group(2)],
            "errors": (int(non_2xx.group(1)) if non_2xx else 0) +
                      (sum(map(int, socket_errors.groups())) if socket_errors else 0),
            "load_average_1min": load}


def throughput(world: Path, db: str, products: list[str], args, paced: bool = False) -> dict:
    """Closed loop (each connection sends as soon as it has an answer: the saturation rate), or `paced`: 32
    connections send on a Poisson schedule (`paced_lua`), so the offered rate is ``--rate`` whatever the latency (the
    latency goal is stated at 1,000/s)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A few audience profiles, URL-encoded JSON (the clustering maps each to its group once, then from a cache).
    profiles = [{"age": a, "region": r, "device": d} for a, r, d in
                [(25, "north", "mobile"), (41, "east", "desktop"), (63, "west", "tablet"), (33, "south", "mobile")]]
    encoded = [httpx.QueryParams({"f": json.dumps(p)}).__str__()[2:] for p in profiles]
    script = Path(tempfile.mkdtemp()) / "decide.lua"
    connections = 32 if paced else args.connections
    delay = paced_lua(args.rate) if paced else ""
    script.write_text(LUA % (", ".join(f'"{p}"' for p in products), ", ".join(f'"{e}"' for e in encoded), 0, delay))
    server = start_server(world, db, port)
    try:
        wrk(url, script, 3, connections)  # warm-up: arms loaded, feature groups cached
        runs = []
        for run in range(args.runs):
            result = wrk(url, script, args.seconds, connections)
            # Baseline in the same run, alternating: /healthz through the same server and workers, no decision and
            # no database write. The ratio is what a decision costs beyond the HTTP stack.
            if not paced:
                bare = wrk(url + "/healthz", None, args.seconds, connections)["requests_per_second"]
                result["healthz_per_second"] = bare
                result["ratio_to_healthz"] = result["requests_per_second"] / bare
            print(f"  run {run + 1}: {result['requests_per_second']:.0f} req/s, p99 {result['p99_ms']:.1f} ms, "
                  f"{result['errors']} errors"
                  + (f", {result['ratio_to_healthz']:.2f} of /healthz's rate" if not paced else "")
                  + f" (load average {result['load_average_1min']:.2f})", flush=True)
            runs.append(result)
    finally:
        stop(server)
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {"median": median, "runs": runs}


def kill_a_worker(world: Path, db: str, products: list[str], seconds: float) -> dict:
    """Bounded load with a kill -9 of one worker in the middle; then check the log and the state."""
    port, snapshot = free_port(), Path(tempfile.mkdtemp()) / "snapshot"
    url = f"http://127.0.0.1:{port}"
    server = start_server(world, db, port, snapshot)
    try:
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(acknowledged_load(
            url, products, seconds=seconds, concurrency=8, click_rate=0.1, token=TOKEN)))
        load.start()
        time.sleep(seconds / 3)
        victim = httpx.get(url + "/healthz").json()["pid"]
        os.kill(victim, signal.SIGKILL)
        load.join()
        time.sleep(3)  # attribution windows close (1 s), the new worker starts and both catch up (0.5 s ticks)
        httpx.post(url + "/v1/admin/snapshot", headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
    finally:
        stop(server)
    state = json.loads((snapshot / "state.json").read_text())
    with EventLog(db) as log, CreativeCache(world / "cache") as cache:
        frame = log.read()
        config = ServeConfig(db=db, cache=str(world / "cache"), audience=str(world / "audience"))
        rebuilt = rebuild_policy(config, log, cache, upto=state["watermark"])
    worst = HybridLinUCB.from_pretrained(snapshot / "bandit").max_difference(rebuilt.model)
    logged, clicked = set(frame["impression_id"]), set(frame.loc[frame["clicked"] == 1, "impression_id"])
    return {"acknowledged_impressions": len(result["impressions"]), "acknowledged_clicks": len(result["clicks"]),
            "lost_impressions": len(set(result["impressions"]) - logged),
            "lost_clicks": len(set(result["clicks"]) - clicked),
            "failed_requests_during_kill": result["errors"], "killed_worker": victim,
            "max_abs_difference_live_vs_rebuild": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("STUDIO_TEST_POSTGRES_URL"))
    parser.add_argument("--kill-seconds", type=float, default=9.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered rate of the paced runs (requests/s)")
    parser.add_argument("--sqlite-sync", choices=["full", "normal"], default="full",
                        help="studio serve --sqlite-sync (full: fsync per commit; normal: survives kill -9, not a "
                             "power cut)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    global SQLITE_SYNC
    SQLITE_SYNC = args.sqlite_sync
    if args.no_postgres:
        args.postgres = None
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    root = Path(tempfile.mkdtemp(prefix="studio-serving-bench-"))
    world = root / "world"
    summary = prepare_world(ExperimentConfig(products=4, arms=6, users=4000, seed=0), world)
    products = summary["products"]
    report = {"cpus": os.cpu_count(), "connections": args.connections, "seconds": args.seconds, "runs": args.runs,
              "sqlite_sync": args.sqlite_sync}
    engines = [("sqlite", lambda name: str(root / f"{name}.db"))]
    schemas: list[str] = []
    if args.postgres:
        import psycopg

        def postgres(name: str) -> str:
            schema = f"bench_{name}_{os.getpid()}"
            schemas.append(schema)
            with psycopg.connect(args.postgres, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                connection.execute(f"CREATE SCHEMA {schema}")
            return f"{args.postgres}?options=-csearch_path%3D{schema}"

        engines.append(("postgresql", postgres))
    for engine, target in engines:
        print(f"{engine}: saturation (closed loop, {args.connections} connections)", flush=True)
        report[engine] = {"saturation": throughput(world, target("throughput"), products, args)}
        print(f"{engine}: paced at ~{args.rate:.0f} requests/s (32 connections)", flush=True)
        report[engine]["paced"] = throughput(world, target("paced"), products, args, paced=True)
        print(f"{engine}: kill -9 of a worker under load", flush=True)
        report[engine]["kill"] = kill_a_worker(world, target("kill"), products, args.kill_seconds)
        print(f"  {json.dumps(report[engine]['kill'])}", flush=True)
    print(json.dumps(report, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    if schemas:
        import psycopg

        with psycopg.connect(args.postgres, autocommit=True) as connection:
            for schema in schemas:
                connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


if __name__ == "__main__":
    main()
