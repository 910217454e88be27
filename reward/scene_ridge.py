"""A linear CTR model for thin logs: the logit of each creative's smoothed CTR in a group as a linear function of its
scene statistics (``reward.encoders.scene_statistics``), fitted by weighted ridge regression.

The simulator's audiences (and real ones) react to a scene's colour, brightness, saturation and texture; with a dozen
logged creatives a product, a model with eleven slopes per group prices creatives it never saw more reliably than
the neural reward model (docs/loop.md). Per product, one set of slopes is fitted on every group's rows (the pooled
fit, shrunk toward zero); each group then gets its own intercept and slopes shrunk toward the pooled ones. Each
shrinkage is chosen by leave-one-row-out error. Rows are weighted by the inverse variance of their logit
(impressions x CTR x (1 - CTR)).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from reward.data import RewardDataset, aggregate, fit_beta_prior, label
from reward.encoders import scene_statistics
from studio.core.artefact import ArtefactError, check_replaceable, load_artefact, save_artefact
from studio.core.errors import InputError

FORMAT_VERSION = 1
PENALTIES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
HINT = "fit one with SceneRidge().fit(dataset) and save it with save_pretrained"


class SceneRidge:
    """scikit-learn style: ``fit(dataset)`` returns self; learned state ends in ``_``.

    After fit: ``feature_mean_`` / ``feature_scale_`` (standardising the scene statistics over the logged creatives),
    ``pooled_`` (product -> intercept and slopes, with its ``penalty``) and ``groups_`` ("product/group" -> the same).
    """

    def __init__(self, penalties: tuple[float, ...] = PENALTIES, image_size: int = 64):
        self.penalties = tuple(float(p) for p in penalties)
        self.image_size = image_size

    def fit(self, dataset: RewardDataset) -> SceneRidge:
        table = aggregate(dataset.impressions)
        table = label(table, fit_beta_prior(table["clicks"].to_numpy(), table["impressions"].to_numpy()))
        features = self._statistics(dataset.pixels)
        self.feature_mean_ = features.mean(axis=0)
        self.feature_scale_ = features.std(axis=0) + 1e-6
        z = dict(zip(dataset.creatives.index, (features - self.feature_mean_) / self.feature_scale_))
        self.pooled_, self.groups_ = {}, {}
        for product, rows in table.groupby("product_id", sort=True):
            pooled = self._fit_rows(rows, z, np.zeros(features.shape[1]))
            self.pooled_[product] = pooled
            for group, mine in rows.groupby("group_id", sort=True):
                self.groups_[f"{product}/{group}"] = self._fit_rows(mine, z, pooled["slopes"])
        return self

    def predict_ctr(self, pixels: torch.Tensor, product_ids: list[str], group_ids: list[str]) -> np.ndarray:
        """Predicted CTR of creatives (pixels (N, 3, H, W) in [0, 1]) for their (product, group) rows."""
        if not hasattr(self, "groups_"):
            raise InputError("this SceneRidge is not fitted yet: call fit(dataset) or load one with from_pretrained")
        if pixels.ndim != 4 or pixels.shape[1] != 3 or not len(pixels) == len(product_ids) == len(group_ids):
            raise InputError(f"expected pixels (N, 3, H, W) with one product id and one group id each; got pixels "
                             f"{tuple(pixels.shape)}, {len(product_ids)} product ids, {len(group_ids)} group ids")
        z = (self._statistics(pixels) - self.feature_mean_) / self.feature_scale_
        out = np.empty(len(z))
        for i, key in enumerate(f"{p}/{g}" for p, g in zip(product_ids, group_ids)):
            if key not in self.groups_:
                raise InputError(f"the scene ridge was fitted on no impression of {key!r} (product/group)")
            fit = self.groups_[key]
            out[i] = fit["intercept"] + z[i] @ fit["slopes"]
        return 1.0 / (1.0 + np.exp(-out))

    # ---- artefact -----------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically; a folder holding anything else is refused."""
        check_replaceable(folder, type(self), "a scene ridge")

        def table(fits: dict) -> dict:
            return {key: {"intercept": fit["intercept"], "penalty": fit["penalty"]} for key, fit in fits.items()}

        tensors = {"feature_mean": self.feature_mean_, "feature_scale": self.feature_scale_}
        tensors |= {f"pooled/{key}": fit["slopes"] for key, fit in self.pooled_.items()}
        tensors |= {f"group/{key}": fit["slopes"] for key, fit in self.groups_.items()}
        config = {"penalties": list(self.penalties), "image_size": self.image_size, "pooled": table(self.pooled_),
                  "groups": table(self.groups_)}
        return save_artefact(folder, type(self), FORMAT_VERSION, config, tensors)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> SceneRidge:
        config, tensors = load_artefact(folder, cls, FORMAT_VERSION, hint=HINT)
        try:
            model = cls(tuple(config["penalties"]), config["image_size"])
            model.feature_mean_, model.feature_scale_ = tensors["feature_mean"], tensors["feature_scale"]
            model.pooled_ = {key: {**fit, "slopes": tensors[f"pooled/{key}"]} for key, fit in config["pooled"].items()}
            model.groups_ = {key: {**fit, "slopes": tensors[f"group/{key}"]} for key, fit in config["groups"].items()}
        except (KeyError, TypeError, AttributeError) as error:
            raise ArtefactError(f"{folder} is damaged (missing or malformed {error}); {HINT}") from None
        return model

    # ---- fitting --------------------------------------------------------------------------------------------------

    def _statistics(self, pixels: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return scene_statistics(pixels, self.image_size).numpy().astype(float)

    def _fit_rows(self, rows, z: dict, prior: np.ndarray) -> dict:
        """Intercept and slopes for aggregate `rows`, the slopes shrunk toward `prior` by the penalty with the
        smallest leave-one-row-out error."""
        ctr = rows["label"].to_numpy()
        y = np.log(ctr / (1 - ctr))
        x = np.stack([z[c] for c in rows["creative_id"]])
        weight = rows["impressions"].to_numpy() * ctr * (1 - ctr)
        weight = weight / weight.mean()
        best = None
        for penalty in self.penalties:
            error = 0.0
            for i in range(len(y) if len(y) > 1 else 0):  # one row leaves nothing to fit: every penalty ties
                keep = np.arange(len(y)) != i
                beta = _ridge(x[keep], y[keep], weight[keep], penalty, prior)
                error += weight[i] * (y[i] - beta[0] - x[i] @ beta[1:]) ** 2
            if best is None or error < best[0]:
                best = (error, penalty)
        beta = _ridge(x, y, weight, best[1], prior)
        return {"intercept": float(beta[0]), "slopes": beta[1:], "penalty": best[1]}


def _ridge(x: np.ndarray, y: np.ndarray, weight: np.ndarray, penalty: float, prior: np.ndarray) -> np.ndarray:
    """Weighted least squares with a free intercept and the slopes shrunk toward `prior`: [intercept, *slopes]."""
    design = np.hstack([np.ones((len(x), 1)), x])
    shrink = np.eye(design.shape[1]) * penalty
    shrink[0, 0] = 0.0
    target = np.concatenate([[0.0], prior])
    weighted = design.T * weight
    return np.linalg.solve(weighted @ design + shrink, weighted @ y + shrink @ target)
