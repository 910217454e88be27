"""One SQL database behind the studio's stores: SQLite (a file; the embedded default) or PostgreSQL (several machines).

Stores write their SQL once, with ``?`` placeholders and the syntax both engines share (``INSERT ... ON CONFLICT DO
NOTHING``, ``CREATE TABLE IF NOT EXISTS``); :class:`Database` translates placeholders for PostgreSQL and turns engine
errors into one clear :class:`DatabaseError` line. Every write goes through :meth:`Database.transaction`: it commits
whole or rolls back, and returns only after the commit, so an acknowledged write survives a crash of the process.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from studio.core.errors import InputError, StudioError


class DatabaseError(StudioError):
    """The database cannot be used right now or at all: busy past the timeout, disk full, unreachable, damaged."""


def is_postgres_url(target: str | os.PathLike) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


class Database:
    """A connection to SQLite (a file path) or PostgreSQL (a ``postgresql://`` URL), one per process or thread.

    Args:
        target: a SQLite file path (created with its folder) or a PostgreSQL URL.
        timeout: seconds to wait for another writer's lock (SQLite) or for the server to answer (PostgreSQL).
        schema: ``CREATE ... IF NOT EXISTS`` statements (``;``-separated) run once in one transaction on open.
    """

    def __init__(self, target: str | os.PathLike, *, timeout: float = 30.0, schema: str = "") -> None:
        self.target, self.timeout = str(target), timeout
        self.dialect = "postgresql" if is_postgres_url(target) else "sqlite"
        if self.dialect == "sqlite":
            path = Path(target)
            if path.is_dir():
                raise InputError(f"{path} is a folder; pass a database file path (e.g. {path / 'events.db'})")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseError(f"cannot create the folder of {path} ({error.strerror}); choose a writable path") \
                    from None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._connection = self._connect()
                if schema:
                    with self.transaction() as cursor:
                        for statement in filter(str.strip, schema.split(";")):
                            cursor.execute(statement)
                return
            except DatabaseError as error:
                # A new SQLite file's WAL switch and schema take locks its busy handler does not always wait for:
                # several processes opening one new database at once wait here instead of failing.
                if not getattr(error, "busy", False) or time.monotonic() > deadline:
                    raise
                self.close()
                time.sleep(0.01 + 0.04 * random.random())

    @property
    def name(self) -> str:
        """The target without a password, for messages."""
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.target)

    def _connect(self):
        if self.dialect == "postgresql":
            try:
                import psycopg
            except ImportError:
                raise DatabaseError("PostgreSQL needs psycopg: pip install 'psycopg[binary]'") from None
            try:
                return psycopg.connect(self.target, autocommit=True, connect_timeout=max(1, int(self.timeout)))
            except psycopg.Error as error:
                raise self.error(error, "connect to") from None
        try:
            connection = sqlite3.connect(self.target, timeout=self.timeout, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            return connection
        except sqlite3.Error as error:
            raise self.error(error, "open") from None

    def close(self) -> None:
        connection = getattr(self, "_connection", None)
        if connection is not None:
            connection.close()
            self._connection = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- statements ------------------------------------------------------------------------------------------------
    def sql(self, statement: str) -> str:
        """`statement` with ``?`` placeholders in this engine's parameter style."""
        return statement.replace("?", "%s") if self.dialect == "postgresql" else statement

    @contextmanager
    def transaction(self) -> Iterator["Cursor"]:
        """A write transaction: commits whole when the block ends, rolls back (and raises) on any error."""
        connection = self._connection
        try:
            if self.dialect == "sqlite":
                connection.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
            else:
                connection.execute("BEGIN")
        except Exception as error:
            raise self.error(error, "write to") from None
        try:
            yield Cursor(self)
            connection.execute("COMMIT")
        except BaseException as error:
            try:
                connection.execute("ROLLBACK")
            except Exception:
                pass  # the connection is gone (server restart, killed): nothing was committed either way
            if isinstance(error, StudioError) or not self._is_engine_error(error) or self.is_conflict(error):
                raise
            raise self.error(error, "write to") from None

    def query(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        """Rows of a read-only statement (outside any transaction)."""
        try:
            return list(self._connection.execute(self.sql(statement), tuple(parameters)).fetchall())
        except Exception as error:
            if not self._is_engine_error(error):
                raise
            raise self.error(error, "read") from None

    # -- errors ----------------------------------------------------------------------------------------------------
    def _is_engine_error(self, error: BaseException) -> bool:
        if isinstance(error, sqlite3.Error):
            return True
        return type(error).__module__.startswith("psycopg")

    @staticmethod
    def is_conflict(error: BaseException) -> bool:
        """A constraint violation (duplicate key, check failed): the caller's bad data, not the database's state."""
        return isinstance(error, sqlite3.IntegrityError) or type(error).__name__ in (
            "IntegrityError", "UniqueViolation", "CheckViolation", "ForeignKeyViolation", "NotNullViolation")

    def error(self, error: BaseException, action: str) -> DatabaseError:
        """One clear line for an engine error (nothing of the failed statement was written)."""
        text = " ".join(str(error).split())[:300] or type(error).__name__
        busy = "locked" in text or "busy" in text
        if busy:
            message = (f"could not {action} {self.name}: another process held its lock for more than "
                       f"{self.timeout:g} s; retry, or raise the timeout")
        elif "disk is full" in text or "No space left" in text or "disk I/O" in text:
            message = f"could not {action} {self.name}: the disk is full or failing ({text}); free space and retry"
        elif "readonly" in text or "unable to open" in text or "Permission denied" in text:
            message = f"could not {action} {self.name} ({text}); choose a writable path"
        elif self.dialect == "postgresql" and ("connect" in text or "Connection refused" in text):
            message = f"could not {action} PostgreSQL at {self.name} ({text}); is the server running?"
        else:
            message = (f"{self.name} is not a usable database ({text}); pass a new path, or restore a damaged one "
                       "from a backup")
        result = DatabaseError(message)
        result.busy = busy
        return result


class Cursor:
    """Statements inside one transaction, with ``?`` placeholders whatever the engine."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        cursor = self._database._connection.execute(self._database.sql(statement), tuple(parameters))
        return list(cursor.fetchall()) if cursor.description else []

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if self._database.dialect == "sqlite":
            self._database._connection.executemany(statement, rows)
        else:
            with self._database._connection.cursor() as cursor:
                cursor.executemany(self._database.sql(statement), rows)
