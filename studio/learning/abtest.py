"""A/B test statistics: stable bucketing of users, per-bucket CTR with Wilson intervals, z-test and relative lift.

Example::

    bucket = assign_bucket("user-42", salt="bandit-vs-random-2026-11")   # "control" or "treatment", forever
    stats = ctr_by_bucket(buckets, clicked)                              # {"control": BucketStats, ...}
    result = compare(stats["control"], stats["treatment"])
    print(result.lift, result.lift_ci_low, result.lift_ci_high, result.p_value)

Intervals use the normal quantile of ``confidence``. The lift interval uses the delta method on the log of the CTR
ratio (Katz et al., 1978), which keeps it asymmetric and the ratio positive.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

from studio.core.errors import InputError

DEFAULT_WEIGHTS = {"control": 0.5, "treatment": 0.5}


@dataclass(frozen=True)
class BucketStats:
    """Clicks and impressions of one bucket, its CTR and the Wilson interval of the CTR."""

    bucket: str
    impressions: int
    clicks: int
    ctr: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ABTestResult:
    """Treatment against control: two-sided two-proportion z-test and relative lift ``ctr_t / ctr_c - 1``."""

    control: BucketStats
    treatment: BucketStats
    z: float
    p_value: float
    lift: float
    lift_ci_low: float
    lift_ci_high: float


def assign_bucket(user_id: str | int, salt: str, weights: Mapping[str, float] | None = None) -> str:
    """The bucket of ``user_id`` in the experiment named by ``salt``; the same answer on every machine and run.

    The SHA-256 of ``salt`` and ``user_id`` is read as a number ``u`` uniform in [0, 1), and the buckets take
    consecutive slices of [0, 1) in proportion to ``weights`` (default 50/50 control/treatment), in the
    mapping's order. A new salt reshuffles users independently of other experiments.
    """
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise InputError(f"user_id must be a str or int, got {type(user_id).__name__}")
    if not isinstance(salt, str) or not salt:
        raise InputError("salt must be a non-empty string naming the experiment, e.g. 'creative-test-2026-11'")
    weights = DEFAULT_WEIGHTS if weights is None else weights
    if not weights or any(not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0) for w in weights.values()):
        raise InputError(f"weights must map bucket names to positive finite numbers, got {dict(weights)!r}")
    digest = hashlib.sha256(f"{salt}\x1f{user_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(weights.values())
    cumulative = 0.0
    for bucket, weight in weights.items():
        cumulative += weight / total
        if u < cumulative:
            return bucket
    return bucket  # u within rounding of 1.0: the last bucket


def wilson_interval(clicks: int, impressions: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of a click-through rate ``clicks / impressions``."""
    _check_counts(clicks, impressions)
    z = _z(confidence)
    p = clicks / impressions
    denominator = 1 + z * z / impressions
    centre = (p + z * z / (2 * impressions)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / impressions + z * z / (4 * impressions**2)) / denominator
    # At 0 or all clicks the bound is exactly 0 or 1; say so rather than return rounding noise.
    low = 0.0 if clicks == 0 else max(0.0, centre - half_width)
    high = 1.0 if clicks == impressions else min(1.0, centre + half_width)
    return low, high


def bucket_stats(bucket: str, clicks: int, impressions: int, confidence: float = 0.95) -> BucketStats:
    """CTR of one bucket with its Wilson interval."""
    low, high = wilson_interval(clicks, impressions, confidence)
    return BucketStats(bucket, impressions, clicks, clicks / impressions, low, high)


def ctr_by_bucket(buckets: Iterable[Hashable], clicked: Iterable[bool], confidence: float = 0.95) -> dict[str, BucketStats]:
    """Per-bucket CTR from one row per impression: its bucket name and whether it was clicked."""
    buckets, clicked = list(buckets), list(clicked)
    if len(buckets) != len(clicked):
        raise InputError(f"buckets and clicked must have one entry per impression, got {len(buckets)} and {len(clicked)}")
    if not buckets:
        raise InputError("no impressions given; ctr_by_bucket needs one bucket and click flag per impression")
    counts: dict[str, list[int]] = {}
    for bucket, click in zip(buckets, clicked):
        entry = counts.setdefault(str(bucket), [0, 0])
        entry[0] += 1
        entry[1] += bool(click)
    return {name: bucket_stats(name, c, n, confidence) for name, (n, c) in counts.items()}


def two_proportion_ztest(clicks_a: int, impressions_a: int, clicks_b: int, impressions_b: int) -> tuple[float, float]:
    """Two-sided pooled two-proportion z-test of ``ctr_b - ctr_a``: returns ``(z, p_value)``."""
    _check_counts(clicks_a, impressions_a)
    _check_counts(clicks_b, impressions_b)
    pooled = (clicks_a + clicks_b) / (impressions_a + impressions_b)
    standard_error = math.sqrt(pooled * (1 - pooled) * (1 / impressions_a + 1 / impressions_b))
    if standard_error == 0:
        return 0.0, 1.0  # both buckets all clicks or all non-clicks: no evidence of a difference
    z = (clicks_b / impressions_b - clicks_a / impressions_a) / standard_error
    return z, math.erfc(abs(z) / math.sqrt(2))


def relative_lift(
    clicks_control: int, impressions_control: int, clicks_treatment: int, impressions_treatment: int,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Relative lift ``ctr_t / ctr_c - 1`` and its interval ``(lift, low, high)`` by the delta method on the log ratio.

    ``Var(log(ctr_t / ctr_c)) ~ (1 - p_t) / (n_t p_t) + (1 - p_c) / (n_c p_c)``; needs a click in each bucket.
    """
    _check_counts(clicks_control, impressions_control)
    _check_counts(clicks_treatment, impressions_treatment)
    if clicks_control == 0 or clicks_treatment == 0:
        raise InputError("relative lift needs at least one click in each bucket; keep the test running to collect clicks")
    p_c = clicks_control / impressions_control
    p_t = clicks_treatment / impressions_treatment
    log_ratio = math.log(p_t / p_c)
    standard_error = math.sqrt((1 - p_t) / clicks_treatment + (1 - p_c) / clicks_control)
    half_width = _z(confidence) * standard_error
    return p_t / p_c - 1, math.exp(log_ratio - half_width) - 1, math.exp(log_ratio + half_width) - 1


def compare(control: BucketStats, treatment: BucketStats, confidence: float = 0.95) -> ABTestResult:
    """The full A/B read-out: z-test and relative lift of ``treatment`` against ``control``."""
    z, p_value = two_proportion_ztest(control.clicks, control.impressions, treatment.clicks, treatment.impressions)
    lift, low, high = relative_lift(
        control.clicks, control.impressions, treatment.clicks, treatment.impressions, confidence
    )
    return ABTestResult(control, treatment, z, p_value, lift, low, high)


def _z(confidence: float) -> float:
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise InputError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_counts(clicks: int, impressions: int) -> None:
    for name, value in (("clicks", clicks), ("impressions", impressions)):
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise InputError(f"{name} must be a whole number, got {value!r}")
    if impressions <= 0:
        raise InputError(f"impressions must be > 0 to compute a CTR, got {impressions}")
    if not 0 <= clicks <= impressions:
        raise InputError(f"clicks must be between 0 and impressions ({impressions}), got {clicks}")
