"""Hybrid LinUCB: one taste model per audience group over creative features, shared by every product, plus each
creative's own correction (the hybrid model of Li et al., 2010, with one-hot group contexts).

For context (audience group) ``c`` and creative ``a`` with features ``f_a`` and an intercept, ``g_a = [f_a, 1]``::

    reward(c, a) = g_a . beta_c + mu_ac

``beta_c`` is shared by every creative of every product the group sees, so a creative never served starts from what
the group's taste model predicts for its features; ``mu_ac`` is the creative's own deviation, with the ridge prior
``arm_l2``: about ``arm_l2`` impressions of its own before its clicks outweigh the shared model. Both come from one
joint ridge regression, solved through its Schur complement from two sums per (creative, context), impressions ``n``
and rewards ``s`` (``k = arm_l2``)::

    M_c    = l2 I + sum_a (n k / (n + k)) g_a g_a^T          beta_c = M_c^-1 sum_a (s k / (n + k)) g_a
    mu_ac  = (s - n g_a . beta_c) / (n + k)
    var_ac = (k / (n + k))^2 g_a^T M_c^-1 g_a + 1 / (n + k)   (the prediction's posterior variance)
    score  = g_a . beta_c + mu_ac + alpha sqrt(var_ac)

Learning only adds to ``n`` and ``s``: a model rebuilt from an event log equals one that learned the same rewards as
they came, in any order. Features enter only when scores are computed, so rewards count even before a creative is
described, and a creative that leaves the candidate set keeps its evidence (for the shared model and if it returns).

Example::

    model = HybridLinUCB(n_contexts=5, alpha=0.25, seed=0)
    model.add_arm("c1", features=[0.3, -1.2, 0.4, 0.0, 0.1, 0.8])
    arm, propensity = model.select_one(2, ["c1", "c2"])   # context 2 (a group) over today's candidates
    model.partial_fit([2], [arm], [1.0])
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from studio.core.artefact import CONFIG_NAME, WEIGHTS_NAME, ArtefactError, load_artefact, save_artefact
from studio.core.errors import InputError
from studio.learning.bandit import LinUCB, draw_arms, serving_distribution
from studio.learning.estimator import CheckedParams, NotFittedError, checked_tensors, is_int, plain_params

FORMAT_VERSION = 1
HINT = "save one with HybridLinUCB.save_pretrained(folder) (studio serve writes one into its --snapshot folder)"


class HybridLinUCB(CheckedParams, BaseEstimator):
    """Hybrid LinUCB over a growing set of described arms (creatives) and a fixed set of contexts, scikit-learn style.

    Args:
        n_contexts: how many contexts (audience groups, plus a cold-start one) rewards and decisions name, 0..n-1.
        alpha: exploration strength (the width of the confidence bound).
        l2: ridge prior of each context's shared taste model ``beta_c``.
        arm_l2: ridge prior of each creative's own deviation: the impressions it takes before a creative's own
            rewards outweigh the shared model. Click rewards have a variance of about CTR (~0.03); creatives the
            taste model mis-predicts by ~0.005 in CTR need 0.03 / 0.005^2 ~ 1,000 impressions to show it.
        epsilon, softmax_temperature: the serving distribution (see `studio.learning.bandit.serving_distribution`).
        seed: seeds the draws of `sample` and `select_one`.

    Learned attributes: ``arms_`` (keys, in row order of the arrays), ``n_features_in_`` (feature count, None until
    the first description), ``features_`` ``(K, d)``, ``described_`` ``(K,)`` bool, ``n_`` and ``s_`` ``(K, C)``
    impressions and summed rewards per (arm, context), ``n_updates_``.
    """

    def __init__(self, n_contexts: int = 1, alpha: float = 0.25, l2: float = 1.0, arm_l2: float = 1000.0,
                 epsilon: float = 0.0, softmax_temperature: float | None = None, seed: int | None = None) -> None:
        self.n_contexts = n_contexts
        self.alpha = alpha
        self.l2 = l2
        self.arm_l2 = arm_l2
        self.epsilon = epsilon
        self.softmax_temperature = softmax_temperature
        self.seed = seed

    def _params_changed(self) -> None:
        if hasattr(self, "arms_"):
            self._changed()

    # -- arms --------------------------------------------------------------------------------------------------------
    def add_arm(self, key: Hashable, features: Any = None) -> "HybridLinUCB":
        """Know arm `key` (idempotent) and, with `features`, describe it (a known arm's description is replaced)."""
        if not hasattr(self, "arms_"):
            self._start()
        if isinstance(key, np.generic):
            key = key.item()
        try:
            hash(key)
        except TypeError:
            raise InputError(f"arm keys must be hashable (a creative id), got {type(key).__name__}") from None
        if key in self._index and features is None:
            return self  # nothing changes: the scores and the served distributions stay valid
        if key not in self._index:
            self._index[key] = len(self.arms_)
            self.arms_.append(key)
            width = self.n_features_in_ or 0
            self.features_ = np.vstack([self.features_, np.zeros((1, width))])
            self.described_ = np.append(self.described_, False)
            self.n_ = np.vstack([self.n_, np.zeros((1, self.n_contexts))])
            self.s_ = np.vstack([self.s_, np.zeros((1, self.n_contexts))])
        if features is not None:
            vector = self._check_features(features)
            row = self._index[key]
            self.features_[row], self.described_[row] = vector, True
        self._changed()
        return self

    def has_features(self, key: Hashable) -> bool:
        row = getattr(self, "_index", {}).get(key)
        return row is not None and bool(self.described_[row])

    # -- learning ----------------------------------------------------------------------------------------------------
    def fit(self, contexts: Any, arms: Sequence[Hashable], rewards: Any) -> "HybridLinUCB":
        """Forget every reward (arms and their features stay) and learn these."""
        if not hasattr(self, "arms_"):
            self._start()
        self.n_[:], self.s_[:], self.n_updates_ = 0.0, 0.0, 0
        return self.partial_fit(contexts, arms, rewards)

    def partial_fit(self, contexts: Any, arms: Sequence[Hashable], rewards: Any) -> "HybridLinUCB":
        """Learn rewards ``(n,)`` of arms (known keys) served in contexts ``(n,)``; arms unknown so far are added."""
        contexts = self._check_contexts(contexts)
        arms = list(arms)
        rewards = LinUCB._check_rewards(rewards, len(contexts))
        if len(arms) != len(contexts):
            raise InputError(f"arms must hold one key per context ({len(contexts)}), got {len(arms)}")
        for key in dict.fromkeys(arms):
            if key not in getattr(self, "_index", {}):
                self.add_arm(key)
        rows = np.fromiter((self._index[key] for key in arms), dtype=np.int64, count=len(arms))
        np.add.at(self.n_, (rows, contexts), 1.0)
        np.add.at(self.s_, (rows, contexts), rewards)
        self.n_updates_ += len(rows)
        self._changed()
        return self

    # -- scoring and serving -----------------------------------------------------------------------------------------
    def predict_reward(self, contexts: Any, arms: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
        """Expected reward and its standard error, each ``(n, K)``, of candidate `arms` in each context."""
        mean, var = self._tables()
        rows, contexts = self._rows(arms), self._check_contexts(contexts)
        return mean[rows][:, contexts].T, np.sqrt(var[rows][:, contexts].T)

    def decision_function(self, contexts: Any, arms: Sequence[Hashable]) -> np.ndarray:
        """UCB scores ``(n, K)`` of candidate `arms` (columns in that order) in each context."""
        mean, se = self.predict_reward(contexts, arms)
        return mean + self.alpha * se

    def predict_proba(self, contexts: Any, arms: Sequence[Hashable]) -> np.ndarray:
        """The serving distribution ``(n, K)`` over `arms`: what `sample` draws from, and what off-policy evaluation
        needs as the target policy."""
        return serving_distribution(self.decision_function(contexts, arms), self.epsilon, self.softmax_temperature)

    def sample(self, contexts: Any, arms: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
        """Draw an arm per context: (keys ``(n,)`` object, propensities ``(n,)``)."""
        probabilities = self.predict_proba(contexts, arms)
        chosen = draw_arms(probabilities, self._rng)
        keys = np.empty(len(arms), dtype=object)
        keys[:] = list(arms)
        return keys[chosen], probabilities[np.arange(len(chosen)), chosen]

    def select_one(self, context: int, arms: Sequence[Hashable], cache_key: Hashable | None = None
                   ) -> tuple[Hashable, float]:
        """Serve one request: (arm key, propensity), the same policy as `sample`.

        With `cache_key`, the distribution is kept until the model next changes or a different `arms` object is
        passed under that key (callers replace their candidate list when it changes), which makes repeated requests
        cheap: the serving hot path.
        """
        cached = self._served.get(cache_key) if cache_key is not None and hasattr(self, "_served") else None
        if cached is None or cached[0] is not arms:
            scores = self.decision_function([context], arms)[0]
            if self.epsilon == 0.0 and self.softmax_temperature is None:
                cached = (arms, np.flatnonzero(scores == scores.max()), None)
            else:
                probabilities = serving_distribution(scores[None], self.epsilon, self.softmax_temperature)[0]
                cached = (arms, probabilities, np.cumsum(probabilities))
            if cache_key is not None:
                self._served[cache_key] = cached
        _, picks, cumulative = cached
        if cumulative is None:
            chosen = int(picks[0]) if len(picks) == 1 else int(picks[self._rng.integers(len(picks))])
            return arms[chosen], 1.0 / len(picks)
        chosen = min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")),
                     len(picks) - 1)
        return arms[chosen], float(picks[chosen])

    def max_difference(self, other: "HybridLinUCB") -> float:
        """The largest difference between two models' learned state (sums, features, scores), matched by arm key;
        ``inf`` when they know different arms or describe different ones. A worker that learned as events came and
        one rebuilt from the log must give 0 (up to rounding)."""
        if sorted(map(str, self.arms_)) != sorted(map(str, other.arms_)):
            return float("inf")
        theirs = np.array([other._index[key] for key in self.arms_], dtype=np.int64)
        if (self.described_ != other.described_[theirs]).any():
            return float("inf")
        pairs = [(self.n_, other.n_[theirs]), (self.s_, other.s_[theirs]), (self.features_, other.features_[theirs]),
                 *((mine, their[theirs]) for mine, their in zip(self._tables(), other._tables()))]
        return max((float(np.abs(a - b).max()) for a, b in pairs if a.size), default=0.0)

    # -- persistence -------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json`` (hyper-parameters, arm keys) and ``model.safetensors`` (features and sums), atomically."""
        if not hasattr(self, "arms_"):
            raise NotFittedError("nothing to save: the model knows no arm yet (add_arm or partial_fit first)")
        for key in self.arms_:
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise InputError(f"cannot save arm key {key!r}: arm keys must be str or int to be stored in config.json")
        config = {**plain_params(self), "arms_": list(self.arms_), "n_features_in_": self.n_features_in_,
                  "n_updates_": self.n_updates_}
        tensors = {"n": self.n_, "s": self.s_, "described": self.described_.astype(np.uint8)}
        if self.n_features_in_:
            tensors["features"] = self.features_
        save_artefact(save_directory, type(self), FORMAT_VERSION, config, tensors)

    @classmethod
    def from_pretrained(cls, pretrained_directory: str | os.PathLike) -> "HybridLinUCB":
        """Load a model written by `save_pretrained`; a damaged, foreign or newer folder is one ArtefactError."""
        folder = Path(pretrained_directory)
        config, tensors = load_artefact(folder, cls, FORMAT_VERSION, hint=HINT)
        try:
            model = cls(**{name: config[name] for name in cls._get_param_names()})
            model._start()
            arms, d = config["arms_"], config["n_features_in_"]
            if not isinstance(arms, list) or any(isinstance(a, bool) or not isinstance(a, (str, int)) for a in arms):
                raise ValueError("arms_ must be a list of str or int keys")
            if d is not None and not (is_int(d) and d >= 1):
                raise ValueError(f"n_features_in_ must be an int >= 1 or null, got {d!r}")
            shapes = {"n": (len(arms), model.n_contexts), "s": (len(arms), model.n_contexts),
                      "described": (len(arms),), **({"features": (len(arms), d)} if d else {})}
            state = checked_tensors(tensors, shapes, folder / WEIGHTS_NAME, HINT)
            for key in arms:
                model.add_arm(key)
            model.n_features_in_ = d
            model.n_, model.s_ = state["n"], state["s"]
            model.described_ = state["described"].astype(bool)
            model.features_ = state["features"] if d else np.zeros((len(arms), 0))
            model.n_updates_ = int(config["n_updates_"])
        except KeyError as error:
            raise ArtefactError(f"{folder / CONFIG_NAME} is damaged (missing {error}); {HINT}") from None
        except (TypeError, ValueError) as error:
            raise ArtefactError(f"{folder / CONFIG_NAME} is damaged ({error}); {HINT}") from None
        model._changed()
        return model

    # -- internals ---------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._check_params()
        self.arms_: list[Hashable] = []
        self._index: dict[Hashable, int] = {}
        self.n_features_in_: int | None = None
        self.features_ = np.zeros((0, 0))
        self.described_ = np.zeros(0, dtype=bool)
        self.n_ = np.zeros((0, self.n_contexts))
        self.s_ = np.zeros((0, self.n_contexts))
        self.n_updates_ = 0
        self._rng = np.random.default_rng(self.seed)
        self._changed()

    def _changed(self) -> None:
        self._cached_tables = None
        self._served: dict[Hashable, tuple] = {}

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance ``(K, C)`` of every (arm, context), recomputed after a change."""
        if not getattr(self, "arms_", None):
            raise (NotFittedError if not hasattr(self, "arms_") else InputError)("the model knows no arm yet")
        if self._cached_tables is None:
            k = float(self.arm_l2)
            g = np.hstack([self.features_, np.ones((len(self.arms_), 1))])  # (K, m)
            n, s = self.n_, self.s_
            weight, target = n * k / (n + k), s * k / (n + k)
            m = np.eye(g.shape[1]) * self.l2 + np.einsum("ka,kc,kb->cab", g, weight, g)
            m_inv = np.linalg.inv(m)
            beta = np.einsum("cab,cb->ca", m_inv, np.einsum("ka,kc->ca", g, target))
            shared = g @ beta.T
            mean = shared + (s - n * shared) / (n + k)
            var = (k / (n + k)) ** 2 * np.einsum("ka,cab,kb->kc", g, m_inv, g) + 1.0 / (n + k)
            self._cached_tables = (mean, var)
        return self._cached_tables

    def _rows(self, arms: Sequence[Hashable]) -> np.ndarray:
        if not len(arms):
            raise InputError("no candidate arms to score")
        index = getattr(self, "_index", {})
        try:
            return np.fromiter((index[key] for key in arms), dtype=np.int64, count=len(arms))
        except KeyError as error:
            raise InputError(f"unknown arm {error.args[0]!r}; add it with add_arm first") from None

    def _check_contexts(self, contexts: Any) -> np.ndarray:
        values = np.asarray(contexts)
        if values.ndim != 1 or not (values.dtype.kind in "iu" or (values.dtype.kind == "f" and len(values) == 0)):
            raise InputError(f"contexts must be a 1-D array of whole numbers (context ids), got {values!r:.80}")
        if len(values) and (values.min() < 0 or values.max() >= self.n_contexts):
            raise InputError(f"contexts must be in 0..{self.n_contexts - 1}")
        return values.astype(np.int64)

    def _check_features(self, features: Any) -> np.ndarray:
        try:
            vector = np.asarray(features, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise InputError(f"arm features must be numbers ({error})") from None
        if vector.ndim != 1 or not len(vector) or not np.isfinite(vector).all():
            raise InputError(f"arm features must be a finite, non-empty 1-D vector, got shape {vector.shape}")
        if self.n_features_in_ is None:
            self.n_features_in_ = len(vector)
            self.features_ = np.zeros((len(self.arms_), len(vector)))
        elif len(vector) != self.n_features_in_:
            raise InputError(f"arm features must have {self.n_features_in_} values (as the first arm's), got {len(vector)}")
        return vector

    def _check_params(self) -> None:
        LinUCB(alpha=self.alpha, l2=self.l2, epsilon=self.epsilon, softmax_temperature=self.softmax_temperature,
               seed=self.seed)._check_params()
        if not (is_int(self.n_contexts) and self.n_contexts >= 1):
            raise InputError(f"n_contexts must be an int >= 1, got {self.n_contexts!r}")
        if hasattr(self, "n_") and self.n_contexts != self.n_.shape[1]:
            raise InputError("n_contexts is fixed once the model has state")
        if not (isinstance(self.arm_l2, (int, float)) and not isinstance(self.arm_l2, bool)
                and np.isfinite(self.arm_l2) and self.arm_l2 > 0):
            raise InputError(f"arm_l2 must be a finite number > 0 (impressions before a creative's own clicks "
                             f"outweigh the shared model), got {self.arm_l2!r}")
