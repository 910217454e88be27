"""Microseconds per online event (select an arm, then learn its reward): our LinUCB against MABWiser's LinUCB.

Both serve the same contexts with K=8 arms and d=36 features, in the same process, after the same warm-up log.
Each repeat times a run of events; the script prints the median microseconds per event of each and the speed-up.

    python benchmarks/bandit.py                   # defaults: 8 arms, 36 features, 7 repeats
    python benchmarks/bandit.py --arms 32 --features 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from studio.learning.bandit import LinUCB


def time_events(select, update, X, rewards) -> float:
    """Median-ready figure: microseconds per event over one pass of ``X``."""
    start = time.perf_counter()
    for x, reward in zip(X, rewards):
        arm = select(x)
        update(x, arm, reward)
    return (time.perf_counter() - start) / len(X) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", type=int, default=8)
    parser.add_argument("--features", type=int, default=36)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--events", type=int, default=2000, help="events per repeat for our LinUCB")
    parser.add_argument("--mabwiser-events", type=int, default=200, help="events per repeat for MABWiser (slower)")
    args = parser.parse_args()

    from mabwiser.mab import MAB, LearningPolicy

    rng = np.random.default_rng(0)
    arms = [f"creative-{k}" for k in range(args.arms)]
    warm_X = rng.normal(size=(500, args.features))
    warm_arms = rng.choice(arms, size=500)
    warm_rewards = (rng.random(500) < 0.05).astype(float)
    X = rng.normal(size=(max(args.events, args.mabwiser_events), args.features))
    rewards = (rng.random(len(X)) < 0.05).astype(float)

    ours = LinUCB(alpha=1.0, l2=1.0, seed=0)
    for arm in arms:
        ours.add_arm(arm)
    ours.partial_fit(warm_X, warm_arms.tolist(), warm_rewards)

    theirs = MAB(arms, LearningPolicy.LinUCB(alpha=1.0, l2_lambda=1.0), seed=0)
    theirs.fit(warm_arms, warm_rewards, warm_X)

    def ours_select(x):
        return ours.select_one(x)[0]

    def theirs_select(x):
        return theirs.predict(x[None])

    def theirs_update(x, arm, reward):
        theirs.partial_fit([arm], [reward], x[None])

    ours_us, theirs_us = [], []
    for _ in range(args.repeats):
        ours_us.append(time_events(ours_select, ours.update_one, X[: args.events], rewards[: args.events]))
        theirs_us.append(
            time_events(theirs_select, theirs_update, X[: args.mabwiser_events], rewards[: args.mabwiser_events])
        )
    ours_median, theirs_median = statistics.median(ours_us), statistics.median(theirs_us)
    print(f"online event (select + update), K={args.arms} arms, d={args.features} features, {args.repeats} repeats")
    print(f"  studio LinUCB   : {ours_median:9.1f} us/event (median)")
    print(f"  MABWiser LinUCB : {theirs_median:9.1f} us/event (median)")
    print(f"  speed-up        : {theirs_median / ours_median:9.1f}x")


if __name__ == "__main__":
    main()
