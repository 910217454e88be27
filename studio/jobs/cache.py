"""The creative cache: content-addressed creative PNGs plus an index of what each one is for.

    CreativeCache("runs/cache")                                     embedded: runs/cache/index.db (SQLite) + blobs/
    CreativeCache("postgresql://host/db", blobs="s3://bucket/x")    several machines: the index in PostgreSQL, the
                                                                    blobs on any fsspec URL (or a shared folder)

A creative's id is the SHA-256 of its PNG bytes (the PNG carries its provenance recipe, as `generate_creatives` wrote
it), and its blob lives at ``blobs/<id[:2]>/<id>.png``. The index (one table, the same SQL for SQLite and PostgreSQL
through `studio.core.db`) maps each id to its `CacheKey` — product, audience group, placement, prompt, generator
version, reward version — with its predicted CTR, its rank among its (product, group, placement) siblings and its
status: "candidate" (made and scored, not served), "accepted" (served) or "retired" (no longer served).

One id has one key and one key has one id. Writes are atomic and ordered: the blob first (a temporary name renamed
into place), then the index row in one transaction, so a crash leaves at most an unreferenced blob, never a row
without its bytes. `put` is idempotent: putting the same bytes under the same key again returns the stored entry.

`put_unit` writes several creatives and marks a named unit of work done in the same transaction; `units_done` tells a
resumed batch job which units it can skip (see `studio.jobs.batch`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from studio.core.atomic import process_alive, write_file
from studio.core.db import Database, is_postgres_url
from studio.core.errors import InputError, StudioError

FORMAT_VERSION = 1
INDEX_NAME = "index.db"
BLOBS_NAME = "blobs"
STATUSES = ("candidate", "accepted", "retired")
# A creative id is a SHA-256 hex digest and nothing else: no path is ever built from anything looser.
CREATIVE_ID = re.compile(r"[0-9a-f]{64}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Checked before anything else is created, so a cache written by a newer studio is never touched.
_META_SCHEMA = "CREATE TABLE IF NOT EXISTS cache_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS creatives (
    creative_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    product_id TEXT NOT NULL,
    group_id INTEGER NOT NULL,
    placement TEXT NOT NULL,
    prompt TEXT NOT NULL,
    generator_version TEXT NOT NULL,
    reward_version TEXT NOT NULL,
    predicted_ctr DOUBLE PRECISION NOT NULL,
    rank INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    size_bytes BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS creatives_by_product ON creatives (product_id, group_id, placement, rank);
CREATE TABLE IF NOT EXISTS cache_units (
    unit_id TEXT PRIMARY KEY,
    creatives INTEGER NOT NULL
)
"""
_COLUMNS = ("creative_id, product_id, group_id, placement, prompt, generator_version, reward_version, "
            "predicted_ctr, rank, status, size_bytes")


class CacheError(StudioError):
    """The cache cannot be used: unwritable, damaged, or a blob whose bytes do not match its id."""


class CacheFormatError(CacheError, InputError):
    """The cache was written by a newer studio (or is not a creative cache at all)."""


class UnknownCreativeError(InputError):
    """A creative id that is malformed or not in the cache."""


class CacheConflictError(InputError):
    """A put that contradicts what is stored: the same bytes under another key, or another creative for a key."""


@dataclass(frozen=True)
class CacheKey:
    """What a creative is for; two creatives with equal keys are the same cache entry."""

    product_id: str
    group_id: int
    placement: str
    prompt: str
    generator_version: str
    reward_version: str

    def key_id(self) -> str:
        """A stable digest of the key (the index's unique column; long prompts stay out of the unique index)."""
        fields = [self.product_id, int(self.group_id), self.placement, self.prompt, self.generator_version,
                  self.reward_version]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class CachedCreative:
    """One cache entry: the PNG's content address, its key, its score and place, and its size on disk."""

    creative_id: str
    key: CacheKey
    predicted_ctr: float
    rank: int
    status: str
    size_bytes: int


def creative_id_of(png: bytes) -> str:
    """The content address of a PNG: the hex SHA-256 of its bytes."""
    return hashlib.sha256(png).hexdigest()


def check_creative_id(creative_id: object) -> str:
    if not isinstance(creative_id, str) or CREATIVE_ID.fullmatch(creative_id) is None:
        shown = repr(creative_id)[:80]
        raise UnknownCreativeError(f"{shown} is not a creative id (64 lowercase hex digits, the PNG's SHA-256)")
    return creative_id


def check_status(status: object) -> str:
    if status not in STATUSES:
        raise InputError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    return status


class CreativeCache:
    """The creative cache (see the module docstring); one instance per process or thread, thread-safe inside.

    Args:
        index: a folder (holds ``index.db`` and, unless `blobs` says otherwise, ``blobs/``) or a
            ``postgresql://`` URL (then `blobs` is required).
        blobs: where the PNGs go: a folder or any fsspec URL (``s3://bucket/prefix``, ``memory://x``, ...).
    """

    def __init__(self, index: str | os.PathLike, blobs: str | os.PathLike | None = None) -> None:
        self._lock = threading.RLock()
        self._db: Database | None = None
        if is_postgres_url(index):
            if blobs is None:
                raise InputError("a PostgreSQL cache index needs blobs=: a folder or fsspec URL every machine reaches")
            target = str(index)
        else:
            folder = Path(index)
            if folder.exists() and not folder.is_dir():
                raise InputError(f"{folder} is a file; pass a cache folder (it holds {INDEX_NAME} and {BLOBS_NAME}/)")
            target = folder / INDEX_NAME
            blobs = folder / BLOBS_NAME if blobs is None else blobs
        self.blobs = _Blobs(blobs)
        self._db = Database(target, schema=_META_SCHEMA)
        self.index = self._db.name
        try:
            self._check_format()
            with self._db.transaction() as cursor:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    cursor.execute(statement)
        except BaseException:
            self.close()
            raise

    def _check_format(self) -> None:
        with self._db.transaction() as cursor:
            cursor.execute("INSERT INTO cache_meta (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                           ("format_version", str(FORMAT_VERSION)))
            rows = cursor.execute("SELECT value FROM cache_meta WHERE name = ?", ("format_version",))
        value = rows[0][0] if rows else ""
        if not str(value).isdigit():
            raise CacheFormatError(f"{self.index} is not a creative cache (format_version {value!r}); pass another")
        if int(value) > FORMAT_VERSION:
            raise CacheFormatError(f"{self.index} was written by a newer studio (cache format {value}; this one reads "
                                   f"up to {FORMAT_VERSION}); upgrade creative-studio")

    # -- writes ------------------------------------------------------------------------------------------------------
    def put(self, png: bytes, key: CacheKey, predicted_ctr: float, rank: int,
            status: str = "accepted") -> CachedCreative:
        """Store one creative (idempotent: the same bytes under the same key return the stored entry)."""
        return self.put_unit(None, [(png, key, predicted_ctr, rank, status)])[0]

    def put_unit(self, unit_id: str | None, items: Sequence[tuple[bytes, CacheKey, float, int, str]], *,
                 keep_existing: bool = False) -> list[CachedCreative]:
        """Store several creatives and (with `unit_id`) mark that unit of work done, all in one transaction.

        Each item is ``(png, key, predicted_ctr, rank, status)``. Either every row and the unit mark are committed,
        or none is: a resumed job that finds the unit done finds all its creatives too. `keep_existing`: a key the
        cache already holds keeps its stored creative (the new one is dropped) instead of raising a conflict.
        Returns the entries stored for the items' keys.
        """
        entries = [self._entry(*item) for item in items]
        if len({e.creative_id for e in entries}) != len(entries) or len({e.key for e in entries}) != len(entries):
            raise CacheConflictError("one put holds the same creative or the same key twice")
        wanted = {entry.key.key_id(): entry.creative_id for entry in entries}
        if keep_existing:
            stored = self._stored_keys(list(wanted))
            wanted.update(stored)
            kept = [(item, entry) for item, entry in zip(items, entries) if entry.key.key_id() not in stored]
            items, entries = [item for item, _ in kept], [entry for _, entry in kept]
        for (png, *_), entry in zip(items, entries):
            self.blobs.write(entry.creative_id, png)  # bytes first: a committed row always has its blob
        with self._lock, self._db.transaction() as cursor:
            for entry in entries:
                key = entry.key
                cursor.execute(
                    f"INSERT INTO creatives ({_COLUMNS}, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (entry.creative_id, key.product_id, key.group_id, key.placement, key.prompt,
                     key.generator_version, key.reward_version, entry.predicted_ctr, entry.rank, entry.status,
                     entry.size_bytes, key.key_id()))
                rows = cursor.execute("SELECT creative_id, key_id FROM creatives WHERE creative_id = ? OR key_id = ?",
                                      (entry.creative_id, key.key_id()))
                if rows != [(entry.creative_id, key.key_id())]:
                    raise CacheConflictError(
                        f"creative {entry.creative_id[:12]}… or its key ({key.product_id}, group {key.group_id}, "
                        f"{key.placement}) is already cached with another partner; one id has one key")
            if unit_id is not None:
                cursor.execute("INSERT INTO cache_units (unit_id, creatives) VALUES (?, ?) ON CONFLICT DO NOTHING",
                               (str(unit_id), len(entries)))
        return [self.get(creative_id) for creative_id in wanted.values()]

    def _stored_keys(self, key_ids: list[str]) -> dict[str, str]:
        """key_id -> creative_id of the keys the cache holds."""
        found: dict[str, str] = {}
        for start in range(0, len(key_ids), 500):
            chunk = key_ids[start:start + 500]
            rows = self._query(f"SELECT key_id, creative_id FROM creatives WHERE key_id IN "
                               f"({', '.join('?' * len(chunk))})", chunk)
            found.update((key_id, creative_id) for key_id, creative_id in rows)
        return found

    def _entry(self, png: bytes, key: CacheKey, predicted_ctr: float, rank: int, status: str) -> CachedCreative:
        if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(_PNG_SIGNATURE):
            raise InputError("put needs the PNG's bytes (as generate_creatives writes them)")
        if not isinstance(key, CacheKey):
            raise InputError(f"key must be a CacheKey, got {type(key).__name__}")
        for name in ("product_id", "placement", "prompt", "generator_version", "reward_version"):
            if not isinstance(getattr(key, name), str) or not getattr(key, name):
                raise InputError(f"key.{name} must be a non-empty string")
        if isinstance(key.group_id, bool) or not isinstance(key.group_id, int):
            raise InputError(f"key.group_id must be a whole number, got {key.group_id!r}")
        ctr = float(predicted_ctr)
        if not 0.0 <= ctr <= 1.0:
            raise InputError(f"predicted_ctr must be within 0 and 1, got {predicted_ctr!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise InputError(f"rank must be a whole number >= 1, got {rank!r}")
        return CachedCreative(creative_id_of(bytes(png)), key, ctr, rank, check_status(status), len(png))

    def set_status(self, creative_id: str, status: str) -> None:
        check_status(status)
        with self._lock, self._db.transaction() as cursor:
            found = cursor.execute("SELECT 1 FROM creatives WHERE creative_id = ?", (check_creative_id(creative_id),))
            if not found:
                raise UnknownCreativeError(f"no creative {creative_id} in the cache at {self.index}")
            cursor.execute("UPDATE creatives SET status = ? WHERE creative_id = ?", (status, creative_id))

    # -- reads -------------------------------------------------------------------------------------------------------
    def get(self, creative_id: str) -> CachedCreative:
        rows = self._query(f"SELECT {_COLUMNS} FROM creatives WHERE creative_id = ?", (check_creative_id(creative_id),))
        if not rows:
            raise UnknownCreativeError(f"no creative {creative_id} in the cache at {self.index}")
        return _row(rows[0])

    def creatives(self, product_id: str, group_id: int | None = None, placement: str | None = None,
                  status: str | tuple[str, ...] | None = "accepted") -> list[CachedCreative]:
        """The entries of a product (optionally one group / placement / status set), best rank first."""
        where, parameters = ["product_id = ?"], [product_id]
        if group_id is not None:
            where.append("group_id = ?")
            parameters.append(int(group_id))
        if placement is not None:
            where.append("placement = ?")
            parameters.append(placement)
        if status is not None:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            for item in statuses:
                check_status(item)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            parameters.extend(statuses)
        rows = self._query(f"SELECT {_COLUMNS} FROM creatives WHERE {' AND '.join(where)} "
                           "ORDER BY rank, predicted_ctr DESC, group_id, placement, creative_id", parameters)
        return [_row(row) for row in rows]

    def all_creatives(self) -> list[CachedCreative]:
        """Every entry, in a stable order (product, group, placement, rank)."""
        rows = self._query(f"SELECT {_COLUMNS} FROM creatives ORDER BY product_id, group_id, placement, rank, "
                           "creative_id")
        return [_row(row) for row in rows]

    def read_png(self, creative_id: str) -> bytes:
        """The PNG's bytes, checked against their content address."""
        self.get(creative_id)  # an id not in the index is never read from the blob store
        data = self.blobs.read(creative_id)
        if creative_id_of(data) != creative_id:
            raise CacheError(f"the blob of creative {creative_id} is damaged (its bytes do not match its id); "
                             "regenerate it")
        return data

    def remove_stale_temporaries(self) -> int:
        """Remove blob temporaries left by writers killed outright (local blob folders); returns how many."""
        return self.blobs.remove_stale_temporaries()

    def units_done(self, unit_ids: Iterable[str]) -> set[str]:
        """Which of these units of work a previous run committed."""
        wanted = list(dict.fromkeys(str(unit) for unit in unit_ids))
        done: set[str] = set()
        for start in range(0, len(wanted), 500):  # keep each statement's parameter list small
            chunk = wanted[start:start + 500]
            rows = self._query(f"SELECT unit_id FROM cache_units WHERE unit_id IN ({', '.join('?' * len(chunk))})",
                               chunk)
            done.update(row[0] for row in rows)
        return done

    def storage_report(self) -> dict:
        """Bytes and creatives in all, per status, per audience group and per product."""
        rows = self._query("SELECT product_id, group_id, status, COUNT(*), SUM(size_bytes) FROM creatives "
                           "GROUP BY product_id, group_id, status ORDER BY product_id, group_id, status")
        report: dict = {"index": self.index, "blobs": self.blobs.root, "format_version": FORMAT_VERSION,
                        "creatives": 0, "bytes": 0, "by_status": {}, "by_group": {}, "by_product": {}}
        for product_id, group_id, status, count, size in rows:
            count, size = int(count), int(size or 0)
            report["creatives"] += count
            report["bytes"] += size
            for table, name in (("by_status", status), ("by_group", str(group_id)), ("by_product", product_id)):
                slot = report[table].setdefault(name, {"creatives": 0, "bytes": 0})
                slot["creatives"] += count
                slot["bytes"] += size
        return report

    def _query(self, statement: str, parameters: Sequence = ()) -> list[tuple]:
        with self._lock:
            if self._db is None:
                raise CacheError("the creative cache is closed")
            return self._db.query(statement, parameters)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "CreativeCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _row(row: tuple) -> CachedCreative:
    creative_id, product_id, group_id, placement, prompt, generator_version, reward_version, ctr, rank, status, \
        size = row
    key = CacheKey(product_id, int(group_id), placement, prompt, generator_version, reward_version)
    return CachedCreative(creative_id, key, float(ctr), int(rank), status, int(size))


class _Blobs:
    """PNG bytes by creative id: a local folder (atomic rename) or any fsspec URL (temporary name, then move)."""

    def __init__(self, root: str | os.PathLike) -> None:
        text = str(root)
        self.local = "://" not in text or text.startswith("file://")
        if self.local:
            self.folder = Path(text.removeprefix("file://")).expanduser()
            self.root = str(self.folder)
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise CacheError(f"cannot create the blob folder {self.folder} ({error.strerror}); choose a writable "
                                 "path") from None
            if not os.access(self.folder, os.W_OK | os.X_OK):
                raise CacheError(f"the blob folder {self.folder} is not writable; choose a writable path")
        else:
            import fsspec

            try:
                self.fs, self.path = fsspec.core.url_to_fs(text)
            except (ImportError, ValueError) as error:
                raise InputError(f"cannot open blob store {text!r} ({error}); install its fsspec backend") from None
            self.root = text

    def _name(self, creative_id: str) -> str:
        creative_id = check_creative_id(creative_id)
        return f"{creative_id[:2]}/{creative_id}.png"

    def write(self, creative_id: str, data: bytes) -> None:
        name = self._name(creative_id)
        if self.local:
            path = self.folder / name
            if not path.exists():  # content-addressed: an existing blob already holds these bytes
                write_file(path, lambda temporary: temporary.write_bytes(data))
            return
        path = f"{self.path.rstrip('/')}/{name}"
        if self.fs.exists(path):
            return
        temporary = f"{self.path.rstrip('/')}/.tmp/{uuid.uuid4().hex}"
        self.fs.pipe_file(temporary, bytes(data))
        self.fs.mv(temporary, path)

    def remove_stale_temporaries(self) -> int:
        if not self.local:
            return 0  # object stores write whole objects; a killed upload leaves nothing under .tmp worth a scan
        removed = 0
        for path in self.folder.glob("??/.*.tmp"):
            pid = path.name.split(".")[-3]  # .{id}.png.{pid}.{thread}.tmp, as studio.core.atomic.write_file names it
            if pid.isdigit() and not process_alive(int(pid)):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def read(self, creative_id: str) -> bytes:
        name = self._name(creative_id)
        try:
            if self.local:
                return (self.folder / name).read_bytes()
            return self.fs.cat_file(f"{self.path.rstrip('/')}/{name}")
        except FileNotFoundError:
            raise CacheError(f"the blob of creative {creative_id} is missing from {self.root}; regenerate it") \
                from None
