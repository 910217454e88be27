"""What the learned estimators (the bandits, AudienceClustering) share: the not-fitted error, checked
hyper-parameters and artefact helpers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from studio.core.artefact import ArtefactError
from studio.core.errors import InputError


class NotFittedError(InputError, SklearnNotFittedError):
    """An estimator used before it learned anything; also scikit-learn's NotFittedError, so sklearn tools see it."""


class CheckedParams:
    """`set_params` that refuses a bad value and changes nothing (serving reads hyper-parameters on every event, so a
    bad one must never get in). Mix in before `BaseEstimator`; subclasses define `_check_params` and may define
    `_params_changed` to forget what depended on the old values."""

    def set_params(self, **params: Any):
        before = self.get_params(deep=False)
        super().set_params(**params)
        try:
            self._check_params()
        except InputError:
            super().set_params(**before)
            raise
        self._params_changed()
        return self

    def _params_changed(self) -> None:
        pass


def is_int(value: Any) -> bool:
    """An integer, numpy's included; a bool is refused (``refresh_every=True`` is a mistake, not 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def plain_params(estimator: BaseEstimator) -> dict[str, Any]:
    """The hyper-parameters as JSON can hold them (numpy scalars become Python numbers)."""
    return {name: value.item() if isinstance(value, np.generic) else value
            for name, value in estimator.get_params(deep=False).items()}


def checked_tensors(
    tensors: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]], path: Path, hint: str
) -> dict[str, np.ndarray]:
    """The arrays named in `shapes`, as float64, each checked to be present, of its shape and finite."""
    checked = {}
    for name, shape in shapes.items():
        array = tensors.get(name)
        if array is None:
            raise ArtefactError(f"{path} lacks the array {name}; {hint}")
        if array.shape != tuple(shape):
            raise ArtefactError(f"{path} is damaged: {name} has shape {array.shape}, expected {tuple(shape)}; {hint}")
        if not np.isfinite(array).all():
            # A NaN loads without complaint and fails only later, when serving; refuse it at the door.
            raise ArtefactError(f"{path} is damaged: {name} holds NaN or infinite values; {hint}")
        checked[name] = array.astype(np.float64)
    return checked
