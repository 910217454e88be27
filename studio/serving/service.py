"""One serving worker: the decision path, clicks, the report, and catching up from the shared event log.

A worker's impressions are committed on a thread of their own (`Store`): requests that arrive while a commit is
under way are committed together in the next transaction (group commit), and each request waits for its own commit
before its response goes out, so an acknowledged impression is durable. Every other database call (catching up,
clicks, the report) runs on a second thread with its own connection, so a decision never waits behind them.
Deciding and learning happen on the event loop, so the bandit is never read and written at once.

A worker's bandit state is a fold of the log's ``rewards`` table up to its watermark (impressions and clicks per
creative and group are sums) plus each creative's backdrop features, measured from its cached PNG: it rebuilds it on
start (from a snapshot's watermark when there is one) and catches up every ``sync_seconds``, so every
worker on every machine converges on the same state and any of them can die.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import math
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pandas as pd

from studio.core.atomic import staged_folder, write_file
from studio.core.db import DatabaseError
from studio.core.errors import InputError, StudioError
from studio.jobs.cache import CreativeCache, UnknownCreativeError, check_creative_id
from studio.learning.abtest import bucket_stats, compare
from studio.learning.audience import AudienceClustering
from studio.imaging.descriptors import backdrop_features
from studio.learning.eventlog import EventLog
from studio.learning.hybrid import HybridLinUCB
from studio.learning.offpolicy import snips_from_sums
from studio.learning.policy import COLD_START_GROUP, CONTROL, TREATMENT, ServingPolicy
from studio.serving.config import ServeConfig
from studio.serving.schemas import (BucketGroupCTR, ClickResponse, DecisionRequest, DecisionResponse, Health,
                                    LiftReport, OffPolicyReport, Report)

MAX_FEATURE_CACHE = 10_000
SLACK, DEEP_SLACK, DEEP_SCAN_SECONDS = 5.0, 600.0, 300.0  # seconds; see Service.refresh


class NotFoundError(InputError):
    """Something the request names does not exist (a product, a creative, an impression): HTTP 404."""


class AuthError(StudioError):
    """A write endpoint without the configured API token: HTTP 401."""


class Store:
    """The worker's event log and creative cache on two threads, each with its own connection (see the module
    docstring): one only commits impressions, so a decision never waits behind a catch-up, a click or a report."""

    def __init__(self, config: ServeConfig) -> None:
        self._impressions: queue.SimpleQueue = queue.SimpleQueue()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        opened: list[Future] = [Future(), Future()]
        self._threads = [
            threading.Thread(target=self._commit_impressions, args=(config, opened[0]), name="studio-impressions",
                             daemon=True),
            threading.Thread(target=self._run_calls, args=(config, opened[1]), name="studio-store", daemon=True)]
        for thread in self._threads:
            thread.start()
        try:
            for future in opened:
                future.result()  # the logs and the cache open (or fail) before the worker serves
        except BaseException:
            self.close()
            raise

    def call(self, work) -> Future:
        """Run ``work(log, cache)`` on the store thread."""
        future: Future = Future()
        self._calls.put((work, future))
        return future

    def log_impression(self, row: dict) -> Future:
        """Commit one impression (with others waiting at the same time); the future is done after the commit."""
        future: Future = Future()
        self._impressions.put((row, future))
        return future

    def close(self) -> None:
        for waiting in (self._impressions, self._calls):
            waiting.put(None)
        for thread in self._threads:
            thread.join(30)

    @staticmethod
    def _pending(waiting: queue.SimpleQueue) -> tuple[list, bool]:
        """Everything queued (waiting for the first), without the ones cancelled while they waited (their client
        or the server went away: never acknowledged); and whether a stop came."""
        items = [waiting.get()]
        while True:
            try:
                items.append(waiting.get_nowait())
            except queue.Empty:
                break
        stop = None in items
        # The others can no longer be cancelled, so setting their results cannot fail.
        return [item for item in items if item is not None and item[1].set_running_or_notify_cancel()], stop

    def _commit_impressions(self, config: ServeConfig, opened: Future) -> None:
        try:  # the catch-up tick checkpoints SQLite's write-ahead log, so no impression commit pays for it
            log = EventLog(config.db, sqlite_sync=config.sqlite_sync, autocheckpoint=False)
        except BaseException as error:
            opened.set_exception(error)
            return
        opened.set_result(None)
        try:
            while True:
                items, stop = self._pending(self._impressions)  # what queued during the last commit goes together
                if items:
                    try:
                        log.log_impressions([row for row, _ in items])
                        for _, future in items:
                            future.set_result(None)
                    except BaseException as error:
                        for _, future in items:
                            future.set_exception(error)
                if stop:
                    return
        finally:
            log.close()

    def _run_calls(self, config: ServeConfig, opened: Future) -> None:
        log = None
        try:
            log = EventLog(config.db, sqlite_sync=config.sqlite_sync)
            cache = CreativeCache(config.cache, config.cache_blobs)
        except BaseException as error:
            if log is not None:
                log.close()
            opened.set_exception(error)
            return
        opened.set_result(None)
        try:
            while True:
                items, stop = self._pending(self._calls)
                for work, future in items:
                    try:
                        future.set_result(work(log, cache))
                    except BaseException as error:
                        future.set_exception(error)
                if stop:
                    return
        finally:
            log.close()
            cache.close()


class Service:
    """A serving worker (see the module docstring). Create it, ``await start()``, serve, ``await stop()``."""

    def __init__(self, config: ServeConfig, metrics=None) -> None:
        config.check()
        self.config = config
        self.metrics = metrics
        self.clustering = AudienceClustering.from_pretrained(config.audience) if config.audience else None
        self.policy = new_policy(config, self.clustering)
        self.watermark = 0
        self.store = Store(config)
        self._groups: OrderedDict[str, int] = OrderedDict()
        self._closed_before: float | None = None
        self._deep_scan = time.monotonic()
        self._task: asyncio.Task | None = None
        self._last_snapshot = time.monotonic()
        self.cache_state = ""  # `_served_digest` as of the last catch-up (`refresh`)

    # -- life cycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the snapshot if there is one, catch up from the log, and keep catching up in the background."""
        if self.config.snapshot and (Path(self.config.snapshot) / "state.json").is_file():
            self._load_snapshot(Path(self.config.snapshot))
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._background())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.to_thread(self.store.close)

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_seconds)
            try:
                await self.refresh()
                if self.config.snapshot and time.monotonic() - self._last_snapshot >= self.config.snapshot_seconds:
                    await self.snapshot()
            except StudioError:
                pass  # the database is away for a moment: the next tick catches up from the same watermark

    async def _run(self, work):
        return await asyncio.wrap_future(self.store.call(work))

    # -- keeping up ----------------------------------------------------------------------------------------------
    async def refresh(self) -> int:
        """One catch-up step: close attribution windows, learn new rewards, follow the cache's creatives."""
        keys, described = self.policy.keys, self.policy.described()
        before = time.time() - self.config.attribution_window
        # Scan only impressions since the last close, minus a slack for commits that landed after their timestamp;
        # every few minutes a deeper scan catches any commit slower than that.
        deep = time.monotonic() - self._deep_scan > DEEP_SCAN_SECONDS
        since = None if self._closed_before is None else self._closed_before - (DEEP_SLACK if deep else SLACK)
        if deep:
            self._deep_scan = time.monotonic()

        def work(log: EventLog, cache: CreativeCache):
            log.close_windows(before, since)
            log.checkpoint()
            rewards = log.rewards_since(self.watermark)
            arms = {key: [c.creative_id for c in cache.creatives(key[0], placement=key[1])] for key in keys}
            seen = [*rewards["arm"], *(arm for ids in arms.values() for arm in ids)]
            return rewards, arms, describe_creatives(cache, [arm for arm in seen if arm not in described])

        started = time.perf_counter()
        rewards, arms, features = await self._run(work)
        read = time.perf_counter()
        self._closed_before = before
        # Learn first (arms served elsewhere join), then follow the cache (retired arms leave, new ones join).
        learned = self.policy.apply_rewards(rewards, key_of=lambda product, placement: (product, placement))
        self.policy.describe(features)
        if len(rewards):
            self.watermark = int(rewards["seq"].iloc[-1])
        for key, ids in arms.items():
            self.policy.sync_arms(key, ids)  # none left: the next request reads the cache again and gets a 404
        self.cache_state = self._served_digest()  # as of this catch-up: /healthz (the benchmarks' baseline) reads it
        if self.metrics is not None:
            self.metrics.refresh.labels(part="database").observe(read - started)
            self.metrics.refresh.labels(part="learning").observe(time.perf_counter() - read)
            self.metrics.watermark.set(self.watermark)
            self.metrics.learned.inc(learned)
        return learned

    async def snapshot(self) -> Path:
        """Write the bandit, every key's creatives and the watermark into the snapshot folder, replaced whole."""
        folder = Path(self.config.snapshot)
        # Copied now, on the event loop, so the files hold one consistent state.
        state = {"watermark": self.watermark, "keys": [[list(key), list(arms)]
                                                       for key, arms in self.policy.candidates.items()]}
        model = copy.deepcopy(self.policy.model)

        def write():
            with staged_folder(folder) as staging:
                if getattr(model, "arms_", None):
                    model.save_pretrained(staging / "bandit")
                write_file(staging / "state.json", lambda path: path.write_text(json.dumps(state)))

        await asyncio.to_thread(write)
        self._last_snapshot = time.monotonic()
        return folder

    def _load_snapshot(self, folder: Path) -> None:
        """Start from a snapshot; one written by an older studio (no bandit/ folder) is ignored: the log rebuilds."""
        state = json.loads((folder / "state.json").read_text())
        if not (folder / "bandit").is_dir():
            return
        model = HybridLinUCB.from_pretrained(folder / "bandit")
        if model.n_contexts != self.policy.model.n_contexts:
            return  # another audience clustering: the log rebuilds this one's
        model.set_params(**{name: getattr(self.policy.model, name) for name in ("alpha", "l2", "arm_l2", "epsilon",
                                                                               "softmax_temperature", "seed")})
        model._rng = np.random.default_rng(self.config.seed)
        self.policy.model = model
        self.policy.candidates = {tuple(key): tuple(arms) for key, arms in state["keys"]}
        self.watermark = int(state["watermark"])

    # -- the request path ----------------------------------------------------------------------------------------
    async def decide(self, request: DecisionRequest) -> DecisionResponse:
        """Pick the creative for one request and log the impression before answering."""
        # 1. Check inputs (types and sizes were checked by the request model).
        key = (request.product_id, request.placement)

        # 2. Group: the audience clustering's group of the user's features; no features (or no clustering): cold start.
        group = self._group(request.features)

        # 3. Arms: the product's cached creatives for this placement (read once, then followed by `refresh`).
        if not self.policy.arms(key):
            await self._load_arms(key)

        # 4. Bucket: a stable hash of the user id.
        bucket = self.policy.bucket(request.user_id)

        # 5. Decide: treatment asks the key's LinUCB, control the control policy; the propensity is decision-time.
        decision = self.policy.decide_one(key, group, bucket)

        # 6. Log the impression and wait for its commit, so an acknowledged impression is never lost.
        impression_id = uuid.uuid4().hex
        model_version = f"linucb@{self.watermark}"
        await asyncio.wrap_future(self.store.log_impression({
            "impression_id": impression_id, "ts": time.time(), "user_id": request.user_id, "group_id": group,
            "product_id": request.product_id, "creative_id": decision.arm, "arm": decision.arm,
            "propensity": decision.propensity, "policy": decision.policy, "bucket": bucket,
            "model_version": model_version, "placement": request.placement,
        }))

        # 7. Answer.
        if self.metrics is not None:
            self.metrics.decisions.labels(bucket=bucket).inc()
        return DecisionResponse(
            impression_id=impression_id, creative_id=decision.arm, creative_url=f"/v1/creatives/{decision.arm}.png",
            product_id=request.product_id, placement=request.placement, arm=decision.arm, group_id=group,
            cold_start=group == COLD_START_GROUP, bucket=bucket, propensity=decision.propensity,
            policy=decision.policy, model_version=model_version)

    def _group(self, features: dict | None) -> int:
        if not features or self.clustering is None:
            return COLD_START_GROUP
        cache_key = json.dumps(features, sort_keys=True)
        group = self._groups.get(cache_key)
        if group is None:
            try:
                group = int(self.clustering.predict(pd.DataFrame([features]))[0])
            except (KeyError, TypeError, ValueError) as error:
                raise InputError(f"user features do not fit the audience clustering ({error})") from None
            self._groups[cache_key] = group
            if len(self._groups) > MAX_FEATURE_CACHE:
                self._groups.popitem(last=False)
        return group

    async def _load_arms(self, key: tuple[str, str]) -> None:
        product, placement = key
        described = self.policy.described()

        def work(log, cache: CreativeCache):
            accepted = cache.creatives(product, placement=placement)
            known = bool(cache.creatives(product, status=None)) if not accepted else True
            ids = [c.creative_id for c in accepted]
            return ids, known, describe_creatives(cache, [i for i in ids if i not in described])

        ids, known, features = await self._run(work)
        if not known:
            raise NotFoundError(f"unknown product {product!r}: the creative cache has no creatives for it")
        if not ids:
            raise NotFoundError(f"product {product!r} has no accepted creatives for placement {placement!r}")
        self.policy.sync_arms(key, ids, features)

    async def click(self, impression_ids: list[str]) -> ClickResponse:
        """Record clicks (idempotent: a repeated click is counted once); unknown impressions refuse the batch."""
        def work(log: EventLog, cache):
            try:
                return log.log_clicks(impression_ids)
            except InputError as error:
                if "never logged" in str(error):
                    raise NotFoundError(str(error)) from None
                raise

        new = await self._run(work)
        if self.metrics is not None:
            self.metrics.clicks.inc(new)
        return ClickResponse(received=len(impression_ids), new=new)

    async def creative_png(self, creative_id: str) -> bytes:
        """The PNG of a cached creative; the id is checked to be a content hash before the cache builds any path."""
        check_creative_id(creative_id)

        def work(log, cache: CreativeCache):
            try:
                return cache.read_png(creative_id)
            except UnknownCreativeError:
                raise NotFoundError(f"no creative {creative_id} in the cache") from None  # no server paths out

        return await self._run(work)

    async def report(self) -> Report:
        """CTR per bucket and group (Wilson), lift of treatment over control, and OPE of the treatment policy.

        Everything comes from the log's running sums per (bucket, group, product, placement, arm) (`report_cells`):
        the cost is the number of cells, not the length of the log.
        """
        sums = await self._run(lambda log, cache: log.report_cells())
        cells, totals = [], {}
        by_group = sums.groupby(["bucket", "group_id"], sort=True)[["impressions", "clicks"]].sum()
        for (bucket, group), (impressions, clicks) in by_group.iterrows():
            stats = bucket_stats(str(bucket), int(clicks), int(impressions))
            cells.append(BucketGroupCTR(bucket=str(bucket), group_id=int(group), impressions=stats.impressions,
                                        clicks=stats.clicks, ctr=stats.ctr, ci_low=stats.ci_low,
                                        ci_high=stats.ci_high))
            total = totals.setdefault(str(bucket), [0, 0])
            total[0] += int(impressions)
            total[1] += int(clicks)
        lift = None
        if all(totals.get(b, [0, 0])[1] > 0 for b in (CONTROL, TREATMENT)):  # a lift needs clicks in both
            result = compare(bucket_stats(CONTROL, totals[CONTROL][1], totals[CONTROL][0]),
                             bucket_stats(TREATMENT, totals[TREATMENT][1], totals[TREATMENT][0]))
            lift = LiftReport(lift=_finite(result.lift), ci_low=_finite(result.lift_ci_low),
                              ci_high=_finite(result.lift_ci_high), p_value=_finite(result.p_value))
        return Report(cells=cells, lift=lift, off_policy=self._off_policy(sums[sums["bucket"] == CONTROL]),
                      watermark=self.watermark)

    def _off_policy(self, control: pd.DataFrame) -> OffPolicyReport | None:
        """SNIPS of today's treatment policy from the control bucket's sums (arms it no longer has weigh 0).

        The treatment policy's probability of an arm depends only on (product, placement, group), so per-cell sums
        of 1/propensity give the same estimate as the events one by one (`snips_from_sums`).
        """
        if control.empty:
            return None
        target = np.zeros(len(control))
        for (product, placement), part in control.groupby(["product_id", "placement"], sort=False):
            key = (product, placement)
            arms = self.policy.arms(key)
            if not arms:
                continue
            probabilities = self.policy.probabilities(key, part["group_id"].to_numpy())
            column = {arm: i for i, arm in enumerate(arms)}
            index = part["arm"].map(column)
            known = index.notna().to_numpy()
            rows = control.index.get_indexer(part.index)
            target[rows[known]] = probabilities[np.flatnonzero(known), index[known].astype(int).to_numpy()]
        if target @ control["weight"].to_numpy() <= 0:
            return None
        estimate = snips_from_sums(target, control["weight"], control["click_weight"], control["weight_sq"],
                                   control["click_weight_sq"], n=int(control["impressions"].sum()))
        return OffPolicyReport(method="snips", estimate=estimate.estimate, ci_low=estimate.ci_low,
                               ci_high=estimate.ci_high, n=estimate.n,
                               effective_sample_size=estimate.effective_sample_size)

    def _served_digest(self) -> str:
        """A digest of the creatives this worker serves per key: equal on every worker that follows the same cache."""
        served = sorted((json.dumps(key, default=str), sorted(map(str, arms)))
                        for key in self.policy.keys if (arms := self.policy.arms(key)))
        return hashlib.sha256(json.dumps(served).encode()).hexdigest()[:16]

    def health(self) -> Health:
        return Health(status="ok", pid=os.getpid(), watermark=self.watermark, cache_state=self.cache_state,
                      sync_seconds=self.config.sync_seconds,
                      keys=len(self.policy.keys), arms=sum(len(self.policy.arms(k)) for k in self.policy.keys))


def check_token(config: ServeConfig, supplied: str | None) -> None:
    """Write endpoints need the configured token (compared in constant time); no token configured: open."""
    if config.token is None:
        return
    if supplied is None or not hmac.compare_digest(supplied.encode(), config.token.encode()):
        raise AuthError("this endpoint needs the API token: send 'Authorization: Bearer <token>'")


def describe_creatives(cache: CreativeCache, creative_ids) -> dict[str, np.ndarray]:
    """Backdrop features of cached creatives, measured from their PNGs; a creative whose PNG is gone stays
    undescribed (its own clicks still count)."""
    features = {}
    for creative_id in dict.fromkeys(creative_ids):
        try:
            features[creative_id] = backdrop_features(cache.read_png(creative_id))
        except (UnknownCreativeError, InputError, OSError):
            continue
    return features


def new_policy(config: ServeConfig, clustering: AudienceClustering | None) -> ServingPolicy:
    return ServingPolicy(clustering.n_groups_ if clustering is not None else 0, alpha=config.alpha, l2=config.l2,
                         arm_l2=config.arm_l2, epsilon=config.epsilon, salt=config.salt,
                         treatment_share=config.treatment_share, control=config.control, seed=config.seed)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def rebuild_policy(config: ServeConfig, log: EventLog, cache: CreativeCache, upto: int | None = None) -> ServingPolicy:
    """A worker's policy rebuilt from scratch: every reward in the log (up to ``seq`` `upto`), then the cache's
    current creatives, every creative described from its PNG."""
    clustering = AudienceClustering.from_pretrained(config.audience) if config.audience else None
    policy = new_policy(config, clustering)
    rewards = log.rewards_since(0)
    if upto is not None:
        rewards = rewards[rewards["seq"] <= upto]
    policy.apply_rewards(rewards, key_of=lambda product, placement: (product, placement))
    for key in policy.keys:
        policy.sync_arms(key, [c.creative_id for c in cache.creatives(key[0], placement=key[1])])
    policy.describe(describe_creatives(cache, policy.undescribed(policy.known_arms())))
    return policy


__all__ = ["AuthError", "DatabaseError", "NotFoundError", "Service", "Store", "check_token", "rebuild_policy"]
