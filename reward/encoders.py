"""Encoders that turn one input of the reward model (creative image, prompt text) into a vector.

Two families, chosen by a string in the model config:
- ``"embedded"``: small networks defined here and trained with the reward model (no download, fast on CPU);
- anything else: a transformers model by hub id or local path (a CLIP vision tower, a sentence encoder). These are
  frozen by default: the reward model learns a projection on top of them.

Every image encoder takes pixels as a float tensor of shape (B, 3, H, W) with values in [0, 1] and is differentiable
with respect to them, so the reward can steer a generator (reward-ranked fine-tuning, gradient guidance).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from studio.core import hub, vocabulary

EMBEDDED = "embedded"

# Words the embedded text encoder knows by name; everything else shares hash buckets.
_SCENE_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [
            *vocabulary.COLOURS,
            *vocabulary.MATERIALS,
            *vocabulary.LIGHTING,
            *vocabulary.LAYOUTS,
            *vocabulary.PRODUCTS,
            *vocabulary.CATEGORIES.values(),
            *vocabulary.INTEREST_TAGS,
        ]
    )
)
_WORD = re.compile(r"[a-z]+")


SCENE_STATISTICS = 11  # length of scene_statistics' output


def scene_statistics(pixels: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Global scene properties audiences react to, differentiable in the pixels: (B, 3, H, W) in [0, 1] -> (B, 11).

    Mean and std of R, G, B; brightness (Rec. 709 luma); saturation; the chroma-weighted hue vector (cos, sin);
    texture (RMS luma gradient). Fixed (not learned), so a model built on them carries over to creatives it never saw.
    """
    small = F.adaptive_avg_pool2d(pixels, size)
    r, g, b = small[:, 0], small[:, 1], small[:, 2]
    luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
    high, low = small.max(dim=1).values, small.min(dim=1).values
    chroma = high - low
    saturation = chroma / high.clamp(min=1e-3)
    angle = torch.atan2(3.0**0.5 * (g - b), 2.0 * r - g - b)
    texture = (luma.diff(dim=-1).pow(2).mean(dim=(1, 2)) + luma.diff(dim=-2).pow(2).mean(dim=(1, 2)) + 1e-8).sqrt()
    return torch.cat([
        small.mean(dim=(2, 3)), small.std(dim=(2, 3)),
        torch.stack([luma.mean(dim=(1, 2)), saturation.mean(dim=(1, 2)), (chroma * torch.cos(angle)).mean(dim=(1, 2)),
                     (chroma * torch.sin(angle)).mean(dim=(1, 2)), texture], dim=1),
    ], dim=1)


class EmbeddedImageEncoder(nn.Module):
    """A small CNN over a downsampled creative, plus its colour statistics.

    The simulator's audiences (and real ones) react to global properties of the scene: colour, brightness, saturation,
    texture. Area-downsampling to ``image_size`` keeps those and makes a 256x256 batch cheap on a CPU.

    Input: (B, 3, H, W) in [0, 1]. Output: (B, dim).
    """

    def __init__(self, dim: int = 64, image_size: int = 64, width: int = 32):
        super().__init__()
        self.image_size = image_size
        self.convs = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
        )
        # mean + std of the conv features (texture) and of the raw pixels (colour, contrast)
        self.project = nn.Linear(2 * width + 6, dim)
        self.dim = dim

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        small = F.adaptive_avg_pool2d(pixels, self.image_size)
        features = self.convs(small * 2.0 - 1.0)
        stats = [
            features.mean(dim=(2, 3)),
            features.std(dim=(2, 3)),
            small.mean(dim=(2, 3)),
            small.std(dim=(2, 3)),
        ]
        return self.project(torch.cat(stats, dim=1))


class TransformersImageEncoder(nn.Module):
    """A transformers vision model (CLIPVisionModel, ViT, SigLIP vision tower, ...) by hub id or local folder.

    Pixels are resized and normalised in torch (not by the image processor) so gradients reach the input.
    Input: (B, 3, H, W) in [0, 1]. Output: (B, hidden_size), the pooled output or the mean token.
    """

    def __init__(self, name_or_path: str, freeze: bool = True):
        super().__init__()
        # Imported here: transformers adds ~2.5 s to `import reward.model`, and the embedded encoders never need it.
        from transformers import AutoConfig, AutoModel, CLIPVisionModel

        self.name_or_path = name_or_path
        source = hub.resolve_model(name_or_path, kind="image encoder", needs="config.json")
        where, local = source.path_or_id, source.is_local
        try:
            config = AutoConfig.from_pretrained(where, local_files_only=local)
            vision_class = CLIPVisionModel if config.model_type == "clip" else AutoModel
            self.model = vision_class.from_pretrained(where, local_files_only=local)
        except Exception as error:  # noqa: BLE001 - transformers, safetensors and tokenizers each raise their own
            raise hub.load_failed("image encoder", source, error) from error
        vision_config = getattr(self.model.config, "vision_config", self.model.config)
        self.image_size = int(getattr(vision_config, "image_size", 224))
        self.dim = int(vision_config.hidden_size)
        mean, std = _image_normalisation(where, local)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        resized = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        output = self.model(pixel_values=(resized - self.mean) / self.std)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None or pooled.dim() != 2:
            pooled = output.last_hidden_state.mean(dim=1)
        return pooled

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save_pretrained(folder)


def _image_normalisation(name_or_path: str, local: bool) -> tuple[list[float], list[float]]:
    """The model's own image_mean / image_std when it ships a preprocessor config; CLIP's otherwise."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, local_files_only=local)
        return list(processor.image_mean), list(processor.image_std)
    except (OSError, ValueError, AttributeError, TypeError):
        return [0.4815, 0.4578, 0.4082], [0.2686, 0.2613, 0.2758]


class EmbeddedTextEncoder(nn.Module):
    """A bag of words over the scene vocabulary, with hash buckets for other words.

    Prompts in this studio are short scene descriptions ("a bottle on white marble, soft light"); the words that
    matter are the scene vocabulary, which each get their own embedding.
    Input: a list of B strings. Output: (B, dim).
    """

    def __init__(self, dim: int = 32, hash_buckets: int = 256):
        super().__init__()
        self.word_index = {word: i + 1 for i, word in enumerate(_SCENE_WORDS)}  # 0 is padding
        self.hash_buckets = hash_buckets
        self.embedding = nn.EmbeddingBag(1 + len(_SCENE_WORDS) + hash_buckets, dim, mode="mean", padding_idx=0)
        self.dim = dim

    def token_ids(self, text: str) -> list[int]:
        ids = []
        for word in _WORD.findall(text.lower()):
            index = self.word_index.get(word)
            if index is None:
                index = 1 + len(_SCENE_WORDS) + zlib.crc32(word.encode()) % self.hash_buckets
            ids.append(index)
        return ids or [0]

    def forward(self, texts: list[str]) -> torch.Tensor:
        ids = [self.token_ids(text) for text in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long, device=self.embedding.weight.device)
        offsets = torch.tensor([0] + [len(row) for row in ids[:-1]], dtype=torch.long).cumsum(0)
        return self.embedding(flat, offsets.to(flat.device))


class TransformersTextEncoder(nn.Module):
    """A transformers text model (sentence encoder, CLIP text tower, BERT) by hub id or local folder.

    Output: the mean of the last hidden states over the real tokens, (B, hidden_size).
    """

    def __init__(self, name_or_path: str, freeze: bool = True, max_length: int = 77):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel  # see TransformersImageEncoder

        self.name_or_path = name_or_path
        source = hub.resolve_model(name_or_path, kind="text encoder", needs="config.json")
        where, local = source.path_or_id, source.is_local
        try:
            config = AutoConfig.from_pretrained(where, local_files_only=local)
            self.tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local)
            text_class = CLIPTextModel if config.model_type == "clip" else AutoModel
            self.model = text_class.from_pretrained(where, local_files_only=local)
        except Exception as error:  # noqa: BLE001 - as in TransformersImageEncoder
            raise hub.load_failed("text encoder", source, error) from error
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.dim = int(text_config.hidden_size)
        self.max_length = max_length
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def build_image_encoder(name: str, dim: int, image_size: int, freeze: bool = True) -> nn.Module:
    """``"embedded"`` -> the small CNN; a hub id or folder -> a transformers vision model."""
    if name == EMBEDDED:
        return EmbeddedImageEncoder(dim=dim, image_size=image_size)
    return TransformersImageEncoder(name, freeze=freeze)


def build_text_encoder(name: str, dim: int, freeze: bool = True) -> nn.Module:
    """``"embedded"`` -> the bag of scene words; a hub id or folder -> a transformers text model."""
    if name == EMBEDDED:
        return EmbeddedTextEncoder(dim=dim)
    return TransformersTextEncoder(name, freeze=freeze)
