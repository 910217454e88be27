"""Drive a running `studio serve` with simulated users and clicks (`studio simulate --via-http`), and load it.

The world is the one `studio simulate` builds (renderer creatives, audience simulator, clustering), written as a
creative cache and an audience folder the server reads::

    studio simulate --prepare-world out/world                  # cache/, audience/, world.json
    studio serve --cache out/world/cache --audience out/world/audience --attribution-window 2
    studio simulate --via-http http://127.0.0.1:8000 --world out/world --impressions 20000

The driver rebuilds the same simulator from ``world.json`` (everything is seeded), asks the server for a creative
per simulated request (with every feature the world's audience clustering was fitted on, interest tags included),
lets the simulator decide the click and sends it, then reports the lift and the oracle ratio as `studio simulate`
does. It only talks to loopback addresses, and stops at a request count and a time limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from studio.core.atomic import write_file
from studio.core.errors import InputError, StudioError
from studio.jobs.cache import CacheKey, CreativeCache
from studio.learning.abtest import bucket_stats, compare
from studio.learning.audience import AudienceClustering, split_tags
from studio.sim.experiment import ExperimentConfig, make_creatives
from studio.sim.simulator import AudienceSimulator

PLACEMENT = "feed"
FEATURES = ("age", "region", "device")


@dataclass
class World:
    """The simulated world behind a served cache: who the users are and how they click (evaluation only)."""

    config: ExperimentConfig
    simulator: AudienceSimulator
    users: object  # pandas DataFrame of user features
    creatives: list[dict]  # make_creatives' dicts plus "cache_id" (the PNG's SHA-256, the served creative id)


def build_world(config: ExperimentConfig, folder: Path) -> World:
    """Render the creatives into `folder` and draw the users, in `studio simulate`'s order (so seeds agree)."""
    simulator = AudienceSimulator(n_segments=config.segments, seed=config.seed)
    creatives = make_creatives(config, simulator, folder)
    for creative in creatives:
        png = (folder / f"{creative['creative_id']}.png").read_bytes()
        creative["cache_id"] = hashlib.sha256(png).hexdigest()
    return World(config, simulator, simulator.sample_users(config.users), creatives)


def prepare_world(config: ExperimentConfig, folder: str | Path) -> dict:
    """Write a served world: ``cache/`` (every creative accepted), ``audience/`` and ``world.json``."""
    config.check()
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty; choose a new folder for the world")
    world = build_world(config, folder / "creatives")
    with CreativeCache(folder / "cache") as cache:
        for rank, creative in enumerate(world.creatives):
            png = (folder / "creatives" / f"{creative['creative_id']}.png").read_bytes()
            key = CacheKey(creative["product_id"], 0, PLACEMENT, creative["backdrop"], "sim-renderer", "none")
            cache.put(png, key, predicted_ctr=0.03, rank=creative["arm"] + 1)
    clustering = AudienceClustering(k_range=(2, 8), seed=config.seed, columns=list(FEATURES)).fit(world.users)
    clustering.save_pretrained(folder / "audience")
    summary = {"config": asdict(config), "products": sorted({c["product_id"] for c in world.creatives}),
               "groups": int(clustering.n_groups_)}
    write_file(folder / "world.json", lambda path: path.write_text(json.dumps(summary, indent=2)))
    return summary


def load_world(folder: str | Path) -> World:
    folder = Path(folder)
    try:
        summary = json.loads((folder / "world.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{folder} is not a world folder ({error}); write one with studio simulate "
                         "--prepare-world DIR") from None
    config = ExperimentConfig(**summary["config"])
    with tempfile.TemporaryDirectory() as scratch:
        return build_world(config, Path(scratch))


def user_features(users, clustering: AudienceClustering) -> list[dict]:
    """Each user's request features: every column the clustering was fitted on, the interest tags included.

    A request without a column the clustering knows is still grouped (a missing tag column reads as "no
    interests"), but into the wrong group for many users; sending the same columns as in `fit` puts every user where
    the clustering put them.
    """
    columns = [*clustering.numeric_, *clustering.categorical_]
    tags = clustering.tag_column if clustering.tags_ and clustering.tag_column in users.columns else None
    payloads = []
    for row in users.itertuples(index=False):
        values = row._asdict()
        features = {name: (values[name].item() if hasattr(values[name], "item") else values[name])
                    for name in clustering.numeric_}
        features.update({name: str(values[name]) for name in clustering.categorical_})
        if tags is not None:
            features[tags] = split_tags(values[tags])
        payloads.append(features)
    if not columns and tags is None:
        raise InputError("the audience clustering has no feature columns to send")
    return payloads


def check_loopback(url: str, option: str = "--via-http") -> str:
    """The base URL, if it points at this machine; the driver never sends simulated traffic elsewhere."""
    parts = urlsplit(url)
    try:
        host = parts.hostname or ""
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme not in ("http", "https") or not loopback:
        raise InputError(f"{option} {url!r} must be an http URL on a loopback address (127.0.0.1, ::1, localhost)")
    return url.rstrip("/")


def _count(errors: dict[str, int], what: str) -> None:
    errors[what] = errors.get(what, 0) + 1


async def exchange(client: httpx.AsyncClient, body: dict, react, headers: dict, errors: dict[str, int]) -> dict | None:
    """One simulated request: ask the server for a creative (POST /v1/creative with `body`), let `react(decision)`
    say whether the user clicks it (None: the decision names a creative the caller does not know), and send the click.
    Returns the decision, or None when it was not served (the reason counted in `errors`)."""
    reply = await client.post("/v1/creative", json=body)
    if reply.status_code != 200:
        _count(errors, str(reply.status_code))
        return None
    decision = reply.json()
    clicked = react(decision)
    if clicked is None:
        _count(errors, "unknown creative")
        return None
    if clicked:
        answer = await client.post("/v1/clicks", json={"impression_ids": [decision["impression_id"]]},
                                   headers=headers)
        if answer.status_code != 200:
            _count(errors, f"click {answer.status_code}")
    return decision


async def exchange_all(client: httpx.AsyncClient, n: int, body_of, react, headers: dict, deadline: float,
                       concurrency: int, errors: dict[str, int]) -> list[dict | None]:
    """`exchange` requests 0..n-1 (`body_of(i)`, `react(i, decision)`), `concurrency` at a time, until `deadline`
    (time.monotonic()). Returns one decision per request, None where it was not served."""
    decisions: list[dict | None] = [None] * n
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            try:
                decisions[i] = await exchange(client, body_of(i), lambda decision, i=i: react(i, decision), headers,
                                              errors)
            except httpx.HTTPError as error:
                _count(errors, type(error).__name__)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return decisions


async def _drive(url: str, world: World, world_folder: Path, requests: int, seconds: float, concurrency: int,
                 token: str | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    users, config = world.users, world.config
    payloads = user_features(users, AudienceClustering.from_pretrained(world_folder / "audience"))
    visit = users["activity"].to_numpy() + 0.1
    who = rng.choice(len(users), size=requests, p=visit / visit.sum())
    products = sorted({c["product_id"] for c in world.creatives})
    product = rng.integers(len(products), size=requests)
    index_of = {c["cache_id"]: i for i, c in enumerate(world.creatives)}
    user_ids = [str(int(u)) for u in users["user_id"]]
    oracle = world.simulator.expected_ctr(np.arange(len(users)))  # (users, creatives)
    arms = config.arms
    served = np.full(requests, -1)
    treated = np.zeros(requests, dtype=bool)
    clicked = np.zeros(requests, dtype=bool)
    errors: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    def body_of(i: int) -> dict:
        u = int(who[i])
        return {"user_id": user_ids[u], "product_id": products[product[i]], "placement": PLACEMENT,
                "features": payloads[u]}

    def react(i: int, decision: dict) -> bool | None:
        creative = index_of.get(decision["creative_id"])
        if creative is None:
            return None
        served[i], treated[i] = creative, decision["bucket"] == "treatment"
        clicked[i] = world.simulator.click(np.array([int(who[i])]), np.array([creative]))[0]
        return bool(clicked[i])

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        await exchange_all(client, requests, body_of, react, headers, time.monotonic() + seconds, concurrency, errors)
        server_report = (await client.get("/v1/report")).json()
    elapsed = time.perf_counter() - started

    done = served >= 0
    best = oracle.reshape(len(users), len(products), arms).max(axis=2)[who, product]
    expected = np.where(done, oracle[who, np.maximum(served, 0)], np.nan)
    stats = {name: bucket_stats(name, int(clicked[done & mask].sum()), int((done & mask).sum()))
             for name, mask in (("control", ~treated), ("treatment", treated))}
    result = {"requests": int(done.sum()), "seconds": elapsed, "requests_per_second": done.sum() / elapsed,
              "errors": errors, "buckets": {name: asdict(s) for name, s in stats.items()}}
    if stats["control"].impressions and stats["treatment"].impressions:
        ab = compare(stats["control"], stats["treatment"])
        result["lift"] = {"lift": ab.lift, "ci_low": ab.lift_ci_low, "ci_high": ab.lift_ci_high, "p_value": ab.p_value}
        last = done & treated & (np.arange(requests) >= requests - requests // 4)
        if last.any():
            result["oracle"] = {
                "oracle_ctr_last_quarter": float(best[last].mean()),
                "treatment_expected_ctr_last_quarter": float(expected[last].mean()),
                "ratio_last_quarter": float(expected[last].mean() / best[last].mean()),
                "control_expected_ctr": float(np.nanmean(expected[done & ~treated])),
                "treatment_expected_ctr": float(np.nanmean(expected[done & treated])),
            }
    result["server_report"] = server_report
    return result


def drive(url: str, world_folder: str | Path, requests: int = 20_000, seconds: float = 300.0,
          concurrency: int = 8, token: str | None = None, seed: int = 0) -> dict:
    """Send up to `requests` simulated requests (and their clicks) to the server at `url` within `seconds`."""
    url = check_loopback(url)
    if not (1 <= requests <= 10_000_000 and 0 < seconds <= 86_400 and 1 <= concurrency <= 256):
        raise InputError("requests must be in 1..10^7, seconds in (0, 86400] and concurrency in 1..256")
    world = load_world(world_folder)
    return asyncio.run(_drive(url, world, Path(world_folder), requests, seconds, concurrency, token, seed))


class LoopClient:
    """The closed loop's way to a live `studio serve` (`studio loop --serve-url`, `studio.jobs.loop.run_loop`'s
    `client`): loopback only, each round's requests bounded by `seconds`, `concurrency` at a time. studio.jobs sits
    below studio.serving, so the caller builds this and hands it to the loop."""

    def __init__(self, url: str, token: str | None = None, seconds: float = 600.0, concurrency: int = 8):
        self.url = check_loopback(url, "--serve-url")
        if not (0 < seconds <= 86_400 and 1 <= concurrency <= 256):
            raise InputError("the serving time limit must be in (0, 86400] seconds and concurrency in 1..256")
        self.token, self.seconds, self.concurrency = token, seconds, concurrency
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    user_features = staticmethod(user_features)

    def check(self) -> dict:
        """The server's health, after checking it answers and takes this client's token (a refresh needs it)."""
        try:
            health = httpx.get(self.url + "/healthz", timeout=5.0)
            refresh = httpx.post(self.url + "/v1/admin/refresh", headers=self.headers, timeout=30.0)
        except httpx.HTTPError as error:
            raise InputError(f"no studio serve answers at {self.url} ({type(error).__name__}); start it first (see "
                             "docs/loop.md, 'Against a live server')") from None
        if health.status_code != 200:
            raise InputError(f"{self.url}/healthz answered {health.status_code}: is this a studio serve?")
        if refresh.status_code == 401:
            raise InputError(f"the server at {self.url} wants its API token: set STUDIO_API_TOKEN to the token "
                             "it was started with")
        if refresh.status_code != 200:
            raise InputError(f"{self.url}/v1/admin/refresh answered {refresh.status_code}: {refresh.text[:200]}")
        return health.json()

    def refresh(self) -> None:
        """Make every worker serve the cache the loop just wrote. The worker that takes the refresh re-reads it now
        and names the state it serves; the others do at their next catch-up, within --sync-seconds. Returns once two
        such periods have passed (each worker has caught up since the write) and no worker answering /healthz in
        the last period served another state."""
        reply = httpx.post(self.url + "/v1/admin/refresh", headers=self.headers, timeout=30.0)
        if reply.status_code != 200:
            raise StudioError(f"{self.url}/v1/admin/refresh answered {reply.status_code}: {reply.text[:200]}")
        state, started, stale = reply.json()["cache_state"], time.monotonic(), None
        while True:
            health = httpx.get(self.url + "/healthz", timeout=5.0).json()  # a new connection: any worker may answer
            now = time.monotonic()
            if health["cache_state"] != state:
                stale = now
            period = float(health["sync_seconds"])
            if now - started >= 2 * period and (stale is None or now - stale >= period):
                return
            if now - started > 4 * period + 30:
                raise StudioError(f"a worker of {self.url} still serves another cache state {now - started:.0f} s "
                                  "after a refresh; is it stuck?")
            time.sleep(0.05)

    def exchange(self, n: int, body_of, react) -> tuple[list[dict | None], dict[str, int]]:
        """Requests 0..n-1 through the server (see `exchange_all`); returns the decisions and the error counts."""
        async def run():
            errors: dict[str, int] = {}
            async with httpx.AsyncClient(base_url=self.url, timeout=10.0) as client:
                decisions = await exchange_all(client, n, body_of, react, self.headers,
                                               time.monotonic() + self.seconds, self.concurrency, errors)
            return decisions, errors

        return asyncio.run(run())


async def _acknowledged_load(url: str, products: list[str], seconds: float, concurrency: int, click_rate: float,
                             token: str | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    impressions: list[str] = []
    clicks: list[str] = []
    errors: dict[str, int] = {}
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            try:
                started = time.perf_counter()
                reply = await client.get("/v1/creative", params={
                    "user_id": f"load-{n}-{i}", "product_id": products[int(rng.integers(len(products)))]})
                if reply.status_code != 200:
                    errors[str(reply.status_code)] = errors.get(str(reply.status_code), 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)
                impression = reply.json()["impression_id"]
                impressions.append(impression)  # acknowledged: the server answered after its commit
                if rng.random() < click_rate:
                    answer = await client.post("/v1/clicks", json={"impression_ids": [impression]}, headers=headers)
                    if answer.status_code == 200:
                        clicks.append(impression)
                    else:
                        errors[f"click {answer.status_code}"] = errors.get(f"click {answer.status_code}", 0) + 1
            except httpx.HTTPError as error:  # a worker killed mid-request: that request was never acknowledged
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1

    # One connection per task, so a killed worker's connections fail and the others carry on.
    clients = [httpx.AsyncClient(base_url=url, timeout=5.0, limits=httpx.Limits(max_connections=1))
               for _ in range(concurrency)]
    try:
        await asyncio.gather(*(worker(client, n) for n, client in enumerate(clients)))
    finally:
        for client in clients:
            await client.aclose()
    return {"impressions": impressions, "clicks": clicks, "errors": errors, "latencies": latencies}


def acknowledged_load(url: str, products: list[str], seconds: float = 5.0, concurrency: int = 4,
                      click_rate: float = 0.1, token: str | None = None, seed: int = 0) -> dict:
    """Bounded load that remembers every acknowledged impression id and click (for the kill-a-worker check)."""
    url = check_loopback(url)
    if not (0 < seconds <= 3600 and 1 <= concurrency <= 256):
        raise InputError("seconds must be in (0, 3600] and concurrency in 1..256")
    return asyncio.run(_acknowledged_load(url, products, seconds, concurrency, click_rate, token, seed))
