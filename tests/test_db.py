"""studio.core.db: the same SQL on SQLite and a real PostgreSQL server, whole transactions, one-line errors."""

import pytest

from studio.core.db import Database, DatabaseError

SCHEMA = "CREATE TABLE IF NOT EXISTS notes (key TEXT PRIMARY KEY, value REAL NOT NULL CHECK (value >= 0))"


def test_writes_commit_whole_and_conflicts_are_skipped_or_refused(database_url):
    with Database(database_url, schema=SCHEMA) as db:
        with db.transaction() as cursor:
            cursor.executemany("INSERT INTO notes (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                               [("a", 1.0), ("a", 2.0), ("b", 3.0)])
        assert db.query("SELECT key, value FROM notes ORDER BY key") == [("a", 1.0), ("b", 3.0)]
        with pytest.raises(Exception) as caught:  # a bad row rolls back the whole batch
            with db.transaction() as cursor:
                cursor.execute("INSERT INTO notes (key, value) VALUES (?, ?)", ("c", 4.0))
                cursor.execute("INSERT INTO notes (key, value) VALUES (?, ?)", ("d", -1.0))
        assert Database.is_conflict(caught.value)
        assert db.query("SELECT COUNT(*) FROM notes") == [(2,)]


def test_a_second_connection_sees_committed_rows(database_url):
    with Database(database_url, schema=SCHEMA) as writer, Database(database_url, schema=SCHEMA) as reader:
        with writer.transaction() as cursor:
            cursor.execute("INSERT INTO notes (key, value) VALUES (?, ?)", ("x", 1.5))
        assert reader.query("SELECT value FROM notes WHERE key = ?", ["x"]) == [(1.5,)]


def test_an_unreachable_server_and_a_damaged_file_are_one_line(tmp_path):
    with pytest.raises(DatabaseError, match=r"could not connect to PostgreSQL .*is the server running\?") as caught:
        Database("postgresql://studio:secret@127.0.0.1:9/nowhere", timeout=2)
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(DatabaseError, match="not a usable database"):
        Database(junk, schema=SCHEMA)
