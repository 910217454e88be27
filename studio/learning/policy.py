"""The serving policy: which creative a request gets, with the probability it was chosen with.

One `ServingPolicy` is what both `studio serve` (one request at a time) and `studio simulate` (mini-batches) run, so
the simulator tests the production code path:

- a user is bucketed by a stable hash (`studio.learning.abtest.assign_bucket`) into control or treatment;
- treatment: one hybrid LinUCB (`studio.learning.hybrid.HybridLinUCB`) over every creative of every key (a product, or
  a product and placement), context = the user's audience group (unknown users: a cold-start context of their own).
  Each group's taste model over the creatives' backdrop features is shared by all products, so a new creative starts
  from what its features predict; each creative's own clicks correct it. A key's candidates are its current creatives;
- control: a uniformly random creative, or a fixed one (``control="first"``: the first arm, e.g. the cache's best
  predicted CTR), with propensity 1/K or 1;
- learning is by sums (impressions and clicks per creative and group), so a policy rebuilt from the event log's
  rewards equals one that learned them as they came (`apply_rewards`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from studio.core.errors import InputError
from studio.learning.abtest import assign_bucket
from studio.learning.hybrid import HybridLinUCB

CONTROL, TREATMENT = "control", "treatment"
COLD_START_GROUP = -1  # a user with no features: a context of its own
CONTROL_POLICIES = ("uniform", "first")


@dataclass(frozen=True)
class Decision:
    """One served creative: the arm, the probability the policy gave it, and which policy decided."""

    arm: Hashable
    propensity: float
    bucket: str
    policy: str


class ServingPolicy:
    """Bucketing, one hybrid LinUCB for treatment and a control policy, over changing sets of creatives per key.

    Args:
        n_groups: how many audience groups (`AudienceClustering.n_groups_`); 0 serves everyone as cold start.
        alpha, l2, arm_l2, epsilon, softmax_temperature: the hybrid LinUCB's hyper-parameters.
        salt: names the experiment for bucketing; treatment_share: the share of users in treatment.
        control: "uniform" (a random creative) or "first" (always the first arm of the key).
        seed: seeds the bandit's draws; rng: the control draws (default: seeded by `seed`).
    """

    def __init__(self, n_groups: int, *, alpha: float = 0.25, l2: float = 1.0, arm_l2: float = 1000.0,
                 epsilon: float = 0.0, softmax_temperature: float | None = None, salt: str = "studio",
                 treatment_share: float = 0.5, control: str = "uniform", seed: int | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if control not in CONTROL_POLICIES:
            raise InputError(f"control must be one of {', '.join(CONTROL_POLICIES)}, got {control!r}")
        if not 0.0 < treatment_share < 1.0:
            raise InputError(f"treatment_share must be in (0, 1), got {treatment_share!r}")
        if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 0:
            raise InputError(f"n_groups must be a whole number >= 0, got {n_groups!r}")
        self.n_groups = int(n_groups)
        self.model = HybridLinUCB(n_contexts=self.n_groups + 1, alpha=alpha, l2=l2, arm_l2=arm_l2, epsilon=epsilon,
                                  softmax_temperature=softmax_temperature, seed=seed)
        self.model._start()  # checks the hyper-parameters now, not at the first request
        self.salt, self.control, self.seed = salt, control, seed
        self.weights = {CONTROL: 1.0 - treatment_share, TREATMENT: treatment_share}
        self.candidates: dict[Hashable, tuple] = {}  # key -> its creatives (a new tuple whenever they change)
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    # -- who -----------------------------------------------------------------------------------------------------
    def bucket(self, user_id: str | int) -> str:
        return assign_bucket(user_id, self.salt, self.weights)

    def context(self, groups: np.ndarray | int) -> np.ndarray:
        """The bandit's context ids of audience groups (``COLD_START_GROUP`` -> the last one)."""
        groups = np.asarray(groups, dtype=np.int64)
        if np.any((groups < COLD_START_GROUP) | (groups >= self.n_groups)):
            raise InputError(f"audience groups must be in 0..{self.n_groups - 1} or {COLD_START_GROUP} (cold start)")
        return np.where(groups == COLD_START_GROUP, self.n_groups, groups)

    # -- arms ----------------------------------------------------------------------------------------------------
    @property
    def keys(self) -> list:
        return list(self.candidates)

    def arms(self, key: Hashable) -> list:
        return list(self.candidates.get(key, ()))

    def sync_arms(self, key: Hashable, arms: Sequence[Hashable],
                  features: Mapping[Hashable, np.ndarray] | None = None) -> tuple[list, list]:
        """Make `key`'s candidates exactly `arms`; (added, removed). New creatives join with what their `features`
        predict (see `describe`); retired ones stop being served but keep their evidence."""
        self.describe(features or {})
        wanted = tuple(dict.fromkeys(_plain(arm) for arm in arms))
        current = self.candidates.get(key, ())
        if wanted == current:
            return [], []  # the catch-up tick's common case: every arm is known, nothing to compare
        for arm in wanted:
            self.model.add_arm(arm)
        self.candidates[key] = wanted
        before, after = set(current), set(wanted)
        return [arm for arm in wanted if arm not in before], [arm for arm in current if arm not in after]

    def describe(self, features: Mapping[Hashable, np.ndarray]) -> None:
        """Give creatives their feature vectors (`studio.imaging.descriptors.backdrop_features`)."""
        for arm, vector in features.items():
            self.model.add_arm(_plain(arm), vector)

    def described(self) -> frozenset:
        """The creatives that have features (a copy: safe to read on another thread)."""
        model = self.model
        return frozenset(arm for arm, flag in zip(getattr(model, "arms_", []), getattr(model, "described_", []))
                         if flag)

    def undescribed(self, arms: Sequence[Hashable]) -> list:
        """The creatives among `arms` that have no features yet."""
        return [arm for arm in dict.fromkeys(arms) if not self.model.has_features(arm)]

    def known_arms(self) -> list:
        return list(getattr(self.model, "arms_", []))

    # -- deciding ------------------------------------------------------------------------------------------------
    def decide_one(self, key: Hashable, group: int, bucket: str) -> Decision:
        """The creative for one request (the serving hot path)."""
        arms = self._candidates(key)
        if bucket == TREATMENT:
            if not (isinstance(group, (int, np.integer)) and COLD_START_GROUP <= group < self.n_groups):
                self.context(group)  # raises the one clear error
            row = self.n_groups if group == COLD_START_GROUP else int(group)
            # The distribution per (key, group) is kept until the model learns or the key's candidates change.
            arm, propensity = self.model.select_one(row, arms, cache_key=(key, row))
            return Decision(arm, float(propensity), TREATMENT, "linucb")
        if self.control == "first":
            return Decision(arms[0], 1.0, CONTROL, "first")
        return Decision(arms[int(self.rng.integers(len(arms)))], 1.0 / len(arms), CONTROL, "uniform")

    def decide(self, keys: np.ndarray, groups: np.ndarray, buckets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batched `decide_one` for arrays of requests: (arms (n,) object, propensities (n,)).

        Treatment rows are decided per key (in sorted key order), then every control row in one draw, so a
        batch consumes the random streams in a fixed order.
        """
        keys, groups, buckets = np.asarray(keys), np.asarray(groups), np.asarray(buckets)
        arms = np.empty(len(keys), dtype=object)
        propensity = np.zeros(len(keys))
        treat = buckets == TREATMENT
        for key in np.unique(keys[treat]):
            mine = np.flatnonzero(treat & (keys == key))
            arms[mine], propensity[mine] = self.model.sample(self.context(groups[mine]), self._candidates(_plain(key)))
        control = np.flatnonzero(~treat)
        if len(control):
            sizes = np.array([len(self._candidates(_plain(key))) for key in keys[control]])
            if self.control == "first":
                picks, propensity[control] = np.zeros(len(control), dtype=np.int64), 1.0
            else:
                # One draw for the whole batch when every key has as many arms (the common case), else per row.
                picks = (self.rng.integers(sizes[0], size=len(control)) if np.all(sizes == sizes[0])
                         else np.array([self.rng.integers(size) for size in sizes]))
                propensity[control] = 1.0 / sizes
            for row, pick in zip(control, picks):
                arms[row] = self.candidates[_plain(keys[row])][int(pick)]
        return arms, propensity

    def probabilities(self, key: Hashable, groups: np.ndarray) -> np.ndarray:
        """The treatment policy's distribution ``(n, K)`` over `key`'s arms (columns in ``arms(key)``), for OPE."""
        return self.model.predict_proba(self.context(groups), self._candidates(key))

    def estimates(self, key: Hashable) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
        """(arms, expected reward, its standard error, impressions learned), each array ``(contexts, K)``, of `key`'s
        candidates in every context (rows: groups 0..n-1, then cold start)."""
        arms = self._candidates(key)
        mean, se = self.model.predict_reward(np.arange(self.n_groups + 1), arms)
        rows = [self.model.arms_.index(arm) for arm in arms]
        return list(arms), mean, se, self.model.n_[rows].T

    # -- learning ------------------------------------------------------------------------------------------------
    def learn(self, groups: np.ndarray, arms: Sequence[Hashable], rewards: np.ndarray) -> None:
        """Learn served events of either bucket (an arm not known yet joins the model, undescribed).

        The control bucket's impressions are uniform draws, independent of the model, so they are as valid for its
        regression as the treatment bucket's own: learning from both halves the data each decision waits for.
        """
        if len(arms):
            self.model.partial_fit(self.context(groups), [_plain(arm) for arm in arms],
                                   np.asarray(rewards, dtype=np.float64))

    def apply_rewards(self, rewards: pd.DataFrame, key_of=None) -> int:
        """Learn rows of `EventLog.rewards_since` (both buckets; see `learn`); returns how many were learned.

        Every key seen is registered (with no candidates until `sync_arms` gives it its creatives), so a worker
        follows the cache of every product any worker served. `key_of(product_id, placement)` names the key.
        """
        key_of = key_of or (lambda product, placement: product)
        for product, placement in rewards[["product_id", "placement"]].fillna("").drop_duplicates().itertuples(
                index=False):
            self.candidates.setdefault(key_of(product, placement), ())
        self.learn(rewards["group_id"].to_numpy(), rewards["arm"].tolist(), rewards["reward"].to_numpy())
        return len(rewards)

    def _candidates(self, key: Hashable) -> tuple:
        arms = self.candidates.get(key)
        if not arms:
            raise InputError(f"no creatives to serve for {key!r}")
        return arms


def _plain(key):
    """A numpy scalar key as the Python value the bandits are keyed by."""
    return key.item() if isinstance(key, np.generic) else key
