"""The audience simulator: a small RecSim-like world with known answers, for offline evaluation only.

Users carry observable features (age, region, device, activity, interest tags) drawn from a few latent segments; the
studio sees the features, never the segments. Each segment has tastes over properties measured from the pixels of a
creative's background (`measure_background`) and affinities to product categories. A user's true click probability is

    p = sigmoid(logit(base_ctr) + taste_u . z(background) + affinity_s[category] + user_term_u)

where ``z`` standardises the measurements with fixed constants, ``taste_u`` is the segment's taste plus a small
personal deviation and ``user_term_u`` is the user's general propensity to click (more active users click a bit more).
Clicks are Bernoulli draws from the simulator's seeded generator. The oracle methods (`expected_ctr`, `segment_ctr`,
`best_creative`, `segment_of`) exist for evaluation: regret, lift against the oracle. See docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from studio.core.errors import InputError
from studio.core.vocabulary import CATEGORIES, INTEREST_TAGS
from studio.imaging.descriptors import (
    BACKGROUND_FEATURES,
    FEATURE_CENTRE,
    FEATURE_SCALE,
    background_vector,
    measure_background,
)

REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "central")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
CATEGORY_NAMES: tuple[str, ...] = tuple(sorted(set(CATEGORIES.values())))


@dataclass
class Segment:
    """One latent audience segment (hidden from the studio).

    share: fraction of users. age_mean, age_sd: years. region_probs (len(REGIONS),), device_probs (len(DEVICES),),
    tag_probs (len(INTEREST_TAGS),): per-tag Bernoulli probability. activity_mean: sessions per week.
    taste: (len(BACKGROUND_FEATURES),) logit weights on standardised background measurements.
    category_affinity: (len(CATEGORY_NAMES),) logit offsets per product category.
    """

    share: float
    age_mean: float
    age_sd: float
    region_probs: np.ndarray
    device_probs: np.ndarray
    tag_probs: np.ndarray
    activity_mean: float
    taste: np.ndarray
    category_affinity: np.ndarray


class AudienceSimulator:
    """A world of users who click on creatives with known probabilities.

    Args:
        n_segments: number of latent segments.
        base_ctr: click probability of an average user on an average creative (sets the logit intercept).
        taste_strength: length of each segment's taste vector (logit per standardised unit of background).
        taste_jitter: logit scale of each user's personal deviation from the segment taste.
        seed: seeds the segments, the users and the clicks.

    Attributes: `segments_` (list of Segment), `n_users_`, `creative_features_` (n_creatives, n_features) raw
    measurements, `creative_categories_` (n_creatives,) category index.
    """

    def __init__(self, n_segments: int = 4, base_ctr: float = 0.02, taste_strength: float = 0.5,
                 taste_jitter: float = 0.05, seed: int = 0) -> None:
        if not 1 <= n_segments <= len(INTEREST_TAGS) // 2:
            raise InputError(f"n_segments must be between 1 and {len(INTEREST_TAGS) // 2}, got {n_segments}")
        if not 0.0 < base_ctr < 0.5:
            raise InputError(f"base_ctr must be a probability in (0, 0.5), got {base_ctr}")
        self.n_segments = n_segments
        self.base_ctr = base_ctr
        self.taste_strength = taste_strength
        self.taste_jitter = taste_jitter
        self.seed = seed
        self.rng_ = np.random.default_rng(seed)
        self.segments_ = self._make_segments()
        self.n_users_ = 0
        self._segment = np.zeros(0, dtype=np.int64)
        self._taste = np.zeros((0, len(BACKGROUND_FEATURES)))
        self._user_term = np.zeros(0)
        self.creative_features_ = np.zeros((0, len(BACKGROUND_FEATURES)))
        self.creative_categories_ = np.zeros(0, dtype=np.int64)

    def _make_segments(self) -> list[Segment]:
        rng, n = self.rng_, self.n_segments
        shares = rng.dirichlet(np.full(n, 8.0))
        ages = rng.permutation(np.linspace(22, 62, n)) if n > 1 else np.array([40.0])
        signature = rng.permutation(len(INTEREST_TAGS))  # three distinct signature tags per segment
        segments = []
        for s in range(n):
            tag_probs = np.full(len(INTEREST_TAGS), 0.06)
            tag_probs[signature[3 * s: 3 * s + 3]] = 0.65
            taste = rng.normal(size=len(BACKGROUND_FEATURES))
            segments.append(Segment(
                share=float(shares[s]), age_mean=float(ages[s]), age_sd=6.0,
                region_probs=rng.dirichlet(np.full(len(REGIONS), 0.6)),
                device_probs=rng.dirichlet(np.full(len(DEVICES), 1.0)),
                tag_probs=tag_probs, activity_mean=float(rng.uniform(1.5, 8.0)),
                taste=self.taste_strength * taste / np.linalg.norm(taste),
                category_affinity=rng.normal(0.0, 0.35, size=len(CATEGORY_NAMES)),
            ))
        return segments

    # -- the world's contents ---------------------------------------------------------------------------------------
    def sample_users(self, n: int) -> pd.DataFrame:
        """Draw `n` new users; returns their observable features, one row per user.

        Columns: user_id (int, consecutive), age (int years), region, device, activity (sessions per week, float),
        interests ("|"-separated tags from INTEREST_TAGS, possibly empty).
        """
        if n < 1:
            raise InputError(f"number of users must be >= 1, got {n}")
        rng = self.rng_
        shares = np.array([s.share for s in self.segments_])
        segment = rng.choice(self.n_segments, size=n, p=shares / shares.sum())
        age = np.empty(n)
        region = np.empty(n, dtype=object)
        device = np.empty(n, dtype=object)
        activity = np.empty(n)
        tags = np.empty((n, len(INTEREST_TAGS)), dtype=bool)
        taste = np.empty((n, len(BACKGROUND_FEATURES)))
        for s, seg in enumerate(self.segments_):
            rows = np.flatnonzero(segment == s)
            k = len(rows)
            age[rows] = rng.normal(seg.age_mean, seg.age_sd, size=k)
            region[rows] = np.array(REGIONS, dtype=object)[rng.choice(len(REGIONS), size=k, p=seg.region_probs)]
            device[rows] = np.array(DEVICES, dtype=object)[rng.choice(len(DEVICES), size=k, p=seg.device_probs)]
            activity[rows] = rng.gamma(3.0, seg.activity_mean / 3.0, size=k)
            tags[rows] = rng.random((k, len(INTEREST_TAGS))) < seg.tag_probs
            taste[rows] = seg.taste + rng.normal(0.0, self.taste_jitter, size=(k, len(BACKGROUND_FEATURES)))
        # More active users click a little more; everyone also has a personal click propensity.
        user_term = 0.2 * (np.log1p(activity) - np.log1p(activity).mean()) + rng.normal(0.0, 0.25, size=n)
        ids = np.arange(self.n_users_, self.n_users_ + n)
        self._segment = np.concatenate([self._segment, segment])
        self._taste = np.concatenate([self._taste, taste])
        self._user_term = np.concatenate([self._user_term, user_term])
        self.n_users_ += n
        names = np.array(INTEREST_TAGS)
        return pd.DataFrame({
            "user_id": ids,
            "age": np.clip(np.rint(age), 16, 90).astype(int),
            "region": region.astype(str),
            "device": device.astype(str),
            "activity": np.round(activity, 2),
            "interests": ["|".join(names[row]) for row in tags],
        })

    def add_creative(self, image: Image.Image | np.ndarray, product_mask: Image.Image | np.ndarray | None,
                     category: str) -> int:
        """Measure a creative's background once and register it; returns its creative index."""
        if category not in CATEGORY_NAMES:
            raise InputError(f"unknown product category {category!r}; expected one of {', '.join(CATEGORY_NAMES)}")
        features = background_vector(measure_background(image, product_mask))
        self.creative_features_ = np.vstack([self.creative_features_, features])
        self.creative_categories_ = np.append(self.creative_categories_, CATEGORY_NAMES.index(category))
        return len(self.creative_categories_) - 1

    # -- clicks -----------------------------------------------------------------------------------------------------
    def click_probability(self, users: np.ndarray, creatives: np.ndarray) -> np.ndarray:
        """True click probability of each (user, creative) pair: two (n,) int arrays in, (n,) floats out."""
        users, creatives = self._check_pairs(users, creatives)
        z = (self.creative_features_[creatives] - FEATURE_CENTRE) / FEATURE_SCALE
        affinity = self._affinity()[self._segment[users], self.creative_categories_[creatives]]
        logit = np.log(self.base_ctr / (1 - self.base_ctr)) + np.einsum("nf,nf->n", self._taste[users], z)
        return _sigmoid(logit + affinity + self._user_term[users])

    def click(self, users: np.ndarray, creatives: np.ndarray) -> np.ndarray:
        """Draw clicks for (user, creative) impressions: (n,) bool, Bernoulli with the true probabilities."""
        probability = self.click_probability(users, creatives)
        return self.rng_.random(len(probability)) < probability

    # -- oracle (evaluation only) ------------------------------------------------------------------------------------
    def expected_ctr(self, users: np.ndarray, creatives: np.ndarray | None = None) -> np.ndarray:
        """Oracle: true click probability of every user on every creative, shape (n_users, n_creatives)."""
        users = self._check_users(users)
        creatives = self._all_creatives(creatives)
        z = (self.creative_features_[creatives] - FEATURE_CENTRE) / FEATURE_SCALE
        affinity = self._affinity()[self._segment[users]][:, self.creative_categories_[creatives]]
        logit = (np.log(self.base_ctr / (1 - self.base_ctr)) + self._taste[users] @ z.T + affinity
                 + self._user_term[users][:, None])
        return _sigmoid(logit)

    def segment_ctr(self, creatives: np.ndarray | None = None) -> np.ndarray:
        """Oracle: click probability of a typical user of each segment, shape (n_segments, n_creatives)."""
        creatives = self._all_creatives(creatives)
        z = (self.creative_features_[creatives] - FEATURE_CENTRE) / FEATURE_SCALE
        taste = np.stack([s.taste for s in self.segments_])
        logit = (np.log(self.base_ctr / (1 - self.base_ctr)) + taste @ z.T
                 + self._affinity()[:, self.creative_categories_[creatives]])
        return _sigmoid(logit)

    def best_creative(self, users: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Oracle: for each user, the best of `candidates` (n_users, n_candidates) creative indices.

        Returns (creative index (n_users,), its click probability (n_users,)).
        """
        users = self._check_users(users)
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.ndim != 2 or len(candidates) != len(users):
            raise InputError("candidates must be an (n_users, n_candidates) array of creative indices")
        probability = self.click_probability(np.repeat(users, candidates.shape[1]), candidates.reshape(-1))
        probability = probability.reshape(candidates.shape)
        best = probability.argmax(axis=1)
        rows = np.arange(len(users))
        return candidates[rows, best], probability[rows, best]

    def segment_of(self, users: np.ndarray) -> np.ndarray:
        """Oracle: the hidden segment of each user, shape (n,) int."""
        return self._segment[self._check_users(users)]

    # -- checks -----------------------------------------------------------------------------------------------------
    def _affinity(self) -> np.ndarray:
        return np.stack([s.category_affinity for s in self.segments_])

    def _check_users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if len(users) and (users.min() < 0 or users.max() >= self.n_users_):
            raise InputError(f"user ids must be in [0, {self.n_users_}); draw users with sample_users first")
        return users

    def _all_creatives(self, creatives: np.ndarray | None) -> np.ndarray:
        if creatives is None:
            return np.arange(len(self.creative_categories_))
        creatives = np.asarray(creatives, dtype=np.int64).reshape(-1)
        if len(creatives) and (creatives.min() < 0 or creatives.max() >= len(self.creative_categories_)):
            raise InputError(f"creative ids must be in [0, {len(self.creative_categories_)}); add them first")
        return creatives

    def _check_pairs(self, users: np.ndarray, creatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        users, creatives = self._check_users(users), self._all_creatives(creatives)
        if len(users) != len(creatives):
            raise InputError(f"got {len(users)} users and {len(creatives)} creatives; pass one creative per user")
        return users, creatives


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
