"""Training for prompt models: reward-weighted supervised fine-tuning of a causal LM.

`weighted_sft` is the one training loop. It trains any transformers causal LM on (context, answer) token pairs,
with the loss on answer tokens only and each example's loss scaled by its weight, so examples whose creatives
earned more reward pull harder. The prompts-mini recipe that builds the embedded model from scratch with this loop
is `prompts.mini.train_prompts_mini` (what `studio prompts train` runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

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
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return log_probs, answer[:, 1:]


def weighted_sft(model: Any, examples: list[Example], weights: np.ndarray, config: TrainingConfig,
                 pad_id: int = 0) -> list[float]:
    """Fine-tune `model` in place. Loss = sum_i w_i * mean answer-token NLL_i / sum_i w_i over each batch.

    Returns the loss of every step (nats per answer token, weighted).
    """
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
    scores = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, attention, answer = _batch(examples[start: start + batch_size], pad_id)
            log_probs, mask = _answer_token_log_probs(model, ids, attention, answer)
            scores.append(((log_probs * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(scores)
