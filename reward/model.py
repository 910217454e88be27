"""The CTR reward model: (creative image, prompt, audience group, product category) -> predicted CTR.

After CG4CTR's reward model: one small projection per input turns it into a token, a small transformer fuses the
tokens, and a linear head reads the CTR logit off a summary token. Unlike CG4CTR's public code it also takes the
audience group (its profile vector), so one model ranks creatives differently for different groups.

The artefact is the studio's one format (``studio.core.artefact``): ``config.json`` (class, format version,
hyper-parameters, known groups) + ``model.safetensors``. Transformers encoders are saved beside them in
``image_encoder/`` and ``text_encoder/``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from reward.encoders import EMBEDDED, SCENE_STATISTICS, build_image_encoder, build_text_encoder, scene_statistics
from studio.core import hub, vocabulary
from studio.core.artefact import ArtefactError, check_replaceable, load_artefact, save_artefact
from studio.core.errors import InputError, StudioError

# Bump when the meaning of config.json or the weight names change; folders of a newer version are refused.
FORMAT_VERSION = 2  # 2: scene statistics path (scene_taste, scene_mean, scene_scale)
SHIPPED_MODELS = Path(__file__).parent / "models"
HOW_TO_GET = "train one with `studio reward train --log DB --out DIR`, or use 'reward-mini'"


@dataclass
class RewardConfig:
    """Hyper-parameters of a reward model (what ``config.json`` holds).

    group_dim: length of an audience group's profile vector.
    group_ids: the groups seen in training; their profile vectors are stored with the weights, so a group can be
        scored by id.
    image_encoder / text_encoder: ``"embedded"`` or a transformers hub id / local folder.
    image_size: side (pixels) the embedded CNN sees after area-downsampling.
    base_ctr: the head's initial CTR, so training starts from the log's average instead of 50 %.
    """

    group_dim: int = 8
    group_ids: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=lambda: sorted(set(vocabulary.CATEGORIES.values())))
    image_encoder: str = EMBEDDED
    text_encoder: str = EMBEDDED
    freeze_encoders: bool = True
    image_size: int = 64
    hidden_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    dropout: float = 0.0
    base_ctr: float = 0.03


def _mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class RewardModel(nn.Module):
    """Predicts the click-through rate of a creative shown to an audience group.

    Tokens: [summary, image, prompt, group, category], each a ``hidden_dim`` vector; a transformer encoder mixes them.
    The logit is a linear read-out of the summary token plus a bilinear group x creative term plus a bilinear
    group x scene-statistics term (``reward.encoders.scene_statistics``; what carries over to unseen creatives).
    """

    def __init__(self, config: RewardConfig):
        super().__init__()
        self.config = config
        width = config.hidden_dim
        self.image_encoder = build_image_encoder(
            config.image_encoder, dim=width, image_size=config.image_size, freeze=config.freeze_encoders
        )
        self.text_encoder = build_text_encoder(config.text_encoder, dim=32, freeze=config.freeze_encoders)
        self.image_tokens = _mlp(self.image_encoder.dim, width)
        self.text_tokens = _mlp(self.text_encoder.dim, width)
        self.group_tokens = _mlp(config.group_dim, width)
        self.category_tokens = nn.Embedding(len(config.categories) + 1, width)  # row 0: unknown category
        self.summary_token = nn.Parameter(torch.zeros(1, 1, width))
        self.positions = nn.Parameter(torch.randn(1, 5, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, config.num_heads, dim_feedforward=2 * width, dropout=config.dropout, batch_first=True,
            norm_first=True,
        )
        self.fusion = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 1))
        # A direct group x creative bilinear term: tastes are interactions, and with a few hundred noisy
        # (creative, group) labels the transformer alone learns them slowly.
        self.group_key = nn.Linear(width, width, bias=False)
        self.creative_query = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.head[1].bias.fill_(float(np.log(config.base_ctr / (1.0 - config.base_ctr))))
            self.creative_query.weight.zero_()  # start every creative at the base CTR; the data moves it
        # Group x scene statistics (colour, brightness, texture), bilinear: fixed features carry a taste over to
        # creatives never seen in training, where the learned image token alone memorises the training creatives.
        self.scene_taste = nn.Bilinear(config.group_dim, SCENE_STATISTICS, 1)
        with torch.no_grad():
            self.scene_taste.weight.zero_()
            self.scene_taste.bias.zero_()
        self.register_buffer("scene_mean", torch.zeros(SCENE_STATISTICS))
        self.register_buffer("scene_scale", torch.ones(SCENE_STATISTICS))
        # Profile vectors are standardised with the training groups' statistics (set by the trainer).
        self.register_buffer("group_mean", torch.zeros(config.group_dim))
        self.register_buffer("group_scale", torch.ones(config.group_dim))
        self.register_buffer("group_table", torch.zeros(len(config.group_ids), config.group_dim))

    # ---- inputs -----------------------------------------------------------------------------------------------------

    def group_vectors(self, group_ids: Sequence[str]) -> torch.Tensor:
        """Profile vectors (len(group_ids), group_dim) of groups seen in training, looked up by id."""
        index = {g: i for i, g in enumerate(self.config.group_ids)}
        unknown = [g for g in group_ids if str(g) not in index]
        if unknown:
            raise InputError(
                f"unknown audience group {unknown[0]!r}; this reward model knows groups {self.config.group_ids} "
                "(choose one of them, or retrain on a log that has the group)"
            )
        return self.group_table[[index[str(g)] for g in group_ids]]

    def category_ids(self, categories: Sequence[str]) -> torch.Tensor:
        index = {c: i + 1 for i, c in enumerate(self.config.categories)}
        # a product kind ("bottle") is accepted in place of its category ("beverage")
        rows = [index.get(vocabulary.CATEGORIES.get(c, c), 0) for c in categories]
        return torch.tensor(rows, dtype=torch.long, device=self.summary_token.device)

    # ---- forward ----------------------------------------------------------------------------------------------------

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, image_encoder.dim) features. Differentiable in the pixels."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise InputError(f"expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        return torch.cat([self.image_encoder(pixels), scene_statistics(pixels)], dim=1)

    def fuse(
        self,
        image_features: torch.Tensor,
        prompts: Sequence[str],
        group_vectors: torch.Tensor,
        categories: Sequence[str],
    ) -> torch.Tensor:
        """Encoded images (B, D_img) from ``encode_images``, B prompts, group vectors (B, group_dim), B categories ->
        CTR logits (B,)."""
        batch = image_features.shape[0]
        image_features, scene = image_features[:, :-SCENE_STATISTICS], image_features[:, -SCENE_STATISTICS:]
        if not (len(prompts) == len(categories) == group_vectors.shape[0] == batch):
            raise InputError(
                f"expected one prompt, group and category per image; got {batch} images, {len(prompts)} prompts, "
                f"{group_vectors.shape[0]} groups, {len(categories)} categories"
            )
        if group_vectors.shape[1] != self.config.group_dim:
            raise InputError(
                f"expected group profile vectors of length {self.config.group_dim}, got {group_vectors.shape[1]}"
            )
        groups = (group_vectors.to(self.group_mean) - self.group_mean) / self.group_scale
        tokens = torch.stack(
            [
                self.summary_token.expand(batch, 1, -1)[:, 0],
                self.image_tokens(image_features),
                self.text_tokens(self.text_encoder(list(prompts))),
                self.group_tokens(groups),
                self.category_tokens(self.category_ids(categories)),
            ],
            dim=1,
        )
        fused = self.fusion(tokens + self.positions)
        creative = fused[:, 1] + fused[:, 2] + fused[:, 4]
        interaction = (self.group_key(fused[:, 3]) * self.creative_query(creative)).sum(-1) / tokens.shape[-1] ** 0.5
        scene = (scene - self.scene_mean) / self.scene_scale
        return self.head(fused[:, 0]).squeeze(-1) + interaction + self.scene_taste(groups, scene).squeeze(-1)

    def forward(
        self,
        pixels: torch.Tensor,
        prompts: Sequence[str],
        group_vectors: torch.Tensor,
        categories: Sequence[str],
    ) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1], B prompts, group vectors (B, group_dim), B categories -> logits (B,).

        ``torch.sigmoid(logits)`` is the predicted CTR (a probability per impression).
        """
        return self.fuse(self.encode_images(pixels), prompts, group_vectors, categories)

    @property
    def input_size(self) -> int:
        """The side (pixels) the image encoder works at; loading creatives at this size loses nothing and is fastest."""
        return int(self.image_encoder.image_size)

    @torch.inference_mode()
    def predict_ctr(
        self,
        pixels: torch.Tensor,
        prompts: Sequence[str],
        groups: Sequence[str] | torch.Tensor | np.ndarray,
        categories: Sequence[str],
        batch_size: int = 64,
    ) -> np.ndarray:
        """Predicted CTR (B,) in [0, 1]. ``groups`` is B group ids (known to the model) or (B, group_dim) vectors."""
        self.eval()
        if isinstance(groups, (torch.Tensor, np.ndarray)):
            vectors = torch.as_tensor(np.asarray(groups), dtype=torch.float32)
        else:
            vectors = self.group_vectors(list(groups))
        out = []
        for start in range(0, pixels.shape[0], batch_size):
            stop = start + batch_size
            logits = self(pixels[start:stop], prompts[start:stop], vectors[start:stop], categories[start:stop])
            out.append(torch.sigmoid(logits).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    # ---- artefact ---------------------------------------------------------------------------------------------------

    def _external_encoders(self) -> dict[str, nn.Module]:
        return {
            name: module
            for name, module in (("image_encoder", self.image_encoder), ("text_encoder", self.text_encoder))
            if getattr(self.config, name) != EMBEDDED
        }

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (and transformers encoders in sub-folders) atomically.

        The whole folder is replaced, so a folder that holds anything but a reward model (a run with its event log)
        is refused.
        """
        check_replaceable(folder, RewardModel, "a reward model")
        external = self._external_encoders()
        config = dataclasses.asdict(self.config)
        for name in external:
            config[name] = name  # resolved against the folder on load
        tensors = {
            key: value.detach().cpu().numpy()
            for key, value in self.state_dict().items()
            if not any(key.startswith(f"{name}.") for name in external)
        }

        def write_encoders(staging: Path) -> None:
            for name, module in external.items():
                module.save_pretrained(staging / name)

        return save_artefact(folder, type(self), FORMAT_VERSION, config, tensors, write_more=write_encoders)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> "RewardModel":
        """Load a folder written by ``save_pretrained``; a bare name like ``"reward-mini"`` means a shipped model."""
        folder = resolve_model_folder(name_or_path)
        raw, tensors = load_artefact(folder, cls, FORMAT_VERSION, hint=HOW_TO_GET)
        if raw["format_version"] < FORMAT_VERSION:  # format 1 had no scene-statistics weights
            raise ArtefactError(f"{folder} is in an older reward model format ({raw['format_version']}; this studio "
                                f"reads {FORMAT_VERSION}); {HOW_TO_GET}")
        config = {key: value for key, value in raw.items() if key not in ("class_name", "format_version")}
        known = {f.name for f in dataclasses.fields(RewardConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ArtefactError(f"{folder / 'config.json'} has unknown keys {unknown}; {HOW_TO_GET}")
        for name in ("image_encoder", "text_encoder"):
            if config.get(name, EMBEDDED) != EMBEDDED and (folder / config[name]).is_dir():
                config[name] = str(folder / config[name])
        try:
            model = cls(RewardConfig(**config))
        except StudioError:  # an encoder sub-folder that is missing or damaged says so itself
            raise
        except (TypeError, ValueError, AssertionError, RuntimeError) as error:  # a config.json edited into nonsense
            detail = (str(error).strip() or type(error).__name__).splitlines()[0][:200]
            raise ArtefactError(f"{folder / 'config.json'} does not describe a reward model ({detail}); "
                                f"{HOW_TO_GET}") from error
        state = {key: torch.from_numpy(array) for key, array in tensors.items()}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as error:  # same names, other shapes
            missing, unexpected = [str(error).splitlines()[-1].strip()], []
        missing = [k for k in missing if not any(k.startswith(f"{n}.") for n in model._external_encoders())]
        if missing or unexpected:
            raise ArtefactError(
                f"reward model weights in {str(folder)!r} do not match its config (missing or mismatched "
                f"{missing[:3]}, unexpected {unexpected[:3]}); the folder is damaged or from another release: "
                f"{HOW_TO_GET}"
            )
        model.eval()
        return model


def resolve_model_folder(name_or_path: str | os.PathLike) -> Path:
    """A reward model folder, or the name of a model shipped in ``reward/models`` (its contents are checked on load)."""
    resolved = hub.resolve_model(name_or_path, kind="reward model", how_to_get=HOW_TO_GET, shipped=SHIPPED_MODELS,
                                 hub_ids=False)
    return Path(resolved.path_or_id)
