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

Learned state is created lazily, by the first call that needs it. ``__init__`` only stores hyper-parameters, so a
new bandit is unfitted (``check_is_fitted`` raises). The first :meth:`LinUCB.add_arm`, :meth:`LinUCB.partial_fit`
or :meth:`LinUCB.fit` creates the arm set; a bandit with arms can serve (an arm with no data is scored by its prior).
The per-arm arrays are allocated when the first context fixes the number of features ``d``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from studio.core.artefact import CONFIG_NAME, WEIGHTS_NAME, ArtefactError, load_artefact, save_artefact
from studio.core.errors import InputError
from studio.learning.estimator import CheckedParams, NotFittedError, checked_tensors, is_int, plain_params

FORMAT_VERSION = 2  # 1 kept the arrays in state.npz; 2 is the studio artefact format (model.safetensors)
HINT = "save one with LinUCB.save_pretrained(folder) (studio simulate writes one per product under bandits/)"
NO_ARMS = ("the bandit has no arms; add creatives with add_arm(key), learn a log with fit(X, arms, rewards) "
           "or load one with LinUCB.from_pretrained(folder)")


def draw_arms(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Column index ``(n,)`` drawn from each row of ``probabilities`` ``(n, K)``, one uniform number per row."""
    cumulative = np.cumsum(probabilities, axis=1)
    draws = rng.random((len(probabilities), 1)) * cumulative[:, -1:]
    return np.minimum((draws >= cumulative).sum(axis=1), probabilities.shape[1] - 1)


def serving_distribution(scores: np.ndarray, epsilon: float, softmax_temperature: float | None) -> np.ndarray:
    """A bandit's serving distribution ``(n, K)`` over arms from UCB ``scores`` ``(n, K)``: greedy (ties shared
    uniformly) or ``softmax(scores / softmax_temperature)``, mixed with ``epsilon`` uniform exploration."""
    n_arms = scores.shape[1]
    if softmax_temperature is not None:
        logits = (scores - scores.max(axis=1, keepdims=True)) / softmax_temperature
        weights = np.exp(logits)
        greedy = weights / weights.sum(axis=1, keepdims=True)
    else:
        best = scores == scores.max(axis=1, keepdims=True)
        greedy = best / best.sum(axis=1, keepdims=True)
    if epsilon == 0.0:
        return greedy
    return (1.0 - epsilon) * greedy + epsilon / n_arms


class LinUCB(CheckedParams, BaseEstimator):
    """Disjoint LinUCB over a changing set of arms (creative ids), in scikit-learn style.

    Args:
        alpha: exploration strength; the width of the confidence bound added to each arm's predicted reward.
        l2: ridge regularisation; every arm starts from ``A = l2 * I``.
        epsilon: probability of serving a uniformly random arm instead of the best one, in [0, 1].
        softmax_temperature: if set, :meth:`sample` draws from ``softmax(scores / temperature)`` instead of
            the epsilon mix. Scores are in reward units (e.g. click probability), so temperatures are small.
        refresh_every: recompute every ``A^-1`` from ``A`` after this many Sherman-Morrison updates.
        seed: seed of the random generator used by :meth:`sample` and :meth:`select_one` (an int >= 0 or None).

    Hyper-parameters are checked when learned state is created and by :meth:`set_params`, which refuses a bad value
    and leaves the bandit as it was (serving reads them on every event, so a bad value must never get in).

    Learned attributes:
        arms_: arm keys, in column order of :meth:`decision_function` and :meth:`predict_proba`.
        n_features_in_: context dimensionality ``d``, fixed by the first context accepted (None until then).
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

    def _params_changed(self) -> None:
        self._served = {}

    def add_arm(self, key: Hashable) -> "LinUCB":
        """Add an arm with no data (prior ``A = l2 * I``, ``b = 0``); returns ``self``. Creates the state if needed."""
        try:
            hash(key)
        except TypeError:
            raise InputError(f"arm keys must be hashable (a creative id such as a str or int), got {type(key).__name__}") from None
        if not hasattr(self, "arms_"):
            self._start()
        self._served = {}
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
        self._served = {}
        del self.arms_[index]
        self._arm_index = {arm: i for i, arm in enumerate(self.arms_)}
        if self.n_features_in_ is not None:
            self.A_, self.A_inv_, self.b_, self.theta_ = (
                np.delete(array, index, axis=0) for array in (self.A_, self.A_inv_, self.b_, self.theta_)
            )
        return self

    # -------------------------------------------------------------- learning
    def fit(self, X: Any, arms: Sequence[Hashable], rewards: Any) -> "LinUCB":
        """Forget everything, then learn a log; returns ``self``.

        The arms become the distinct keys of ``arms`` in order of first appearance; add creatives that were never
        served with :meth:`add_arm` afterwards. Arguments are as in :meth:`partial_fit`; a refused log changes nothing.
        """
        X = self._check_X(X, reset=True)
        rewards, arms = self._check_rewards(rewards, len(X)), self._check_arms(arms, len(X))
        try:
            keys = list(dict.fromkeys(arm.item() if isinstance(arm, np.generic) else arm for arm in arms))
        except TypeError:
            raise InputError("arm keys must be hashable (creative ids such as str or int)") from None
        self._start()
        for key in keys:
            self.add_arm(key)
        return self._learn(X, arms, rewards)

    def partial_fit(self, X: Any, arms: Sequence[Hashable], rewards: Any) -> "LinUCB":
        """Learn from logged events; returns ``self``. On a bandit with no state yet this is :meth:`fit`.

        Args:
            X: ``(n, d)`` contexts.
            arms: ``n`` arm keys that were served (each must be in ``arms_``, so a misspelt key is an error, not a
                new arm; add new creatives with :meth:`add_arm`).
            rewards: ``(n,)`` finite rewards (1.0 for a click, 0.0 for none).

        One event is learned with a Sherman-Morrison update; a batch adds ``X_k^T X_k`` and ``X_k^T r_k`` to each
        arm's sums and recomputes its inverse exactly, which gives the same model as learning event by event.
        """
        if not hasattr(self, "arms_"):
            return self.fit(X, arms, rewards)
        X = self._check_X(X)
        rewards, arms = self._check_rewards(rewards, len(X)), self._check_arms(arms, len(X))
        return self._learn(X, arms, rewards)

    def _learn(self, X: np.ndarray, arms: Sequence[Hashable], rewards: np.ndarray) -> "LinUCB":
        indices = np.array([self._index_of(arm) for arm in arms], dtype=np.intp)  # before any change
        self._ensure_state(X.shape[1])
        self._served = {}
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
        if not hasattr(self, "arms_"):
            raise NotFittedError(NO_ARMS)
        self._served = {}
        if self.n_features_in_ is not None and self.arms_:
            self.A_inv_ = np.linalg.inv(self.A_)
            self.theta_ = np.einsum("kij,kj->ki", self.A_inv_, self.b_)
        self._updates_since_refresh = 0
        return self

    # -------------------------------------------------------------- scoring
    def decision_function(self, X: Any) -> np.ndarray:
        """UCB scores ``(n, K)``: predicted reward plus ``alpha`` times its standard error, columns in ``arms_``."""
        self._require_arms()
        X = self._check_X(X)
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
        chosen = draw_arms(probabilities, self._rng)
        return self._keys(chosen), probabilities[np.arange(len(chosen)), chosen]

    def select_one(self, x: Any, context_key: Hashable | None = None) -> tuple[Hashable, float]:
        """Serve one event: context ``(d,)`` in, ``(arm key, propensity)`` out; same policy as :meth:`sample`.

        `context_key` names the context (e.g. an audience group, when contexts are group vectors): its serving
        distribution is computed once and reused until the bandit next learns, gains or loses an arm, or changes a
        hyper-parameter. The draws are the same as without it.
        """
        self._require_arms()
        served = getattr(self, "_served", None)
        cached = served.get(context_key) if served is not None and context_key is not None else None
        if cached is None:
            x = self._check_x(x)
            self._ensure_state(len(x))
            scores = self.theta_ @ x + self.alpha * np.sqrt(np.maximum((self.A_inv_ @ x) @ x, 0.0))
            if self.epsilon == 0.0 and self.softmax_temperature is None:
                # Deterministic policy: no distribution to build (this is the hot serving path).
                cached = (np.flatnonzero(scores == scores.max()), None, None)
            else:
                probabilities = self._probabilities(scores[None])[0]
                cached = (None, probabilities, np.cumsum(probabilities))
            if context_key is not None:
                if served is None:
                    served = self._served = {}
                served[context_key] = cached
        best, probabilities, cumulative = cached
        if best is not None:
            chosen = int(best[0]) if len(best) == 1 else int(best[self._rng.integers(len(best))])
            return self.arms_[chosen], 1.0 / len(best)
        chosen = min(int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right")),
                     len(probabilities) - 1)
        return self.arms_[chosen], float(probabilities[chosen])

    # ---------------------------------------------------------- persistence
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the studio artefact: ``config.json`` (hyper-parameters, arm keys, counters) and ``model.safetensors``
        (``A``, ``b``, ``A_inv``; absent until the first context fixes ``d``).

        ``A_inv`` is saved next to ``A`` so a reloaded bandit scores bit for bit like the saved one, even between
        refreshes. The folder is replaced atomically, so a failed save loses nothing.
        """
        if not hasattr(self, "arms_"):
            raise NotFittedError(f"nothing to save: {NO_ARMS}")
        for arm in self.arms_:
            if isinstance(arm, bool) or not isinstance(arm, (str, int, np.integer)):
                raise InputError(
                    f"cannot save arm key {arm!r} of type {type(arm).__name__}: arm keys must be str or int "
                    "to be stored in config.json; use creative ids such as 'c17' or 17"
                )
        config = {
            **plain_params(self),
            "arms_": [arm if isinstance(arm, str) else int(arm) for arm in self.arms_],
            "n_features_in_": self.n_features_in_,
            "n_updates_": self.n_updates_,
            "updates_since_refresh": self._updates_since_refresh,
        }
        tensors = None if self.n_features_in_ is None else {"A": self.A_, "b": self.b_, "A_inv": self.A_inv_}
        save_artefact(save_directory, type(self), FORMAT_VERSION, config, tensors)

    @classmethod
    def from_pretrained(cls, pretrained_directory: str | os.PathLike) -> "LinUCB":
        """Load a bandit written by :meth:`save_pretrained`; a damaged, foreign or newer folder is one ArtefactError."""
        folder = Path(pretrained_directory)
        config, tensors = load_artefact(folder, cls, FORMAT_VERSION, hint=HINT)
        if config["format_version"] < FORMAT_VERSION:
            raise ArtefactError(f"{folder} holds a LinUCB in format {config['format_version']} (state.npz), which this "
                                f"studio no longer reads; {HINT}")
        try:
            bandit = cls(**{name: config[name] for name in cls._get_param_names()})
            arms, d = config["arms_"], config["n_features_in_"]
            if not isinstance(arms, list) or any(isinstance(a, bool) or not isinstance(a, (str, int)) for a in arms):
                raise ValueError("arms_ must be a list of str or int keys")
            if d is not None and not (is_int(d) and d >= 1):
                raise ValueError(f"n_features_in_ must be an int >= 1 or null, got {d!r}")
            bandit._start()  # checks the hyper-parameters
            for arm in arms:
                bandit.add_arm(arm)
            bandit.n_updates_ = int(config["n_updates_"])
            bandit._updates_since_refresh = int(config["updates_since_refresh"])
        except KeyError as error:
            raise ArtefactError(f"{folder / CONFIG_NAME} is damaged (missing {error}); {HINT}") from None
        except (TypeError, ValueError) as error:  # InputError is a ValueError: a bad hyper-parameter or arm key
            raise ArtefactError(f"{folder / CONFIG_NAME} is damaged ({error}); {HINT}") from None
        if d is not None:
            K = len(arms)
            shapes = {"A": (K, d, d), "b": (K, d), "A_inv": (K, d, d)}
            state = checked_tensors(tensors, shapes, folder / WEIGHTS_NAME, HINT)
            bandit.n_features_in_ = d
            bandit.A_, bandit.b_, bandit.A_inv_ = state["A"], state["b"], state["A_inv"]
            bandit.theta_ = np.einsum("kij,kj->ki", bandit.A_inv_, bandit.b_)
        return bandit

    # ------------------------------------------------------------- internals
    def _start(self) -> None:
        """Create empty learned state (no arms, no contexts yet), after checking the hyper-parameters."""
        self._check_params()
        self.arms_: list[Hashable] = []
        self.n_features_in_: int | None = None
        self.n_updates_ = 0
        self.A_ = self.b_ = self.A_inv_ = self.theta_ = None
        self._arm_index: dict[Hashable, int] = {}
        self._updates_since_refresh = 0
        self._rng = np.random.default_rng(self.seed)
        self._served: dict[Hashable, tuple] = {}  # select_one's distributions per named context, until a change

    def _check_params(self) -> None:
        if not (_is_real(self.alpha) and self.alpha >= 0):
            raise InputError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if not (_is_real(self.l2) and self.l2 > 0):
            raise InputError(f"l2 must be a finite number > 0 (the ridge prior), got {self.l2!r}")
        if not (_is_real(self.epsilon) and 0.0 <= self.epsilon <= 1.0):
            raise InputError(f"epsilon must be a probability in [0, 1], got {self.epsilon!r}")
        if self.softmax_temperature is not None and not (
            _is_real(self.softmax_temperature) and self.softmax_temperature > 0
        ):
            raise InputError(f"softmax_temperature must be > 0 or None, got {self.softmax_temperature!r}")
        if not (is_int(self.refresh_every) and self.refresh_every >= 1):
            raise InputError(f"refresh_every must be an int >= 1 (updates between exact inverses), got {self.refresh_every!r}")
        if self.seed is not None and not (is_int(self.seed) and self.seed >= 0):
            raise InputError(f"seed must be an int >= 0 or None, got {self.seed!r}")

    def _update_index(self, x: np.ndarray, k: int, reward: float) -> None:
        self._served = {}
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
        return serving_distribution(scores, self.epsilon, self.softmax_temperature)

    def _index_of(self, key: Hashable) -> int:
        try:
            return getattr(self, "_arm_index", {})[key]  # no _arm_index yet: no arm was ever added
        except (KeyError, TypeError):
            known = getattr(self, "arms_", [])[:10]
            raise InputError(f"unknown arm {key!r}; known arms are {known!r}; add it with add_arm first") from None

    def _keys(self, indices: np.ndarray) -> np.ndarray:
        keys = np.empty(len(self.arms_), dtype=object)
        keys[:] = self.arms_
        return keys[indices]

    def _require_arms(self) -> None:
        arms = getattr(self, "arms_", None)
        if not arms:  # None: nothing was ever learned; []: every arm was removed
            raise (NotFittedError if arms is None else InputError)(NO_ARMS)

    def _check_X(self, X: Any, reset: bool = False) -> np.ndarray:
        """``X`` as a finite ``(n, d)`` float array; unless ``reset``, ``d`` must be the fitted one."""
        try:
            X = np.asarray(X, dtype=float)
        except (TypeError, ValueError) as error:
            raise InputError(f"X must be a numeric (n_events, n_features) array ({error})") from None
        if X.ndim != 2 or X.shape[0] == 0:
            raise InputError(f"X must be a 2-D (n_events, n_features) array with at least one row, got shape {X.shape}")
        self._check_features(X.shape[1], reset)
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

    def _check_features(self, d: int, reset: bool = False) -> None:
        if d == 0:
            raise InputError("contexts must have at least one feature")
        fitted = None if reset else getattr(self, "n_features_in_", None)
        if fitted is not None and d != fitted:
            raise InputError(f"contexts must have {fitted} features (as when the bandit was fitted), got {d}")

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

    @staticmethod
    def _check_arms(arms: Sequence[Hashable], n: int) -> Sequence[Hashable]:
        if np.ndim(arms) != 1 or len(arms) != n:
            raise InputError(f"arms must be a sequence of {n} arm keys (one per row of X), got {np.shape(arms)}")
        return arms


def _is_real(value: Any) -> bool:
    """A finite real number (bools are refused: ``alpha=True`` is a mistake, not 1.0)."""
    real = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    return real and math.isfinite(value)
