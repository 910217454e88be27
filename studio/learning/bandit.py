"""LinUCB contextual bandit: one ridge regression per arm, an upper confidence bound for exploration.

Each arm ``k`` keeps ``A_k = l2 * I + sum x x^T`` and ``b_k = sum r x``. Its score for a context ``x`` is::

    theta_k = A_k^-1 b_k
    score_k(x) = x . theta_k + alpha * sqrt(x^T A_k^-1 x)

which is the same definition as MABWiser's ``LearningPolicy.LinUCB(alpha, l2_lambda)`` (Li et al., 2010).

The per-arm state is stacked into ``(K, d, d)`` and ``(K, d)`` arrays so that scoring every arm is one ``einsum``.
Serving is one event at a time, so :meth:`LinUCB.select_one` and :meth:`LinUCB.update_one` avoid the batch
machinery; single updates use Sherman-Morrison on the cached inverse, and the inverse is recomputed from ``A``
every ``refresh_every`` updates so rounding errors cannot accumulate.

Example::

    bandit = LinUCB(alpha=0.5, epsilon=0.05, seed=0)
    for creative_id in ["c1", "c2", "c3"]:
        bandit.add_arm(creative_id)
    arm, propensity = bandit.select_one(x)        # serve, and log the propensity
    bandit.update_one(x, arm, reward=1.0)         # learn from the click
    bandit.save_pretrained("runs/bandit")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from studio.core.atomic import write_file
from studio.core.errors import InputError, ModelNotFoundError

CONFIG_NAME = "config.json"
STATE_NAME = "state.npz"
FORMAT_VERSION = 1


class LinUCB(BaseEstimator):
    """Disjoint LinUCB over a changing set of arms (creative ids), in scikit-learn style.

    Args:
        alpha: exploration strength; the width of the confidence bound added to each arm's predicted reward.
        l2: ridge regularisation; every arm starts from ``A = l2 * I``.
        epsilon: probability of serving a uniformly random arm instead of the best one, in [0, 1].
        softmax_temperature: if set, :meth:`sample` draws from ``softmax(scores / temperature)`` instead of
            the epsilon mix. Scores are in reward units (e.g. click probability), so temperatures are small.
        refresh_every: recompute every ``A^-1`` from ``A`` after this many Sherman-Morrison updates.
        seed: seed of the random generator used by :meth:`sample` and :meth:`select_one`.

    Learned attributes:
        arms_: arm keys, in column order of :meth:`decision_function` and :meth:`predict_proba`.
        n_features_in_: context dimensionality ``d``, fixed by the first context accepted.
        A_: ``(K, d, d)`` per-arm Gram matrices ``l2 * I + X^T X``.
        b_: ``(K, d)`` per-arm ``X^T r``.
        A_inv_: ``(K, d, d)`` cached inverses of ``A_``.
        theta_: ``(K, d)`` ridge coefficients ``A^-1 b``.
        n_updates_: number of events learned so far.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        l2: float = 1.0,
        epsilon: float = 0.0,
        softmax_temperature: float | None = None,
        refresh_every: int = 1000,
        seed: int | None = None,
    ) -> None:
        self.alpha = alpha
        self.l2 = l2
        self.epsilon = epsilon
        self.softmax_temperature = softmax_temperature
        self.refresh_every = refresh_every
        self.seed = seed
        self._check_params()
        self.arms_: list[Hashable] = []
        self.n_features_in_: int | None = None
        self.n_updates_ = 0
        self._updates_since_refresh = 0
        self._arm_index: dict[Hashable, int] = {}
        self._rng = np.random.default_rng(seed)
        self.A_ = self.b_ = self.A_inv_ = self.theta_ = None

    # ------------------------------------------------------------------ arms
    def add_arm(self, key: Hashable) -> "LinUCB":
        """Add an arm with no data (prior ``A = l2 * I``, ``b = 0``); returns ``self``."""
        try:
            hash(key)
        except TypeError:
            raise InputError(f"arm keys must be hashable (a creative id such as a str or int), got {type(key).__name__}") from None
        if key in self._arm_index:
            raise InputError(f"arm {key!r} already exists; arm keys must be unique")
        self._arm_index[key] = len(self.arms_)
        self.arms_.append(key)
        if self.n_features_in_ is not None:
            d = self.n_features_in_
            self.A_ = np.concatenate([self.A_, self.l2 * np.eye(d)[None]])
            self.A_inv_ = np.concatenate([self.A_inv_, np.eye(d)[None] / self.l2])
            self.b_ = np.concatenate([self.b_, np.zeros((1, d))])
            self.theta_ = np.concatenate([self.theta_, np.zeros((1, d))])
        return self

    def remove_arm(self, key: Hashable) -> "LinUCB":
        """Remove an arm and everything learned about it; returns ``self``."""
        index = self._index_of(key)
        del self.arms_[index]
        self._arm_index = {arm: i for i, arm in enumerate(self.arms_)}
        if self.n_features_in_ is not None:
            self.A_, self.A_inv_, self.b_, self.theta_ = (
                np.delete(array, index, axis=0) for array in (self.A_, self.A_inv_, self.b_, self.theta_)
            )
        return self

    # -------------------------------------------------------------- learning
    def partial_fit(self, X: Any, arms: Sequence[Hashable], rewards: Any) -> "LinUCB":
        """Learn from logged events; returns ``self``.

        Args:
            X: ``(n, d)`` contexts.
            arms: ``n`` arm keys that were served (each must be in ``arms_``).
            rewards: ``(n,)`` finite rewards (1.0 for a click, 0.0 for none).

        One event is learned with a Sherman-Morrison update; a batch adds ``X_k^T X_k`` and ``X_k^T r_k`` to each
        arm's sums and recomputes its inverse exactly, which gives the same model as learning event by event.
        """
        X = self._check_X(X)
        rewards = self._check_rewards(rewards, len(X))
        if np.ndim(arms) != 1 or len(arms) != len(X):
            raise InputError(f"arms must be a sequence of {len(X)} arm keys (one per row of X), got {np.shape(arms)}")
        indices = np.array([self._index_of(arm) for arm in arms], dtype=np.intp)
        self._ensure_state(X.shape[1])
        if len(X) == 1:
            self._update_index(X[0], int(indices[0]), float(rewards[0]))
            return self
        touched = np.unique(indices)
        for k in touched:
            rows = indices == k
            self.A_[k] += X[rows].T @ X[rows]
            self.b_[k] += X[rows].T @ rewards[rows]
        self.A_inv_[touched] = np.linalg.inv(self.A_[touched])
        self.theta_[touched] = np.einsum("kij,kj->ki", self.A_inv_[touched], self.b_[touched])
        self.n_updates_ += len(X)
        return self

    def update_one(self, x: Any, arm: Hashable, reward: float) -> "LinUCB":
        """Learn from one served event: context ``x`` of shape ``(d,)``, the arm served and its reward."""
        x = self._check_x(x)
        k = self._index_of(arm)
        try:
            reward = float(reward)
        except (TypeError, ValueError):
            reward = math.nan
        if not math.isfinite(reward):
            raise InputError("reward must be a finite number (1.0 for a click, 0.0 for none)")
        self._ensure_state(len(x))
        self._update_index(x, k, reward)
        return self

    def refresh(self) -> "LinUCB":
        """Recompute every cached inverse and coefficient exactly from ``A_`` and ``b_``; returns ``self``."""
        if self.n_features_in_ is not None and self.arms_:
            self.A_inv_ = np.linalg.inv(self.A_)
            self.theta_ = np.einsum("kij,kj->ki", self.A_inv_, self.b_)
        self._updates_since_refresh = 0
        return self

    # -------------------------------------------------------------- scoring
    def decision_function(self, X: Any) -> np.ndarray:
        """UCB scores ``(n, K)``: predicted reward plus ``alpha`` times its standard error, columns in ``arms_``."""
        X = self._check_X(X)
        self._require_arms()
        self._ensure_state(X.shape[1])
        mean = X @ self.theta_.T
        # x^T A_k^-1 x for every (row, arm) pair without forming (n, K, d) products twice.
        width = np.einsum("nd,kde,ne->nk", X, self.A_inv_, X, optimize=True)
        return mean + self.alpha * np.sqrt(np.maximum(width, 0.0))

    def predict(self, X: Any) -> np.ndarray:
        """The best arm for each row of ``X`` (ties go to the first arm): object array ``(n,)`` of arm keys."""
        scores = self.decision_function(X)
        return self._keys(np.argmax(scores, axis=1))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probability ``(n, K)`` that :meth:`sample` serves each arm; rows sum to 1, columns in ``arms_``.

        This is the policy's distribution, so it is what off-policy evaluation needs as the target policy.
        """
        return self._probabilities(self.decision_function(X))

    def sample(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """Draw the arm to serve for each row of ``X``.

        Returns:
            ``(arms, propensities)``: an object array ``(n,)`` of arm keys and the ``(n,)`` probability with which
            each was chosen (always > 0), to be logged with the impression for off-policy evaluation.
        """
        probabilities = self.predict_proba(X)
        cumulative = np.cumsum(probabilities, axis=1)
        draws = self._rng.random((len(probabilities), 1)) * cumulative[:, -1:]
        chosen = np.minimum((draws >= cumulative).sum(axis=1), probabilities.shape[1] - 1)
        return self._keys(chosen), probabilities[np.arange(len(chosen)), chosen]

    def select_one(self, x: Any) -> tuple[Hashable, float]:
        """Serve one event: context ``(d,)`` in, ``(arm key, propensity)`` out; same policy as :meth:`sample`."""
        x = self._check_x(x)
        self._require_arms()
        self._ensure_state(len(x))
        scores = self.theta_ @ x + self.alpha * np.sqrt(np.maximum((self.A_inv_ @ x) @ x, 0.0))
        if self.epsilon == 0.0 and self.softmax_temperature is None:
            # Deterministic policy: skip building the distribution (this is the hot serving path).
            best = np.flatnonzero(scores == scores.max())
            chosen = int(best[0]) if len(best) == 1 else int(best[self._rng.integers(len(best))])
            return self.arms_[chosen], 1.0 / len(best)
        probabilities = self._probabilities(scores[None])[0]
        cumulative = np.cumsum(probabilities)
        chosen = min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")),
                     len(probabilities) - 1)
        return self.arms_[chosen], float(probabilities[chosen])

    # ---------------------------------------------------------- persistence
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json`` (hyper-parameters, arm keys) and ``state.npz`` (``A``, ``b``, ``A_inv``).

        ``A_inv`` is saved next to ``A`` so a reloaded bandit scores bit for bit like the saved one, even between
        refreshes. Files are written to temporary names and moved into place, so a failed save loses nothing.
        """
        for arm in self.arms_:
            if isinstance(arm, bool) or not isinstance(arm, (str, int, np.integer)):
                raise InputError(
                    f"cannot save arm key {arm!r} of type {type(arm).__name__}: arm keys must be str or int "
                    "to be stored in config.json; use creative ids such as 'c17' or 17"
                )
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "class_name": type(self).__name__,
            "format_version": FORMAT_VERSION,
            **self.get_params(),
            "arms": [arm if isinstance(arm, str) else int(arm) for arm in self.arms_],
            "n_features_in": self.n_features_in_,
            "n_updates": self.n_updates_,
            "updates_since_refresh": self._updates_since_refresh,
        }
        write_file(directory / CONFIG_NAME, lambda path: path.write_bytes(json.dumps(config, indent=2).encode()))
        if self.n_features_in_ is not None:
            state = {"A": self.A_, "b": self.b_, "A_inv": self.A_inv_}
            write_file(directory / STATE_NAME, lambda path: _savez(path, state))
        elif (directory / STATE_NAME).exists():
            os.remove(directory / STATE_NAME)

    @classmethod
    def from_pretrained(cls, pretrained_directory: str | os.PathLike) -> "LinUCB":
        """Load a bandit written by :meth:`save_pretrained`."""
        directory = Path(pretrained_directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise ModelNotFoundError(f"no bandit at {directory}: expected {CONFIG_NAME}; create one with save_pretrained")
        try:
            config = json.loads(config_path.read_text())
            bandit = cls(**{name: config[name] for name in cls._get_param_names()})
            arms, d = config["arms"], config["n_features_in"]
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{config_path} is not a LinUCB config ({error}); re-save the bandit") from error
        for arm in arms:
            bandit.add_arm(arm)
        if d is not None:
            try:
                with np.load(directory / STATE_NAME, allow_pickle=False) as state:
                    A, b, A_inv = state["A"], state["b"], state["A_inv"]
            except (OSError, KeyError, ValueError) as error:
                raise InputError(f"cannot read {directory / STATE_NAME} ({error}); re-save the bandit") from error
            if A.shape != (len(arms), d, d) or b.shape != (len(arms), d) or A_inv.shape != A.shape:
                raise InputError(f"{directory / STATE_NAME} does not match {len(arms)} arms and {d} features")
            bandit.n_features_in_ = int(d)
            bandit.A_, bandit.b_, bandit.A_inv_ = A.astype(float), b.astype(float), A_inv.astype(float)
            bandit.theta_ = np.einsum("kij,kj->ki", bandit.A_inv_, bandit.b_)
        bandit.n_updates_ = int(config.get("n_updates", 0))
        bandit._updates_since_refresh = int(config.get("updates_since_refresh", 0))
        return bandit

    # ------------------------------------------------------------- internals
    def _check_params(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise InputError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if not (math.isfinite(self.l2) and self.l2 > 0):
            raise InputError(f"l2 must be a finite number > 0 (the ridge prior), got {self.l2!r}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise InputError(f"epsilon must be a probability in [0, 1], got {self.epsilon!r}")
        if self.softmax_temperature is not None and not (
            math.isfinite(self.softmax_temperature) and self.softmax_temperature > 0
        ):
            raise InputError(f"softmax_temperature must be > 0 or None, got {self.softmax_temperature!r}")
        if isinstance(self.refresh_every, bool) or not isinstance(self.refresh_every, int) or self.refresh_every < 1:
            raise InputError(f"refresh_every must be an int >= 1 (updates between exact inverses), got {self.refresh_every!r}")

    def _update_index(self, x: np.ndarray, k: int, reward: float) -> None:
        A_inv = self.A_inv_[k]
        A_inv_x = A_inv @ x
        # Sherman-Morrison: (A + x x^T)^-1 = A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x), A symmetric.
        A_inv -= A_inv_x[:, None] * (A_inv_x / (1.0 + x @ A_inv_x))
        self.A_[k] += x[:, None] * x
        self.b_[k] += reward * x
        self.theta_[k] = A_inv @ self.b_[k]
        self.n_updates_ += 1
        self._updates_since_refresh += 1
        if self._updates_since_refresh >= self.refresh_every:
            self.refresh()

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Serving distribution ``(n, K)`` for UCB ``scores`` ``(n, K)``."""
        n_arms = scores.shape[1]
        if self.softmax_temperature is not None:
            logits = (scores - scores.max(axis=1, keepdims=True)) / self.softmax_temperature
            weights = np.exp(logits)
            greedy = weights / weights.sum(axis=1, keepdims=True)
        else:
            # Ties for the best score are broken uniformly at random, so each tied arm has 1 / n_ties.
            best = scores == scores.max(axis=1, keepdims=True)
            greedy = best / best.sum(axis=1, keepdims=True)
        if self.epsilon == 0.0:
            return greedy
        return (1.0 - self.epsilon) * greedy + self.epsilon / n_arms

    def _index_of(self, key: Hashable) -> int:
        try:
            return self._arm_index[key]
        except (KeyError, TypeError):
            raise InputError(f"unknown arm {key!r}; known arms are {self.arms_[:10]!r}; add it with add_arm first") from None

    def _keys(self, indices: np.ndarray) -> np.ndarray:
        keys = np.empty(len(self.arms_), dtype=object)
        keys[:] = self.arms_
        return keys[indices]

    def _require_arms(self) -> None:
        if not self.arms_:
            raise InputError("the bandit has no arms; add creatives with add_arm(key) before serving")

    def _check_X(self, X: Any) -> np.ndarray:
        try:
            X = np.asarray(X, dtype=float)
        except (TypeError, ValueError) as error:
            raise InputError(f"X must be a numeric (n_events, n_features) array ({error})") from None
        if X.ndim != 2 or X.shape[0] == 0:
            raise InputError(f"X must be a 2-D (n_events, n_features) array with at least one row, got shape {X.shape}")
        self._check_features(X.shape[1])
        if not np.isfinite(X).all():
            raise InputError("X contains NaN or infinite values; impute or drop those events first")
        return X

    def _check_x(self, x: Any) -> np.ndarray:
        try:
            x = np.asarray(x, dtype=float)
        except (TypeError, ValueError) as error:
            raise InputError(f"x must be a numeric (n_features,) vector ({error})") from None
        if x.ndim != 1:
            raise InputError(f"x must be one context vector of shape (n_features,), got shape {x.shape}")
        self._check_features(x.shape[0])
        if not np.isfinite(x).all():
            raise InputError("x contains NaN or infinite values; impute or drop this event first")
        return x

    def _check_features(self, d: int) -> None:
        if d == 0:
            raise InputError("contexts must have at least one feature")
        if self.n_features_in_ is not None and d != self.n_features_in_:
            raise InputError(f"contexts must have {self.n_features_in_} features (as when the bandit was fitted), got {d}")

    def _ensure_state(self, d: int) -> None:
        """Allocate the per-arm state when the first accepted context fixes ``d``; arms added so far get the prior."""
        if self.n_features_in_ is None:
            self.n_features_in_ = d
            K = len(self.arms_)
            self.A_ = np.tile(self.l2 * np.eye(d), (K, 1, 1))
            self.A_inv_ = np.tile(np.eye(d) / self.l2, (K, 1, 1))
            self.b_ = np.zeros((K, d))
            self.theta_ = np.zeros((K, d))

    @staticmethod
    def _check_rewards(rewards: Any, n: int) -> np.ndarray:
        try:
            rewards = np.asarray(rewards, dtype=float)
        except (TypeError, ValueError) as error:
            raise InputError(f"rewards must be numbers ({error})") from None
        if rewards.shape != (n,):
            raise InputError(f"rewards must have shape ({n},), one per row of X, got {rewards.shape}")
        if not np.isfinite(rewards).all():
            raise InputError("rewards contain NaN or infinite values; rewards must be finite (1.0 click, 0.0 none)")
        return rewards


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as file:  # a file object: given a name, np.savez would append ".npz" to it
        np.savez(file, **arrays)
