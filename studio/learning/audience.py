"""Audience clustering: a user feature table in, audience groups and their profiles out.

The feature table has one row per user. Its columns are read by kind:

- numeric columns (age, activity, ...) are standardised;
- categorical columns (region, device, ...) are one-hot encoded; a category never seen in `fit` encodes as all zeros;
- the interest-tag column (default ``"interests"``) is multi-hot over the tags seen in `fit` (normally
  `studio.core.vocabulary.INTEREST_TAGS`). It may hold ``"|"``-separated strings (``"beach|travel"``; the form CSV files
  use) or lists of strings (the form DataFrames and Parquet files use). Unknown tags are ignored.

A ``user_id`` column, if present, is an identifier and never a feature.

`fit`, `predict` and `transform` take a table: a pandas DataFrame, or a 2-D array (its columns are named ``x0``,
``x1``, ...). Read a CSV or Parquet file first with :func:`read_table`.

The fitted state (scaler statistics, categories, tag vocabulary, centres) is saved as a studio artefact
(``config.json`` + ``model.safetensors``, see `studio.core.artefact`); no pickle is involved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.compose import ColumnTransformer
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from studio.core.artefact import CONFIG_NAME, WEIGHTS_NAME, ArtefactError, load_artefact, save_artefact
from studio.core.errors import InputError
from studio.learning.estimator import NotFittedError, checked_tensors, is_int, plain_params

FORMAT_VERSION = 1
HINT = ("fit one and save it with AudienceClustering.save_pretrained(folder) (studio simulate writes one to "
        "<run>/audience)")
ID_COLUMN = "user_id"
# Above this many users, MiniBatchKMeans keeps fitting time flat.
MINIBATCH_ABOVE = 20_000
# Below this many users one thread is fastest: OpenMP start-up and oversubscription cost more than the work.
SINGLE_THREAD_BELOW = 100_000
# Silhouette is quadratic in samples; score K on a seeded subsample of this size.
SILHOUETTE_SAMPLE = 3_000


@dataclass
class GroupProfile:
    """What one audience group looks like.

    Attributes:
        group_id: the group's id, as returned by `AudienceClustering.predict`.
        size: number of training users in the group.
        summary: one human-readable line (demographics and top interests).
        top_tags: the group's most common interest tags, most common first.
        demographics: per numeric column its group mean; per categorical column its most common value and share.
        vector: the group centre in the encoded feature space, shape (n_features,); the bandit's context.
    """

    group_id: int
    size: int
    summary: str
    top_tags: list[str]
    demographics: dict[str, Any]
    vector: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The brief the prompt model reads: group_id, summary, top_tags, demographics."""
        return {
            "group_id": self.group_id,
            "summary": self.summary,
            "top_tags": list(self.top_tags),
            "demographics": dict(self.demographics),
        }


def read_table(table: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Read a user feature table from a DataFrame, a ``.csv`` file or a ``.parquet`` file."""
    if isinstance(table, pd.DataFrame):
        return table
    path = Path(table)
    if not path.is_file():
        raise InputError(f"user table {path} does not exist; pass a CSV/Parquet file or a pandas DataFrame")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise InputError(f"user table {path} has suffix {suffix!r}; expected .csv or .parquet")


def split_tags(value: Any) -> list[str]:
    """One cell of the interest-tag column as a list of tags ("a|b", ["a", "b"], NaN or None)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        return [tag.strip() for tag in value.split("|") if tag.strip()]
    return [str(tag) for tag in value]


def multi_hot(column: pd.DataFrame | np.ndarray, vocabulary: tuple[str, ...] = ()) -> np.ndarray:
    """Encode a one-column frame of tag cells as a (n_users, len(vocabulary)) 0/1 float array."""
    cells = column.iloc[:, 0] if isinstance(column, pd.DataFrame) else np.asarray(column, dtype=object).reshape(-1)
    index = {tag: i for i, tag in enumerate(vocabulary)}
    encoded = np.zeros((len(cells), len(vocabulary)), dtype=np.float64)
    for row, cell in enumerate(cells):
        for tag in split_tags(cell):
            if tag in index:
                encoded[row, index[tag]] = 1.0
    return encoded


def build_encoder(
    numeric: list[str], categorical: list[str], categories: list[list[str]], tag_column: str | None,
    tags: tuple[str, ...],
) -> ColumnTransformer:
    """The (unfitted) ColumnTransformer: scaling + one-hot (fixed categories) + multi-hot (fixed vocabulary)."""
    parts: list[tuple[str, Any, list[str]]] = []
    if numeric:
        parts.append(("numeric", StandardScaler(), numeric))
    if categorical:
        parts.append(
            ("categorical", OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
             categorical)
        )
    if tag_column is not None:
        parts.append(("tags", FunctionTransformer(multi_hot, kw_args={"vocabulary": tags}), [tag_column]))
    return ColumnTransformer(parts, remainder="drop", sparse_threshold=0.0)


class AudienceClustering(ClusterMixin, TransformerMixin, BaseEstimator):
    """Cluster users into audience groups (a scikit-learn clusterer; `transform` encodes users).

    Args:
        n_groups: number of groups; None chooses K in `k_range` by the best silhouette score.
        k_range: inclusive (low, high) range of K tried when `n_groups` is None.
        seed: seed of KMeans and of the silhouette subsample; the same seed and table give the same groups.
        tag_column: name of the multi-hot interest-tag column (None: no tag column).
        columns: the numeric/categorical columns to cluster on (None: every column but user_id and the tags);
            leave out columns that say how much a user does rather than who they are, such as visit counts.
        n_top_tags: how many tags a profile lists.

    Hyper-parameters are checked by `fit`. Learned attributes: `n_features_in_` (columns of the table `fit` saw),
    `n_groups_`, `numeric_`, `categorical_`, `categories_`, `tags_`, `encoder_`, `cluster_centers_`
    (n_groups_, n_features), `labels_` (training users only; not saved), `silhouette_` (K -> score), `profiles_`.
    """

    def __init__(
        self, n_groups: int | None = None, k_range: tuple[int, int] = (2, 10), seed: int = 0,
        tag_column: str | None = "interests", n_top_tags: int = 3, columns: list[str] | None = None,
    ) -> None:
        self.n_groups = n_groups
        self.k_range = k_range
        self.seed = seed
        self.tag_column = tag_column
        self.columns = columns
        self.n_top_tags = n_top_tags

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True  # categorical columns hold strings
        return tags

    # -- fitting ---------------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> "AudienceClustering":
        """Learn the encoding and the groups from a user table (see the module docstring); `y` is ignored."""
        frame = self._table(X, reset=True)
        self._check_params(len(frame))
        self._learn_columns(frame)
        self.encoder_ = build_encoder(self.numeric_, self.categorical_, self.categories_, self._tag_column(frame),
                                      self.tags_)
        features = np.asarray(self.encoder_.fit_transform(self._prepare(frame)), dtype=np.float64)
        with threadpool_limits(1 if len(features) < SINGLE_THREAD_BELOW else None):
            self._fit_groups(features)
        self.labels_ = self._nearest(features)
        self.profiles_ = self._profiles(frame, self.labels_)
        self.n_features_in_ = frame.shape[1]
        return self

    def _fit_groups(self, features: np.ndarray) -> None:
        if self.n_groups is None:
            self.silhouette_ = self._score_k(features)
            self.n_groups_ = max(self.silhouette_, key=self.silhouette_.get)
        else:
            self.silhouette_ = {}
            self.n_groups_ = int(self.n_groups)
        model = self._kmeans(self.n_groups_, len(features)).fit(features)
        self.cluster_centers_ = model.cluster_centers_.astype(np.float64)

    def _check_params(self, n_users: int) -> None:
        if self.n_groups is not None and not (is_int(self.n_groups) and 1 <= self.n_groups <= n_users):
            raise InputError(f"n_groups={self.n_groups!r} must be an int between 1 and n_samples (the number of "
                             f"users), got n_samples={n_users}")
        if self.n_groups is None:
            k = self.k_range
            pair = isinstance(k, (tuple, list)) and len(k) == 2 and all(map(is_int, k))
            if not (pair and 2 <= k[0] <= k[1] < n_users):
                raise InputError(f"k_range={k!r} must be (low, high) with 2 <= low <= high < n_samples (the number of "
                                 f"users), got n_samples={n_users}; pass a smaller k_range or n_groups")
        if not (is_int(self.seed) and self.seed >= 0):
            raise InputError(f"seed must be an int >= 0, got {self.seed!r}")
        if not (is_int(self.n_top_tags) and self.n_top_tags >= 0):
            raise InputError(f"n_top_tags must be an int >= 0, got {self.n_top_tags!r}")
        if self.tag_column is not None and not isinstance(self.tag_column, str):
            raise InputError(f"tag_column must be a column name or None, got {self.tag_column!r}")
        if self.columns is not None and not isinstance(self.columns, (list, tuple)):
            raise InputError(f"columns must be a list of column names or None, got {self.columns!r}")

    def _table(self, X: Any, *, reset: bool) -> pd.DataFrame:
        """`X` as a DataFrame: a DataFrame passes as is; a 2-D array gets columns x0, x1, ... (as many as in fit)."""
        if isinstance(X, pd.DataFrame):
            return X
        if isinstance(X, (str, os.PathLike)):
            raise InputError(f"AudienceClustering takes a table, not the path {str(X)!r}; "
                             "read it with read_table(path)")
        if sparse.issparse(X):
            raise InputError("X is a sparse matrix; pass a dense user table (a pandas DataFrame or a 2-D array)")
        try:
            array = np.asarray(X)
        except ValueError as error:
            raise InputError(f"X must be a user table (a pandas DataFrame or a 2-D array) ({error})") from None
        if array.ndim != 2:
            raise InputError(f"X must be a 2-D user table (n_users, n_columns), got shape {array.shape}. Reshape your "
                             "data: one user is a table of one row")
        if array.shape[1] == 0:
            raise InputError(f"X has 0 feature(s) (shape={array.shape}) while a minimum of 1 is required; "
                             "pass the users' feature columns")
        if not reset and array.shape[1] != self.n_features_in_:
            raise InputError(f"X has {array.shape[1]} features, but AudienceClustering is expecting "
                             f"{self.n_features_in_} features as input (the columns of the table it was fitted on)")
        # infer_objects: an object array of numbers gives numeric columns, not categories
        return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])]).infer_objects()

    def _tag_column(self, frame: pd.DataFrame) -> str | None:
        return self.tag_column if self.tag_column is not None and self.tag_column in frame.columns else None

    def _learn_columns(self, frame: pd.DataFrame) -> None:
        tag_column = self._tag_column(frame)
        if self.columns is not None:
            missing = [c for c in self.columns if c not in frame.columns]
            if missing:
                raise InputError(f"user table lacks the requested columns {missing}; it has {list(frame.columns)}")
        features = [c for c in (frame.columns if self.columns is None else self.columns)
                    if c not in (ID_COLUMN, tag_column)]
        if not features and tag_column is None:
            raise InputError("user table has no feature columns; expected numeric, categorical or interest columns")
        self.numeric_ = [c for c in features if pd.api.types.is_numeric_dtype(frame[c])
                         and not pd.api.types.is_bool_dtype(frame[c])]
        self.categorical_ = [c for c in features if c not in self.numeric_]
        self.categories_ = [sorted(frame[c].dropna().astype(str).unique().tolist()) for c in self.categorical_]
        if tag_column is not None:
            seen = {tag for cell in frame[tag_column] for tag in split_tags(cell)}
            self.tags_ = tuple(sorted(seen))
        else:
            self.tags_ = ()

    def _kmeans(self, k: int, n_samples: int) -> KMeans | MiniBatchKMeans:
        if n_samples > MINIBATCH_ABOVE:
            return MiniBatchKMeans(n_clusters=k, random_state=self.seed, n_init=3, batch_size=4096)
        return KMeans(n_clusters=k, random_state=self.seed, n_init=4)

    def _score_k(self, features: np.ndarray) -> dict[int, float]:
        rng = np.random.default_rng(self.seed)
        sample = rng.choice(len(features), size=min(SILHOUETTE_SAMPLE, len(features)), replace=False)
        low, high = self.k_range
        scores = {}
        for k in range(low, high + 1):
            labels = self._kmeans(k, len(features)).fit(features).predict(features[sample])
            if len(np.unique(labels)) < 2:
                continue
            scores[k] = float(silhouette_score(features[sample], labels))
        if not scores:
            raise InputError("all users look identical; cannot choose a number of groups, pass n_groups")
        return scores

    # -- answers ---------------------------------------------------------------------------------------------------
    def transform(self, X: Any) -> np.ndarray:
        """Encode users as a (n_users, n_features) float array (the space the centres live in)."""
        self._check_fitted()
        frame = self._table(X, reset=False)
        missing = [c for c in self.numeric_ + self.categorical_ if c not in frame.columns]
        if missing:
            raise InputError(f"user table lacks columns {missing}; the clustering was fitted with them")
        return np.asarray(self.encoder_.transform(self._prepare(frame)), dtype=np.float64)

    def _prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Copy of the frame as the encoder expects it: categories as strings, a tag column always present."""
        frame = frame.copy()
        if self._has_tag_block() and self.tag_column not in frame.columns:
            frame[self.tag_column] = ""  # users with no known interests
        for column in self.categorical_:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), "").astype(str)
        for column in self.numeric_:
            if pd.api.types.is_complex_dtype(frame[column]):
                raise InputError(f"numeric column {column!r} holds complex numbers (Complex data not supported); "
                                 "pass real numbers")
            try:
                values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError):
                raise InputError(f"numeric column {column!r} must hold numbers, as it did in fit") from None
            if not np.isfinite(values).all():
                raise InputError(f"numeric column {column!r} has NaN or infinite values; "
                                 "fill or drop those users first")
            frame[column] = values
        return frame

    def predict(self, X: Any) -> np.ndarray:
        """Group id of each user, shape (n_users,) int64; works for users and categories never seen in `fit`."""
        return self._nearest(self.transform(X))

    def group_vectors(self) -> np.ndarray:
        """The profile vectors stacked, shape (n_groups_, n_features): row g is group g's bandit context."""
        self._check_fitted()
        return np.stack([profile.vector for profile in self.profiles_])

    def _nearest(self, features: np.ndarray) -> np.ndarray:
        distances = ((features[:, None, :] - self.cluster_centers_[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int64)

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("this AudienceClustering is not fitted yet; "
                                 "call fit(table) or from_pretrained(folder)")

    def _profiles(self, frame: pd.DataFrame, labels: np.ndarray) -> list[GroupProfile]:
        tag_column = self._tag_column(frame)
        tags = multi_hot(frame[[tag_column]], self.tags_) if tag_column is not None else None
        profiles = []
        for group in range(self.n_groups_):
            members = labels == group
            rows = frame[members]
            demographics: dict[str, Any] = {}
            for column in self.numeric_:
                demographics[column] = round(float(rows[column].mean()), 2) if len(rows) else None
            for column in self.categorical_:
                shares = rows[column].astype(str).value_counts(normalize=True)
                demographics[column] = ({"value": shares.index[0], "share": round(float(shares.iloc[0]), 3)}
                                        if len(shares) else None)
            top_tags: list[str] = []
            if tags is not None and members.any():
                rate = tags[members].mean(axis=0)
                order = np.argsort(-rate, kind="stable")[: self.n_top_tags]
                top_tags = [self.tags_[i] for i in order if rate[i] > 0]
            profiles.append(GroupProfile(
                group_id=group, size=int(members.sum()), summary=self._summary(group, int(members.sum()),
                                                                               demographics, top_tags),
                top_tags=top_tags, demographics=demographics, vector=self.cluster_centers_[group].copy(),
            ))
        return profiles

    @staticmethod
    def _summary(group: int, size: int, demographics: dict[str, Any], top_tags: list[str]) -> str:
        parts = []
        for column, value in demographics.items():
            if isinstance(value, dict):
                parts.append(f"{column} {value['value']} ({value['share']:.0%})")
            elif value is not None:
                parts.append(f"{column} ~{value:g}")
        interests = ", ".join(top_tags) if top_tags else "no dominant interest"
        return f"group {group} ({size} users): {'; '.join(parts)}; interests: {interests}"

    # -- persistence -----------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the studio artefact: ``config.json`` (hyper-parameters, columns, categories, tags, profiles) and
        ``model.safetensors`` (centres, scaler statistics). The folder is replaced atomically."""
        self._check_fitted()
        tensors = {"cluster_centers": self.cluster_centers_}
        scaler = self.encoder_.named_transformers_.get("numeric")
        if scaler is not None:
            tensors.update(scaler_mean=scaler.mean_, scaler_scale=scaler.scale_, scaler_var=scaler.var_)
        config = {
            **plain_params(self), "k_range": [int(k) for k in self.k_range],
            "n_features_in_": int(self.n_features_in_), "n_groups_": int(self.n_groups_),
            "numeric_": self.numeric_, "categorical_": self.categorical_, "categories_": self.categories_,
            "tags_": list(self.tags_), "has_tag_column": self._has_tag_block(),
            "silhouette_": {str(k): v for k, v in self.silhouette_.items()},
            "profiles_": [{**p.to_dict(), "size": p.size} for p in self.profiles_],
        }
        save_artefact(directory, type(self), FORMAT_VERSION, config, tensors)

    def _has_tag_block(self) -> bool:
        return any(name == "tags" for name, _, _ in self.encoder_.transformers)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "AudienceClustering":
        """Rebuild a fitted clustering from a folder written by `save_pretrained`; a damaged, foreign or newer folder
        is one ArtefactError."""
        folder = Path(directory)
        config, tensors = load_artefact(folder, cls, FORMAT_VERSION, hint=HINT)
        try:
            params = {name: config[name] for name in cls._get_param_names()}
            self = cls(**{**params, "k_range": tuple(params["k_range"])})
            self.n_features_in_, self.n_groups_ = int(config["n_features_in_"]), int(config["n_groups_"])
            self.numeric_, self.categorical_ = list(config["numeric_"]), list(config["categorical_"])
            self.categories_, self.tags_ = [list(c) for c in config["categories_"]], tuple(config["tags_"])
            self.silhouette_ = {int(k): float(v) for k, v in config["silhouette_"].items()}
            tag_column = self.tag_column if config["has_tag_column"] else None
            profiles = [(int(p["group_id"]), int(p["size"]), str(p["summary"]), list(p["top_tags"]),
                         dict(p["demographics"])) for p in config["profiles_"]]
            groups = sorted(profile[0] for profile in profiles)
            if len(self.categories_) != len(self.categorical_) or groups != list(range(self.n_groups_)):
                raise ValueError("its categories or profiles do not match its columns and groups")
        except KeyError as error:
            raise ArtefactError(f"{folder / CONFIG_NAME} is damaged (missing {error}); {HINT}") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise ArtefactError(f"{folder / CONFIG_NAME} is damaged ({error}); {HINT}") from None
        width = len(self.numeric_) + sum(map(len, self.categories_)) + (len(self.tags_) if tag_column else 0)
        shapes = {"cluster_centers": (self.n_groups_, width)}
        if self.numeric_:
            shapes.update({f"scaler_{name}": (len(self.numeric_),) for name in ("mean", "scale", "var")})
        arrays = checked_tensors(tensors, shapes, folder / WEIGHTS_NAME, HINT)
        self.encoder_ = build_encoder(self.numeric_, self.categorical_, self.categories_, tag_column, self.tags_)
        # Fit on a one-row placeholder to build the fitted structure, then restore the saved scaler statistics.
        placeholder = pd.DataFrame({c: [0.0] for c in self.numeric_})
        for column, values in zip(self.categorical_, self.categories_):
            placeholder[column] = [values[0] if values else ""]
        if tag_column is not None:
            placeholder[tag_column] = [""]
        self.encoder_.fit(placeholder)
        if self.numeric_:
            scaler = self.encoder_.named_transformers_["numeric"]
            scaler.mean_, scaler.scale_ = arrays["scaler_mean"], arrays["scaler_scale"]
            scaler.var_ = arrays["scaler_var"]
        self.cluster_centers_ = arrays["cluster_centers"]
        self.profiles_ = [GroupProfile(group_id=g, size=size, summary=summary, top_tags=top_tags,
                                       demographics=demographics, vector=self.cluster_centers_[g].copy())
                          for g, size, summary, top_tags, demographics in profiles]
        return self
