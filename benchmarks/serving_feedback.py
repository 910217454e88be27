"""What the HTTP feedback loop costs the bandit: `studio simulate --via-http`'s world and traffic replayed in-process,
with the serving policy learning as the server would, against learning as `studio simulate` does.

    python benchmarks/serving_feedback.py --world out/world [--impressions 50000] [--seeds 0 1 2 3 4]

The world is a `studio simulate --prepare-world` folder (the users, the simulator, the clustering the server uses).
Per traffic seed (the driver's `--seed`: who visits, which product), one run per way of learning:

- batch: learn every impression 256 requests after it was served (as `studio simulate` does);
- http: a click is learned at the next catch-up tick after it (the server writes its reward at once), a non-click at
  the first tick after its attribution window closes (`--window`, `--sync` seconds at `--rate` requests/s);
- http-no-tags: the same, with the users grouped from age, region and device only (what the driver sent before it
  sent the interest tags).

It prints the treatment bucket's expected CTR over the last quarter as a share of the per-user oracle, the ceiling of
any policy that sees only the group (the best fixed arm per group and product), and the medians over the seeds.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
from pathlib import Path

import numpy as np

from studio.imaging.descriptors import backdrop_features
from studio.learning.audience import AudienceClustering
from studio.learning.policy import TREATMENT, ServingPolicy
from studio.serving.drive import FEATURES, load_world


def replay(world, features, clustering, mode: str, seed: int, n: int, alpha: float, arm_l2: float, epsilon: float,
           salt: str, rate: float, window: float, sync: float, in_flight: int = 16) -> tuple[float, float]:
    users, simulator, arms = world.users, world.simulator, world.config.arms
    columns = list(FEATURES) if mode == "http-no-tags" else [*FEATURES, "interests"]
    user_group = clustering.predict(users[columns])
    rng = np.random.default_rng(seed)  # the driver's draws: who visits, which product
    simulator.rng_ = np.random.default_rng([seed, 1])  # the clicks: each replay draws its own, in any order
    visit = users["activity"].to_numpy() + 0.1
    who = rng.choice(len(users), size=n, p=visit / visit.sum())
    products = len({c["product_id"] for c in world.creatives})
    product = rng.integers(products, size=n)
    group = user_group[who]
    oracle = simulator.expected_ctr(np.arange(len(users))).reshape(len(users), products, arms)
    policy = ServingPolicy(clustering.n_groups_, alpha=alpha, arm_l2=arm_l2, epsilon=epsilon, salt=salt, seed=seed)
    for p in range(products):  # arms are creative indices, described by their PNGs as the server describes them
        ids = range(p * arms, (p + 1) * arms)
        policy.sync_arms(p, list(ids), {i: features[i] for i in ids})
    bucket = np.array([policy.bucket(str(int(u))) for u in users["user_id"]])[who]
    served, clicked = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    ticks: list[tuple[float, int]] = []  # (when it is learned, impression)
    for start in range(0, n, in_flight):
        rows = np.arange(start, min(start + in_flight, n))
        now = rows[0] / rate
        due = []
        while ticks and ticks[0][0] <= now:
            due.append(heapq.heappop(ticks)[1])
        due = np.array(due, dtype=np.int64)
        policy.learn(group[due], list(product[due] * arms + served[due]), clicked[due].astype(float))
        picked, _ = policy.decide(product[rows], group[rows], bucket[rows])
        served[rows] = picked.astype(np.int64) - product[rows] * arms
        clicked[rows] = simulator.click(who[rows], product[rows] * arms + served[rows])
        for i in rows:
            if mode == "batch":
                learn_at = (i + 256) / rate
            else:  # the catch-up tick after the click, or after the window closed
                ready = i / rate + (0.0 if clicked[i] else window)
                learn_at = (np.floor(ready / sync) + 1) * sync
            heapq.heappush(ticks, (learn_at, int(i)))
    last = (np.arange(n) >= n - n // 4) & (bucket == TREATMENT)
    per_arm = oracle[who, product]  # (n, arms)
    best = per_arm.max(axis=1)
    ratio = float(per_arm[np.arange(n), served][last].mean() / best[last].mean())
    cells = group * products + product
    means = np.zeros((cells.max() + 1, arms))
    np.add.at(means, cells[last], per_arm[last])
    ceiling = float(per_arm[last][np.arange(last.sum()), means.argmax(axis=1)[cells[last]]].mean() / best[last].mean())
    return ratio, ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="a studio simulate --prepare-world folder")
    parser.add_argument("--impressions", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--arm-l2", type=float, default=1000.0, help="studio serve's default")
    parser.add_argument("--epsilon", type=float, default=0.0, help="studio serve's default")
    parser.add_argument("--salt", default="studio-serve", help="studio serve's default")
    parser.add_argument("--modes", nargs="+", default=["batch", "http", "http-no-tags"])
    parser.add_argument("--rate", type=float, default=120.0, help="requests per second of the replayed driver")
    parser.add_argument("--window", type=float, default=2.0, help="attribution window, seconds")
    parser.add_argument("--sync", type=float, default=1.0, help="catch-up period, seconds")
    args = parser.parse_args()
    world = load_world(args.world)
    clustering = AudienceClustering.from_pretrained(Path(args.world) / "audience")
    features = [backdrop_features((Path(args.world) / c["image"]).read_bytes()) for c in world.creatives]
    for mode in args.modes:
        ratios, ceilings = [], []
        for seed in args.seeds:
            ratio, ceiling = replay(world, features, clustering, mode, seed, args.impressions, args.alpha, args.arm_l2,
                                    args.epsilon,
                                    args.salt, args.rate, args.window, args.sync)
            ratios.append(ratio)
            ceilings.append(ceiling)
        print(f"{mode:>13}: oracle ratio, last quarter {' '.join(f'{r:.3f}' for r in ratios)} "
              f"(median {statistics.median(ratios):.3f}); group ceiling median {statistics.median(ceilings):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
