"""Audience clustering: a user feature table in, audience groups and their profiles out.

The feature table has one row per user. Its columns are read by kind:

- numeric columns (age, activity, ...) are standardised;
- categorical columns (region, device, ...) are one-hot encoded; a category never seen in `fit` encodes as all zeros;
- the interest-tag column (default ``"interests"``) is multi-hot over the tags seen in `fit` (normally
  `studio.core.vocabulary.INTEREST_TAGS`). It may hold ``"|"``-separated strings (``"beach|travel"``; the form CSV files
  use) or lists of strings (the form DataFrames and Parquet files use). Unknown tags are ignored.

A ``user_id`` column, if present, is an identifier and never a feature.

The fitted state (scaler statistics, categories, tag vocabulary, centres) is saved as ``config.json`` +
``model.safetensors``; no pickle is involved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.compose import ColumnTransformer
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from studio.core.atomic import write_file
from studio.core.errors import InputError, ModelNotFoundError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
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


class AudienceClustering:
    """Cluster users into audience groups (scikit-learn style).

    Args:
        n_groups: number of groups; None chooses K in `k_range` by the best silhouette score.
        k_range: inclusive (low, high) range of K tried when `n_groups` is None.
        seed: seed of KMeans and of the silhouette subsample; the same seed and table give the same groups.
        tag_column: name of the multi-hot interest-tag column (None: no tag column).
        columns: the numeric/categorical columns to cluster on (None: every column but user_id and the tags);
            leave out columns that say how much a user does rather than who they are, such as visit counts.
        n_top_tags: how many tags a profile lists.

    Learned attributes: `n_groups_`, `numeric_`, `categorical_`, `categories_`, `tags_`, `encoder_`,
    `cluster_centers_` (n_groups_, n_features), `labels_`, `silhouette_` (K -> score), `profiles_`.
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

    # -- fitting ---------------------------------------------------------------------------------------------------
    def fit(self, table: str | os.PathLike | pd.DataFrame) -> "AudienceClustering":
        """Learn the encoding and the groups from a user table (see the module docstring for its columns)."""
        frame = read_table(table)
        self._check_params(len(frame))
        self._learn_columns(frame)
        self.encoder_ = build_encoder(self.numeric_, self.categorical_, self.categories_, self._tag_column(frame),
                                      self.tags_)
        features = np.asarray(self.encoder_.fit_transform(self._prepare(frame)), dtype=np.float64)
        with threadpool_limits(1 if len(features) < SINGLE_THREAD_BELOW else None):
            self._fit_groups(features)
        self.labels_ = self._nearest(features)
        self.profiles_ = self._profiles(frame, self.labels_)
        return self

    def _fit_groups(self, features: np.ndarray) -> None:
        if self.n_groups is None:
            self.silhouette_ = self._score_k(features)
            self.n_groups_ = max(self.silhouette_, key=self.silhouette_.get)
        else:
            self.silhouette_ = {}
            self.n_groups_ = self.n_groups
        model = self._kmeans(self.n_groups_, len(features)).fit(features)
        self.cluster_centers_ = model.cluster_centers_.astype(np.float64)

    def _check_params(self, n_users: int) -> None:
        low, high = self.k_range
        if self.n_groups is not None and not (1 <= self.n_groups <= n_users):
            raise InputError(f"n_groups={self.n_groups} must be between 1 and the number of users ({n_users})")
        if self.n_groups is None and not (2 <= low <= high < n_users):
            raise InputError(f"k_range={self.k_range} must satisfy 2 <= low <= high < number of users ({n_users})")

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
        for column in self.numeric_:
            if frame[column].isna().any():
                raise InputError(f"numeric column {column!r} has missing values; fill or drop them before fitting")
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
    def transform(self, table: str | os.PathLike | pd.DataFrame) -> np.ndarray:
        """Encode users as a (n_users, n_features) float array (the space the centres live in)."""
        self._check_fitted()
        frame = read_table(table)
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
            if frame[column].isna().any():
                raise InputError(f"numeric column {column!r} has missing values; fill them before predicting")
            frame[column] = frame[column].astype(np.float64)
        return frame

    def predict(self, table: str | os.PathLike | pd.DataFrame) -> np.ndarray:
        """Group id of each user, shape (n_users,) int64; works for users and categories never seen in `fit`."""
        return self._nearest(self.transform(table))

    def fit_predict(self, table: str | os.PathLike | pd.DataFrame) -> np.ndarray:
        """`fit` then the groups of the training users."""
        return self.fit(table).labels_

    def group_vectors(self) -> np.ndarray:
        """The profile vectors stacked, shape (n_groups_, n_features): row g is group g's bandit context."""
        self._check_fitted()
        return np.stack([profile.vector for profile in self.profiles_])

    def _nearest(self, features: np.ndarray) -> np.ndarray:
        distances = ((features[:, None, :] - self.cluster_centers_[None, :, :]) ** 2).sum(axis=2)
        return distances.argmin(axis=1).astype(np.int64)

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise InputError("this AudienceClustering is not fitted yet; call fit(table) or from_pretrained(dir)")

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
        """Write ``config.json`` (columns, categories, tags, profiles) and ``model.safetensors`` (scaler, centres)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        scaler = self.encoder_.named_transformers_.get("numeric")
        tensors = {"cluster_centers": np.ascontiguousarray(self.cluster_centers_)}
        if scaler is not None:
            tensors["scaler_mean"] = np.asarray(scaler.mean_, dtype=np.float64)
            tensors["scaler_scale"] = np.asarray(scaler.scale_, dtype=np.float64)
            tensors["scaler_var"] = np.asarray(scaler.var_, dtype=np.float64)
        config = {
            "model_type": "audience_clustering",
            "n_groups": self.n_groups, "k_range": list(self.k_range), "seed": self.seed,
            "tag_column": self.tag_column, "n_top_tags": self.n_top_tags, "columns": self.columns,
            "n_groups_": self.n_groups_, "numeric": self.numeric_, "categorical": self.categorical_,
            "categories": self.categories_, "tags": list(self.tags_), "has_tag_column": self._has_tag_block(),
            "silhouette": {str(k): v for k, v in self.silhouette_.items()},
            "profiles": [{**p.to_dict(), "size": p.size} for p in self.profiles_],
        }
        write_file(directory / WEIGHTS_NAME, lambda path: save_file(tensors, str(path)))
        write_file(directory / CONFIG_NAME,
                   lambda path: path.write_text(json.dumps(config, indent=2, default=_json_default)))

    def _has_tag_block(self) -> bool:
        return any(name == "tags" for name, _, _ in self.encoder_.transformers)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "AudienceClustering":
        """Rebuild a fitted clustering from a folder written by `save_pretrained`."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise ModelNotFoundError(f"{directory} has no {CONFIG_NAME} + {WEIGHTS_NAME}; "
                                     "save one with AudienceClustering.save_pretrained(dir)")
        config = json.loads((directory / CONFIG_NAME).read_text())
        tensors = load_file(str(directory / WEIGHTS_NAME))
        self = cls(n_groups=config["n_groups"], k_range=tuple(config["k_range"]), seed=config["seed"],
                   tag_column=config["tag_column"], n_top_tags=config["n_top_tags"], columns=config["columns"])
        self.n_groups_ = config["n_groups_"]
        self.numeric_, self.categorical_ = config["numeric"], config["categorical"]
        self.categories_, self.tags_ = config["categories"], tuple(config["tags"])
        self.silhouette_ = {int(k): v for k, v in config["silhouette"].items()}
        tag_column = self.tag_column if config["has_tag_column"] else None
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
            scaler.mean_, scaler.scale_, scaler.var_ = (tensors["scaler_mean"], tensors["scaler_scale"],
                                                        tensors["scaler_var"])
        self.cluster_centers_ = tensors["cluster_centers"]
        self.profiles_ = [
            GroupProfile(group_id=p["group_id"], size=p["size"], summary=p["summary"], top_tags=p["top_tags"],
                         demographics=p["demographics"], vector=self.cluster_centers_[p["group_id"]].copy())
            for p in config["profiles"]
        ]
        return self


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in config.json")
