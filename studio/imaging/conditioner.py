"""studio-mini's history adapter: the history and category conditions of a UNet, added through forward hooks.

The pooled history latent enters as extra input channels of the UNet's first convolution (a bias-free convolution
whose output is added to `conv_in`'s, the same as widening `conv_in`) and, pooled over space (mean and std per
channel), through a small MLP added to the time embedding; the product category is a learned embedding added there
too. Everything starts at zero, and rows without a condition get exactly zero, so the bare UNet is untouched.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from studio.core.artefact import load_artefact, save_artefact
from studio.core.vocabulary import CATEGORIES

CATEGORY_NAMES: tuple[str, ...] = tuple(sorted(set(CATEGORIES.values())))
CONDITIONER_FORMAT = 1


class PersonalConditioner(nn.Module):
    """History and category conditions for a UNet2DConditionModel (see the module docstring)."""

    def __init__(self, latent_channels: int = 4, conv_channels: int = 32, time_dim: int = 128, hidden: int = 64,
                 n_categories: int = len(CATEGORY_NAMES)):
        super().__init__()
        self.config = {"latent_channels": latent_channels, "conv_channels": conv_channels, "time_dim": time_dim,
                       "hidden": hidden, "n_categories": n_categories}
        # The extra conv_in input channels (DiFashion): bias-free, so a zero history adds zero.
        self.history_conv = nn.Conv2d(latent_channels, conv_channels, 3, padding=1, bias=False)
        self.history_mlp = nn.Sequential(nn.Linear(2 * latent_channels, hidden), nn.SiLU(),
                                         nn.Linear(hidden, time_dim))
        self.category = nn.Embedding(n_categories + 1, time_dim, padding_idx=0)  # 0 = no category, kept at zero
        for module in (self.history_conv, self.history_mlp[2], self.category):
            nn.init.zeros_(module.weight)
        nn.init.zeros_(self.history_mlp[2].bias)
        self.context: dict | None = None  # set per UNet pass by `conditions`

    @classmethod
    def for_unet(cls, unet, **kwargs) -> PersonalConditioner:
        """A fresh (zero) conditioner sized for `unet`."""
        return cls(latent_channels=int(unet.config.out_channels), conv_channels=int(unet.config.block_out_channels[0]),
                   time_dim=int(unet.time_embedding.linear_2.out_features), **kwargs)

    @contextlib.contextmanager
    def conditions(self, history=None, has_history=None, category=None):
        """Condition the hooked UNet's passes inside the block.

        history: (B or 1, C, h, w) pooled history latents; has_history: (B or 1,) 1 where a row has a history, 0
        where it is dropped; category: (B or 1,) long, 0 = none.
        """
        previous = self.context
        if history is not None and has_history is None:
            has_history = torch.ones(history.shape[0], device=history.device)
        self.context = {"history": history, "has_history": has_history, "category": category}
        try:
            yield
        finally:
            self.context = previous

    def hook(self, unet) -> list:
        """Hook into `unet`; returns the handles (call .remove() on each to unhook)."""
        return [unet.conv_in.register_forward_hook(self._conv_in_hook),
                unet.time_embedding.register_forward_hook(self._time_hook)]

    @staticmethod
    def _rows(value, batch: int):
        return value if value.shape[0] == batch else value.expand(batch, *value.shape[1:])

    def _history(self, dtype, batch: int):
        context = self.context
        history = self._rows(context["history"].to(dtype), batch)
        gate = self._rows(context["has_history"].to(dtype), batch)
        return history, gate

    def _conv_in_hook(self, module, args, output):
        if not self.context or self.context["history"] is None:
            return None
        history, gate = self._history(output.dtype, output.shape[0])
        history = history * gate[:, None, None, None]
        if history.shape[-2:] != output.shape[-2:]:
            history = nn.functional.interpolate(history, size=output.shape[-2:], mode="bilinear")
        return output + self.history_conv(history.to(self.history_conv.weight.dtype)).to(output.dtype)

    def _time_hook(self, module, args, output):
        context = self.context
        if not context or (context["history"] is None and context["category"] is None):
            return None
        batch = output.shape[0]
        extra = torch.zeros_like(output)
        if context["history"] is not None:
            history, gate = self._history(output.dtype, batch)
            pooled = torch.cat([history.mean(dim=(2, 3)), history.std(dim=(2, 3))], dim=1)
            weight_dtype = self.history_mlp[0].weight.dtype
            extra = extra + gate[:, None] * self.history_mlp(pooled.to(weight_dtype)).to(output.dtype)
        if context["category"] is not None:
            category = self._rows(context["category"].to(output.device), batch)
            present = (category > 0).to(output.dtype)[:, None]  # category 0 adds nothing, whatever its row holds
            extra = extra + present * self.category(category).to(output.dtype)
        return output + extra

    # -- the artefact format ----------------------------------------------------------------------------------------
    def save_pretrained(self, folder) -> Path:
        tensors = {name: value.detach().cpu().float().numpy() for name, value in self.state_dict().items()}
        return save_artefact(folder, type(self), CONDITIONER_FORMAT, {"config": self.config}, tensors)

    @classmethod
    def from_pretrained(cls, folder) -> PersonalConditioner:
        config, tensors = load_artefact(folder, cls, CONDITIONER_FORMAT,
                                        hint="train one with `python -m studio.training.personal`")
        model = cls(**config["config"])
        model.load_state_dict({name: torch.from_numpy(array) for name, array in tensors.items()})
        return model.eval()
