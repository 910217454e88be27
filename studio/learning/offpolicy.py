"""Off-policy evaluation: how many clicks would a new policy have got, estimated from a log another policy wrote.

The log is a :class:`BanditLog` of events ``(context x, served arm a, reward r, logging propensity mu(a|x))``.
The target policy is given as one clean thing: its action probabilities ``pi`` of shape ``(n_events, n_arms)``,
with columns named by ``arm_keys``. A :class:`studio.learning.bandit.LinUCB` provides both::

    log = BanditLog(contexts=X, arms=served, rewards=clicks, propensities=logged_propensities)
    estimate = snips(log, bandit.predict_proba(log.contexts), bandit.arms_)
    print(estimate.estimate, estimate.ci_low, estimate.ci_high)

Estimators (all return a :class:`PolicyEstimate` with a seeded percentile-bootstrap confidence interval):

- :func:`replay` (Li et al., 2010): keep the events where the target policy picks the logged arm, average their
  rewards. Unbiased only when the log was served uniformly at random.
- :func:`ips`: inverse propensity scoring, ``mean(w * r)`` with ``w = pi(a|x) / mu(a|x)``. Unbiased; high variance.
- :func:`snips`: self-normalised IPS, ``sum(w * r) / sum(w)``. Slightly biased, much lower variance.
- :func:`doubly_robust`: a direct-method reward model ``q(x, k)`` plus an IPS correction of its error on the
  logged arm. Unbiased if either the propensities or the model are right.

``max_weight`` clips importance weights (``min(w, max_weight)``), trading a little bias for less variance.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from studio.core.errors import InputError
from studio.learning.bandit import LinUCB, draw_arms

# Bootstrap resamples are drawn in blocks of about this many indices, to bound memory.
_BOOTSTRAP_BLOCK = 4_000_000


@dataclass(frozen=True)
class PolicyEstimate:
    """The estimated mean reward per event (e.g. CTR) of a target policy, with its bootstrap interval.

    Attributes:
        method: estimator name ("replay", "ips", "snips", "dr").
        estimate: point estimate of the target policy's mean reward per event.
        ci_low, ci_high: percentile-bootstrap interval at ``confidence`` (default 95 %).
        n: number of logged events used.
        effective_sample_size: for weighted estimators ``(sum w)^2 / sum w^2``; for replay the events kept.
    """

    method: str
    estimate: float
    ci_low: float
    ci_high: float
    n: int
    effective_sample_size: float


@dataclass(frozen=True)
class BanditLog:
    """Logged bandit events, checked once on construction.

    Attributes:
        contexts: ``(n, d)`` context features seen at serving time.
        arms: ``(n,)`` keys of the arms served (creative ids).
        rewards: ``(n,)`` rewards observed (1.0 click, 0.0 no click).
        propensities: ``(n,)`` probability with which the logging policy served that arm, in (0, 1].
    """

    contexts: np.ndarray
    arms: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray

    def __post_init__(self) -> None:
        contexts = _as_float(self.contexts, "contexts")
        if contexts.ndim == 1:
            contexts = contexts[:, None]
        if contexts.ndim != 2 or len(contexts) == 0:
            raise InputError(f"contexts must be a 2-D (n_events, n_features) array with events, got {contexts.shape}")
        n = len(contexts)
        arms = np.empty(len(self.arms), dtype=object)
        arms[:] = list(self.arms)
        rewards = _as_float(self.rewards, "rewards")
        propensities = _as_float(self.propensities, "propensities")
        for name, values in (("arms", arms), ("rewards", rewards), ("propensities", propensities)):
            if values.shape != (n,):
                raise InputError(f"{name} must have one entry per event ({n}), got shape {values.shape}")
        if not np.isfinite(contexts).all():
            raise InputError("contexts contain NaN or infinite values; drop or impute those events")
        if not np.isfinite(rewards).all():
            raise InputError("rewards contain NaN or infinite values; rewards must be finite (1.0 click, 0.0 none)")
        if not (np.isfinite(propensities).all() and (propensities > 0).all() and (propensities <= 1).all()):
            raise InputError(
                "propensities must be in (0, 1]: the logging policy must give every served arm a positive probability; "
                "events logged with propensity 0 cannot be used for off-policy evaluation"
            )
        object.__setattr__(self, "contexts", contexts)
        object.__setattr__(self, "arms", arms)
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "propensities", propensities)

    def __len__(self) -> int:
        return len(self.rewards)


def replay(
    log: BanditLog,
    target_probabilities: Any,
    arm_keys: Sequence[Hashable],
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PolicyEstimate:
    """Replay estimate (Li et al., 2010): mean reward of the events where the target's choice equals the logged arm.

    The target's choice per event is drawn from ``target_probabilities`` (``(n, K)``, columns ``arm_keys``) with
    ``seed``, the way :meth:`LinUCB.sample` draws; for a deterministic policy that is simply its arm. Valid for logs
    served uniformly at random.
    """
    inputs = _inputs(log, target_probabilities, arm_keys, None, n_bootstrap, confidence, seed)
    kept = (draw_arms(inputs.probabilities, inputs.rng) == inputs.logged).astype(float)
    if kept.sum() == 0:
        raise InputError("replay kept no events: the target policy never chose a logged arm; log more events or use ips")
    return inputs.estimate("replay", kept * log.rewards, kept, float(kept.sum()))


def ips(
    log: BanditLog,
    target_probabilities: Any,
    arm_keys: Sequence[Hashable],
    *,
    max_weight: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PolicyEstimate:
    """Inverse propensity scoring: ``mean(w * r)``, ``w = pi(a|x) / mu(a|x)`` clipped at ``max_weight``."""
    inputs = _inputs(log, target_probabilities, arm_keys, max_weight, n_bootstrap, confidence, seed)
    weights = inputs.weights
    return inputs.estimate("ips", weights * log.rewards, np.ones(len(log)), _ess(weights))


def snips(
    log: BanditLog,
    target_probabilities: Any,
    arm_keys: Sequence[Hashable],
    *,
    max_weight: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PolicyEstimate:
    """Self-normalised IPS: ``sum(w * r) / sum(w)``, with weights clipped at ``max_weight``."""
    inputs = _inputs(log, target_probabilities, arm_keys, max_weight, n_bootstrap, confidence, seed)
    weights = inputs.weights
    if weights.sum() == 0:
        raise InputError("snips: every importance weight is 0 (the target never picks a logged arm); use more events")
    return inputs.estimate("snips", weights * log.rewards, weights, _ess(weights))


def snips_from_sums(target: Any, weight: Any, click_weight: Any, weight_sq: Any, click_weight_sq: Any, n: int,
                    confidence: float = 0.95) -> PolicyEstimate:
    """SNIPS from per-cell sums, for logs whose target probability depends only on the cell (e.g. a policy that sees
    the audience group), with a delta-method interval instead of the bootstrap.

    Each cell is a (context, logged arm) pair; over its events ``weight = sum 1/mu``, ``click_weight = sum r/mu``,
    ``weight_sq = sum 1/mu^2``, ``click_weight_sq = sum r/mu^2`` (rewards 0/1), and ``target`` is ``pi(arm|context)``.
    Then ``sum w = sum target * weight``, ``sum w r = sum target * click_weight``, ``sum w^2 = sum target^2 *
    weight_sq``, ``sum w^2 r = sum target^2 * click_weight_sq``: the point estimate is exactly `snips` on the events,
    and ``Var = sum w^2 (r - estimate)^2 / (sum w)^2`` needs nothing else. `n` is the number of logged events.
    """
    target, weight, click_weight, weight_sq, click_weight_sq = (
        _as_float(value, name).reshape(-1) for value, name in (
            (target, "target"), (weight, "weight"), (click_weight, "click_weight"), (weight_sq, "weight_sq"),
            (click_weight_sq, "click_weight_sq")))
    if not all(len(a) == len(target) for a in (weight, click_weight, weight_sq, click_weight_sq)):
        raise InputError("target and the four sums must have one entry per cell")
    total = float(target @ weight)
    if not total > 0:
        raise InputError("snips: every importance weight is 0 (the target never picks a logged arm); use more events")
    estimate = float(target @ click_weight) / total
    squares, click_squares = float(target**2 @ weight_sq), float(target**2 @ click_weight_sq)
    # r is 0/1, so sum w^2 (r - e)^2 = sum w^2 r (1 - 2e) + e^2 sum w^2
    variance = max(click_squares * (1 - 2 * estimate) + estimate**2 * squares, 0.0) / total**2
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.sqrt(variance)
    return PolicyEstimate("snips", estimate, max(0.0, estimate - half), min(1.0, estimate + half), int(n),
                          total**2 / squares if squares > 0 else 0.0)


def doubly_robust(
    log: BanditLog,
    target_probabilities: Any,
    arm_keys: Sequence[Hashable],
    *,
    expected_rewards: Any = None,
    l2: float = 1.0,
    max_weight: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PolicyEstimate:
    """Doubly robust estimate: ``mean(sum_k pi(k|x) q(x, k) + w * (r - q(x, a)))``.

    Args:
        expected_rewards: ``(n, K)`` direct-method predictions ``q(x, k)`` of each arm's reward for each logged
            event, columns ``arm_keys`` (from any fitted reward model). If None, a per-arm ridge regression on the
            contexts plus an intercept is fitted on the log with 2-fold cross-fitting (each half is predicted by a
            model fitted on the other half, so the model never scores the events it learned from).
        l2: ridge penalty of that default model.
    """
    inputs = _inputs(log, target_probabilities, arm_keys, max_weight, n_bootstrap, confidence, seed)
    probabilities, logged, weights = inputs.probabilities, inputs.logged, inputs.weights
    if expected_rewards is None:
        q = _cross_fitted_ridge(log, list(arm_keys), logged, l2, inputs.rng)
    else:
        q = _as_float(expected_rewards, "expected_rewards")
        if q.shape != probabilities.shape or not np.isfinite(q).all():
            raise InputError(f"expected_rewards must be a finite {probabilities.shape} array (events x arm_keys)")
    rows = np.arange(len(log))
    terms = (probabilities * q).sum(axis=1) + weights * (log.rewards - q[rows, logged])
    return inputs.estimate("dr", terms, np.ones(len(log)), _ess(weights))


def evaluate_policy(
    log: BanditLog,
    target_probabilities: Any,
    arm_keys: Sequence[Hashable],
    *,
    max_weight: float | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, PolicyEstimate]:
    """All four estimates of one target policy, keyed by method name ("replay", "ips", "snips", "dr")."""
    options = dict(n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return {
        "replay": replay(log, target_probabilities, arm_keys, **options),
        "ips": ips(log, target_probabilities, arm_keys, max_weight=max_weight, **options),
        "snips": snips(log, target_probabilities, arm_keys, max_weight=max_weight, **options),
        "dr": doubly_robust(log, target_probabilities, arm_keys, max_weight=max_weight, **options),
    }


# ----------------------------------------------------------------- internals
@dataclass(frozen=True)
class _Inputs:
    """What every estimator starts from: the checked target, the logged arms' columns, their importance weights."""

    probabilities: np.ndarray  # pi, (n, K)
    logged: np.ndarray  # column of each logged arm, (n,)
    weights: np.ndarray  # pi(a|x) / mu(a|x), clipped at max_weight, (n,)
    rng: np.random.Generator
    n_bootstrap: int
    confidence: float

    def estimate(self, method: str, numerator: np.ndarray, denominator: np.ndarray, ess: float) -> PolicyEstimate:
        """``sum(numerator) / sum(denominator)`` with a percentile bootstrap over events; ``ess`` is reported as is."""
        n = len(numerator)
        estimate = float(numerator.sum() / denominator.sum())
        replicates = []
        block = max(1, _BOOTSTRAP_BLOCK // n)
        for start in range(0, self.n_bootstrap, block):
            indices = self.rng.integers(0, n, size=(min(block, self.n_bootstrap - start), n))
            with np.errstate(invalid="ignore", divide="ignore"):
                replicates.append(numerator[indices].sum(axis=1) / denominator[indices].sum(axis=1))
        tail = (1 - self.confidence) / 2
        low, high = np.nanquantile(np.concatenate(replicates), [tail, 1 - tail])
        return PolicyEstimate(method, estimate, float(low), float(high), n, float(ess))


def _inputs(
    log: BanditLog, target_probabilities: Any, arm_keys: Sequence[Hashable], max_weight: float | None,
    n_bootstrap: int, confidence: float, seed: int,
) -> _Inputs:
    """Check everything an estimator is given, once, before any work (the bootstrap options included)."""
    probabilities, logged = _check_target(log, target_probabilities, arm_keys)
    weights = probabilities[np.arange(len(log)), logged] / log.propensities
    if max_weight is not None:
        if not (math.isfinite(max_weight) and max_weight > 0):
            raise InputError(f"max_weight must be a finite number > 0 (or None for no clipping), got {max_weight!r}")
        weights = np.minimum(weights, max_weight)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 100:
        raise InputError(f"n_bootstrap must be an int >= 100 for a usable interval, got {n_bootstrap!r}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    return _Inputs(probabilities, logged, weights, np.random.default_rng(seed), n_bootstrap, confidence)


def _as_float(values: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be numeric ({error})") from None


def _check_target(log: BanditLog, target_probabilities: Any, arm_keys: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``pi`` ``(n, K)`` and return it with the column index ``(n,)`` of each logged arm."""
    if not isinstance(log, BanditLog):
        raise InputError(f"log must be a BanditLog, got {type(log).__name__}")
    probabilities = _as_float(target_probabilities, "target_probabilities")
    keys = list(arm_keys)
    if probabilities.shape != (len(log), len(keys)):
        raise InputError(
            f"target_probabilities must have shape (n_events, n_arms) = ({len(log)}, {len(keys)}), "
            f"got {probabilities.shape}"
        )
    if len(set(keys)) != len(keys):
        raise InputError("arm_keys must be unique")
    if not np.isfinite(probabilities).all() or (probabilities < 0).any():
        raise InputError("target_probabilities must be finite and >= 0")
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6):
        raise InputError("each row of target_probabilities must sum to 1 (a distribution over arm_keys)")
    column = {key: i for i, key in enumerate(keys)}
    missing = {arm for arm in log.arms if arm not in column}
    if missing:
        raise InputError(
            f"logged arms {sorted(map(str, missing))[:5]} are not in arm_keys; add them as columns with probability 0"
        )
    return probabilities, np.array([column[arm] for arm in log.arms], dtype=np.intp)


def _ess(weights: np.ndarray) -> float:
    squares = float((weights**2).sum())
    return float(weights.sum()) ** 2 / squares if squares > 0 else 0.0


def _cross_fitted_ridge(log: BanditLog, arm_keys: list, logged: np.ndarray, l2: float, rng) -> np.ndarray:
    """``(n, K)`` per-arm ridge predictions of each event's reward, each half scored by a model of the other half."""
    features = np.hstack([log.contexts, np.ones((len(log), 1))])
    folds = rng.permutation(len(log)) % 2
    predictions = np.zeros((len(log), len(arm_keys)))
    for fold in (0, 1):
        train, test = folds != fold, folds == fold
        if not test.any():
            continue
        # LinUCB with alpha=0 is exactly per-arm ridge regression.
        model = LinUCB(alpha=0.0, l2=l2)
        for index in range(len(arm_keys)):
            model.add_arm(index)
        if train.any():
            model.partial_fit(features[train], logged[train].tolist(), log.rewards[train])
        predictions[test] = model.decision_function(features[test])
    return predictions
