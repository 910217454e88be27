"""One interface for every prompt model: `suggest(brief, n, seed) -> list[Prompt]`, and the shared causal-LM body.

`PromptBackend.suggest` owns the loop every backend shares: sample candidates, validate them, sample again for the
prompts still missing, and warn (never crash) when a model's output leaves fewer than `n` valid prompts.
`CausalLMBackend` is the shared body of the two shipped backends -- the embedded prompts-mini (`prompts.mini`) and any
transformers causal LM (`prompts.hf`) -- which differ only in how a brief is written for the model and how its answer
is read back. Loading by name or folder, whichever backend a folder needs, is `prompts.loading.load_prompt_model`.

A saved prompt model is a transformers folder (the library's layout) plus ``studio.json`` naming the backend class
and the format version (`studio.core.artefact.write_manifest`); a plain transformers folder has none and still loads.
"""

from __future__ import annotations

import math
import os
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from prompts.brief import Brief, Prompt
from prompts.training import TrainingConfig, sequence_log_likelihood, weighted_sft
from prompts.validation import ValidationConfig, validate
from studio.core import hub
from studio.core.artefact import check_manifest, write_manifest
from studio.core.atomic import staged_folder
from studio.core.errors import InputError, ModelNotFoundError
from studio.core.quiet import quiet_loading

SHIPPED_MODELS = Path(__file__).parent / "models"
DEFAULT_MODEL = "prompts-mini"
FORMAT_VERSION = 1  # of studio.json and what it promises about the folder; newer folders are refused
MAX_CANDIDATES = 64
HOW_TO_FIX = ("a prompt model folder needs a transformers causal LM (config.json, weights) and its tokenizer: save it "
              "again, or retrain prompts-mini with `studio prompts train --out DIR`")


class FewerPromptsWarning(UserWarning):
    """The model's output left fewer valid prompts than asked for."""


@dataclass
class SamplingConfig:
    """Sampling controls. Round r samples `oversample` x 2**r x the prompts still missing, for at most `max_rounds`."""

    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 64
    oversample: float = 1.5
    max_rounds: int = 4
    threads: int | None = None  # torch threads while sampling (None: leave as is); 1 suits tiny models

    def check(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 5):
            raise InputError(f"temperature must be in (0, 5], got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")


class PromptBackend(ABC):
    """A prompt model. Subclasses implement `_sample`; `suggest` validates and tops up."""

    sampling: SamplingConfig
    validation: ValidationConfig

    @abstractmethod
    def _sample(self, brief: Brief, k: int, seed: int, sampling: SamplingConfig) -> list[Prompt]:
        """`k` raw samples, parsed into Prompts (a sample may yield zero or several)."""

    def suggest(self, brief: Brief, n: int = 8, seed: int = 0, *, temperature: float | None = None,
                top_p: float | None = None) -> list[Prompt]:
        """Up to `n` valid, distinct scene prompts for `brief`; the same seed gives the same prompts.

        Fewer than `n` come back (with a FewerPromptsWarning naming the commonest rejection reasons) when the model's
        samples fail validation too often.
        """
        # 1. Check inputs
        if not isinstance(brief, Brief):
            raise InputError(f"suggest needs a prompts.brief.Brief, got {type(brief).__name__}; use Brief.from_dict")
        if not isinstance(n, int) or not 1 <= n <= MAX_CANDIDATES:
            raise InputError(f"n must be a whole number from 1 to {MAX_CANDIDATES}, got {n!r}")
        if not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a non-negative whole number, got {seed!r}")
        overrides = {name: value for name, value in (("temperature", temperature), ("top_p", top_p)) if value is not None}
        sampling = SamplingConfig(**{**self.sampling.__dict__, **overrides})
        sampling.check()
        # 2. Sample, validate, and sample again for what is missing
        accepted: list[Prompt] = []
        reasons: Counter[str] = Counter()
        for round_index in range(sampling.max_rounds):
            missing = n - len(accepted)
            if missing == 0:
                break
            # Each round samples twice as generously: what failed before (a banned word the model likes) is common.
            k = min(MAX_CANDIDATES, max(2, math.ceil(missing * sampling.oversample * 2**round_index)))
            candidates = self._sample(brief, k, seed * 1009 + round_index, sampling)
            result = validate(candidates, brief, self.validation, accepted=accepted, limit=missing)
            accepted += result.prompts
            reasons.update(reason.split(" (")[0] for _, reason in result.rejected if reason != "enough prompts")
        # 3. Report a shortfall instead of failing
        if len(accepted) < n:
            common = ", ".join(f"{reason} x{count}" for reason, count in reasons.most_common(3)) or "no output"
            warnings.warn(f"the prompt model gave {len(accepted)} valid prompts of {n} asked for; rejected: {common}",
                          FewerPromptsWarning, stacklevel=2)
        return accepted


class CausalLMBackend(PromptBackend):
    """A prompt model that is a transformers causal LM and its tokenizer. Subclasses say how a brief becomes the
    model's context (`context`), how a prompt is written as its answer (`answer`), and how answers are read (`parse`)."""

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig | None = None,
                 validation: ValidationConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.validation = validation or ValidationConfig()

    @abstractmethod
    def context(self, brief: Brief) -> str:
        """The text the model continues."""

    @abstractmethod
    def answer(self, prompt: Prompt) -> str:
        """How `prompt` is written as the model's continuation (the training target), end token included."""

    @abstractmethod
    def parse(self, text: str) -> list[Prompt]:
        """Prompts read from one generated continuation; junk yields []."""

    def generation_constraints(self, brief: Brief) -> dict[str, Any]:
        """Extra `generate` arguments for `brief` (e.g. `bad_words_ids`); none by default."""
        return {}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _sample(self, brief: Brief, k: int, seed: int, sampling: SamplingConfig) -> list[Prompt]:
        context_ids = torch.tensor([self._encode(self.context(brief))])
        window = getattr(self.model.config, "n_positions", None) or getattr(self.model.config,
                                                                            "max_position_embeddings", None)
        if window and context_ids.shape[1] + sampling.max_new_tokens > window:
            raise InputError(f"the brief takes {context_ids.shape[1]} tokens and the answer {sampling.max_new_tokens}, "
                             f"more than this model's {window}; shorten the brief's texts")
        eos_id = self.tokenizer.eos_token_id
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_id
        previous_threads, previous_verbosity = torch.get_num_threads(), transformers_logging.get_verbosity()
        # A private RNG stream: the same seed gives the same prompts, and global RNG state is left alone.
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            torch.set_num_threads(sampling.threads or previous_threads)
            # generate pads finished samples itself, which trips transformers' "input_ids may be padded" warning.
            transformers_logging.set_verbosity_error()
            try:
                output = self.model.generate(
                    context_ids, attention_mask=torch.ones_like(context_ids), do_sample=True,
                    temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=0,
                    max_new_tokens=sampling.max_new_tokens, num_return_sequences=k,
                    eos_token_id=eos_id, pad_token_id=pad_id, **self.generation_constraints(brief),
                )
            finally:
                torch.set_num_threads(previous_threads)
                transformers_logging.set_verbosity(previous_verbosity)
        prompts: list[Prompt] = []
        for row in output[:, context_ids.shape[1]:].tolist():
            if eos_id in row:
                row = row[: row.index(eos_id)]
            prompts += self.parse(self.tokenizer.decode(row, skip_special_tokens=True))
        return prompts

    def _examples(self, briefs: list[Brief], prompts: list[Prompt]) -> list[tuple[list[int], list[int]]]:
        if len(briefs) != len(prompts) or not briefs:
            raise InputError(f"need as many briefs as prompts (at least one), got {len(briefs)} and {len(prompts)}")
        contexts = self.tokenizer([self.context(b) for b in briefs], add_special_tokens=False)["input_ids"]
        answers = self.tokenizer([self.answer(p) for p in prompts], add_special_tokens=False)["input_ids"]
        return list(zip(contexts, answers))

    def log_likelihood(self, briefs: list[Brief], prompts: list[Prompt]) -> np.ndarray:
        """Mean log-probability per answer token (nats) of each prompt given its brief, shape (len(prompts),)."""
        return sequence_log_likelihood(self.model, self._examples(briefs, prompts), self.tokenizer.pad_token_id or 0)

    def fit(self, briefs: list[Brief], prompts: list[Prompt], weights: list[float] | np.ndarray | None = None,
            config: TrainingConfig | None = None) -> CausalLMBackend:
        """Fine-tune on (brief, prompt) pairs, each example's loss scaled by its weight (reward-weighted SFT).

        `weights` (len(prompts),, >= 0; default all 1) are e.g. the reward model's scores or click rates of the
        creatives each prompt made. `config` is a `prompts.training.TrainingConfig`. Sets `loss_history_`.
        """
        examples = self._examples(briefs, prompts)
        weights = np.ones(len(examples)) if weights is None else np.asarray(weights, dtype=float)
        if weights.shape != (len(examples),) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise InputError(f"weights must be {len(examples)} finite numbers >= 0, got shape {weights.shape}")
        if weights.sum() <= 0:
            raise InputError("all weights are zero; give at least one example a positive weight")
        self.model.train()
        self.loss_history_ = weighted_sft(self.model, examples, weights, config or TrainingConfig(),
                                          pad_id=self.tokenizer.pad_token_id or 0)
        self.model.eval()
        return self

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Save model, tokenizer and ``studio.json`` (this backend's class) to `out_dir`, atomically."""
        with staged_folder(out_dir) as staging:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            write_manifest(staging, type(self), FORMAT_VERSION)
        return Path(out_dir)

    @classmethod
    def _load(cls, name_or_path: str | os.PathLike | None, read: Callable[[str, bool], tuple[Any, Any]],
              **kwargs: Any) -> Any:
        """`cls(model, tokenizer, **kwargs)` with (model, tokenizer) = `read(path_or_id, local_files_only)`.

        The folder's ``studio.json`` (if any) must name this class; whatever the libraries raise on a damaged folder
        or a failed download becomes one StudioError line.
        """
        source = resolve_prompt_model(name_or_path)
        if source.is_local:
            check_manifest(source.path_or_id, cls, FORMAT_VERSION, hint=HOW_TO_FIX)
        try:
            with quiet_loading():
                model, tokenizer = read(source.path_or_id, source.is_local)
        except Exception as error:  # noqa: BLE001 - transformers, safetensors and tokenizers each raise their own
            raise hub.load_failed("prompt model", source, error, HOW_TO_FIX if source.is_local else None) from error
        return cls(model, tokenizer, **kwargs)


def resolve_prompt_model(name_or_path: str | os.PathLike | None) -> hub.ResolvedModel:
    """Where a prompt model is: None or "prompts-mini" mean the shipped model; else a folder or a hub id."""
    if str(name_or_path or DEFAULT_MODEL).strip() == DEFAULT_MODEL and not (SHIPPED_MODELS / DEFAULT_MODEL).is_dir():
        raise ModelNotFoundError(f"the shipped model {DEFAULT_MODEL!r} is missing; rebuild it with `studio prompts "
                                 f"train --out {SHIPPED_MODELS / DEFAULT_MODEL}`")
    return hub.resolve_model(name_or_path, default=DEFAULT_MODEL, kind="prompt model", shipped=SHIPPED_MODELS,
                             needs="config.json")
