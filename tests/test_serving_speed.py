"""The decision path's shortcuts decide exactly as the plain code does."""

import numpy as np
import pytest

from studio.core.errors import InputError
from studio.learning.bandit import LinUCB
from studio.learning.eventlog import EventLog
from studio.learning.hybrid import HybridLinUCB
from studio.learning.policy import COLD_START_GROUP, TREATMENT, ServingPolicy
from studio.serving.config import ServeConfig


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_a_groups_cached_distribution_draws_the_same_arms_as_scoring_every_time(epsilon):
    """Two bandits with one seed, one scoring each context afresh, one keeping each group's distribution: through
    learning (one event and batches), a new arm, a retired arm and a hyper-parameter change, the same arms and
    propensities come out (ties included: at the start every arm ties)."""
    rng = np.random.default_rng(0)
    contexts = np.hstack([rng.normal(size=(3, 4)), np.ones((3, 1))])
    plain, cached = LinUCB(alpha=0.3, epsilon=epsilon, seed=7), LinUCB(alpha=0.3, epsilon=epsilon, seed=7)
    for bandit in (plain, cached):
        for arm in "abcd":
            bandit.add_arm(arm)
    served = {"plain": [], "cached": []}
    for step in range(400):
        group = int(rng.integers(3))
        a = plain.select_one(contexts[group])
        b = cached.select_one(contexts[group], context_key=group)
        served["plain"].append(a)
        served["cached"].append(b)
        reward = float(rng.random() < 0.2 + 0.2 * ("abcde".index(a[0]) == group))
        if step % 7 == 0:  # one event, Sherman-Morrison
            plain.update_one(contexts[group], a[0], reward)
            cached.update_one(contexts[group], b[0], reward)
        elif step % 25 == 0:  # a batch
            X = contexts[rng.integers(3, size=5)]
            arms, rewards = list(rng.choice(plain.arms_, size=5)), rng.random(5) < 0.3
            plain.partial_fit(X, arms, rewards)
            cached.partial_fit(X, arms, rewards)
        if step == 150:
            plain.add_arm("e")
            cached.add_arm("e")
        if step == 250:
            plain.remove_arm("b")
            cached.remove_arm("b")
        if step == 300:
            plain.set_params(alpha=0.1)
            cached.set_params(alpha=0.1)
    assert served["plain"] == served["cached"]
    assert len({arm for arm, _ in served["plain"]}) >= 3  # the run did explore


def test_the_policy_refuses_an_unknown_group_and_serves_the_cold_start_one():
    policy = ServingPolicy(2, seed=0)
    policy.sync_arms("mug", ["x", "y"])
    with pytest.raises(InputError, match="audience groups must be in"):
        policy.decide_one("mug", 5, TREATMENT)
    decision = policy.decide_one("mug", COLD_START_GROUP, TREATMENT)
    assert decision.arm in ("x", "y") and decision.policy == "linucb"
    reference = HybridLinUCB(n_contexts=3, **{k: policy.model.get_params()[k] for k in ("alpha", "l2", "arm_l2")},
                             seed=0)
    for arm in ("x", "y"):
        reference.add_arm(arm)
    assert reference.select_one(2, ["x", "y"]) == (decision.arm, decision.propensity)  # context 2: cold start


def test_sqlite_sync_sets_what_a_commit_waits_for_and_refuses_other_values(tmp_path):
    with EventLog(tmp_path / "a.db") as log:
        assert log._read("PRAGMA synchronous") == [(2,)]  # FULL: fsync before a commit returns
    with EventLog(tmp_path / "a.db", sqlite_sync="normal") as log:
        assert log._read("PRAGMA synchronous") == [(1,)]  # NORMAL: in the WAL file, fsync at checkpoints
    with pytest.raises(InputError, match="sqlite_sync must be one of full, normal"):
        EventLog(tmp_path / "a.db", sqlite_sync="off")
    with pytest.raises(InputError, match="sqlite_sync must be one of full, normal"):
        ServeConfig(db="x.db", cache="c", sqlite_sync="off").check()


def test_a_serving_writer_leaves_checkpoints_to_the_catch_up_connection(tmp_path):
    """A commit that crosses SQLite's ~1,000-page mark copies the write-ahead log into the database file itself
    (the default); a writer opened with autocheckpoint=False never does, and `checkpoint` on another connection
    does it instead."""
    rows = [{"impression_id": f"i{n:06d}", "user_id": f"u{n}", "product_id": "p", "creative_id": f"c{n % 6}",
             "arm": f"c{n % 6}", "propensity": 0.5, "bucket": "control", "group_id": n % 4} for n in range(50_000)]
    # (Both stay open: the last connection to close checkpoints whatever is left.)
    with EventLog(tmp_path / "auto.db") as auto, EventLog(tmp_path / "serving.db", autocheckpoint=False) as serving:
        auto.log_impressions(rows)
        serving.log_impressions(rows)
        copied = (tmp_path / "auto.db").stat().st_size
        assert copied > 4_000_000  # the commit checkpointed: the pages are in the database file
        assert (tmp_path / "serving.db").stat().st_size < copied / 10  # still only in the WAL file
        with EventLog(tmp_path / "serving.db") as catch_up:
            catch_up.checkpoint()
            assert (tmp_path / "serving.db").stat().st_size >= copied * 0.9
            assert catch_up.counts() == {"impressions": 50_000, "clicks": 0}
