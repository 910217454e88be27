"""A serving database with known traffic, for the Experiments tab's tests: two creatives of one product, two audience
groups, both A/B buckets, and click counts chosen so that creative A wins group 0 and creative B wins group 1."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from studio.jobs.cache import CacheKey, CreativeCache
from studio.learning.eventlog import EventLog
from studio.serving.config import ServeConfig

REWARD_MINI_AUDIENCE = Path(__file__).resolve().parents[1] / "reward" / "models" / "reward-mini" / "audience"
PRODUCT, PLACEMENT = "bottle-1", "1:1"
PROMPTS = {"A": "a teal marble table, soft light", "B": "a red wooden table, dramatic light"}
# (bucket, group, arm) -> (impressions, clicks)
TRAFFIC = {
    ("treatment", 0, "A"): (100, 20), ("treatment", 0, "B"): (100, 5),
    ("treatment", 1, "A"): (50, 2), ("treatment", 1, "B"): (50, 10),
    ("control", 0, "A"): (50, 5), ("control", 0, "B"): (50, 5),
    ("control", 1, "A"): (20, 1), ("control", 1, "B"): (20, 3),
}
START = 1_700_000_000.0


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def build(folder: Path) -> tuple[ServeConfig, dict[str, str]]:
    """Write the cache and the event log under `folder`; returns the serving config and {"A": id, "B": id}."""
    ids = {}
    with CreativeCache(folder / "cache") as cache:
        for rank, (arm, colour) in enumerate((("A", (0, 128, 128)), ("B", (200, 30, 30))), start=1):
            key = CacheKey(PRODUCT, 0, PLACEMENT, PROMPTS[arm], "studio-mini@test", "reward-mini@test")
            ids[arm] = cache.put(png(colour), key, predicted_ctr=0.05 - rank * 0.01, rank=rank).creative_id
    rows, clicked, n = [], [], 0
    for (bucket, group, arm), (impressions, clicks) in TRAFFIC.items():
        for i in range(impressions):
            impression_id = f"{n:08x}"
            rows.append({"impression_id": impression_id, "ts": START + n, "user_id": f"u{n}", "group_id": group,
                         "product_id": PRODUCT, "creative_id": ids[arm], "arm": ids[arm],
                         "propensity": 0.5, "policy": "linucb" if bucket == "treatment" else "uniform",
                         "bucket": bucket, "model_version": "linucb@0", "placement": PLACEMENT})
            if i < clicks:
                clicked.append(impression_id)
            n += 1
    with EventLog(folder / "events.db") as log:
        log.log_impressions(rows, clicked=clicked, click_ts=START + n)
        log.close_windows(before=START + n)  # the rest: reward 0, as a worker writes after the attribution window
    config = ServeConfig(db=str(folder / "events.db"), cache=str(folder / "cache"), audience=str(REWARD_MINI_AUDIENCE),
                         sync_seconds=3600, seed=0)
    return config, ids


def totals(bucket: str, group: int | None = None) -> tuple[int, int]:
    """(impressions, clicks) of a bucket (and group)."""
    cells = [v for (b, g, _), v in TRAFFIC.items() if b == bucket and (group is None or g == group)]
    return sum(i for i, _ in cells), sum(c for _, c in cells)
