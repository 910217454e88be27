"""Off-policy estimators on a synthetic world whose true answer is known."""

import numpy as np
import pytest

from studio.learning.bandit import LinUCB
from studio.core.errors import InputError
from studio.learning.offpolicy import BanditLog, doubly_robust, evaluate_policy, ips, replay, snips

ARMS = ["red", "blue", "green"]
WEIGHTS = np.array([[1.5, 0.0], [-1.5, 0.5], [0.0, -1.0]])
BIAS = np.array([-2.0, -2.2, -1.6])


def click_probability(X):
    """True CTR ``(n, 3)`` of each arm: a logistic function of the 2 context features."""
    return 1 / (1 + np.exp(-(X @ WEIGHTS.T + BIAS)))


def target_policy(X):
    """A known stochastic target: 80 % on the arm favoured by feature 0's sign, 10 % on each other arm."""
    probabilities = np.full((len(X), 3), 0.1)
    probabilities[np.arange(len(X)), np.where(X[:, 0] > 0, 0, 1)] = 0.8
    return probabilities


def true_value():
    X = np.random.default_rng(123).normal(size=(1_000_000, 2))
    return float((target_policy(X) * click_probability(X)).sum(axis=1).mean())


TRUTH = true_value()


def simulate_log(n, seed, logging=None):
    """Serve ``n`` events with the ``logging`` policy ``(n, 3)`` (uniform by default) and draw clicks."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    mu = np.full((n, 3), 1 / 3) if logging is None else logging(X)
    served = (rng.random((n, 1)) > np.cumsum(mu, axis=1)).sum(axis=1)
    clicks = (rng.random(n) < click_probability(X)[np.arange(n), served]).astype(float)
    return BanditLog(contexts=X, arms=[ARMS[k] for k in served], rewards=clicks, propensities=mu[np.arange(n), served])


def skewed_logging(X):
    """A logging policy that rarely serves the arm the target likes most: large importance weights."""
    probabilities = np.full((len(X), 3), 0.475)
    probabilities[np.arange(len(X)), np.where(X[:, 0] > 0, 0, 1)] = 0.05
    return probabilities


def test_every_estimator_covers_the_true_ctr_of_a_known_target_policy():
    log = simulate_log(20_000, seed=0)
    results = evaluate_policy(log, target_policy(log.contexts), ARMS, n_bootstrap=400, seed=1)
    assert set(results) == {"replay", "ips", "snips", "dr"}
    for name, result in results.items():
        assert result.ci_low <= TRUTH <= result.ci_high, (name, result, TRUTH)
        assert abs(result.estimate - TRUTH) < 0.01, name
        assert result.ci_low < result.estimate < result.ci_high
        assert result.n == 20_000 and result.method == name
    # Replay keeps about sum_k pi(k|x) / 3 = 1/3 of a uniform log.
    assert 0.3 < results["replay"].effective_sample_size / 20_000 < 0.37
    # Doubly robust and SNIPS are tighter than plain IPS here.
    width = {name: r.ci_high - r.ci_low for name, r in results.items()}
    assert width["dr"] < width["ips"] and width["snips"] < width["ips"]


def test_ips_is_unbiased_over_many_logs():
    estimates = []
    for seed in range(300):
        log = simulate_log(300, seed=seed, logging=skewed_logging)
        estimates.append(ips(log, target_policy(log.contexts), ARMS, n_bootstrap=100).estimate)
    estimates = np.array(estimates)
    standard_error = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - TRUTH) < 3 * standard_error


def test_clipping_weights_lowers_variance_across_logs():
    plain, clipped = [], []
    for seed in range(150):
        log = simulate_log(300, seed=seed, logging=skewed_logging)
        target = target_policy(log.contexts)
        plain.append(ips(log, target, ARMS, n_bootstrap=100).estimate)
        clipped.append(ips(log, target, ARMS, max_weight=5.0, n_bootstrap=100).estimate)
    assert np.var(clipped) < 0.5 * np.var(plain)
    # Clipping only ever lowers weights, so it can only bias the estimate down.
    assert np.mean(clipped) < np.mean(plain)


def test_clipping_raises_the_effective_sample_size():
    log = simulate_log(2000, seed=4, logging=skewed_logging)
    target = target_policy(log.contexts)
    assert ips(log, target, ARMS, max_weight=3.0).effective_sample_size > ips(log, target, ARMS).effective_sample_size


def test_replay_of_a_deterministic_policy_averages_the_matching_events():
    log = BanditLog(
        contexts=np.zeros((4, 1)), arms=["red", "blue", "red", "green"], rewards=[1, 0, 0, 1], propensities=[1 / 3] * 4
    )
    always_red = np.tile([1.0, 0.0, 0.0], (4, 1))
    result = replay(log, always_red, ARMS, n_bootstrap=200)
    assert result.estimate == 0.5 and result.effective_sample_size == 2
    assert 0.0 <= result.ci_low <= 0.5 <= result.ci_high <= 1.0


def test_estimates_and_intervals_are_reproducible_with_a_seed():
    log = simulate_log(1000, seed=5)
    target = target_policy(log.contexts)
    assert doubly_robust(log, target, ARMS, seed=3) == doubly_robust(log, target, ARMS, seed=3)
    assert snips(log, target, ARMS, seed=3) == snips(log, target, ARMS, seed=3)


def test_doubly_robust_accepts_predictions_from_any_reward_model():
    covered = 0
    for seed in range(20):
        log = simulate_log(2000, seed=seed, logging=skewed_logging)
        target = target_policy(log.contexts)
        exact = doubly_robust(log, target, ARMS, expected_rewards=click_probability(log.contexts), n_bootstrap=200)
        covered += exact.ci_low <= TRUTH <= exact.ci_high
        plain = ips(log, target, ARMS, n_bootstrap=200)
        # With the true reward model only the noise of the clicks is left, so the interval is narrower than IPS's.
        assert exact.ci_high - exact.ci_low < plain.ci_high - plain.ci_low
    assert covered >= 16  # a 95 % interval should cover the truth in about 19 of 20 logs


def test_a_linucb_bandit_is_evaluated_through_its_predict_proba():
    log = simulate_log(4000, seed=7)
    bandit = LinUCB(alpha=0.1, epsilon=0.1, seed=0)
    for arm in ARMS:
        bandit.add_arm(arm)
    features = np.hstack([log.contexts, np.ones((len(log), 1))])
    bandit.partial_fit(features[:2000], log.arms[:2000], log.rewards[:2000])

    # Evaluate on the half of the log the bandit did not learn from.
    held_out = BanditLog(log.contexts[2000:], log.arms[2000:], log.rewards[2000:], log.propensities[2000:])
    result = snips(held_out, bandit.predict_proba(features[2000:]), bandit.arms_)
    uniform = float(click_probability(held_out.contexts).mean())
    assert result.estimate > uniform  # the learned policy beats serving at random


def test_bad_logs_and_targets_are_refused():
    with pytest.raises(InputError, match=r"propensities must be in \(0, 1\]"):
        BanditLog(np.zeros((2, 1)), ["red", "blue"], [0, 1], [0.5, 0.0])
    with pytest.raises(InputError, match=r"propensities must be in \(0, 1\]"):
        BanditLog(np.zeros((2, 1)), ["red", "blue"], [0, 1], [0.5, -0.1])
    with pytest.raises(InputError, match="one entry per event"):
        BanditLog(np.zeros((3, 1)), ["red", "blue"], [0, 1], [0.5, 0.5])
    with pytest.raises(InputError, match="rewards"):
        BanditLog(np.zeros((2, 1)), ["red", "blue"], [0, np.nan], [0.5, 0.5])

    log = simulate_log(10, seed=0)
    target = target_policy(log.contexts)
    with pytest.raises(InputError, match="shape"):
        ips(log, target[:5], ARMS)
    with pytest.raises(InputError, match="sum to 1"):
        ips(log, target * 2, ARMS)
    with pytest.raises(InputError, match="not in arm_keys"):
        ips(log, target, ["red", "blue", "purple"])
    with pytest.raises(InputError, match="max_weight"):
        ips(log, target, ARMS, max_weight=0)
    with pytest.raises(InputError, match="expected_rewards"):
        doubly_robust(log, target, ARMS, expected_rewards=np.zeros((10, 2)))
    with pytest.raises(InputError, match="n_bootstrap"):
        snips(log, target, ARMS, n_bootstrap=5)


def test_replay_draws_the_target_arms_the_way_the_bandit_serves_them():
    log = simulate_log(3000, seed=8)
    bandit = LinUCB(alpha=0.1, softmax_temperature=0.05, seed=4)
    features = np.hstack([log.contexts, np.ones((len(log), 1))])
    bandit.fit(features[:1000], log.arms[:1000], log.rewards[:1000])
    probabilities = bandit.predict_proba(features)

    # A bandit seeded like replay serves each event the arm replay draws for it.
    served, _ = LinUCB(**bandit.get_params()).set_params(seed=11).fit(
        features[:1000], log.arms[:1000], log.rewards[:1000]).sample(features)
    kept = served == log.arms
    result = replay(log, probabilities, bandit.arms_, seed=11, n_bootstrap=100)
    assert result.effective_sample_size == kept.sum()
    assert result.estimate == pytest.approx(log.rewards[kept].mean(), abs=1e-12)


@pytest.mark.parametrize("estimator", [replay, ips, snips, doubly_robust])
def test_every_estimator_checks_its_options_before_any_work(estimator):
    log = simulate_log(50, seed=0)
    target = target_policy(log.contexts)
    with pytest.raises(InputError, match="n_bootstrap must be"):
        estimator(log, target, ARMS, n_bootstrap=99)
    with pytest.raises(InputError, match="confidence must be"):
        estimator(log, target, ARMS, confidence=1.0)
    with pytest.raises(InputError, match="shape"):
        estimator(log, target[:, :2], ARMS)
