"""The creative cache, on SQLite (a folder) and PostgreSQL (index) with local or fsspec blobs."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from studio.core.db import Database
from studio.core.errors import InputError, StudioError
from studio.jobs.cache import (
    FORMAT_VERSION,
    CacheConflictError,
    CacheError,
    CacheFormatError,
    CacheKey,
    CreativeCache,
    UnknownCreativeError,
)


def png(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def key(product="p1", group=0, placement="1:1", prompt="a teal marble table", generator="gen@1", reward="rw@1"):
    return CacheKey(product, group, placement, prompt, generator, reward)


@pytest.fixture
def cache_target(database_url, tmp_path):
    """(index, blobs) for CreativeCache: a folder on SQLite; a PostgreSQL schema plus a blob folder."""
    if database_url.startswith("postgresql"):
        return database_url, str(tmp_path / "blobs")
    return str(tmp_path / "cache"), None


@pytest.fixture
def cache(cache_target):
    with CreativeCache(*cache_target) as opened:
        yield opened


def test_put_get_read_back_by_content_address(cache):
    data = png(1)
    entry = cache.put(data, key(), 0.031, 1)
    assert entry.creative_id == hashlib.sha256(data).hexdigest()
    assert entry.size_bytes == len(data) and entry.status == "accepted"
    assert cache.get(entry.creative_id) == entry
    assert cache.read_png(entry.creative_id) == data
    # idempotent: the same bytes under the same key return the stored entry and add nothing
    assert cache.put(data, key(), 0.5, 3) == entry
    assert cache.storage_report()["creatives"] == 1


def test_creatives_best_rank_first_and_filters(cache):
    for rank, seed in ((3, 10), (1, 11), (2, 12)):
        cache.put(png(seed), key(prompt=f"scene {seed}"), 0.01 * rank, rank, "accepted" if rank < 3 else "candidate")
    cache.put(png(20), key(group=1, prompt="other group"), 0.2, 1)
    cache.put(png(21), key(placement="9:16", prompt="tall"), 0.2, 1)
    cache.put(png(22), key(product="p2"), 0.2, 1)

    group0 = cache.creatives("p1", 0, "1:1")
    assert [c.rank for c in group0] == [1, 2] and all(c.status == "accepted" for c in group0)
    assert [c.rank for c in cache.creatives("p1", 0, "1:1", status=None)] == [1, 2, 3]
    assert [c.key.prompt for c in cache.creatives("p1", 0, status="candidate")] == ["scene 10"]
    assert {c.key.group_id for c in cache.creatives("p1")} == {0, 1}
    assert len(cache.creatives("p1", placement="9:16")) == 1
    assert cache.creatives("nobody") == []

    best = group0[0]
    cache.set_status(best.creative_id, "retired")
    assert cache.get(best.creative_id).status == "retired"
    assert [c.rank for c in cache.creatives("p1", 0, "1:1")] == [2]
    with pytest.raises(InputError, match="status must be one of"):
        cache.set_status(best.creative_id, "live")


def test_storage_report_counts_bytes_per_group_and_product(cache):
    sizes = {}
    for i, (product, group) in enumerate([("p1", 0), ("p1", 0), ("p1", 1), ("p2", 1)]):
        data = png(30 + i, size=8 + 4 * i)
        sizes[(product, group, i)] = len(data)
        cache.put(data, key(product=product, group=group, prompt=f"scene {i}"), 0.1, i + 1)
    report = cache.storage_report()
    assert report["creatives"] == 4 and report["bytes"] == sum(sizes.values())
    p1_bytes = sum(v for (p, _, _), v in sizes.items() if p == "p1")
    assert report["by_product"]["p1"] == {"creatives": 3, "bytes": p1_bytes}
    assert report["by_group"]["1"] == {"creatives": 2, "bytes": sum(v for (_, g, _), v in sizes.items() if g == 1)}
    assert report["format_version"] == FORMAT_VERSION


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "A" * 64, "ab" * 31, "", None, "g" * 64, "ab/" + "c" * 61])
def test_hostile_or_unknown_ids_are_one_line_input_errors(cache, hostile):
    with pytest.raises(UnknownCreativeError) as raised:
        cache.get(hostile)
    assert "\n" not in str(raised.value) and isinstance(raised.value, InputError)
    with pytest.raises(UnknownCreativeError):
        cache.read_png(hostile)


def test_unknown_well_formed_id(cache):
    with pytest.raises(UnknownCreativeError, match="no creative"):
        cache.get("0" * 64)
    with pytest.raises(UnknownCreativeError):
        cache.set_status("0" * 64, "retired")


def test_conflicts_are_refused_and_a_unit_is_all_or_nothing(cache):
    cache.put(png(1), key(), 0.1, 1)
    with pytest.raises(CacheConflictError):
        cache.put(png(1), key(group=5), 0.1, 1)  # the same bytes under another key
    with pytest.raises(CacheConflictError):
        cache.put(png(2), key(), 0.1, 1)  # another creative for a stored key
    with pytest.raises(CacheConflictError):
        cache.put_unit("unit-1", [(png(3), key(prompt="new"), 0.1, 1, "accepted"),
                                  (png(1), key(prompt="clash"), 0.1, 2, "candidate")])
    assert cache.storage_report()["creatives"] == 1
    assert cache.units_done(["unit-1"]) == set()  # the unit's first row was rolled back with the rest
    cache.put_unit("unit-1", [(png(3), key(prompt="new"), 0.1, 1, "accepted")])
    assert cache.units_done(["unit-1", "unit-2"]) == {"unit-1"}


def test_keep_existing_keeps_a_stored_key_and_adds_the_rest(cache):
    first = cache.put(png(1), key(), 0.1, 1)
    entries = cache.put_unit("unit-2", [(png(2), key(), 0.3, 1, "accepted"),  # another creative for a stored key
                                        (png(3), key(group=1), 0.2, 1, "accepted")], keep_existing=True)
    assert entries[0] == first and entries[1].key == key(group=1)
    assert cache.storage_report()["creatives"] == 2 and cache.units_done(["unit-2"]) == {"unit-2"}
    with pytest.raises(UnknownCreativeError):
        cache.get(hashlib.sha256(png(2)).hexdigest())


@pytest.mark.parametrize("bad", [dict(png=b"not a png"), dict(ctr=1.5), dict(rank=0), dict(status="live"),
                                 dict(key=CacheKey("", 0, "1:1", "x", "g", "r"))])
def test_bad_puts(cache, bad):
    with pytest.raises(InputError):
        cache.put(bad.get("png", png(1)), bad.get("key", key()), bad.get("ctr", 0.1), bad.get("rank", 1),
                  bad.get("status", "accepted"))
    assert cache.storage_report()["creatives"] == 0


def test_reopen_sees_what_was_written(cache_target):
    with CreativeCache(*cache_target) as first:
        entry = first.put(png(4), key(), 0.2, 1)
    with CreativeCache(*cache_target) as second:
        assert second.get(entry.creative_id) == entry
        assert second.read_png(entry.creative_id) == png(4)


def test_a_newer_format_is_one_clear_error_and_untouched(cache_target, database_url, tmp_path):
    index, _ = cache_target
    with CreativeCache(*cache_target):
        pass
    target = database_url if database_url.startswith("postgresql") else str(tmp_path / "cache" / "index.db")
    with Database(target) as database, database.transaction() as cursor:
        cursor.execute("UPDATE cache_meta SET value = ? WHERE name = ?", (str(FORMAT_VERSION + 1), "format_version"))
        cursor.execute("DROP TABLE creatives")  # a newer layout: this studio must not recreate its own tables
    with pytest.raises(CacheFormatError, match="newer studio") as raised:
        CreativeCache(*cache_target)
    assert "\n" not in str(raised.value)
    with Database(target) as database:
        tables = database.query("SELECT COUNT(*) FROM cache_units")  # still there: nothing was dropped either
        assert tables == [(0,)]
        with pytest.raises(StudioError):
            database.query("SELECT COUNT(*) FROM creatives")


def test_damaged_blob_is_detected(tmp_path):
    with CreativeCache(tmp_path / "cache") as cache:
        entry = cache.put(png(5), key(), 0.2, 1)
        blob = tmp_path / "cache" / "blobs" / entry.creative_id[:2] / f"{entry.creative_id}.png"
        assert blob.read_bytes() == png(5)
        blob.write_bytes(png(6))
        with pytest.raises(CacheError, match="damaged"):
            cache.read_png(entry.creative_id)
        blob.unlink()
        with pytest.raises(CacheError, match="missing"):
            cache.read_png(entry.creative_id)


def test_fsspec_blobs(tmp_path):
    blobs = f"memory://cache-test-{tmp_path.name}"
    with CreativeCache(tmp_path / "cache", blobs=blobs) as cache:
        entry = cache.put(png(7), key(), 0.2, 1)
        assert cache.read_png(entry.creative_id) == png(7)
        assert cache.storage_report()["blobs"] == blobs
    assert not (tmp_path / "cache" / "blobs").exists()


def test_unwritable_or_wrong_targets(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(StudioError) as raised:
        CreativeCache(a_file / "cache")  # below a file: no folder can be made there
    assert "\n" not in str(raised.value)
    with pytest.raises(InputError, match="is a file"):
        CreativeCache(a_file)
    with pytest.raises(InputError, match="needs blobs"):
        CreativeCache("postgresql://nobody@127.0.0.1:1/none")


def test_stale_blob_temporaries_are_removed(tmp_path):
    with CreativeCache(tmp_path / "cache") as cache:
        entry = cache.put(png(8), key(), 0.2, 1)
        folder = tmp_path / "cache" / "blobs" / entry.creative_id[:2]
        dead = folder / f".{entry.creative_id}.png.999999999.1.tmp"
        dead.write_bytes(b"half")
        assert cache.remove_stale_temporaries() == 1
        assert not dead.exists() and cache.read_png(entry.creative_id) == png(8)
