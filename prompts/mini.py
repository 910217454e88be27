"""prompts-mini: the embedded prompt model, a small GPT-2 that speaks the scene vocabulary.

The model reads a brief as a short line of vocabulary words -- the group's strongest interest tags, the product kind
and colour, the brand tone and the placement shape -- and continues it with a positive prompt, the word "avoid", and a
negative prompt. Banned brand words and the product's own colour are never sampled. Free text (titles, summaries)
never reaches it: a title only contributes the product kind it names, so text inside a title cannot instruct the
model. Its tokenizer is word-level, built offline from the vocabulary. `train_prompts_mini` is the seeded recipe
that builds it from scratch on pairs from the interest -> scene prior (`prompts.data`); `studio prompts train` runs it.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList, PreTrainedTokenizerFast

from prompts.backends import CausalLMBackend, SamplingConfig
from prompts.brief import Brief, Prompt
from prompts.data import (BASE_NEGATIVE, PROMPT_WORDS, SHAPES, TONE_NEGATIVE, TONES, all_mood_words, known_tone,
                          make_pairs)
from prompts.training import TrainingConfig
from studio.core.vocabulary import COLOURS, INTEREST_TAGS, LAYOUTS, LIGHTING, MATERIALS, PRODUCTS

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
SCENE = "[SCENE]"  # ends the brief: the scene prompt starts here
FIELDS = ("tags", "kind", "colour", "tone", "shape")
SEPARATOR = "avoid"  # between the positive and the negative prompt
NONE = "none"


def vocabulary_words() -> list[str]:
    """Every word the tokenizer knows, in a stable order (special tokens first)."""
    words = [PAD, UNK, EOS, SCENE, SEPARATOR, NONE, "product", ",", *FIELDS, *INTEREST_TAGS, *PRODUCTS, *COLOURS,
             *MATERIALS, *LIGHTING, *LAYOUTS, *TONES, *SHAPES, *PROMPT_WORDS, *all_mood_words(), *BASE_NEGATIVE,
             *(word for extra in TONE_NEGATIVE.values() for word in extra)]
    return list(dict.fromkeys(words))


def build_tokenizer() -> Any:
    """A word-level `PreTrainedTokenizerFast` over `vocabulary_words()`, lower-casing, splitting on spaces and
    punctuation; unknown words become [UNK]."""
    vocab = {word: index for index, word in enumerate(vocabulary_words())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token=UNK, pad_token=PAD, eos_token=EOS,
                                   extra_special_tokens=[SCENE], model_max_length=128)


def brief_words(brief: Brief) -> str:
    """The brief as the model reads it, e.g. "tags eco outdoors kind bottle colour none tone calm shape square"."""
    tags = " ".join(brief.audience.known_tags()) or NONE
    kind = brief.product.kind()
    return (f"tags {tags} kind {kind if kind in PRODUCTS else 'product'} colour {brief.product.colour() or NONE} "
            f"tone {known_tone(brief)} shape {brief.placement.shape()}")


def _detokenize(text: str) -> str:
    return re.sub(r"\s+([,.;:!?])", r"\1", text).strip(" ,")


class MiniPromptModel(CausalLMBackend):
    """The embedded prompt model. Load the shipped one with `MiniPromptModel.from_pretrained()`."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, **kwargs: Any) -> MiniPromptModel:
        """Load from a folder saved by `save_pretrained` (default: the shipped prompts-mini)."""

        def read(location: str, local_only: bool) -> tuple[Any, Any]:
            return (GPT2LMHeadModel.from_pretrained(location, local_files_only=local_only),
                    PreTrainedTokenizerFast.from_pretrained(location, local_files_only=local_only))

        kwargs.setdefault("sampling", SamplingConfig(max_new_tokens=48, threads=1))
        return cls._load(name_or_path, read, **kwargs)

    def context(self, brief: Brief) -> str:
        return f"{brief_words(brief)} {SCENE}"

    def generation_constraints(self, brief: Brief) -> dict[str, Any]:
        """Never sample a banned brand word or the product's own colour (a backdrop in the product's colour hides
        it) when the vocabulary has it as one word, nor a scene word twice ("leafy leafy mood"); validation still
        checks every prompt."""
        vocab = self.tokenizer.get_vocab()
        avoid = {word.lower() for word in brief.brand.banned_words} | {brief.product.colour()}
        banned = sorted(vocab[word] for word in avoid if word in vocab and word not in (SEPARATOR, ","))
        scene_words = [vocab[w] for w in (*COLOURS, *MATERIALS, *LIGHTING, *LAYOUTS, *all_mood_words()) if w in vocab]
        constraints: dict[str, Any] = {"logits_processor": LogitsProcessorList([
            _NoRepeatedWords(scene_words, self.tokenizer.convert_tokens_to_ids(SEPARATOR),
                             len(self._encode(self.context(brief))))])}
        if banned:
            constraints["bad_words_ids"] = [[token] for token in banned]
        return constraints

    def answer(self, prompt: Prompt) -> str:
        return f"{prompt.positive} {SEPARATOR} {prompt.negative} {EOS}"

    def parse(self, text: str) -> list[Prompt]:
        positive, _, negative = text.partition(f" {SEPARATOR} ")
        positive, negative = _detokenize(positive.replace(UNK, "")), _detokenize(negative.replace(UNK, ""))
        if not negative:
            negative = ", ".join(BASE_NEGATIVE)
        return [Prompt(positive=positive, negative=negative)] if positive else []


class _NoRepeatedWords:
    """A logits processor: a scene word already in this positive prompt cannot be sampled again before the
    separator (the negative prompt may repeat anything)."""

    def __init__(self, word_ids: list[int], separator_id: int, context_length: int):
        self.word_ids = set(word_ids)
        self.separator_id = separator_id
        self.context_length = context_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        for row, sequence in enumerate(input_ids[:, self.context_length:].tolist()):
            if self.separator_id in sequence:
                continue
            used = [token for token in set(sequence) if token in self.word_ids]
            if used:
                scores[row, used] = float("-inf")
        return scores


# --------------------------------------------------------------------------------------------------------------------
# The recipe


@dataclass
class MiniTrainingConfig:
    """The prompts-mini recipe: a GPT-2 of `n_layer` x `n_embd` trained on `n_pairs` prior pairs."""

    n_pairs: int = 8000
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_positions: int = 96
    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    seed: int = 0
    threads: int = 1  # a model this small trains fastest on one thread; more threads only contend
    progress: bool = True


def train_prompts_mini(out_dir: str | Path, config: MiniTrainingConfig | None = None) -> dict[str, Any]:
    """Train prompts-mini from scratch and save it to `out_dir` (save_pretrained). Returns a summary:
    {"out_dir", "parameters", "pairs", "steps", "first_loss", "final_loss", "seconds"}."""
    config = config or MiniTrainingConfig()
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        tokenizer = build_tokenizer()
        torch.manual_seed(config.seed)
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer,
            n_head=config.n_head, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
        backend = MiniPromptModel(model, tokenizer)
        pairs = make_pairs(config.n_pairs, seed=config.seed)
        backend.fit([brief for brief, _, _ in pairs], [Prompt(pos, neg) for _, pos, neg in pairs], config=TrainingConfig(
            steps=config.steps, batch_size=config.batch_size, learning_rate=config.learning_rate,
            weight_decay=0.01, warmup_steps=config.warmup_steps, seed=config.seed, progress=config.progress))
        backend.save_pretrained(out_dir)
    finally:
        torch.set_num_threads(previous_threads)
    losses = backend.loss_history_
    return {"out_dir": str(out_dir), "parameters": sum(p.numel() for p in model.parameters()), "pairs": len(pairs),
            "steps": config.steps, "first_loss": round(losses[0], 4), "final_loss": round(float(np.mean(losses[-50:])), 4),
            "seconds": round(time.perf_counter() - started, 1)}
