"""A/B statistics checked against values worked out by hand."""

import math

import pytest

from studio.learning.abtest import (
    assign_bucket,
    bucket_stats,
    compare,
    ctr_by_bucket,
    relative_lift,
    two_proportion_ztest,
    wilson_interval,
)
from studio.core.errors import InputError


def test_a_user_always_lands_in_the_same_bucket():
    first = [assign_bucket(f"user-{i}", salt="exp-1") for i in range(200)]
    again = [assign_bucket(f"user-{i}", salt="exp-1") for i in range(200)]
    assert first == again
    # Pinned values: the bucket must not change across Python processes, versions or machines.
    # sha256("exp-1\x1fuser-0") starts with 0x8eda..., u ~ 0.558 -> treatment.
    assert assign_bucket("user-0", salt="exp-1") == "treatment"
    assert first[:6] == ["treatment", "treatment", "control", "treatment", "treatment", "control"]
    assert assign_bucket(12345, salt="exp-1") == assign_bucket(12345, salt="exp-1")


def test_pinned_hash_matches_the_documented_recipe():
    import hashlib

    digest = hashlib.sha256(b"exp-1\x1fuser-7").digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    assert assign_bucket("user-7", salt="exp-1") == ("control" if u < 0.5 else "treatment")


def test_split_proportions_follow_the_weights():
    weights = {"control": 0.8, "bandit": 0.15, "random": 0.05}
    buckets = [assign_bucket(i, salt="exp-2", weights=weights) for i in range(40_000)]
    for name, weight in weights.items():
        share = buckets.count(name) / len(buckets)
        assert abs(share - weight) < 4 * math.sqrt(weight * (1 - weight) / len(buckets)), name


def test_a_new_salt_reshuffles_users_independently():
    a = [assign_bucket(i, salt="exp-a") for i in range(10_000)]
    b = [assign_bucket(i, salt="exp-b") for i in range(10_000)]
    agreement = sum(x == y for x, y in zip(a, b)) / len(a)
    assert 0.47 < agreement < 0.53


def test_wilson_interval_matches_hand_computed_values():
    # 10 clicks in 100: centre (0.1 + z^2/200) / (1 + z^2/100), half-width z sqrt(.0009 + z^2/40000) / (1 + z^2/100).
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.05522, abs=1e-5) and high == pytest.approx(0.17437, abs=1e-5)
    # No clicks: the interval starts at 0 and its top is z^2 / (n + z^2).
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    # 90 % interval is narrower.
    low90, high90 = wilson_interval(10, 100, confidence=0.90)
    assert 0.05522 < low90 < 0.1 < high90 < 0.17437


def test_two_proportion_z_test_matches_hand_computed_values():
    # 200/1000 vs 250/1000: pooled p = 0.225, se = sqrt(.225 * .775 * 2 / 1000) = 0.018675, z = 0.05 / se.
    z, p_value = two_proportion_ztest(200, 1000, 250, 1000)
    assert z == pytest.approx(2.67740, abs=1e-4)
    assert p_value == pytest.approx(0.007419, abs=1e-5)
    z, p_value = two_proportion_ztest(250, 1000, 200, 1000)
    assert z == pytest.approx(-2.67740, abs=1e-4)
    assert two_proportion_ztest(30, 1000, 30, 1000) == (0.0, 1.0)


def test_relative_lift_uses_the_delta_method_on_the_log_ratio():
    # ratio 1.25; Var(log ratio) = .75/250 + .8/200 = 0.007; CI = 1.25 * exp(+-1.96 * sqrt(0.007)) - 1.
    lift, low, high = relative_lift(200, 1000, 250, 1000)
    assert lift == pytest.approx(0.25)
    assert low == pytest.approx(0.06095, abs=1e-4) and high == pytest.approx(0.47274, abs=1e-4)


def test_a_full_read_out_from_impressions():
    buckets = ["control"] * 1000 + ["treatment"] * 1000
    clicked = [i < 200 for i in range(1000)] + [i < 250 for i in range(1000)]
    stats = ctr_by_bucket(buckets, clicked)
    assert stats["control"] == bucket_stats("control", 200, 1000)
    assert stats["treatment"].ctr == 0.25
    result = compare(stats["control"], stats["treatment"])
    assert result.p_value < 0.01 and result.lift_ci_low > 0
    assert result.control.ci_low < 0.2 < result.control.ci_high


def test_bad_inputs_are_refused():
    with pytest.raises(InputError, match="clicks must be between"):
        wilson_interval(11, 10)
    with pytest.raises(InputError, match="impressions must be > 0"):
        two_proportion_ztest(0, 0, 1, 10)
    with pytest.raises(InputError, match="whole number"):
        wilson_interval(1.5, 10)
    with pytest.raises(InputError, match="at least one click"):
        relative_lift(0, 100, 5, 100)
    with pytest.raises(InputError, match="confidence"):
        wilson_interval(1, 10, confidence=95)
    with pytest.raises(InputError, match="weights"):
        assign_bucket("u", salt="s", weights={"a": 0.5, "b": -0.5})
    with pytest.raises(InputError, match="salt"):
        assign_bucket("u", salt="")
    with pytest.raises(InputError, match="user_id"):
        assign_bucket(None, salt="s")
    with pytest.raises(InputError, match="one entry per impression"):
        ctr_by_bucket(["control", "treatment"], [True])
