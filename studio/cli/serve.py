"""`studio serve`: the HTTP serving service (FastAPI + uvicorn) over the creative cache and the event log."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from dataclasses import asdict


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve creatives over HTTP: a hybrid LinUCB per audience group, impressions and clicks logged, online learning",
        description="Serve the creative cache: GET /v1/creative picks a creative (treatment: LinUCB; control: "
                    "uniform or fixed), logs the impression, POST /v1/clicks records clicks, GET /v1/report, "
                    "/healthz, /metrics. The API token for write endpoints is read from $STUDIO_API_TOKEN.",
    )
    serve.add_argument("--cache", required=True, help="creative cache folder (or postgresql:// URL with --cache-blobs)")
    serve.add_argument("--cache-blobs", default=None, help="blob folder or URL of a PostgreSQL cache")
    serve.add_argument("--db", default=None, help="event log: a SQLite file (default <cache>/events.db) or a "
                                                 "postgresql:// URL shared by every worker and machine")
    serve.add_argument("--audience", default=None, help="saved AudienceClustering folder (default: all cold start)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (each rebuilds from the log)")
    serve.add_argument("--salt", default="studio-serve", help="experiment name for A/B bucketing")
    serve.add_argument("--treatment-share", type=float, default=0.5)
    serve.add_argument("--control", choices=["uniform", "first"], default="uniform",
                       help="control policy: a uniformly random creative, or the cache's best-ranked one")
    serve.add_argument("--alpha", type=float, default=0.25, help="LinUCB exploration strength")
    serve.add_argument("--arm-l2", type=float, default=1000.0,
                       help="impressions before a creative's own clicks outweigh its group's taste model (default 1000)")
    serve.add_argument("--epsilon", type=float, default=0.0,
                       help="share of uniformly random treatment serves (default 0: the UCB bonus explores, and the "
                            "uniform control bucket is the log off-policy evaluation reads)")
    serve.add_argument("--attribution-window", type=float, default=3600.0,
                       help="seconds a click counts after its impression; later, no click teaches reward 0")
    serve.add_argument("--sync-seconds", type=float, default=1.0, help="catch up from the shared log this often")
    serve.add_argument("--snapshot", default=None, help="folder for atomic bandit snapshots")
    serve.add_argument("--sqlite-sync", choices=["full", "normal"], default="full",
                       help="full: an acknowledged event is fsynced (survives a power cut); normal: it survives any "
                            "crash or kill of the server, not an OS crash or power cut, and commits skip the fsync")
    serve.add_argument("--print-config", action="store_true", help="print the worker config as JSON and exit")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from studio.core.errors import InputError
    from studio.serving.app import CONFIG_ENV, TOKEN_ENV
    from studio.serving.config import ServeConfig

    db = args.db or os.path.join(args.cache, "events.db")
    config = ServeConfig(db=db, cache=args.cache, cache_blobs=args.cache_blobs, audience=args.audience,
                         salt=args.salt, treatment_share=args.treatment_share, control=args.control,
                         alpha=args.alpha, arm_l2=args.arm_l2, epsilon=args.epsilon,
                         attribution_window=args.attribution_window,
                         sync_seconds=args.sync_seconds, snapshot=args.snapshot, sqlite_sync=args.sqlite_sync,
                         token=os.environ.get(TOKEN_ENV) or None)
    config.check()
    if args.workers < 1 or not 0 < args.port < 65536:
        raise InputError("--workers must be >= 1 and --port in 1..65535")
    if not _loopback(args.host) and config.token is None:
        raise InputError(f"--host {args.host} is reachable from other machines: set {TOKEN_ENV} so clicks and "
                         "admin calls need a token")
    public = {k: v for k, v in asdict(config).items() if k != "token"}
    if args.print_config:
        print(json.dumps(public, indent=2))
        return 0
    import uvicorn

    os.environ[CONFIG_ENV] = json.dumps(public)  # the workers read it (the token stays in its own variable)
    uvicorn.run("studio.serving.app:app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", access_log=False)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
