"""LinUCB: agrees with MABWiser, keeps its inverse exact, serves with honest propensities, round-trips to disk."""

import json

import numpy as np
import pytest

from studio.learning.bandit import LinUCB
from studio.core.errors import InputError, ModelNotFoundError

ARMS = ["c0", "c1", "c2", "c3"]


def make_log(n=300, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    arms = rng.choice(ARMS, size=n).tolist()
    rewards = (rng.random(n) < 0.3).astype(float)
    return X, arms, rewards


def make_bandit(**params):
    bandit = LinUCB(**params)
    for arm in ARMS:
        bandit.add_arm(arm)
    return bandit


def mabwiser_scores(X, arms, rewards, X_test, alpha, l2):
    from mabwiser.mab import MAB, LearningPolicy

    mab = MAB(ARMS, LearningPolicy.LinUCB(alpha=alpha, l2_lambda=l2), seed=0)
    mab.fit(np.array(arms), rewards, X)
    expectations = mab.predict_expectations(X_test)
    return np.array([[row[arm] for arm in ARMS] for row in expectations])


@pytest.mark.parametrize("alpha, l2", [(1.0, 1.0), (0.25, 3.0)])
def test_scores_match_mabwiser_for_batch_and_event_by_event_learning(alpha, l2):
    X, arms, rewards = make_log()
    X_test = np.random.default_rng(1).normal(size=(50, 5))
    expected = mabwiser_scores(X, arms, rewards, X_test, alpha, l2)

    batch = make_bandit(alpha=alpha, l2=l2).partial_fit(X, arms, rewards)
    online = make_bandit(alpha=alpha, l2=l2, refresh_every=10_000)
    for x, arm, reward in zip(X, arms, rewards):
        online.update_one(x, arm, reward)

    np.testing.assert_allclose(batch.decision_function(X_test), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(online.decision_function(X_test), expected, rtol=0, atol=1e-9)
    assert batch.n_updates_ == online.n_updates_ == len(X)


def test_sherman_morrison_inverse_stays_close_to_a_direct_inverse_after_many_updates():
    bandit = make_bandit(refresh_every=10**9)
    X, arms, rewards = make_log(n=5000, seed=3)
    for x, arm, reward in zip(X, arms, rewards):
        bandit.update_one(x, arm, reward)
    np.testing.assert_allclose(bandit.A_inv_, np.linalg.inv(bandit.A_), rtol=0, atol=1e-10)
    np.testing.assert_allclose(bandit.theta_, np.linalg.solve(bandit.A_, bandit.b_[..., None])[..., 0], atol=1e-10)


def test_inverse_is_recomputed_exactly_every_refresh_every_updates():
    bandit = make_bandit(refresh_every=7)
    X, arms, rewards = make_log(n=7)
    for x, arm, reward in zip(X[:6], arms[:6], rewards[:6]):
        bandit.update_one(x, arm, reward)
    assert not np.array_equal(bandit.A_inv_, np.linalg.inv(bandit.A_))  # Sherman-Morrison rounding
    bandit.update_one(X[6], arms[6], rewards[6])
    np.testing.assert_array_equal(bandit.A_inv_, np.linalg.inv(bandit.A_))


def test_single_event_partial_fit_and_update_one_agree():
    X, arms, rewards = make_log(n=20)
    a, b = make_bandit(), make_bandit()
    for i in range(20):
        a.partial_fit(X[i : i + 1], arms[i : i + 1], rewards[i : i + 1])
        b.update_one(X[i], arms[i], rewards[i])
    np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))


def test_select_one_serves_the_same_policy_as_predict():
    X, arms, rewards = make_log()
    bandit = make_bandit(alpha=0.3, seed=0).partial_fit(X, arms, rewards)
    served = [bandit.select_one(x) for x in X[:40]]
    assert [arm for arm, _ in served] == bandit.predict(X[:40]).tolist()
    assert all(propensity == 1.0 for _, propensity in served)


def test_bandit_learns_which_creative_each_context_prefers():
    rng = np.random.default_rng(0)
    bandit = make_bandit(alpha=0.2, epsilon=0.1, seed=0)
    # c1 is better when feature 0 is positive, c2 when it is negative.
    def click_probability(x, arm):
        return {"c1": 0.5 + 0.4 * np.tanh(3 * x[0]), "c2": 0.5 - 0.4 * np.tanh(3 * x[0])}.get(arm, 0.1)

    for _ in range(1500):
        x = np.append(rng.normal(size=2), 1.0)
        arm, _ = bandit.select_one(x)
        bandit.update_one(x, arm, float(rng.random() < click_probability(x, arm)))
    assert bandit.predict([[1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]).tolist() == ["c1", "c2"]


def test_ties_are_broken_uniformly_and_the_tie_probability_is_reported():
    bandit = make_bandit(seed=0)  # no data: every arm has the same score
    arms, propensities = bandit.sample(np.ones((4000, 3)))
    np.testing.assert_allclose(propensities, 0.25)
    counts = np.array([np.sum(arms == arm) for arm in ARMS])
    assert counts.min() > 900 and counts.max() < 1100
    arm, propensity = bandit.select_one(np.ones(3))
    assert arm in ARMS and propensity == 0.25


@pytest.mark.parametrize("params", [{"epsilon": 0.2}, {"softmax_temperature": 0.1}, {"epsilon": 0.1, "softmax_temperature": 1.0}])
def test_propensities_sum_to_one_and_are_positive_and_match_the_draws(params):
    X, arms, rewards = make_log()
    bandit = make_bandit(seed=0, **params).partial_fit(X, arms, rewards)
    probabilities = bandit.predict_proba(X)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities > 0).all()

    x = np.tile(X[0], (20000, 1))
    served, propensities = bandit.sample(x)
    assert (propensities > 0).all()
    frequencies = np.array([np.mean(served == arm) for arm in ARMS])
    np.testing.assert_allclose(frequencies, probabilities[0], atol=0.015)
    np.testing.assert_allclose(propensities, probabilities[0][[ARMS.index(a) for a in served]])


def test_epsilon_greedy_propensities():
    X, arms, rewards = make_log()
    bandit = make_bandit(epsilon=0.2).partial_fit(X, arms, rewards)
    probabilities = bandit.predict_proba(X[:5])
    best = np.argmax(bandit.decision_function(X[:5]), axis=1)
    np.testing.assert_allclose(probabilities[np.arange(5), best], 0.8 + 0.2 / 4)
    np.testing.assert_allclose(np.sort(probabilities, axis=1)[:, :3], 0.2 / 4)


def test_arms_can_be_added_and_removed_while_running():
    X, arms, rewards = make_log()
    bandit = make_bandit().partial_fit(X, arms, rewards)
    before = bandit.decision_function(X[:10])

    bandit.add_arm("new")
    scores = bandit.decision_function(X[:10])
    np.testing.assert_array_equal(scores[:, :4], before)
    # A new arm is scored by its prior only: alpha * |x| / sqrt(l2).
    np.testing.assert_allclose(scores[:, 4], np.linalg.norm(X[:10], axis=1))

    bandit.remove_arm("c1")
    assert bandit.arms_ == ["c0", "c2", "c3", "new"]
    np.testing.assert_array_equal(bandit.decision_function(X[:10])[:, :3], before[:, [0, 2, 3]])
    bandit.update_one(X[0], "new", 1.0)
    with pytest.raises(InputError, match="unknown arm 'c1'"):
        bandit.update_one(X[0], "c1", 1.0)
    with pytest.raises(InputError, match="already exists"):
        bandit.add_arm("c0")


def test_save_and_load_round_trip_gives_identical_scores(tmp_path):
    X, arms, rewards = make_log()
    bandit = LinUCB(alpha=0.7, l2=2.0, epsilon=0.1, refresh_every=50, seed=3)
    for arm in ["c0", "c1", "c2", "c3"]:
        bandit.add_arm(arm)
    bandit.add_arm(17)
    for x, arm, reward in zip(X, arms, rewards):
        bandit.update_one(x, arm, reward)

    bandit.save_pretrained(tmp_path / "bandit")
    loaded = LinUCB.from_pretrained(tmp_path / "bandit")

    np.testing.assert_array_equal(loaded.decision_function(X), bandit.decision_function(X))
    assert loaded.arms_ == ["c0", "c1", "c2", "c3", 17]
    assert loaded.get_params() == bandit.get_params()
    config = json.loads((tmp_path / "bandit" / "config.json").read_text())
    assert config["alpha"] == 0.7 and config["arms"][-1] == 17
    assert sorted(p.name for p in (tmp_path / "bandit").iterdir()) == ["config.json", "state.npz"]


def test_saving_refuses_arm_keys_json_cannot_hold(tmp_path):
    bandit = LinUCB()
    bandit.add_arm(("c1", "group-2"))
    with pytest.raises(InputError, match="must be str or int"):
        bandit.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_loading_a_missing_folder_says_what_is_expected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        LinUCB.from_pretrained(tmp_path / "nowhere")


def test_bad_inputs_are_refused_with_a_clear_error():
    bandit = make_bandit()
    X, arms, rewards = make_log(n=5)
    bandit.partial_fit(X, arms, rewards)
    with pytest.raises(InputError, match="NaN or infinite"):
        bandit.decision_function(np.where(np.eye(5, dtype=bool), np.nan, X))
    with pytest.raises(InputError, match="NaN or infinite"):
        bandit.update_one(np.full(5, np.inf), "c0", 1.0)
    with pytest.raises(InputError, match="5 features"):
        bandit.predict(np.ones((2, 4)))
    with pytest.raises(InputError, match="2-D"):
        bandit.predict(np.ones(5))
    with pytest.raises(InputError, match="one context vector"):
        bandit.select_one(np.ones((1, 5)))
    with pytest.raises(InputError, match="unknown arm"):
        bandit.partial_fit(X, ["c0", "c1", "c2", "c3", "zzz"], rewards)
    with pytest.raises(InputError, match="finite"):
        bandit.partial_fit(X, arms, [0, 1, np.nan, 0, 1])
    with pytest.raises(InputError, match="finite"):
        bandit.update_one(X[0], "c0", float("inf"))
    with pytest.raises(InputError, match="one per row"):
        bandit.partial_fit(X, arms, [0, 1])
    with pytest.raises(InputError, match="no arms"):
        LinUCB().select_one(np.ones(3))
    for params in [{"alpha": -1}, {"l2": 0}, {"epsilon": 1.5}, {"softmax_temperature": 0}, {"refresh_every": 0}]:
        with pytest.raises(InputError):
            LinUCB(**params)
    # Nothing bad was learned: the model is unchanged by the refused calls.
    assert bandit.n_updates_ == 5
    fresh = make_bandit()
    with pytest.raises(InputError, match="unknown arm"):
        fresh.partial_fit(np.ones((2, 3)), ["c0", "nope"], [0.0, 1.0])
    assert fresh.n_features_in_ is None  # a refused batch does not fix the context size either
