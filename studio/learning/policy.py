"""The serving policy: which creative a request gets, with the probability it was chosen with.

One `ServingPolicy` is what both `studio serve` (one request at a time) and `studio simulate` (mini-batches) run, so
the simulator tests the production code path:

- a user is bucketed by a stable hash (`studio.learning.abtest.assign_bucket`) into control or treatment;
- treatment: one LinUCB per key (a product, or a product and placement) over that key's creatives, context = the
  user's audience group vector plus an intercept (unknown users: the cold-start group, intercept only);
- control: a uniformly random creative, or a fixed one (``control="first"``: the first arm, e.g. the cache's best
  predicted CTR), with propensity 1/K or 1;
- learning is by sums (``A += x x^T``, ``b += r x``), so a policy rebuilt from the event log's rewards equals one that
  learned them as they came (`apply_rewards`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from studio.core.errors import InputError
from studio.learning.abtest import assign_bucket
from studio.learning.bandit import LinUCB

CONTROL, TREATMENT = "control", "treatment"
COLD_START_GROUP = -1  # a user with no features: context = intercept only (the centre of the standardised groups)
CONTROL_POLICIES = ("uniform", "first")


@dataclass(frozen=True)
class Decision:
    """One served creative: the arm, the probability the policy gave it, and which policy decided."""

    arm: Hashable
    propensity: float
    bucket: str
    policy: str


class ServingPolicy:
    """Bucketing, a LinUCB per key for treatment and a control policy, over changing sets of creatives.

    Args:
        group_vectors: ``(K_groups, d)`` audience group centres (`AudienceClustering.group_vectors()`).
        alpha, l2, epsilon, softmax_temperature: the LinUCB hyper-parameters of every key's bandit.
        salt: names the experiment for bucketing; treatment_share: the share of users in treatment.
        control: "uniform" (a random creative) or "first" (always the first arm of the key).
        seed: bandit seeds are ``seed + i`` for the i-th key created (None: unseeded); rng: the control draws.
    """

    def __init__(self, group_vectors: np.ndarray, *, alpha: float = 0.25, l2: float = 1.0, epsilon: float = 0.0,
                 softmax_temperature: float | None = None, salt: str = "studio", treatment_share: float = 0.5,
                 control: str = "uniform", seed: int | None = None,
                 rng: np.random.Generator | None = None) -> None:
        if control not in CONTROL_POLICIES:
            raise InputError(f"control must be one of {', '.join(CONTROL_POLICIES)}, got {control!r}")
        if not 0.0 < treatment_share < 1.0:
            raise InputError(f"treatment_share must be in (0, 1), got {treatment_share!r}")
        vectors = np.asarray(group_vectors, dtype=np.float64)
        if vectors.ndim != 2 or not np.isfinite(vectors).all():
            raise InputError("group_vectors must be a finite (n_groups, n_features) array")
        # Row g is group g's context; the last row is the cold-start context (zeros + intercept).
        self.contexts = np.vstack([np.hstack([vectors, np.ones((len(vectors), 1))]),
                                   np.hstack([np.zeros(vectors.shape[1]), 1.0])])
        self.n_groups = len(vectors)
        self.params = dict(alpha=alpha, l2=l2, epsilon=epsilon, softmax_temperature=softmax_temperature)
        LinUCB(**self.params)._check_params()
        self.salt, self.control, self.seed = salt, control, seed
        self.weights = {CONTROL: 1.0 - treatment_share, TREATMENT: treatment_share}
        self.bandits: dict[Hashable, LinUCB] = {}
        self.rng = rng if rng is not None else np.random.default_rng(seed)

    # -- who -----------------------------------------------------------------------------------------------------
    def bucket(self, user_id: str | int) -> str:
        return assign_bucket(user_id, self.salt, self.weights)

    def context(self, groups: np.ndarray | int) -> np.ndarray:
        """Bandit contexts of audience groups (``COLD_START_GROUP`` for unknown users)."""
        groups = np.asarray(groups, dtype=np.int64)
        if np.any((groups < COLD_START_GROUP) | (groups >= self.n_groups)):
            raise InputError(f"audience groups must be in 0..{self.n_groups - 1} or {COLD_START_GROUP} (cold start)")
        return self.contexts[np.where(groups == COLD_START_GROUP, self.n_groups, groups)]

    # -- arms ----------------------------------------------------------------------------------------------------
    def arms(self, key: Hashable) -> list:
        bandit = self.bandits.get(key)
        return list(bandit.arms_) if bandit is not None else []

    def sync_arms(self, key: Hashable, arms: Sequence[Hashable]) -> tuple[list, list]:
        """Make `key`'s arms exactly `arms` (new creatives join with the prior, retired ones leave); (added, removed)."""
        bandit = self.bandits.get(key)
        if bandit is None:
            if not arms:
                return [], []
            seed = None if self.seed is None else self.seed + len(self.bandits)
            bandit = self.bandits[key] = LinUCB(**self.params, seed=seed)
        wanted = list(dict.fromkeys(arms))
        current = list(getattr(bandit, "arms_", []))
        removed = [arm for arm in current if arm not in set(wanted)]
        added = [arm for arm in wanted if arm not in set(current)]
        for arm in removed:
            bandit.remove_arm(arm)
        for arm in added:
            bandit.add_arm(arm)
        return added, removed

    # -- deciding ------------------------------------------------------------------------------------------------
    def decide_one(self, key: Hashable, group: int, bucket: str) -> Decision:
        """The creative for one request (the serving hot path)."""
        bandit = self._bandit(key)
        if bucket == TREATMENT:
            if not (isinstance(group, (int, np.integer)) and COLD_START_GROUP <= group < self.n_groups):
                self.context(group)  # raises the one clear error
            row = self.n_groups if group == COLD_START_GROUP else int(group)
            # Contexts are one per group: the bandit keeps each group's distribution until it next changes.
            arm, propensity = bandit.select_one(self.contexts[row], context_key=row)
            return Decision(arm, float(propensity), TREATMENT, "linucb")
        arms = bandit.arms_
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
            arms[mine], propensity[mine] = self._bandit(_plain(key)).sample(self.context(groups[mine]))
        control = np.flatnonzero(~treat)
        if len(control):
            sizes = np.array([len(self._bandit(_plain(key)).arms_) for key in keys[control]])
            if self.control == "first":
                picks, propensity[control] = np.zeros(len(control), dtype=np.int64), 1.0
            else:
                # One draw for the whole batch when every key has as many arms (the common case), else per row.
                picks = (self.rng.integers(sizes[0], size=len(control)) if np.all(sizes == sizes[0])
                         else np.array([self.rng.integers(size) for size in sizes]))
                propensity[control] = 1.0 / sizes
            for row, pick in zip(control, picks):
                arms[row] = self.bandits[_plain(keys[row])].arms_[int(pick)]
        return arms, propensity

    def probabilities(self, key: Hashable, groups: np.ndarray) -> np.ndarray:
        """The treatment policy's distribution ``(n, K)`` over `key`'s arms (columns in ``arms(key)``), for OPE."""
        return self._bandit(key).predict_proba(self.context(groups))

    # -- learning ------------------------------------------------------------------------------------------------
    def learn(self, key: Hashable, groups: np.ndarray, arms: Sequence[Hashable], rewards: np.ndarray) -> None:
        """Learn served events of one key (arms must be current arms of `key`)."""
        if len(arms):
            self._bandit(key).partial_fit(self.context(groups), list(arms), np.asarray(rewards, dtype=np.float64))

    def apply_rewards(self, rewards: pd.DataFrame, key_of=None) -> int:
        """Learn rows of `EventLog.rewards_since` (treatment bucket only); returns how many were learned.

        An arm the policy does not know yet was served by another worker: it joins (with the prior) before its
        rewards are learned, so every worker folds the same rows. `key_of(product_id, placement)` names the bandit.
        """
        rows = rewards[rewards["bucket"] == TREATMENT]
        key_of = key_of or (lambda product, placement: product)
        learned = 0
        for (product, placement), part in rows.groupby(["product_id", rows["placement"].fillna("")], sort=False):
            key = key_of(product, placement)
            bandit = self.bandits.get(key)
            known = set(bandit.arms_) if bandit is not None and hasattr(bandit, "arms_") else set()
            new = [arm for arm in dict.fromkeys(part["arm"]) if arm not in known]
            if new:
                self.sync_arms(key, [*self.arms(key), *new])
            self.learn(key, part["group_id"].to_numpy(), part["arm"].tolist(), part["reward"].to_numpy())
            learned += len(part)
        return learned

    def _bandit(self, key: Hashable) -> LinUCB:
        bandit = self.bandits.get(key)
        if bandit is None or not getattr(bandit, "arms_", None):
            raise InputError(f"no creatives to serve for {key!r}")
        return bandit


def _plain(key):
    """A numpy scalar key as the Python value the bandits are keyed by."""
    return key.item() if isinstance(key, np.generic) else key
