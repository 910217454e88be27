"""The hybrid LinUCB: its closed form equals the joint ridge regression it stands for, it learns by sums, it shares
a group's taste across creatives, and its own clicks still win when features say nothing."""

import numpy as np
import pandas as pd
import pytest

from studio.core.artefact import ArtefactError
from studio.core.errors import InputError
from studio.learning.hybrid import HybridLinUCB
from studio.learning.policy import CONTROL, TREATMENT, ServingPolicy


def _joint_ridge(features, n, s, l2, arm_l2):
    """Mean and posterior variance of every (arm, context), from the explicit joint design: one-hot context x
    [features, 1] (ridge l2) plus one indicator per (arm, context) (ridge arm_l2), with n impressions and s rewards."""
    K, C = n.shape
    g = np.hstack([features, np.ones((K, 1))])
    m = g.shape[1]

    def row(a, c):
        x = np.zeros(C * m + K * C)
        x[c * m:(c + 1) * m] = g[a]
        x[C * m + a * C + c] = 1.0
        return x

    A = np.diag(np.r_[np.full(C * m, l2), np.full(K * C, arm_l2)])
    b = np.zeros(C * m + K * C)
    for a in range(K):
        for c in range(C):
            x = row(a, c)
            A += n[a, c] * np.outer(x, x)
            b += s[a, c] * x
    A_inv = np.linalg.inv(A)
    theta = A_inv @ b
    mean = np.array([[row(a, c) @ theta for c in range(C)] for a in range(K)])
    var = np.array([[row(a, c) @ A_inv @ row(a, c) for c in range(C)] for a in range(K)])
    return mean, var


def test_the_closed_form_is_the_joint_ridge_regression():
    rng = np.random.default_rng(0)
    K, C, d = 5, 3, 4
    features = rng.normal(size=(K, d))
    model = HybridLinUCB(n_contexts=C, l2=2.0, arm_l2=30.0)
    for a in range(K):
        model.add_arm(f"c{a}", features[a])
    contexts = rng.integers(C, size=400)
    arms = [f"c{a}" for a in rng.integers(K, size=400)]
    rewards = (rng.random(400) < 0.3).astype(float)
    model.partial_fit(contexts, arms, rewards)
    mean, var = _joint_ridge(features, model.n_, model.s_, 2.0, 30.0)
    got_mean, got_se = model.predict_reward(np.arange(C), [f"c{a}" for a in range(K)])
    np.testing.assert_allclose(got_mean, mean.T, atol=1e-10)
    np.testing.assert_allclose(got_se, np.sqrt(var.T), atol=1e-10)


def test_learning_is_by_sums_in_any_order_and_a_saved_model_scores_alike(tmp_path):
    rng = np.random.default_rng(1)
    contexts, arms = rng.integers(4, size=300), [f"c{a}" for a in rng.integers(6, size=300)]
    rewards = (rng.random(300) < 0.2).astype(float)
    described = {f"c{a}": rng.normal(size=3) for a in range(6)}
    live = HybridLinUCB(n_contexts=4, seed=3)
    for start in range(0, 300, 17):  # as events come, features arriving part-way
        live.partial_fit(contexts[start:start + 17], arms[start:start + 17], rewards[start:start + 17])
        if start == 51:
            for key, vector in described.items():
                live.add_arm(key, vector)
    order = rng.permutation(300)
    rebuilt = HybridLinUCB(n_contexts=4, seed=3)
    for key, vector in reversed(described.items()):
        rebuilt.add_arm(key, vector)
    rebuilt.fit(contexts[order], [arms[i] for i in order], rewards[order])
    assert live.max_difference(rebuilt) < 1e-12
    live.save_pretrained(tmp_path / "model")
    loaded = HybridLinUCB.from_pretrained(tmp_path / "model")
    assert loaded.max_difference(live) == 0.0
    candidates = ["c0", "c3", "c5"]
    assert [loaded.select_one(1, candidates) for _ in range(20)] == [live.select_one(1, candidates) for _ in range(20)]
    (tmp_path / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ArtefactError):
        HybridLinUCB.from_pretrained(tmp_path / "model")


def _world(rng, n_arms, d=3):
    """A known truth: group c's CTR of a creative is linear in its features, the same taste for every product."""
    taste = np.array([[0.02, -0.01, 0.0], [-0.015, 0.0, 0.02]])
    features = rng.normal(size=(n_arms, d))
    ctr = np.clip(0.05 + features @ taste.T, 0.005, 0.5)  # (arms, groups)
    return features, ctr


def test_a_creative_never_served_starts_from_its_groups_taste():
    """Learn on one product's creatives, then offer another product's: each group's top pick, before any impression
    of the new creatives, is the truly best one (the shared taste model, not luck)."""
    rng = np.random.default_rng(2)
    features, ctr = _world(rng, 16)
    model = HybridLinUCB(n_contexts=2, alpha=0.0, seed=0)
    old, new = range(10), range(10, 16)
    for a in range(16):
        model.add_arm(a, features[a])
    for _ in range(40):
        contexts = rng.integers(2, size=500)
        arms = rng.choice(list(old), size=500)
        model.partial_fit(contexts, list(arms), (rng.random(500) < ctr[arms, contexts]).astype(float))
    for group in (0, 1):
        pick, _ = model.select_one(group, list(new))
        assert pick == 10 + int(np.argmax(ctr[list(new), group]))
    assert model.n_[list(new)].sum() == 0


def test_with_uninformative_features_each_creatives_own_clicks_find_the_best():
    """Features that say nothing (noise): the per-creative terms still learn the truly best creative per group."""
    rng = np.random.default_rng(3)
    true_ctr = np.array([[0.02, 0.06], [0.05, 0.02], [0.03, 0.03]])  # (arms, groups)
    model = HybridLinUCB(n_contexts=2, alpha=0.25, arm_l2=200.0, seed=0)
    for a in range(3):
        model.add_arm(a, rng.normal(size=4))
    for _ in range(300):
        contexts = rng.integers(2, size=100)
        arms, _ = model.sample(contexts, [0, 1, 2])
        arms = arms.astype(int)
        model.partial_fit(contexts, list(arms), (rng.random(100) < true_ctr[arms, contexts]).astype(float))
    assert [model.select_one(g, [0, 1, 2])[0] for g in (0, 1)] == [1, 0]


def test_the_control_buckets_uniform_impressions_teach_the_treatment_policy():
    """Rewards logged only in the control bucket (uniform draws) move the treatment's pick to each group's truly best
    creative."""
    rng = np.random.default_rng(5)
    true_ctr = {"a": (0.02, 0.08), "b": (0.08, 0.02), "c": (0.04, 0.04)}  # (group 0, group 1)
    policy = ServingPolicy(2, seed=0)
    policy.sync_arms("bottle", ["a", "b", "c"], {arm: rng.normal(size=3) for arm in true_ctr})
    groups = rng.integers(2, size=6000)
    arms, _ = policy.decide(np.full(6000, "bottle"), groups, np.full(6000, CONTROL))
    clicks = (rng.random(6000) < [true_ctr[a][g] for a, g in zip(arms, groups)]).astype(float)
    rewards = pd.DataFrame({"product_id": "bottle", "placement": None, "group_id": groups, "arm": arms,
                            "reward": clicks, "bucket": CONTROL})
    before = [policy.decide_one("bottle", g, TREATMENT).arm for g in (0, 1)]
    assert before[0] == before[1]  # no evidence yet: both groups score the creatives alike
    assert policy.apply_rewards(rewards) == 6000
    picks = {g: policy.decide(np.full(200, "bottle"), np.full(200, g), np.full(200, TREATMENT))[0] for g in (0, 1)}
    assert (picks[0] == "b").mean() > 0.9 and (picks[1] == "a").mean() > 0.9


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_a_cached_distribution_draws_the_same_arms_as_scoring_every_time(epsilon):
    """Through learning, a new arm and a changed candidate list, the cached path serves exactly what the plain one
    serves (ties included: at the start every arm ties)."""
    rng = np.random.default_rng(4)
    plain, cached = (HybridLinUCB(n_contexts=3, epsilon=epsilon, seed=7) for _ in range(2))
    candidates = ("a", "b", "c", "d")
    for arm in candidates:
        vector = rng.normal(size=2)
        plain.add_arm(arm, vector)
        cached.add_arm(arm, vector)
    served = {"plain": [], "cached": []}
    for step in range(400):
        group = int(rng.integers(3))
        a = plain.select_one(group, candidates)
        b = cached.select_one(group, candidates, cache_key=group)
        served["plain"].append(a)
        served["cached"].append(b)
        if step % 7 == 0:
            reward = float(rng.random() < 0.3)
            plain.partial_fit([group], [a[0]], [reward])
            cached.partial_fit([group], [b[0]], [reward])
        if step == 150:
            plain.add_arm("e", [0.5, 0.5])
            cached.add_arm("e", [0.5, 0.5])
        if step == 250:
            candidates = ("a", "c", "d", "e")  # a new list object: the cache must not serve the old one
    assert served["plain"] == served["cached"]
    assert len({arm for arm, _ in served["plain"]}) >= 3


def test_bad_input_gets_one_clear_error():
    model = HybridLinUCB(n_contexts=2)
    model.add_arm("a", [0.1, 0.2])
    with pytest.raises(InputError, match="contexts must be in 0..1"):
        model.partial_fit([2], ["a"], [1.0])
    with pytest.raises(InputError, match="finite"):
        model.add_arm("b", [np.nan, 0.0])
    with pytest.raises(InputError, match="must have 2 values"):
        model.add_arm("b", [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="unknown arm 'zz'"):
        model.select_one(0, ["a", "zz"])
    with pytest.raises(InputError, match="rewards contain NaN"):
        model.partial_fit([0], ["a"], [np.nan])
    with pytest.raises(InputError, match="arm_l2 must be a finite number > 0"):
        HybridLinUCB(arm_l2=0.0)._start()
    with pytest.raises(InputError, match="n_contexts is fixed"):
        model.set_params(n_contexts=3)
