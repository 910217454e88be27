"""The event log: impressions and clicks in SQLite, the record every learning loop reads.

Schema::

    impressions(impression_id PK, ts, user_id, group_id, product_id, creative_id, arm, propensity, policy, bucket,
                model_version)
    clicks(impression_id PK -> impressions, ts)

Every write is one transaction (a batch goes in whole or not at all) in WAL mode with ``synchronous=FULL``; a write
call returns only after its commit, so an event the caller saw acknowledged survives a crash of the process. An
impression batch and the clicks already known for it commit together (``log_impressions(..., clicked=...)``), so a
crash never leaves impressions whose clicks are lost. Lock time-outs, a full disk and a damaged file are one
:class:`EventLogError` line each, and a failed write leaves the database as it was.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from studio.core.errors import InputError, StudioError


class EventLogError(StudioError):
    """The event log cannot be used right now or at all: busy past the timeout, disk full, damaged or foreign."""

IMPRESSION_COLUMNS: tuple[str, ...] = (
    "impression_id", "ts", "user_id", "group_id", "product_id", "creative_id", "arm", "propensity", "policy",
    "bucket", "model_version",
)
# Columns an impression must carry; the rest default (ts: now, the others: NULL).
REQUIRED_COLUMNS: tuple[str, ...] = ("impression_id", "user_id", "product_id", "creative_id", "arm", "propensity")

SCHEMA = """
CREATE TABLE IF NOT EXISTS impressions (
    impression_id TEXT PRIMARY KEY,
    ts            REAL NOT NULL,
    user_id       TEXT NOT NULL,
    group_id      INTEGER,
    product_id    TEXT NOT NULL,
    creative_id   TEXT NOT NULL,
    arm           TEXT NOT NULL,
    propensity    REAL NOT NULL CHECK (propensity > 0 AND propensity <= 1),
    policy        TEXT,
    bucket        TEXT,
    model_version TEXT
);
CREATE TABLE IF NOT EXISTS clicks (
    impression_id TEXT PRIMARY KEY REFERENCES impressions(impression_id),
    ts            REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_bucket ON impressions(bucket);
"""

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
    """An impression/click log in one SQLite file (created on first use).

    Args:
        path: the database file; its folder is created if needed.
        timeout: seconds to wait for another writer's lock before failing.
    """

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder; pass the event log's file path (e.g. {self.path / 'events.db'})")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EventLogError(f"cannot create the folder of {self.path} ({error.strerror}); choose a writable path") \
                from error
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._connection = self._open(timeout)
                break
            except sqlite3.OperationalError as error:
                # Switching a new file to WAL and creating the schema take locks that SQLite's busy handler does
                # not always wait for: several processes opening one new log at once must wait here instead.
                if not _is_busy(error) or time.monotonic() > deadline:
                    raise self._error(error, "open") from error
                time.sleep(0.01 + 0.04 * np.random.random())
            except sqlite3.DatabaseError as error:
                raise self._error(error, "open") from error
        self._check_schema()

    def _open(self, timeout: float) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    connection.execute(statement)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_schema(self) -> None:
        """A file whose tables have other columns is someone else's database: refuse it before anything is written."""
        expected = {"impressions": list(IMPRESSION_COLUMNS), "clicks": ["impression_id", "ts"]}
        try:
            for table, columns in expected.items():
                found = [row[1] for row in self._connection.execute(f"PRAGMA table_info({table})")]
                if found != columns:
                    self._connection.close()
                    raise EventLogError(f"{self.path} is not a studio event log (its {table} table has columns "
                                        f"{found}); pass a new path or an event log written by EventLog")
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise self._error(error, "open") from error

    def _error(self, error: sqlite3.Error, action: str) -> StudioError:
        """One clear line for a database error; the caller raises it (nothing was written)."""
        text = str(error)
        if _is_busy(error):
            return EventLogError(f"could not {action} the event log {self.path}: another process held its lock for "
                                 f"more than {self.timeout:g} s; retry, or raise the timeout")
        if "disk is full" in text or "disk I/O" in text:
            return EventLogError(f"could not {action} the event log {self.path}: the disk is full or failing "
                                 f"({text}); free space and retry (nothing of this batch was written)")
        if "no such column" in text or "no such table" in text:
            return EventLogError(f"{self.path} is not a studio event log ({text}); pass a new path or an event log "
                                 "written by EventLog")
        if "readonly" in text or "unable to open" in text:
            return EventLogError(f"could not {action} the event log {self.path} ({text}); choose a writable path")
        return EventLogError(f"{self.path} is not a usable event log ({text}); pass a new path or an event log "
                             "written by EventLog (a damaged one can be restored from a backup)")

    def close(self) -> None:
        """Close the connection (every acknowledged write is already durable)."""
        self._connection.close()

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
        per click; default now). A bad batch (missing column, bad propensity or timestamp, an impression_id already
        logged, a click outside the batch) raises InputError and writes nothing. Returns the number of impressions
        written, once committed.
        """
        frame = impressions if isinstance(impressions, pd.DataFrame) else pd.DataFrame(list(impressions))
        if frame.empty:
            if len(clicked):
                raise InputError("clicks were given with an empty impression batch; log each click with its impression")
            return 0
        rows = self._impression_rows(frame)
        clicks = self._click_rows(clicked, click_ts)
        outside = set(click for click, _ in clicks) - set(frame["impression_id"].astype(str))
        if outside:
            raise InputError(f"{len(outside)} click(s) are not on impressions of this batch (e.g. {sorted(outside)[0]!r});"
                             " use log_clicks for clicks on impressions logged earlier")
        try:
            with self._transaction("write to") as connection:
                connection.executemany(
                    f"INSERT INTO impressions ({', '.join(IMPRESSION_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(IMPRESSION_COLUMNS))})", rows)
                connection.executemany("INSERT OR IGNORE INTO clicks (impression_id, ts) VALUES (?, ?)", clicks)
        except sqlite3.IntegrityError as error:
            raise InputError(f"impression batch rejected, nothing written ({error}); impression ids must be new "
                             "and propensities in (0, 1]") from error
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

    def log_clicks(self, impression_ids: Iterable[str], ts: float | Sequence[float] | None = None) -> int:
        """Record clicks on logged impressions in one transaction; returns how many were new.

        A click on an impression that already has one is ignored (clicks are idempotent). A click on an impression
        that was never logged raises InputError and the whole batch is rejected.
        """
        clicks = self._click_rows(impression_ids, ts)
        if not clicks:
            return 0
        with self._transaction("write to") as connection:
            unknown = self._unknown_impressions(connection, [click for click, _ in clicks])
            if unknown:
                raise InputError(f"{len(unknown)} click(s) refer to impressions never logged (e.g. {unknown[0]!r}); "
                                 "log the impression before its click")
            before = connection.total_changes
            connection.executemany("INSERT OR IGNORE INTO clicks (impression_id, ts) VALUES (?, ?)", clicks)
            return connection.total_changes - before

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
    def _unknown_impressions(connection: sqlite3.Connection, ids: list[str]) -> list[str]:
        unique = list(dict.fromkeys(ids))
        known: set[str] = set()
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start: start + _LOOKUP_CHUNK]
            query = f"SELECT impression_id FROM impressions WHERE impression_id IN ({', '.join('?' * len(chunk))})"
            known.update(row[0] for row in connection.execute(query, chunk))
        return [i for i in unique if i not in known]

    @contextmanager
    def _transaction(self, action: str = "read") -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error (the connection is in autocommit mode).

        SQLite errors other than constraint violations (busy past the timeout, disk full, a damaged page) become
        one EventLogError line; the rollback leaves the database as it was.
        """
        try:
            self._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise self._error(error, action) from error
        try:
            yield self._connection
            self._connection.execute("COMMIT")
        except BaseException as error:
            if self._connection.in_transaction:
                self._connection.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error) and not isinstance(error, sqlite3.IntegrityError):
                raise self._error(error, action) from error
            raise

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
                 "c.impression_id IS NOT NULL AS clicked, c.ts AS click_ts "
                 "FROM impressions i LEFT JOIN clicks c ON c.impression_id = i.impression_id"
                 + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY i.rowid")
        try:
            return pd.read_sql_query(query, self._connection, params=parameters)
        except (sqlite3.Error, pd.errors.DatabaseError) as error:
            raise self._error(getattr(error, "__cause__", None) or error, "read") from error

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

    def counts(self) -> dict[str, int]:
        """Number of logged impressions and clicks: {"impressions": n, "clicks": m}."""
        (impressions,), = self._connection.execute("SELECT COUNT(*) FROM impressions")
        (clicks,), = self._connection.execute("SELECT COUNT(*) FROM clicks")
        return {"impressions": int(impressions), "clicks": int(clicks)}


def _timestamps(values: Iterable[float], what: str) -> list[float]:
    """Finite unix seconds, or one clear error (a NaN or infinite time would be stored and break every window)."""
    stamps = np.asarray(list(values), dtype=np.float64)
    if not np.all(np.isfinite(stamps)):
        raise InputError(f"every {what} timestamp must be a finite number of unix seconds; got "
                         f"{stamps[~np.isfinite(stamps)][0]!r}")
    return stamps.tolist()


def _is_busy(error: BaseException) -> bool:
    text = str(error)
    return "locked" in text or "busy" in text


def _sql_values(column: pd.Series, kind: type) -> list:
    """A column as a list of Python ints/strs for sqlite3, with None for missing values (vectorised)."""
    missing = column.isna().to_numpy()
    values = column.astype(np.int64 if kind is int and not missing.any() else object)
    values = values.astype(str).tolist() if kind is str else values.tolist()
    if missing.any():
        values = [None if gone else kind(value) for value, gone in zip(values, missing)]
    return values
