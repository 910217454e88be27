"""The end-to-end "learning from clicks" experiment on the audience simulator (`studio simulate`).

One run:

1. renders `products` x `arms` creatives (the same product on varied backdrops) and lets the simulator measure them;
2. draws a user population and clusters it with `AudienceClustering` (K by silhouette): the bandit's contexts;
3. splits users 50/50 into a control bucket (a uniformly random arm) and a treatment bucket (the serving policy's
   hybrid LinUCB: each group's taste model over the creatives' backdrop features, shared by all products, plus each
   creative's own clicks), with stable hash bucketing;
4. serves `impressions` requests (users visit in proportion to their activity) in small mini-batches: decide with the
   current model, log every impression with the propensity used at decision time, draw clicks, then learn from
   both buckets (the control bucket's uniform draws inform the regression as much as the bandit's own);
5. reads the log back and reports CTR per bucket with Wilson intervals, the lift with its interval, regret against
   the simulator's oracle, and the treatment policy's CTR estimated off-policy from the control bucket alone.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from studio.imaging.descriptors import backdrop_features
from studio.learning.abtest import bucket_stats, compare
from studio.core.atomic import remove_stale_staging, staged_folder, write_file
from studio.learning.audience import AudienceClustering
from studio.learning.policy import CONTROL, TREATMENT, ServingPolicy
from studio.core.errors import InputError
from studio.learning.offpolicy import BanditLog, doubly_robust, ips, snips
from studio.learning.eventlog import EventLog
from studio.sim.renderer import render_scene
from studio.sim.simulator import AudienceSimulator
from studio.core.vocabulary import CATEGORIES, COLOURS, LIGHTING, MATERIALS, PRODUCTS



@dataclass
class ExperimentConfig:
    """Settings of one simulated experiment.

    impressions: requests served. products, arms: catalogue size and creatives per product. users: population size.
    segments: latent segments of the simulator. alpha, l2: LinUCB exploration and ridge prior. batch_size: requests
    decided before the bandit learns from them (the logged propensity is always the decision-time one).
    log_every: impressions per event-log transaction. image_size: creative side, pixels. seed: seeds everything.
    """

    impressions: int = 200_000
    products: int = 4
    arms: int = 6
    users: int = 20_000
    segments: int = 4
    alpha: float = 0.25
    l2: float = 1.0
    batch_size: int = 256
    log_every: int = 8_192
    image_size: int = 64
    seed: int = 0

    def check(self) -> None:
        """Raise InputError for settings that cannot run."""
        limits = {"impressions": 1_000, "products": 1, "arms": 2, "users": 100, "segments": 1, "batch_size": 1,
                  "log_every": 1, "image_size": 16}
        for name, low in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.arms > len(COLOURS) * len(MATERIALS):
            raise InputError(f"arms must be <= {len(COLOURS) * len(MATERIALS)} (distinct backdrops), got {self.arms}")
        if not (self.alpha >= 0 and self.l2 > 0):
            raise InputError(f"alpha must be >= 0 and l2 > 0, got alpha={self.alpha}, l2={self.l2}")


@dataclass
class ExperimentReport:
    """What a run measured; every CTR is clicks per impression, every regret is in expected clicks.

    seconds: wall time of `run_experiment`; timings: the serving loop's share and rate. groups: K, silhouette per K,
    adjusted Rand index against the hidden segments, profiles. buckets: per bucket impressions, clicks, CTR and
    Wilson interval. lift: relative lift of treatment over control with its interval and z-test. regret: cumulative
    and per-impression regret against the per-user oracle. oracle: expected CTRs, the LinUCB / oracle ratio over the
    last quarter and the ceiling of the best fixed arm per group. off_policy: IPS, SNIPS and DR estimates of the
    treatment policy from the control log, the realised treatment CTR, and the oracle value OPE targets. goals: the
    pass/fail read-out. files: where everything was written.
    """

    config: dict
    seconds: float
    timings: dict
    groups: dict
    buckets: dict
    lift: dict
    regret: dict
    oracle: dict
    off_policy: dict
    goals: dict
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_creatives(config: ExperimentConfig, simulator: AudienceSimulator, folder: Path) -> list[dict]:
    """Render `products` x `arms` creatives, register them with the simulator, and save them as PNGs.

    Returns one dict per creative (creative index = product * arms + arm): creative_id, product_id, arm, category,
    backdrop words.
    """
    rng = np.random.default_rng(config.seed)
    backdrops = [(c, m) for c in COLOURS for m in MATERIALS]
    creatives = []
    for product in range(config.products):
        kind = PRODUCTS[product % len(PRODUCTS)]
        product_id = f"{kind}-{product}"
        for arm, pick in enumerate(rng.choice(len(backdrops), size=config.arms, replace=False)):
            colour, material = backdrops[pick]
            lighting = LIGHTING[int(rng.integers(len(LIGHTING)))]
            scene = render_scene(colour, material, lighting, "studio", kind, size=config.image_size,
                                 seed=config.seed * 1000 + product)  # same product seed: only the backdrop varies
            index = simulator.add_creative(scene.image, scene.product_mask, CATEGORIES[kind])
            assert index == product * config.arms + arm
            creative_id = f"{product_id}/arm-{arm}"
            write_file(folder / product_id / f"arm-{arm}.png", lambda path: scene.image.save(path, format="PNG"))
            creatives.append({"creative_id": creative_id, "product_id": product_id, "arm": arm,
                              "category": CATEGORIES[kind], "backdrop": f"{colour} {material} {lighting}",
                              "prompt": scene.caption, "image": f"creatives/{creative_id}.png"})
    return creatives


def run_experiment(config: ExperimentConfig, out_dir: str | os.PathLike, progress: bool = True) -> ExperimentReport:
    """Run one simulated A/B experiment of LinUCB against uniform random serving; write everything under `out_dir`.

    Files written: ``events.db`` (the SQLite event log), ``creatives/`` (PNGs), ``audience/`` (the fitted
    clustering), ``bandit/`` (the final hybrid LinUCB), ``report.json`` and ``simulate.png`` (regret and CTR
    over time).
    """
    # 1. Check inputs. The run is written into a staging folder and moved into place whole: a failed or killed run
    # leaves `out_dir` as it was (a killed run's staging folder is removed by the next run).
    config.check()
    final = Path(out_dir)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        kind = "a folder that is not empty" if final.is_dir() else "a file"
        raise InputError(f"--out {final} is {kind}; choose a new folder (simulate writes a whole run folder)")
    if final.parent.is_dir():
        remove_stale_staging(final.parent)
    with staged_folder(final) as staging:
        report = _simulate(config, staging, final, progress)
    return report


def _simulate(config: ExperimentConfig, out: Path, final: Path, progress: bool) -> ExperimentReport:
    """The run itself, written into `out`; `final` is where it will live (the paths the report names)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)

    # 2. The world: creatives, users, and the groups the studio sees.
    simulator = AudienceSimulator(n_segments=config.segments, seed=config.seed)
    creatives = make_creatives(config, simulator, out / "creatives")
    # the prompt that made each creative, for the reward model (studio.learning.log_dataset.read_catalogue)
    write_file(out / "catalogue.json", lambda path: path.write_text(json.dumps(creatives, indent=1) + "\n"))
    users = simulator.sample_users(config.users)
    # Cluster on who users are; activity (how often they visit) says nothing about taste and blurs the groups.
    clustering = AudienceClustering(k_range=(2, 8), seed=config.seed, columns=["age", "region", "device"]).fit(users)
    clustering.save_pretrained(out / "audience")
    group_of_user = clustering.labels_
    salt = f"simulate-{config.seed}"
    policy = ServingPolicy(clustering.n_groups_, alpha=config.alpha, l2=config.l2, salt=salt, seed=config.seed, rng=rng)
    treated = np.array([policy.bucket(int(u)) == TREATMENT for u in users["user_id"]])

    # 3. The traffic: who visits (active users more often) and which product they look at.
    n, arms = config.impressions, config.arms
    visit = users["activity"].to_numpy() + 0.1
    user = rng.choice(config.users, size=n, p=visit / visit.sum())
    product = rng.integers(config.products, size=n)
    group = group_of_user[user]
    in_treatment = treated[user]
    oracle_ctr = simulator.expected_ctr(np.arange(config.users))  # (users, creatives), evaluation only
    best_ctr = oracle_ctr.reshape(config.users, config.products, arms).max(axis=2)[user, product]

    # 4. Serve, log, learn, through the same policy code `studio serve` runs (in-process, in mini-batches).
    serving_started = time.perf_counter()
    # Arms are creative indices (product * arms + arm), described by their PNGs as `studio serve` describes the cache's.
    for p in range(config.products):
        ids = list(range(p * arms, (p + 1) * arms))
        policy.sync_arms(p, ids, {i: backdrop_features((out / creatives[i]["image"]).read_bytes()) for i in ids})
    chosen = np.zeros(n, dtype=np.int64)
    propensity = np.zeros(n)
    target = np.zeros((n, arms))  # the treatment policy's distribution at decision time, kept for OPE
    clicked = np.zeros(n, dtype=bool)
    buckets = np.where(in_treatment, TREATMENT, CONTROL)
    with EventLog(out / "events.db") as log:  # closed even if a step fails; every committed batch stays
        pending = 0
        with tqdm(total=n, desc="simulate", unit="imp", disable=not progress, mininterval=0.5) as bar:
            for start in range(0, n, config.batch_size):
                rows = np.arange(start, min(start + config.batch_size, n))
                for p in np.unique(product[rows]):
                    mine = rows[product[rows] == p]
                    target[mine] = policy.probabilities(int(p), group[mine])
                picked, propensity[rows] = policy.decide(product[rows], group[rows], buckets[rows])
                chosen[rows] = picked.astype(np.int64) - product[rows] * arms
                clicked[rows] = simulator.click(user[rows], product[rows] * arms + chosen[rows])
                policy.learn(group[rows], list(product[rows] * arms + chosen[rows]), clicked[rows].astype(float))
                pending += len(rows)
                if pending >= config.log_every or rows[-1] == n - 1:
                    _log_rows(log, np.arange(rows[-1] + 1 - pending, rows[-1] + 1), user, group, product, chosen,
                              propensity, in_treatment, clicked, creatives, arms)
                    pending = 0
                bar.update(len(rows))
        policy.model.save_pretrained(out / "bandit")

        serving_seconds = time.perf_counter() - serving_started

        # 5. Read the log back and measure.
        served_ctr = oracle_ctr[user, product * arms + chosen]
        per_arm_ctr = oracle_ctr.reshape(config.users, config.products, arms)[user, product]  # (n, arms)
        report = _measure(config, log, clustering, simulator, users, in_treatment, group, product, served_ctr,
                          best_ctr, per_arm_ctr, target, started, serving_seconds)
    report.files = {"event_log": str(final / "events.db"), "plot": str(final / "simulate.png"),
                    "creatives": str(final / "creatives"), "audience": str(final / "audience"),
                    "report": str(final / "report.json")}
    _plot(out / "simulate.png", in_treatment, served_ctr, best_ctr)
    write_file(out / "report.json", lambda path: path.write_text(json.dumps(report.to_dict(), indent=2)))
    return report


def _log_rows(log: EventLog, rows: np.ndarray, user, group, product, chosen, propensity, in_treatment, clicked,
              creatives: list[dict], arms: int) -> None:
    """Write impressions `rows` and their clicks in one transaction: a crash never keeps one without the other."""
    import pandas as pd

    creative = product[rows] * arms + chosen[rows]
    ids = np.char.add("imp-", rows.astype(str))
    log.log_impressions(pd.DataFrame({
        "impression_id": ids, "ts": rows.astype(float), "user_id": user[rows].astype(str), "group_id": group[rows],
        "product_id": [creatives[c]["product_id"] for c in creative],
        "creative_id": [creatives[c]["creative_id"] for c in creative],
        "arm": chosen[rows].astype(str), "propensity": propensity[rows],
        "policy": np.where(in_treatment[rows], "linucb", "uniform"),
        "bucket": np.where(in_treatment[rows], TREATMENT, CONTROL), "model_version": "simulate",
    }), clicked=ids[clicked[rows]].tolist(), click_ts=rows[clicked[rows]].astype(float) + 0.5)


def _measure(config: ExperimentConfig, log: EventLog, clustering: AudienceClustering, simulator: AudienceSimulator,
             users, in_treatment, group, product, served_ctr, best_ctr, per_arm_ctr, target,
             started, serving_seconds) -> ExperimentReport:
    from sklearn.metrics import adjusted_rand_score

    n = config.impressions
    stats = {}
    for bucket in (CONTROL, TREATMENT):
        events = log.arrays(bucket=bucket)
        stats[bucket] = bucket_stats(bucket, int(events.reward.sum()), len(events))
    ab = compare(stats[CONTROL], stats[TREATMENT])

    # Regret against the oracle (expected clicks lost), per bucket.
    regret = best_ctr - served_ctr
    last = np.arange(n) >= n - n // 4
    treat_last = in_treatment & last
    oracle_last, bandit_last = float(best_ctr[treat_last].mean()), float(served_ctr[treat_last].mean())
    # The ceiling of any policy that sees only the group: the best fixed arm per (group, product) cell.
    cells = (group * config.products + product)[treat_last]
    cell_means = np.zeros((cells.max() + 1, config.arms))
    np.add.at(cell_means, cells, per_arm_ctr[treat_last])
    group_oracle_last = float(per_arm_ctr[treat_last][np.arange(len(cells)), cell_means.argmax(axis=1)[cells]].mean())

    # Off-policy: the treatment policy's CTR estimated from the control bucket's log alone.
    control = log.arrays(bucket=CONTROL)
    rows = control.ts.astype(np.int64)  # ts is the request index in this simulation
    cells = group[rows] * config.products + product[rows]
    one_hot = np.eye(clustering.n_groups_ * config.products)[cells]  # (group, product) cells for DR's model
    bandit_log = BanditLog(contexts=one_hot, arms=control.arm.astype(np.int64), rewards=control.reward,
                           propensities=control.propensity)
    keys = list(range(config.arms))
    estimates = {
        "ips": ips(bandit_log, target[rows], keys, seed=config.seed),
        "snips": snips(bandit_log, target[rows], keys, seed=config.seed),
        "dr": doubly_robust(bandit_log, target[rows], keys, seed=config.seed),
    }
    realised = stats[TREATMENT]
    # What OPE estimates, known only to the oracle: the treatment policy's expected CTR on the control bucket's
    # requests. It differs from the treatment bucket's own CTR by the luck of which users each bucket holds.
    policy_value_on_control = float((target[rows] * per_arm_ctr[rows]).sum(axis=1).mean())
    dr = estimates["dr"]
    seconds = time.perf_counter() - started
    return ExperimentReport(
        config=asdict(config),
        seconds=round(seconds, 2),
        timings={"serving_seconds": round(serving_seconds, 2),
                 "serving_impressions_per_second": round(config.impressions / serving_seconds),
                 "setup_and_read_out_seconds": round(seconds - serving_seconds, 2)},
        groups={
            "n_groups": clustering.n_groups_,
            "silhouette": {str(k): round(v, 4) for k, v in clustering.silhouette_.items()},
            "adjusted_rand_vs_hidden_segments": round(float(adjusted_rand_score(
                simulator.segment_of(users["user_id"]), clustering.labels_)), 4),
            "profiles": [p.to_dict() for p in clustering.profiles_],
        },
        buckets={b: asdict(s) for b, s in stats.items()},
        lift={"lift": ab.lift, "ci_low": ab.lift_ci_low, "ci_high": ab.lift_ci_high, "z": ab.z,
              "p_value": ab.p_value},
        regret={
            "treatment_cumulative": float(regret[in_treatment].sum()),
            "control_cumulative": float(regret[~in_treatment].sum()),
            "treatment_per_impression": float(regret[in_treatment].mean()),
            "control_per_impression": float(regret[~in_treatment].mean()),
            "treatment_last_quarter_per_impression": float(regret[treat_last].mean()),
        },
        oracle={
            "oracle_ctr_last_quarter": oracle_last,
            "treatment_expected_ctr_last_quarter": bandit_last,
            "ratio_last_quarter": bandit_last / oracle_last,
            "group_oracle_ctr_last_quarter": group_oracle_last,
            "group_oracle_ratio_last_quarter": group_oracle_last / oracle_last,
            "control_expected_ctr": float(served_ctr[~in_treatment].mean()),
            "treatment_expected_ctr": float(served_ctr[in_treatment].mean()),
        },
        off_policy={
            "realised_treatment_ctr": realised.ctr,
            "realised_ci": [realised.ci_low, realised.ci_high],
            "oracle_policy_value_on_control": policy_value_on_control,
            **{name: {"estimate": e.estimate, "ci": [e.ci_low, e.ci_high],
                      "effective_sample_size": e.effective_sample_size} for name, e in estimates.items()},
        },
        goals={
            "ratio_last_quarter_at_least_0.9": bandit_last / oracle_last >= 0.9,
            "lift_ci_excludes_0": ab.lift_ci_low > 0 or ab.lift_ci_high < 0,
            "dr_estimate_inside_realised_ci": realised.ci_low <= dr.estimate <= realised.ci_high,
            "realised_inside_dr_ci": dr.ci_low <= realised.ctr <= dr.ci_high,
            "under_2_minutes": seconds < 120,
        },
    )


def _plot(path: Path, in_treatment: np.ndarray, served_ctr: np.ndarray, best_ctr: np.ndarray) -> None:
    """Cumulative regret per bucket and a moving average of expected CTR over the run, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    window = max(50, len(served_ctr) // 100)
    for mask, label in ((in_treatment, "treatment (LinUCB)"), (~in_treatment, "control (uniform)")):
        index = np.flatnonzero(mask)
        left.plot(index, np.cumsum(best_ctr[index] - served_ctr[index]), label=label)
        smooth = np.convolve(served_ctr[index], np.ones(window) / window, mode="valid")
        right.plot(index[window - 1:], smooth, label=label)
    index = np.flatnonzero(in_treatment)
    right.plot(index[window - 1:], np.convolve(best_ctr[index], np.ones(window) / window, mode="valid"),
               label="oracle", linestyle="--", color="black")
    left.set(title="Cumulative regret (expected clicks lost)", xlabel="impression")
    right.set(title=f"Expected CTR (moving average of {window})", xlabel="impression", ylabel="CTR")
    left.legend()
    right.legend()
    figure.tight_layout()
    try:
        write_file(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    finally:
        plt.close(figure)
