"""Settings of one serving worker (every worker of a deployment gets the same ones)."""

from __future__ import annotations

from dataclasses import dataclass

from studio.core.errors import InputError
from studio.learning.eventlog import SQLITE_SYNC
from studio.learning.policy import CONTROL_POLICIES


@dataclass
class ServeConfig:
    """What a worker serves from and how it decides.

    db: the event log (a SQLite file, or a ``postgresql://`` URL shared by every worker and machine).
    cache, cache_blobs: the creative cache (`studio.jobs.cache.CreativeCache` arguments).
    audience: a saved `AudienceClustering` folder (None: every user is the cold-start group).
    salt, treatment_share: the A/B split. control: "uniform" or "first" (the cache's best-ranked creative).
    alpha, l2, arm_l2, epsilon: the hybrid LinUCB (`studio.learning.hybrid.HybridLinUCB`); epsilon 0 by default: the
    UCB bonus explores, and the uniform control bucket is what off-policy evaluation reads.
    attribution_window: seconds after an impression during which a click counts; after
    it an impression without a click teaches the bandit reward 0. sync_seconds: how often a worker catches up from
    the shared log and re-reads the cache's creatives. snapshot: folder for atomic snapshots of the bandit state
    (None: none; a worker always rebuilds from the log anyway). token: API token for the write endpoints (None: open).
    max_body_bytes: larger requests are refused with 413. sqlite_sync: "full" (an acknowledged event is on disk and
    survives a power cut) or "normal" (it survives any crash or kill -9 of the server, not an OS crash or power cut;
    `studio.learning.eventlog.EventLog`).
    """

    db: str
    cache: str
    cache_blobs: str | None = None
    audience: str | None = None
    salt: str = "studio-serve"
    treatment_share: float = 0.5
    control: str = "uniform"
    alpha: float = 0.25
    l2: float = 1.0
    arm_l2: float = 1000.0
    epsilon: float = 0.0
    attribution_window: float = 3600.0
    sync_seconds: float = 1.0
    snapshot: str | None = None
    snapshot_seconds: float = 60.0
    token: str | None = None
    max_body_bytes: int = 65_536
    seed: int | None = None
    sqlite_sync: str = "full"

    def check(self) -> None:
        if self.control not in CONTROL_POLICIES:
            raise InputError(f"control must be one of {', '.join(CONTROL_POLICIES)}, got {self.control!r}")
        for name in ("attribution_window", "sync_seconds", "snapshot_seconds"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.sqlite_sync not in SQLITE_SYNC:
            raise InputError(f"sqlite_sync must be one of {', '.join(SQLITE_SYNC)}, got {self.sqlite_sync!r}")
        if not 0 < self.treatment_share < 1:
            raise InputError(f"treatment_share must be in (0, 1), got {self.treatment_share!r}")
        if self.token is not None and len(self.token) < 8:
            raise InputError("the API token must have at least 8 characters")
