"""Training for prompt models: reward-weighted supervised fine-tuning of a causal LM, and the prompts-mini recipe.

`weighted_sft` is the one training loop. It trains any transformers causal LM on (context, answer) token pairs,
with the loss on answer tokens only and each example's loss scaled by its weight, so examples whose creatives
earned more reward pull harder. `train_prompts_mini` builds the embedded model from scratch with that same loop on
pairs from the interest -> scene prior (`prompts.data`); it is what `studio prompts train` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Example = tuple[list[int], list[int]]  # (context token ids, answer token ids)


@dataclass
class TrainingConfig:
    """Hyper-parameters of `weighted_sft`. `steps` optimiser steps of `batch_size` examples drawn without
    replacement (reshuffled each pass), AdamW at `learning_rate` with linear warm-up and decay."""

    steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    seed: int = 0
    progress: bool = False


def _batch(examples: list[Example], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and answer-token mask, each (B, T)."""
    import torch

    length = max(len(c) + len(a) for c, a in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    answer = torch.zeros((len(examples), length), dtype=torch.bool)
    for row, (context, target) in enumerate(examples):
        sequence = context + target
        ids[row, : len(sequence)] = torch.tensor(sequence)
        attention[row, : len(sequence)] = 1
        answer[row, len(context): len(sequence)] = True
    return ids, attention, answer


def _answer_token_log_probs(model: Any, ids: Any, attention: Any, answer: Any) -> tuple[Any, Any]:
    """Log-probability of each next token (B, T-1) and the mask of those that are answer tokens (B, T-1)."""
    import torch

    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return log_probs, answer[:, 1:]


def weighted_sft(model: Any, examples: list[Example], weights: np.ndarray, config: TrainingConfig,
                 pad_id: int = 0) -> list[float]:
    """Fine-tune `model` in place. Loss = sum_i w_i * mean answer-token NLL_i / sum_i w_i over each batch.

    Returns the loss of every step (nats per answer token, weighted).
    """
    import torch
    from tqdm.auto import tqdm

    if any(not answer for _, answer in examples):
        raise ValueError("every example needs at least one answer token")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    def lr_factor(step: int) -> float:  # linear warm-up, then linear decay to zero
        warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
        return warm * max(0.0, 1.0 - step / config.steps)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order: list[int] = []
    losses = []
    model.train()
    for _ in tqdm(range(config.steps), desc="prompt model", disable=not config.progress):
        if len(order) < config.batch_size:
            order += rng.permutation(len(examples)).tolist()
        chosen, order = order[: config.batch_size], order[config.batch_size:]
        ids, attention, answer = _batch([examples[i] for i in chosen], pad_id)
        log_probs, mask = _answer_token_log_probs(model, ids, attention, answer)
        per_example = -(log_probs * mask).sum(1) / mask.sum(1)
        w = torch.tensor(weights[chosen], dtype=per_example.dtype)
        loss = (w * per_example).sum() / w.sum().clamp_min(1e-12)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def sequence_log_likelihood(model: Any, examples: list[Example], pad_id: int = 0, batch_size: int = 64) -> np.ndarray:
    """Mean log-probability (nats) per answer token of each example, shape (len(examples),)."""
    import torch

    scores = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, attention, answer = _batch(examples[start: start + batch_size], pad_id)
            log_probs, mask = _answer_token_log_probs(model, ids, attention, answer)
            scores.append(((log_probs * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(scores)


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
    import time

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from prompts.brief import Prompt
    from prompts.data import make_pairs
    from prompts.mini import MiniPromptModel, build_tokenizer

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
