"""The event log: impressions, clicks and rewards in SQLite (embedded) or PostgreSQL (several machines).

Schema (the same SQL on both engines, through `studio.core.db.Database`)::

    impressions(seq, impression_id UNIQUE, ts, user_id, group_id, product_id, creative_id, arm, propensity, policy,
                bucket, model_version, placement)
    clicks(seq, impression_id UNIQUE -> impressions, ts)
    rewards(seq, impression_id UNIQUE -> impressions, reward)

    report_cells(shard, bucket, group_id, product_id, placement, arm, impressions, clicks, weight, click_weight,
                 weight_sq, click_weight_sq)

``report_cells`` holds running sums per (bucket, group, product, placement, arm), updated in the same transaction as
the impressions and clicks they count (weight = 1/propensity): `report_cells` answers the report without reading the
log, and always equals a full recomputation from ``impressions`` and ``clicks`` (a log written before the table
existed is summed once when it is opened). Each writer adds to rows of its own ``shard`` (its process id modulo
`SHARDS`), so two serving workers on PostgreSQL do not queue on each other's row locks; readers sum the shards. ``seq`` is each table's insertion order (SQLite's rowid, a PostgreSQL identity column). ``rewards`` is what a bandit
learns from: one row per impression, written once, either 1.0 by its click or 0.0 when its attribution window closes
(`close_windows`), whichever commits first. Every transaction that writes ``rewards`` holds its write lock, so ``seq``
order is commit order on both engines and a reader that has seen ``seq <= w`` never misses a later commit below
``w``: a worker's bandit state is the fold of ``rewards`` up to its watermark (`rewards_since`).

Every write is one transaction (a batch goes in whole or not at all); a write call returns only after its commit, so
an event the caller saw acknowledged survives a crash of the process. An impression batch and the clicks already
known for it commit together (``log_impressions(..., clicked=...)``). Lock time-outs, a full disk and a damaged file
are one :class:`EventLogError` line each, and a failed write leaves the database as it was.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from studio.core.db import Database, DatabaseError, is_postgres_url
from studio.core.errors import InputError


class EventLogError(DatabaseError):
    """The event log cannot be used right now or at all: busy past the timeout, disk full, damaged or foreign."""


IMPRESSION_COLUMNS: tuple[str, ...] = (
    "impression_id", "ts", "user_id", "group_id", "product_id", "creative_id", "arm", "propensity", "policy",
    "bucket", "model_version", "placement",
)
# Columns an impression must carry; the rest default (ts: now, the others: NULL).
REQUIRED_COLUMNS: tuple[str, ...] = ("impression_id", "user_id", "product_id", "creative_id", "arm", "propensity")
REWARD_COLUMNS: tuple[str, ...] = ("seq", "impression_id", "group_id", "product_id", "placement", "arm", "bucket",
                                   "reward")

# One row per (bucket, group, product, placement, arm): counts, and sums of 1/propensity (weight) and 1/propensity^2
# (weight_sq), over all impressions and over the clicked ones: what CTR cells and SNIPS need (`report_cells`).
CELL_KEY: tuple[str, ...] = ("bucket", "group_id", "product_id", "placement", "arm")
REPORT_COLUMNS: tuple[str, ...] = (*CELL_KEY, "impressions", "clicks", "weight", "click_weight", "weight_sq",
                                   "click_weight_sq")
_SUMS = REPORT_COLUMNS[len(CELL_KEY):]
SHARDS = 16
_STORED = ("shard", *REPORT_COLUMNS)
_UPSERT_CELLS = (f"INSERT INTO report_cells ({', '.join(_STORED)}) VALUES ({', '.join('?' * len(_STORED))}) "
                 f"ON CONFLICT (shard, {', '.join(CELL_KEY)}) DO UPDATE SET "
                 + ", ".join(f"{name} = report_cells.{name} + excluded.{name}" for name in _SUMS))
# The same sums from the log itself: the one-off fill of an older log, and what tests compare the running sums with.
FULL_REPORT_QUERY = (
    "SELECT COALESCE(i.bucket, ''), COALESCE(i.group_id, -1), i.product_id, COALESCE(i.placement, ''), i.arm, "
    "COUNT(*), COUNT(c.impression_id), SUM(1.0 / i.propensity), "
    "SUM(CASE WHEN c.impression_id IS NULL THEN 0.0 ELSE 1.0 / i.propensity END), "
    "SUM((1.0 / i.propensity) * (1.0 / i.propensity)), "
    "SUM(CASE WHEN c.impression_id IS NULL THEN 0.0 ELSE (1.0 / i.propensity) * (1.0 / i.propensity) END) "
    "FROM impressions i LEFT JOIN clicks c ON c.impression_id = i.impression_id "
    "GROUP BY COALESCE(i.bucket, ''), COALESCE(i.group_id, -1), i.product_id, COALESCE(i.placement, ''), i.arm")

SQLITE_SYNC = ("full", "normal")

_SEQ = {"sqlite": "INTEGER PRIMARY KEY", "postgresql": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS impressions (
    seq           {seq},
    impression_id TEXT NOT NULL UNIQUE,
    ts            DOUBLE PRECISION NOT NULL,
    user_id       TEXT NOT NULL,
    group_id      BIGINT,
    product_id    TEXT NOT NULL,
    creative_id   TEXT NOT NULL,
    arm           TEXT NOT NULL,
    propensity    DOUBLE PRECISION NOT NULL CHECK (propensity > 0 AND propensity <= 1),
    policy        TEXT,
    bucket        TEXT,
    model_version TEXT,
    placement     TEXT
);
CREATE TABLE IF NOT EXISTS clicks (
    seq           {seq},
    impression_id TEXT NOT NULL UNIQUE REFERENCES impressions(impression_id),
    ts            DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS rewards (
    seq           {seq},
    impression_id TEXT NOT NULL UNIQUE REFERENCES impressions(impression_id),
    reward        DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS report_cells (
    shard           BIGINT NOT NULL,
    bucket          TEXT NOT NULL,
    group_id        BIGINT NOT NULL,
    product_id      TEXT NOT NULL,
    placement       TEXT NOT NULL,
    arm             TEXT NOT NULL,
    impressions     BIGINT NOT NULL,
    clicks          BIGINT NOT NULL,
    weight          DOUBLE PRECISION NOT NULL,
    click_weight    DOUBLE PRECISION NOT NULL,
    weight_sq       DOUBLE PRECISION NOT NULL,
    click_weight_sq DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (shard, bucket, group_id, product_id, placement, arm)
);
CREATE INDEX IF NOT EXISTS impressions_bucket ON impressions(bucket);
CREATE INDEX IF NOT EXISTS impressions_ts ON impressions(ts)
"""
# Several workers may create one new PostgreSQL log at once; CREATE ... IF NOT EXISTS races there, so take a lock.
_PG_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(72616901);"
_EXPECTED = {"impressions": ["seq", *IMPRESSION_COLUMNS], "clicks": ["seq", "impression_id", "ts"],
             "rewards": ["seq", "impression_id", "reward"], "report_cells": list(_STORED)}

# SQLite limits the number of host parameters in one statement; look ids up in chunks below it.
_LOOKUP_CHUNK = 500


@dataclass
class LoggedEvents:
    """Logged impressions as aligned arrays, the input of off-policy evaluation and reward training.

    All arrays have shape (n,), in insertion order: impression_id, user_id, product_id, creative_id, arm, policy,
    bucket (str objects), group_id (int, -1 when unknown), propensity (float), reward (float 0/1: clicked), ts
    (float unix seconds).
    """

    impression_id: np.ndarray
    user_id: np.ndarray
    group_id: np.ndarray
    product_id: np.ndarray
    creative_id: np.ndarray
    arm: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    policy: np.ndarray
    bucket: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return len(self.impression_id)


class EventLog:
    """An impression/click log in one SQLite file (created on first use) or a PostgreSQL database.

    Args:
        path: a SQLite file (its folder is created if needed) or a ``postgresql://`` URL.
        timeout: seconds to wait for another writer's lock (or the server) before failing.
        sqlite_sync: "full" (default): every SQLite commit is on disk (fsync) before the call returns, so it survives
            a power cut; "normal": a commit is in the WAL file before the call returns and survives any crash or kill
            of the process, but an operating-system crash or power cut may lose the last commits (SQLite's
            ``synchronous=NORMAL``; an fsync costs milliseconds on many disks). PostgreSQL: the server decides.
        autocheckpoint: SQLite copies its write-ahead log back into the database file every ~1,000 pages, inside the
            commit that crosses the mark; a writer whose commits must stay fast passes False and leaves it to another
            connection's `checkpoint` (a serving worker's catch-up tick).
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0, sqlite_sync: str = "full",
                 autocheckpoint: bool = True) -> None:
        if sqlite_sync not in SQLITE_SYNC:
            raise InputError(f"sqlite_sync must be one of {', '.join(SQLITE_SYNC)}, got {sqlite_sync!r}")
        self.path = str(path) if is_postgres_url(path) else Path(path)
        self.timeout = timeout
        dialect = "postgresql" if is_postgres_url(path) else "sqlite"
        schema = _SCHEMA.format(seq=_SEQ[dialect])
        if dialect == "postgresql":
            schema = _PG_SCHEMA_LOCK + schema
        try:
            self._db = Database(path, timeout=timeout, schema=schema)
        except DatabaseError as error:
            raise self._error(error) from None
        self._lock_file = None
        self._check_schema()
        if dialect == "sqlite":
            self._lock_file = open(f"{self.path}.lock", "a+b")  # noqa: SIM115 -- held open for the log's life
            if sqlite_sync == "normal":
                self._read("PRAGMA synchronous=NORMAL")
            if not autocheckpoint:
                self._read("PRAGMA wal_autocheckpoint=0")
        self._shard = os.getpid() % SHARDS
        self._fill_report_cells()

    @property
    def dialect(self) -> str:
        return self._db.dialect

    def _check_schema(self) -> None:
        """A database whose tables have other columns is someone else's: refuse it before anything is written."""
        for table, columns in _EXPECTED.items():
            if self._db.dialect == "sqlite":
                found = [row[1] for row in self._read(f"PRAGMA table_info({table})")]
            else:
                found = [row[0] for row in self._read(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = ? ORDER BY ordinal_position", [table])]
            if found != columns:
                self.close()
                raise EventLogError(f"{self._db.name} is not a studio event log (its {table} table has columns "
                                    f"{found}); pass a new path or an event log written by EventLog")

    def _fill_report_cells(self) -> None:
        """A log written before ``report_cells`` existed gets its sums once, from the whole log."""
        if self._read("SELECT 1 FROM report_cells LIMIT 1") or not self._read("SELECT 1 FROM impressions LIMIT 1"):
            return

        def work(cursor):
            if self._db.dialect == "postgresql":
                cursor.execute("LOCK TABLE report_cells IN EXCLUSIVE MODE")
            if not list(cursor.execute("SELECT 1 FROM report_cells LIMIT 1")):  # another worker did it first
                cursor.execute(f"INSERT INTO report_cells ({', '.join(_STORED)}) SELECT 0, full_sums.* FROM "
                               f"({FULL_REPORT_QUERY}) AS full_sums")

        self._write(work, rewards=True)

    def _error(self, error: DatabaseError) -> EventLogError:
        """The database's one line, worded for the event log (nothing of a failed write was written)."""
        text = str(error).replace("is not a usable database", "is not a usable event log")
        if "no such column" in text or "no such table" in text or "does not exist" in text:
            text = (f"{self._db_name()} is not a studio event log ({text.split('(', 1)[-1].split(')')[0]}); pass a "
                    "new path or an event log written by EventLog")
        if "disk is full" in text:
            text += " (nothing of this batch was written)"
        result = EventLogError(text)
        result.busy = getattr(error, "busy", False)
        return result

    def _db_name(self) -> str:
        # Before the database opened: the target without a password, as Database.name words it.
        return self._db.name if hasattr(self, "_db") else re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", str(self.path))

    def _read(self, statement: str, parameters: Sequence = ()) -> list[tuple]:
        try:
            return self._db.query(statement, parameters)
        except DatabaseError as error:
            raise self._error(error) from None

    def _write(self, work, *, rewards: bool = False):
        """Run ``work(cursor)`` in one transaction and return its result; engine errors become EventLogError.

        With `rewards`, the transaction first takes the rewards table's write lock (PostgreSQL; SQLite's
        ``BEGIN IMMEDIATE`` already serialises writers), so rewards commit in ``seq`` order.
        """
        try:
            with self._writer_lock(), self._db.transaction() as cursor:
                if rewards and self._db.dialect == "postgresql":
                    cursor.execute("LOCK TABLE rewards IN EXCLUSIVE MODE")
                return work(cursor)
        except DatabaseError as error:
            raise self._error(error) from None

    @contextmanager
    def _writer_lock(self):
        """SQLite: writers of several processes queue on an flock beside the file, which wakes the next one the
        moment the lock is free; SQLite's own busy handler sleeps in steps of up to 100 ms, which is what a busy
        server's p99 would see. The OS drops the flock of a killed process."""
        if self._lock_file is None:
            yield
            return
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database file as far as readers allow, without waiting for or
        blocking writers (``wal_checkpoint(PASSIVE)``). PostgreSQL checkpoints on its own: nothing to do."""
        if self._db.dialect == "sqlite":
            self._read("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Close the connection (every acknowledged write is already durable)."""
        self._db.close()
        if getattr(self, "_lock_file", None) is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------------------------------
    def log_impressions(self, impressions: pd.DataFrame | Sequence[Mapping], clicked: Sequence[str] = (),
                        click_ts: float | Sequence[float] | None = None) -> int:
        """Append a batch of impressions, and the clicks already known on them, in one transaction.

        `impressions` is a DataFrame or a sequence of dicts with the `IMPRESSION_COLUMNS` (the
        `REQUIRED_COLUMNS` at least). Propensity is the probability with which the served arm was chosen, in
        (0, 1]. `clicked` names impressions of this batch that were clicked (``click_ts``: one finite time or one
        per click; default now); each also gets its reward 1.0. A bad batch (missing column, bad propensity or
        timestamp, an impression_id already logged, a click outside the batch) raises InputError and writes
        nothing. Returns the number of impressions written, once committed.
        """
        if isinstance(impressions, pd.DataFrame):
            frame = impressions
            if frame.empty:
                if len(clicked):
                    raise InputError("clicks were given with an empty impression batch; log each click with its "
                                     "impression")
                return 0
            rows = self._impression_rows(frame)
        else:
            # A list of dicts (a server's few impressions per commit) is checked in plain Python: pandas would cost
            # milliseconds per batch.
            rows = self._dict_rows(list(impressions)) if len(impressions) else []
            if not rows:
                if len(clicked):
                    raise InputError("clicks were given with an empty impression batch; log each click with its "
                                     "impression")
                return 0
        clicks = self._click_rows(clicked, click_ts)
        outside = set(click for click, _ in clicks) - set(row[0] for row in rows)
        if outside:
            raise InputError(f"{len(outside)} click(s) are not on impressions of this batch (e.g. {sorted(outside)[0]!r});"
                             " use log_clicks for clicks on impressions logged earlier")

        cells = [(self._shard, *cell) for cell in _cell_sums(rows, {click for click, _ in clicks})]

        def work(cursor):
            cursor.executemany(f"INSERT INTO impressions ({', '.join(IMPRESSION_COLUMNS)}) "
                               f"VALUES ({', '.join('?' * len(IMPRESSION_COLUMNS))})", rows)
            cursor.executemany(_UPSERT_CELLS, cells)
            if clicks:
                cursor.executemany("INSERT INTO clicks (impression_id, ts) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                   clicks)
                cursor.executemany("INSERT INTO rewards (impression_id, reward) VALUES (?, 1.0) "
                                   "ON CONFLICT DO NOTHING", [(click,) for click, _ in clicks])

        try:
            self._write(work, rewards=bool(clicks))
        except Exception as error:
            if not Database.is_conflict(error):
                raise
            raise InputError(f"impression batch rejected, nothing written ({' '.join(str(error).split())[:200]}); "
                             "impression ids must be new and propensities in (0, 1]") from None
        return len(rows)

    @staticmethod
    def _impression_rows(frame: pd.DataFrame) -> list[tuple]:
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(f"impressions lack columns {missing}; each needs {', '.join(REQUIRED_COLUMNS)}")
        unknown = [c for c in frame.columns if c not in IMPRESSION_COLUMNS]
        if unknown:
            raise InputError(f"impressions have unknown columns {unknown}; expected {', '.join(IMPRESSION_COLUMNS)}")
        if frame[list(REQUIRED_COLUMNS)].isna().any().any():
            raise InputError(f"impressions have missing values in {', '.join(REQUIRED_COLUMNS)}; fill every one")
        propensity = pd.to_numeric(frame["propensity"], errors="coerce").to_numpy(dtype=np.float64)
        if not np.all((propensity > 0) & (propensity <= 1)):
            raise InputError("every propensity must be a probability in (0, 1] (the chance the arm was chosen)")
        if frame["impression_id"].duplicated().any():
            raise InputError("impression ids repeat within the batch; each impression needs a unique id")
        now = time.time()
        columns = []
        for name in IMPRESSION_COLUMNS:
            if name == "propensity":
                columns.append(propensity.tolist())
            elif name == "ts":
                ts = frame["ts"] if "ts" in frame.columns else pd.Series(now, index=frame.index)
                columns.append(_timestamps(pd.to_numeric(ts, errors="coerce").fillna(now), "impression"))
            elif name in frame.columns:
                columns.append(_sql_values(frame[name], int if name == "group_id" else str))
            else:
                columns.append([None] * len(frame))
        return list(zip(*columns))

    @staticmethod
    def _dict_rows(impressions: list[Mapping]) -> list[tuple]:
        """The same checks as `_impression_rows`, for a list of dicts."""
        now = time.time()
        rows, seen = [], set()
        for impression in impressions:
            missing = [c for c in REQUIRED_COLUMNS if impression.get(c) is None]
            if missing:
                raise InputError(f"impressions lack columns {missing}; each needs {', '.join(REQUIRED_COLUMNS)}")
            unknown = [c for c in impression if c not in IMPRESSION_COLUMNS]
            if unknown:
                raise InputError(f"impressions have unknown columns {unknown}; expected "
                                 f"{', '.join(IMPRESSION_COLUMNS)}")
            try:
                propensity = float(impression["propensity"])
            except (TypeError, ValueError):
                propensity = math.nan
            if not 0.0 < propensity <= 1.0:
                raise InputError("every propensity must be a probability in (0, 1] (the chance the arm was chosen)")
            ts = impression.get("ts")
            ts = now if ts is None else _timestamps([ts], "impression")[0]
            group = impression.get("group_id")
            row = [str(impression["impression_id"]), ts]
            for name in IMPRESSION_COLUMNS[2:]:
                value = impression.get(name)
                row.append(propensity if name == "propensity" else None if value is None else
                           int(group) if name == "group_id" else str(value))
            if row[0] in seen:
                raise InputError("impression ids repeat within the batch; each impression needs a unique id")
            seen.add(row[0])
            rows.append(tuple(row))
        return rows

    def log_clicks(self, impression_ids: Iterable[str], ts: float | Sequence[float] | None = None) -> int:
        """Record clicks on logged impressions in one transaction; returns how many were new.

        A click on an impression that already has one is ignored (clicks are idempotent). A click on an impression
        that was never logged raises InputError and the whole batch is rejected. A new click also writes its
        impression's reward 1.0, unless the impression's attribution window was closed first (its reward stays 0.0).
        """
        clicks = self._click_rows(impression_ids, ts)
        if not clicks:
            return 0
        first = list(dict.fromkeys(click for click, _ in clicks))

        def work(cursor):
            unknown = self._missing(cursor, "impressions", first)
            if unknown:
                raise InputError(f"{len(unknown)} click(s) refer to impressions never logged (e.g. {unknown[0]!r}); "
                                 "log the impression before its click")
            new = set(self._missing(cursor, "clicks", first))
            stamps: dict[str, float] = {}
            for click, stamp in clicks:
                stamps.setdefault(click, stamp)  # a click repeated in one batch counts once, at its first time
            rows = [(click, stamps[click]) for click in first if click in new]
            cursor.executemany("INSERT INTO clicks (impression_id, ts) VALUES (?, ?) ON CONFLICT DO NOTHING", rows)
            cursor.executemany("INSERT INTO rewards (impression_id, reward) VALUES (?, 1.0) ON CONFLICT DO NOTHING",
                               [(click,) for click, _ in rows])
            # Click writers hold the rewards lock (see _write), so `new` is exact and each click is summed once.
            cursor.executemany(_UPSERT_CELLS, [(self._shard, *cell) for cell in
                                               self._clicked_cells(cursor, [click for click, _ in rows])])
            return len(rows)

        return self._write(work, rewards=True)

    def close_windows(self, before: float, since: float | None = None) -> int:
        """Give reward 0.0 to every impression logged at ``since < ts <= before`` that has no reward yet.

        Called with ``before = now - attribution window``: an impression nobody clicked within its window counts as
        not clicked. Returns the number of rewards written. Idempotent, and safe to run on several workers at once.
        """
        parameters = _timestamps([before] if since is None else [before, since], "window")
        lower = "" if since is None else " AND i.ts > ?"
        # Find candidates outside the write transaction (a long scan must not hold the lock serving commits wait
        # for), then re-check them inside it: a click that committed in between keeps its 1.0.
        candidates = [row[0] for row in self._read(
            "SELECT i.impression_id FROM impressions i WHERE i.ts <= ?" + lower +
            " AND NOT EXISTS (SELECT 1 FROM rewards r WHERE r.impression_id = i.impression_id) ORDER BY i.seq",
            parameters)]
        if not candidates:
            return 0

        def work(cursor):
            missing = self._missing(cursor, "rewards", candidates)
            cursor.executemany("INSERT INTO rewards (impression_id, reward) VALUES (?, 0.0) ON CONFLICT DO NOTHING",
                               [(impression,) for impression in missing])
            return len(missing)

        return self._write(work, rewards=True)

    @staticmethod
    def _click_rows(impression_ids: Iterable[str], ts: float | Sequence[float] | None) -> list[tuple[str, float]]:
        ids = [str(i) for i in impression_ids]
        if ts is None:
            stamps = [time.time()] * len(ids)
        else:
            try:
                stamps = [float(ts)] * len(ids) if np.isscalar(ts) else [float(t) for t in ts]
            except (TypeError, ValueError) as error:
                raise InputError(f"click timestamps must be numbers (unix seconds), got {ts!r}") from error
        if len(stamps) != len(ids):
            raise InputError(f"got {len(ids)} click ids and {len(stamps)} timestamps; pass one timestamp per click")
        return list(zip(ids, _timestamps(stamps, "click")))

    @staticmethod
    def _clicked_cells(cursor, ids: list[str]) -> list[tuple]:
        """`report_cells` increments for new clicks on impressions logged earlier."""
        sums: dict[tuple, list] = {}
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start: start + _LOOKUP_CHUNK]
            for bucket, group, product, placement, arm, propensity in cursor.execute(
                    "SELECT bucket, group_id, product_id, placement, arm, propensity FROM impressions "
                    f"WHERE impression_id IN ({', '.join('?' * len(chunk))})", chunk):
                key = (bucket or "", -1 if group is None else int(group), product, placement or "", arm)
                entry = sums.setdefault(key, [0, 0, 0.0, 0.0, 0.0, 0.0])
                weight = 1.0 / propensity
                entry[1] += 1
                entry[3] += weight
                entry[5] += weight * weight
        return [(*key, *sums[key]) for key in sorted(sums)]  # one lock order for every writer (PostgreSQL rows)

    @staticmethod
    def _missing(cursor, table: str, ids: list[str]) -> list[str]:
        """The ids (unique, in order) that `table` has no row for."""
        known: set[str] = set()
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start: start + _LOOKUP_CHUNK]
            query = f"SELECT impression_id FROM {table} WHERE impression_id IN ({', '.join('?' * len(chunk))})"
            known.update(row[0] for row in cursor.execute(query, chunk))
        return [i for i in ids if i not in known]

    # -- reading ----------------------------------------------------------------------------------------------------
    def read(self, bucket: str | None = None, policy: str | None = None) -> pd.DataFrame:
        """Impressions joined with their clicks, in insertion order.

        Columns: the `IMPRESSION_COLUMNS`, ``clicked`` (0/1 int) and ``click_ts`` (NaN when not clicked). Filter by
        A/B `bucket` and/or `policy` name.
        """
        where, parameters = [], []
        for name, value in (("bucket", bucket), ("policy", policy)):
            if value is not None:
                where.append(f"i.{name} = ?")
                parameters.append(value)
        query = (f"SELECT {', '.join('i.' + c for c in IMPRESSION_COLUMNS)}, "
                 "CASE WHEN c.impression_id IS NULL THEN 0 ELSE 1 END AS clicked, c.ts AS click_ts "
                 "FROM impressions i LEFT JOIN clicks c ON c.impression_id = i.impression_id"
                 + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY i.seq")
        frame = pd.DataFrame(self._read(query, parameters), columns=[*IMPRESSION_COLUMNS, "clicked", "click_ts"])
        for name in ("ts", "propensity", "click_ts"):
            frame[name] = frame[name].astype(np.float64)
        frame["clicked"] = frame["clicked"].astype(np.int64)
        return frame

    def arrays(self, bucket: str | None = None, policy: str | None = None) -> LoggedEvents:
        """The same rows as `read`, as aligned numpy arrays (see `LoggedEvents`)."""
        frame = self.read(bucket=bucket, policy=policy)
        text = lambda name: frame[name].astype(object).to_numpy()  # noqa: E731 -- a local shorthand
        return LoggedEvents(
            impression_id=text("impression_id"), user_id=text("user_id"),
            group_id=frame["group_id"].fillna(-1).astype(np.int64).to_numpy(),
            product_id=text("product_id"), creative_id=text("creative_id"), arm=text("arm"),
            propensity=frame["propensity"].to_numpy(dtype=np.float64),
            reward=frame["clicked"].to_numpy(dtype=np.float64),
            policy=text("policy"), bucket=text("bucket"), ts=frame["ts"].to_numpy(dtype=np.float64),
        )

    def rewards_since(self, seq: int = 0, limit: int | None = None) -> pd.DataFrame:
        """Rewards with ``seq > seq`` in ``seq`` order, joined with their impressions (`REWARD_COLUMNS`).

        A worker keeps the largest ``seq`` it has learned as its watermark and asks for what came after it.
        """
        query = ("SELECT r.seq, r.impression_id, i.group_id, i.product_id, i.placement, i.arm, i.bucket, r.reward "
                 "FROM rewards r JOIN impressions i ON i.impression_id = r.impression_id WHERE r.seq > ? "
                 "ORDER BY r.seq" + (f" LIMIT {int(limit)}" if limit else ""))
        frame = pd.DataFrame(self._read(query, [int(seq)]), columns=list(REWARD_COLUMNS))
        frame["seq"] = frame["seq"].astype(np.int64)
        frame["group_id"] = frame["group_id"].fillna(-1).astype(np.int64)
        frame["reward"] = frame["reward"].astype(np.float64)
        return frame

    def counts(self) -> dict[str, int]:
        """Number of logged impressions and clicks: {"impressions": n, "clicks": m}."""
        (impressions,), = self._read("SELECT COUNT(*) FROM impressions")
        (clicks,), = self._read("SELECT COUNT(*) FROM clicks")
        return {"impressions": int(impressions), "clicks": int(clicks)}

    def report_cells(self) -> pd.DataFrame:
        """The running sums per (bucket, group, product, placement, arm) (`REPORT_COLUMNS`; a missing bucket or
        placement reads "", a missing group -1): one row per cell, however long the log."""
        keys = ", ".join(CELL_KEY)
        sums = ", ".join(f"CAST(SUM({name}) AS {'BIGINT' if name in ('impressions', 'clicks') else 'DOUBLE PRECISION'})"
                         for name in _SUMS)
        frame = pd.DataFrame(self._read(f"SELECT {keys}, {sums} FROM report_cells GROUP BY {keys} ORDER BY {keys}"),
                             columns=list(REPORT_COLUMNS))
        for name in ("group_id", "impressions", "clicks"):
            frame[name] = frame[name].astype(np.int64)
        for name in ("weight", "click_weight", "weight_sq", "click_weight_sq"):
            frame[name] = frame[name].astype(np.float64)
        return frame

    def summary(self) -> list[tuple]:
        """``(bucket, group_id, impressions, clicks)`` per bucket and audience group, for reports."""
        return self._read(
            "SELECT i.bucket, i.group_id, COUNT(*), COUNT(c.impression_id) FROM impressions i "
            "LEFT JOIN clicks c ON c.impression_id = i.impression_id GROUP BY i.bucket, i.group_id "
            "ORDER BY i.bucket, i.group_id")


def _cell_sums(rows: list[tuple], clicked: set[str]) -> list[tuple]:
    """`report_cells` increments for a batch of impression rows (`IMPRESSION_COLUMNS` order) and its clicks."""
    position = {name: i for i, name in enumerate(IMPRESSION_COLUMNS)}
    key_at = [position[name] for name in CELL_KEY]
    at_id, at_propensity = position["impression_id"], position["propensity"]
    sums: dict[tuple, list] = {}
    for row in rows:
        bucket, group, product, placement, arm = (row[i] for i in key_at)
        key = (bucket or "", -1 if group is None else int(group), product, placement or "", arm)
        entry = sums.setdefault(key, [0, 0, 0.0, 0.0, 0.0, 0.0])
        weight = 1.0 / row[at_propensity]
        entry[0] += 1
        entry[2] += weight
        entry[4] += weight * weight
        if row[at_id] in clicked:
            entry[1] += 1
            entry[3] += weight
            entry[5] += weight * weight
    # Sorted: concurrent PostgreSQL writers lock the rows they update in one order, so they never deadlock.
    return [(*key, *sums[key]) for key in sorted(sums)]


def _timestamps(values: Iterable[float], what: str) -> list[float]:
    """Finite unix seconds, or one clear error (a NaN or infinite time would be stored and break every window)."""
    stamps = np.asarray(list(values), dtype=np.float64)
    if not np.all(np.isfinite(stamps)):
        raise InputError(f"every {what} timestamp must be a finite number of unix seconds; got "
                         f"{stamps[~np.isfinite(stamps)][0]!r}")
    return stamps.tolist()


def _sql_values(column: pd.Series, kind: type) -> list:
    """A column as a list of Python ints/strs for the database, with None for missing values (vectorised)."""
    missing = column.isna().to_numpy()
    values = column.astype(np.int64 if kind is int and not missing.any() else object)
    values = values.astype(str).tolist() if kind is str else values.tolist()
    if missing.any():
        values = [None if gone else kind(value) for value, gone in zip(values, missing)]
    return values
