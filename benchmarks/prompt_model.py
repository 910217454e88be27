"""Prompt-model benchmark: validity rate, distinct-2 diversity and latency per brief, against the prior sampler.

The baseline is the interest -> scene prior itself (`prompts.data.sample_prompt`, the teacher prompts-mini learns
from), run on the same briefs in the same process. Latencies are medians over briefs.

    python benchmarks/prompt_model.py                 # prompts-mini, 50 briefs, n=8, 2 threads
    python benchmarks/prompt_model.py --model DIR_OR_ID --briefs 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np


def on_prior(brief, positive: str) -> bool:
    """Does the prompt use a colour the group's strongest interest likes?"""
    from prompts.data import INTEREST_SCENES
    from prompts.validation import words

    tags = brief.audience.known_tags()
    return bool(tags) and bool(set(words(positive)) & set(INTEREST_SCENES[tags[0]].colours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="prompts-mini (default), a folder or a hub id")
    parser.add_argument("--briefs", type=int, default=50)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=12345, help="seed of the benchmark briefs (training used 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the process")
    args = parser.parse_args()

    import torch

    from prompts.backends import FewerPromptsWarning
    from prompts.loading import load_prompt_model
    from prompts.brief import Prompt
    from prompts.data import sample_brief, sample_prompt
    from prompts.validation import check_prompt, distinct_n

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    briefs = [sample_brief(rng) for _ in range(args.briefs)]
    model = load_prompt_model(args.model)
    model.suggest(briefs[0], n=args.n, seed=0)  # warm-up

    rows = {}
    for name in ("prior sampler (baseline)", args.model or "prompts-mini"):
        valid = sampled = full = agree = total = 0
        latencies, diversity = [], []
        for index, brief in enumerate(briefs):
            started = time.perf_counter()
            if name.startswith("prior"):
                prior_rng = np.random.default_rng(index)
                candidates = [Prompt(*sample_prompt(brief, prior_rng)) for _ in range(args.n)]
                prompts = [p for p in candidates if check_prompt(p, brief)[0] is not None]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FewerPromptsWarning)
                    prompts = model.suggest(brief, n=args.n, seed=index)
                latencies.append(time.perf_counter() - started)
                candidates = model._sample(brief, args.n, index, model.sampling)  # raw samples, before validation
            if name.startswith("prior"):
                latencies.append(time.perf_counter() - started)
            sampled += len(candidates)
            valid += sum(check_prompt(c, brief)[0] is not None for c in candidates)
            full += len(prompts) == args.n
            diversity.append(distinct_n([p.positive for p in prompts]))
            agree += sum(on_prior(brief, p.positive) for p in prompts)
            total += len(prompts)
        rows[name] = {
            "validity_rate": valid / max(1, sampled),
            "briefs_with_n_valid": full / len(briefs),
            "distinct_2": float(np.mean(diversity)),
            "prior_colour_agreement": agree / max(1, total),
            "median_latency_s": statistics.median(latencies),
        }

    baseline, ours = rows.values()
    print(f"{len(briefs)} briefs, n={args.n}, torch threads={args.threads}")
    print(f"{'':28s}{'validity':>10s}{'full n':>8s}{'distinct-2':>12s}{'prior colour':>14s}{'latency/brief':>15s}")
    for name, row in rows.items():
        print(f"{name:28s}{row['validity_rate']:10.1%}{row['briefs_with_n_valid']:8.0%}{row['distinct_2']:12.3f}"
              f"{row['prior_colour_agreement']:14.1%}{row['median_latency_s'] * 1000:13.1f}ms")
    print(f"ratio model/baseline: distinct-2 x{ours['distinct_2'] / baseline['distinct_2']:.2f}, "
          f"latency x{ours['median_latency_s'] / baseline['median_latency_s']:.0f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
