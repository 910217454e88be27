"""LinUCB: agrees with MABWiser, keeps its inverse exact, serves with honest propensities, round-trips to disk."""

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.estimator_checks import estimator_checks_generator
from sklearn.utils.validation import check_is_fitted

from studio.core.artefact import ArtefactError
from studio.core.errors import InputError, ModelNotFoundError
from studio.learning.audience import AudienceClustering
from studio.learning.bandit import LinUCB
from studio.learning.estimator import NotFittedError

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


def learned_bandit():
    X, arms, rewards = make_log()
    bandit = LinUCB(alpha=0.7, l2=2.0, epsilon=0.1, refresh_every=50, seed=3)
    for arm in ["c0", "c1", "c2", "c3"]:
        bandit.add_arm(arm)
    bandit.add_arm(17)
    for x, arm, reward in zip(X, arms, rewards):
        bandit.update_one(x, arm, reward)
    return bandit, X


def test_save_and_load_round_trip_gives_identical_scores(tmp_path):
    bandit, X = learned_bandit()
    bandit.save_pretrained(tmp_path / "bandit")
    loaded = LinUCB.from_pretrained(tmp_path / "bandit")

    np.testing.assert_array_equal(loaded.decision_function(X), bandit.decision_function(X))
    np.testing.assert_array_equal(loaded.A_inv_, bandit.A_inv_)  # the cache between refreshes, not a recomputed one
    assert loaded.arms_ == ["c0", "c1", "c2", "c3", 17]
    assert loaded.get_params() == bandit.get_params()
    assert loaded.n_updates_ == 300 and loaded._updates_since_refresh == 300 % 50
    # Neither has drawn yet, so the same state and seed serve the same arms with the same propensities.
    assert [loaded.select_one(x) for x in X[:30]] == [bandit.select_one(x) for x in X[:30]]
    config = json.loads((tmp_path / "bandit" / "config.json").read_text())
    assert config["class_name"] == "LinUCB" and config["format_version"] == 2
    assert config["alpha"] == 0.7 and config["arms_"][-1] == 17
    assert sorted(p.name for p in (tmp_path / "bandit").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(load_file(tmp_path / "bandit" / "model.safetensors")) == ["A", "A_inv", "b"]


def test_a_bandit_with_arms_but_no_context_yet_round_trips_without_arrays(tmp_path):
    make_bandit(alpha=0.5).save_pretrained(tmp_path / "cold")
    assert sorted(p.name for p in (tmp_path / "cold").iterdir()) == ["config.json"]
    loaded = LinUCB.from_pretrained(tmp_path / "cold")
    assert loaded.arms_ == ARMS and loaded.n_features_in_ is None
    # Cold arms are scored by the prior only: alpha * |x| / sqrt(l2).
    np.testing.assert_allclose(loaded.decision_function([[3.0, 4.0]]), [[2.5] * 4])


def saved_bandit(tmp_path):
    bandit, _ = learned_bandit()
    folder = tmp_path / "bandit"
    bandit.save_pretrained(folder)
    return folder


def load_error(folder) -> str:
    with pytest.raises(ArtefactError) as raised:
        LinUCB.from_pretrained(folder)
    message = str(raised.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_a_damaged_config_is_one_clear_error(tmp_path):
    folder = saved_bandit(tmp_path)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text[: len(text) // 2])
    assert "config.json is damaged" in load_error(folder)


def test_a_truncated_weights_file_is_one_clear_error(tmp_path):
    folder = saved_bandit(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "model.safetensors is damaged" in load_error(folder)


def test_nan_in_the_state_is_refused_at_load_not_at_serving(tmp_path):
    folder = saved_bandit(tmp_path)
    state = load_file(folder / "model.safetensors")
    state["A"][1, 0, 0] = np.nan
    save_file(state, folder / "model.safetensors")
    assert "model.safetensors is damaged: A holds NaN or infinite values" in load_error(folder)


def test_state_that_does_not_match_the_config_is_refused(tmp_path):
    folder = saved_bandit(tmp_path)
    state = load_file(folder / "model.safetensors")
    save_file({**state, "b": state["b"][:4]}, folder / "model.safetensors")  # the config says 5 arms
    assert "b has shape (4, 5), expected (5, 5)" in load_error(folder)


def test_a_bad_hyper_parameter_in_the_config_is_refused(tmp_path):
    folder = saved_bandit(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "epsilon": 2.0}))
    assert "config.json is damaged (epsilon must be a probability in [0, 1], got 2.0)" in load_error(folder)


def test_a_folder_of_another_class_is_refused(tmp_path):
    users = pd.DataFrame({"age": [20, 22, 60, 64], "device": ["mobile", "mobile", "tablet", "tablet"]})
    AudienceClustering(n_groups=2).fit(users).save_pretrained(tmp_path / "audience")
    assert "holds an AudienceClustering folder, not a LinUCB folder" in load_error(tmp_path / "audience")


def test_a_newer_format_is_refused_with_what_to_do(tmp_path):
    folder = saved_bandit(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 3}))
    message = load_error(folder)
    assert "written by a newer studio (LinUCB format 3; this one reads up to 2)" in message
    assert "upgrade creative-studio" in message


def test_the_old_state_npz_format_is_refused_with_what_to_do(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    config = {"class_name": "LinUCB", "format_version": 1, "alpha": 1.0, "l2": 1.0, "epsilon": 0.0,
              "softmax_temperature": None, "refresh_every": 1000, "seed": None, "arms": ["c0"], "n_features_in": 2,
              "n_updates": 0, "updates_since_refresh": 0}
    (folder / "config.json").write_text(json.dumps(config))
    np.savez(folder / "state.npz", A=np.eye(2)[None], b=np.zeros((1, 2)), A_inv=np.eye(2)[None])
    message = load_error(folder)
    assert "format 1 (state.npz)" in message and "save_pretrained" in message


def test_saving_refuses_arm_keys_json_cannot_hold(tmp_path):
    bandit = LinUCB()
    bandit.add_arm(("c1", "group-2"))
    with pytest.raises(InputError, match="must be str or int"):
        bandit.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_loading_a_missing_folder_says_what_is_expected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nowhere: the folder does not exist; save one with"):
        LinUCB.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="empty is not a LinUCB folder: it has no config.json"):
        LinUCB.from_pretrained(tmp_path / "empty")


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
    for params in [{"alpha": -1}, {"l2": 0}, {"epsilon": 1.5}, {"softmax_temperature": 0}, {"refresh_every": 0},
                   {"alpha": None}, {"l2": np.inf}, {"refresh_every": 2.5}, {"seed": -1}]:
        name = next(iter(params))
        with pytest.raises(InputError, match=f"^{name} must be"):
            LinUCB().set_params(**params)
        with pytest.raises(InputError, match=f"^{name} must be"):  # checked when the first state is created
            LinUCB(**params).add_arm("c0")
    # Nothing bad was learned: the model is unchanged by the refused calls.
    assert bandit.n_updates_ == 5
    fresh = make_bandit()
    with pytest.raises(InputError, match="unknown arm"):
        fresh.partial_fit(np.ones((2, 3)), ["c0", "nope"], [0.0, 1.0])
    assert fresh.n_features_in_ is None  # a refused batch does not fix the context size either


# ------------------------------------------------------------- the scikit-learn contract
# LinUCB.fit(X, arms, rewards) needs the rewards as well as the served arms, so every scikit-learn check that calls
# fit(X, y) cannot apply to it. These are the checks of the contract that do not fit; the fit side of the contract
# (fit returns self, forgets what came before, is idempotent, sets n_features_in_) is tested by hand below.
# check_do_not_raise_errors_in_init_or_set_params is left out on purpose: set_params refuses a bad value, because
# serving reads the hyper-parameters on every event and there is no fit in between to catch it.
LINUCB_CHECKS = {
    "check_estimator_cloneable", "check_estimator_tags_renamed", "check_valid_tag_types", "check_estimator_repr",
    "check_no_attributes_set_in_init", "check_estimators_unfitted", "check_mixin_order",
    "check_parameters_default_constructible", "check_get_params_invariance", "check_set_params",
}


def check_name(check) -> str:
    return getattr(check, "func", check).__name__


LINUCB_CHECK_PARAMS = [
    pytest.param(estimator, check, id=check_name(check))
    for estimator, check in estimator_checks_generator(LinUCB(), legacy=True)
    if check_name(check) in LINUCB_CHECKS
]


def test_every_listed_sklearn_check_exists():
    assert {param.id for param in LINUCB_CHECK_PARAMS} == LINUCB_CHECKS


@pytest.mark.parametrize("estimator, check", LINUCB_CHECK_PARAMS)
@pytest.mark.filterwarnings("ignore:.*It is recommended to delay parameter validation until fit")
@pytest.mark.filterwarnings("error:Estimator's parameters changed")  # a refused set_params must change nothing
def test_sklearn_checks_that_apply(estimator, check):
    check(estimator)


def test_init_only_stores_hyper_parameters_and_a_new_bandit_is_unfitted():
    bandit = LinUCB(alpha=-1.0)  # checked later, when state is created or by set_params
    assert vars(bandit) == bandit.get_params()
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(bandit)
    with pytest.raises(NotFittedError, match="no arms"):  # also an InputError: one clear line for the user
        bandit.predict(np.ones((1, 3)))
    assert issubclass(NotFittedError, InputError)
    with pytest.raises(InputError, match="alpha must be"):
        bandit.add_arm("c0")
    assert vars(bandit) == bandit.get_params()  # the refused call created nothing

    bandit.set_params(alpha=1.0).add_arm("c0")
    check_is_fitted(bandit)  # a bandit with arms can serve, from the prior
    assert bandit.arms_ == ["c0"] and bandit.n_features_in_ is None


def test_set_params_refuses_a_bad_value_and_keeps_the_old_ones():
    X, arms, rewards = make_log()
    bandit = make_bandit(alpha=0.5, epsilon=0.1).partial_fit(X, arms, rewards)
    before = bandit.decision_function(X[:5])
    with pytest.raises(InputError, match="epsilon must be a probability"):
        bandit.set_params(alpha=2.0, epsilon=7)
    assert bandit.alpha == 0.5 and bandit.epsilon == 0.1  # neither value of the refused call got in
    np.testing.assert_array_equal(bandit.decision_function(X[:5]), before)
    # A valid change applies at once: with alpha=0 the score is the ridge prediction x . A^-1 b.
    bandit.set_params(alpha=0.0)
    ridge = np.linalg.solve(bandit.A_, bandit.b_[..., None])[..., 0]
    np.testing.assert_allclose(bandit.decision_function(X[:5]), X[:5] @ ridge.T, atol=1e-12)


def test_fit_matches_mabwiser_and_takes_its_arms_from_the_log():
    X, arms, rewards = make_log()
    arms[:4] = ["c2", "c0", "c2", "c3"]
    bandit = LinUCB(alpha=0.5, l2=2.0).fit(X, np.array(arms), rewards)
    assert bandit.arms_ == ["c2", "c0", "c3", "c1"]  # order of first appearance
    assert all(type(arm) is str for arm in bandit.arms_)  # numpy strings become plain keys
    assert bandit.n_features_in_ == 5 and bandit.n_updates_ == 300
    X_test = np.random.default_rng(1).normal(size=(20, 5))
    expected = mabwiser_scores(X, arms, rewards, X_test, alpha=0.5, l2=2.0)
    columns = [ARMS.index(arm) for arm in bandit.arms_]
    np.testing.assert_allclose(bandit.decision_function(X_test), expected[:, columns], rtol=0, atol=1e-9)


def test_fit_forgets_everything_before_and_partial_fit_first_is_fit():
    X, arms, rewards = make_log(n=200, d=3, seed=5)
    X_old, arms_old, rewards_old = make_log(n=50, d=7, seed=6)
    fresh = LinUCB(alpha=0.3).fit(X, arms, rewards)

    refitted = LinUCB(alpha=0.3).fit(X_old, arms_old, rewards_old)
    refitted.add_arm("extra")
    assert refitted.fit(X, arms, rewards) is refitted
    assert refitted.arms_ == fresh.arms_ and refitted.n_updates_ == 200 and refitted.n_features_in_ == 3
    np.testing.assert_array_equal(refitted.decision_function(X), fresh.decision_function(X))

    first = LinUCB(alpha=0.3).partial_fit(X, arms, rewards)
    np.testing.assert_array_equal(first.decision_function(X), fresh.decision_function(X))
    # Later batches must name known arms: a misspelt key in a log is an error, not a new arm.
    with pytest.raises(InputError, match="unknown arm 'c9'"):
        first.partial_fit(X[:1], ["c9"], [1.0])


def test_a_refused_fit_keeps_the_model():
    X, arms, rewards = make_log()
    bandit = make_bandit().partial_fit(X, arms, rewards)
    before = bandit.decision_function(X[:5])
    with pytest.raises(InputError, match="NaN or infinite"):
        bandit.fit(np.full((2, 3), np.nan), ["a", "b"], [0.0, 1.0])
    with pytest.raises(InputError, match="hashable"):
        bandit.fit(np.ones((2, 3)), ["a", {"b": 1}], [0.0, 1.0])
    with pytest.raises(InputError, match="one per row"):
        bandit.fit(np.ones((2, 3)), ["a"], [0.0, 1.0])
    np.testing.assert_array_equal(bandit.decision_function(X[:5]), before)
    assert bandit.arms_ == ARMS and bandit.n_updates_ == 300
