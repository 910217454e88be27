"""Training the reward model on an impression log (impressions joined with clicks).

Recipe (after CG4CTR): aggregate impressions per (product, group, creative); label each aggregate with its
Beta-smoothed CTR; the loss is 0.5 x a listwise softmax cross-entropy over the creatives of one (product, group) plus
0.5 x a pointwise binary cross-entropy (CG4CTR: 0.9 + 0.1), both weighted by impressions. The split is by creative (``split_creatives``):
training never sees a validation (early stopping) or test creative, so the test figures say how the model ranks
creatives it has never seen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from studio.core.errors import InputError
from reward.data import BetaPrior, RewardDataset, aggregate, fit_beta_prior, label
from reward.encoders import scene_statistics
from reward.model import RewardConfig, RewardModel


@dataclass
class TrainingConfig:
    """How to train. Loss = listwise + pointwise (CG4CTR uses 0.9 + 0.1; an equal share of the pointwise term sets
    each list's level better for unseen creatives; see docs/reward.md).

    A log has few (product, group) lists (tens), so a batch of 64 lists is usually the whole log: one step per epoch.
    Early stopping watches an exponential moving average (``val_smoothing``) of the validation loss.
    validation_fraction, test_fraction: share of each product's creatives held out for early stopping and for
    testing (``split_creatives``); 0 keeps none.
    """

    max_epochs: int = 600
    patience: int = 100
    lists_per_batch: int = 64
    learning_rate: float = 3e-3
    scene_learning_rate: float = 3e-2
    weight_decay: float = 1e-4
    listwise_weight: float = 0.5
    pointwise_weight: float = 0.5
    validation_fraction: float = 0.2
    test_fraction: float = 0.3
    val_smoothing: float = 0.8
    augment: bool = True
    seed: int = 0
    progress: bool = True
    model: RewardConfig = field(default_factory=RewardConfig)


class _Lists:
    """Aggregates grouped into (product, group) lists, as padded index arrays for batched losses."""

    def __init__(self, table: pd.DataFrame, dataset: RewardDataset):
        self.table = table.reset_index(drop=True)
        self.creative_rows = dataset.creative_rows(self.table["creative_id"])
        self.group_ids = self.table["group_id"].tolist()
        self.prompts = dataset.creatives["prompt"].to_numpy()[self.creative_rows].tolist()
        self.categories = dataset.creatives["category"].to_numpy()[self.creative_rows].tolist()
        members = [rows.to_numpy() for _, rows in self.table.groupby(["product_id", "group_id"]).groups.items()]
        width = max(len(m) for m in members)
        self.index = np.full((len(members), width), -1, dtype=np.int64)
        for i, rows in enumerate(members):
            self.index[i, : len(rows)] = rows
        self.labels = torch.tensor(self.table["label"].to_numpy(), dtype=torch.float32)
        self.weights = torch.tensor(self.table["impressions"].to_numpy(), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.index)


class RewardTrainer:
    """Fits a RewardModel to a RewardDataset (scikit-learn style: ``fit`` returns self; learned state ends in ``_``).

    Attributes after fit: ``model_`` (the best model on validation), ``prior_`` (BetaPrior of the training labels),
    ``split_`` (the CreativeSplit), ``history_`` (per epoch: train_loss, val_loss), ``best_epoch_``, ``n_epochs_``.
    """

    def __init__(self, config: TrainingConfig | None = None):
        self.config = config or TrainingConfig()

    # ---- public -----------------------------------------------------------------------------------------------------

    def fit(self, dataset: RewardDataset) -> "RewardTrainer":
        cfg = self.config
        torch.manual_seed(cfg.seed)
        generator = np.random.default_rng(cfg.seed)

        # 1. split creatives, aggregate, fit the Beta prior on the training creatives only
        self.split_ = split_creatives(dataset.creatives, cfg.validation_fraction, cfg.test_fraction, cfg.seed)
        train_rows, val_rows = self.split_.impressions(dataset.impressions, "train"), self.split_.impressions(
            dataset.impressions, "validation")
        if train_rows.empty:
            raise InputError("the training creatives have no impressions; the log is too small to split by creative")
        train_table = aggregate(train_rows)
        self.prior_ = fit_beta_prior(train_table["clicks"].to_numpy(), train_table["impressions"].to_numpy())
        train = _Lists(label(train_table, self.prior_), dataset)
        val = _Lists(label(aggregate(val_rows), self.prior_), dataset) if len(val_rows) else None

        # 2. the model, with the groups and base rate of this log
        model = RewardModel(self._model_config(dataset, self.prior_))
        vectors = torch.tensor(np.stack([dataset.group_vectors[g] for g in model.config.group_ids]))
        model.group_table.copy_(vectors)
        model.group_mean.copy_(vectors.mean(dim=0))
        if len(vectors) > 1:
            model.group_scale.copy_(vectors.std(dim=0, unbiased=False).clamp(min=1e-3))
        scene = scene_statistics(dataset.pixels[dataset.creative_rows(self.split_.train)])
        model.scene_mean.copy_(scene.mean(dim=0))
        model.scene_scale.copy_(scene.std(dim=0, unbiased=False).clamp(min=1e-3))
        parameters = [p for p in model.parameters() if p.requires_grad]
        scene_taste = list(model.scene_taste.parameters())
        rest = [p for p in parameters if all(p is not q for q in scene_taste)]
        # the scene taste is what carries over to unseen creatives: let it learn before the token path memorises
        optimiser = torch.optim.AdamW([{"params": rest}, {"params": scene_taste, "lr": cfg.scene_learning_rate}],
                                      lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        frozen_images = not any(p.requires_grad for p in model.image_encoder.parameters())
        features = _encode_all(model, dataset.pixels) if frozen_images else None

        # 3. epochs over shuffled batches of lists, early stopping on the validation loss
        self.history_: list[dict[str, float]] = []
        best_loss, best_state, self.best_epoch_, waited = np.inf, None, 0, 0
        bar = tqdm(range(cfg.max_epochs), desc="reward", unit="epoch", disable=not cfg.progress)
        for epoch in bar:
            model.train()
            order = generator.permutation(len(train))
            losses = []
            for start in range(0, len(order), cfg.lists_per_batch):
                lists = train.index[order[start : start + cfg.lists_per_batch]]
                loss = self._loss(model, dataset, train, lists, features, augment=cfg.augment)
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 5.0)
                optimiser.step()
                losses.append(float(loss.detach()))
            model.eval()
            with torch.no_grad():
                val_loss = float(self._loss(model, dataset, val, val.index, features)) if val else float(np.mean(losses))
            # one full-batch step per epoch makes the validation loss jumpy; stop on its moving average
            smoothed = val_loss if epoch == 0 else cfg.val_smoothing * smoothed + (1 - cfg.val_smoothing) * val_loss
            self.history_.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                                  "val_loss_smoothed": smoothed})
            bar.set_postfix(train=f"{np.mean(losses):.4f}", val=f"{val_loss:.4f}")
            if smoothed < best_loss - 1e-6:
                best_loss, best_state, self.best_epoch_, waited = smoothed, copy.deepcopy(model.state_dict()), epoch + 1, 0
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
        bar.close()
        model.load_state_dict(best_state)
        model.eval()
        self.model_ = model
        self.n_epochs_ = len(self.history_)
        return self

    # ---- internals --------------------------------------------------------------------------------------------------

    def _model_config(self, dataset: RewardDataset, prior: BetaPrior) -> RewardConfig:
        config = copy.deepcopy(self.config.model)
        config.group_ids = sorted(dataset.group_vectors)
        config.group_dim = int(len(next(iter(dataset.group_vectors.values()))))
        config.base_ctr = float(prior.mean)
        known = set(config.categories)
        config.categories = config.categories + sorted(set(dataset.creatives["category"]) - known)
        return config

    def _loss(self, model: RewardModel, dataset: RewardDataset, lists: _Lists, index: np.ndarray,
              features: torch.Tensor | None, augment: bool = False) -> torch.Tensor:
        """listwise_weight x impression-weighted listwise softmax CE + pointwise_weight x impression-weighted BCE."""
        cfg = self.config
        rows = index[index >= 0]
        logits = _row_logits(model, dataset, lists, rows, features, augment)
        labels, weights = lists.labels[rows], lists.weights[rows]
        pointwise = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights).sum() / weights.sum()
        # At a CTR of a few per cent the BCE gradient (p - y) is ~50x smaller than the listwise one; dividing by the
        # Bernoulli variance of the base rate puts both on the scale of relative CTR errors, so the listwise /
        # pointwise weights mean what they say and the pointwise term can set each list's level.
        pointwise = pointwise / (model.config.base_ctr * (1.0 - model.config.base_ctr))
        # scatter back into the padded (n_lists, width) layout
        padded = torch.full(index.shape, -torch.inf)
        position = torch.as_tensor(np.flatnonzero(index.reshape(-1) >= 0))
        padded.view(-1)[position] = logits
        target = torch.zeros(index.shape)
        target.view(-1)[position] = labels
        target = target / target.sum(dim=1, keepdim=True)
        log_p = torch.log_softmax(padded, dim=1).masked_fill(torch.as_tensor(index < 0), 0.0)
        list_weight = torch.zeros(index.shape)
        list_weight.view(-1)[position] = weights
        list_weight = list_weight.sum(dim=1)
        listwise = (-(target * log_p).sum(dim=1) * list_weight).sum() / list_weight.sum()
        return cfg.listwise_weight * listwise + cfg.pointwise_weight * pointwise


@dataclass(frozen=True)
class CreativeSplit:
    """Disjoint creative ids: ``train`` (fitted), ``validation`` (early stopping), ``test`` (reported, never seen)."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]

    def impressions(self, impressions: pd.DataFrame, part: str) -> pd.DataFrame:
        """The impressions of one part ("train", "validation" or "test")."""
        return impressions[impressions["creative_id"].astype(str).isin(set(getattr(self, part)))]

    def to_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "validation": list(self.validation), "test": list(self.test)}


def split_creatives(creatives: pd.DataFrame, validation_fraction: float, test_fraction: float,
                    seed: int) -> CreativeSplit:
    """Seeded split of each product's creatives (``creatives`` indexed by creative_id, with product_id).

    Per product, so every product is trained on and every test (product, group) list has creatives to rank: a
    non-zero fraction keeps at least one creative (two for test when the product has five or more), and at least one
    is left for training.
    """
    if not (0.0 <= validation_fraction < 1.0 and 0.0 <= test_fraction < 1.0):
        raise InputError(f"validation and test fractions must be in [0, 1), got {validation_fraction}, {test_fraction}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for product, ids in sorted(creatives.groupby("product_id").groups.items()):
        ids = [str(i) for i in rng.permutation(sorted(str(i) for i in ids))]
        n_test = 0 if test_fraction == 0 else max(2 if len(ids) >= 5 else 1, int(round(test_fraction * len(ids))))
        n_val = 0 if validation_fraction == 0 else max(1, int(round(validation_fraction * len(ids))))
        if len(ids) - n_test - n_val < 1:
            raise InputError(f"product {product!r} has {len(ids)} creatives, too few to hold out {n_test} for test and "
                             f"{n_val} for validation; lower the fractions or log more creatives")
        parts["test"] += ids[:n_test]
        parts["validation"] += ids[n_test : n_test + n_val]
        parts["train"] += ids[n_test + n_val :]
    return CreativeSplit(*(tuple(sorted(parts[k])) for k in ("train", "validation", "test")))


def _augment(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random horizontal flips and small shifts: neither changes what the audience reacts to (colour, texture)."""
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    shift = int(torch.randint(-pixels.shape[-1] // 16, pixels.shape[-1] // 16 + 1, (1,), generator=generator))
    return torch.roll(pixels, shifts=shift, dims=-1)


def _encode_all(model: RewardModel, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.encode_images(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def _row_logits(model: RewardModel, dataset: RewardDataset, lists: _Lists, rows: np.ndarray,
                features: torch.Tensor | None, augment: bool) -> torch.Tensor:
    """Logits (len(rows),) of aggregate rows; each distinct creative's image is encoded once."""
    creative_rows = lists.creative_rows[rows]
    unique, inverse = np.unique(creative_rows, return_inverse=True)
    if features is None:
        pixels = dataset.pixels[unique]
        encoded = model.encode_images(_augment(pixels) if augment else pixels)
    else:
        encoded = features[unique]
    groups = model.group_vectors([lists.group_ids[r] for r in rows])
    return model.fuse(
        encoded[torch.as_tensor(inverse)],
        [lists.prompts[r] for r in rows],
        groups,
        [lists.categories[r] for r in rows],
    )


def predict_pairs(model: RewardModel, dataset: RewardDataset, pairs: pd.DataFrame, batch_size: int = 256) -> np.ndarray:
    """Predicted CTR (len(pairs),) of (creative_id, group_id) rows; each distinct pair is scored once."""
    keys = pairs[["creative_id", "group_id"]].astype(str)
    unique = keys.drop_duplicates().reset_index(drop=True)
    rows = dataset.creative_rows(unique["creative_id"])
    if (rows < 0).any():
        raise InputError(f"unknown creative {unique['creative_id'][int(np.argmax(rows < 0))]!r}")
    model.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(unique), batch_size):
            part = rows[start : start + batch_size]
            logits = model(
                dataset.pixels[part],
                dataset.creatives["prompt"].to_numpy()[part].tolist(),
                model.group_vectors(unique["group_id"][start : start + batch_size].tolist()),
                dataset.creatives["category"].to_numpy()[part].tolist(),
            )
            scores.append(torch.sigmoid(logits).numpy())
    unique["ctr"] = np.concatenate(scores)
    return keys.merge(unique, on=["creative_id", "group_id"], how="left")["ctr"].to_numpy()
