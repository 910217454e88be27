"""The closed loop (CG4CTR's self-cyclic loop) on the audience simulator: `run_loop(LoopConfig(...), out)`.

Round 0 serves a pool the base prompt model wrote and studio-mini painted. Every later round r, per arm:

1. retrain the reward model on every round served so far (0..r-1): the ranker never sees the round it ranks;
2. retire losers: pool creatives that are not among the best few of any audience group by logged (smoothed) CTR;
3. the prompt model proposes many prompts per group, the generator paints them (with the arm's LoRA), the reward
   model ranks them for that group, and the top-k per group become new arms (cached in the arm's creative cache);
4. the bandit (`studio.learning.policy.ServingPolicy`, as `studio serve` runs it) gets the new arms and drops the
   retired ones, then serves round r's traffic and logs it to the arm's event log;
5. weighted SFT of the prompt model toward the top-ranked and clicked prompts, anchored by the base model's own
   prompts; LoRA fine-tuning of the generator on the top-k creatives so far (arm "loop" only). Both take effect in
   round r+1.

Three arms share the world, the traffic and the round-0 pool: "loop", "prompts_only" (no generator fine-tuning) and
"no_loop" (the bandit over the fixed round-0 pool). A fourth, "refresh", is optional: it retires losers and gets new
arms each round like the loop arms, but learns nothing (its new arms are drawn at random from the base prompt model's
proposals and painted by the base generator), which separates what the reward model and the fine-tuning add from new
arms as such. The simulator's oracle -- never shown to the loop -- gives the true CTR of what was served, the true
gain of the new arms against the predicted gain of a linear check fitted beside the ranker (the hacking gap; the
ranker's and three held-out reward models' predictions are reported too), and the diversity of what the prompt
model proposes. Each finished round is a staged folder and `loop.json` is rewritten after it, so a killed run keeps
every finished round.

Against a live server (`serve_url`): the "loop" arm's round-0 pool and new arms go into the cache a running
`studio serve` serves, its traffic goes through the server over HTTP (the simulator still decides the clicks), and its
reward retrains read the server's event log; the baselines stay in-process. See docs/loop.md, "Against a live server".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from studio.core.atomic import check_output_folder, remove_stale_staging, staged_folder, write_file
from studio.core.errors import InputError, StudioError
from studio.core.vocabulary import CATEGORIES, PRODUCTS
from studio.imaging.descriptors import backdrop_features
from studio.jobs import loop_checkpoint, loop_report
from studio.learning.policy import CONTROL, TREATMENT, ServingPolicy

ARMS = ("loop", "prompts_only", "no_loop", "refresh")  # every arm a run can have
DEFAULT_ARMS = ARMS[:3]  # "refresh" is the optional ablation: new arms, but nothing learned
LORA_EXAMPLES = ("selected", "clicked")  # what the generator LoRA learns from
CHECKERS = 3  # reward models in the held-out check of the predicted gain
CHECKER_SEED = 500_009  # each checker's seed offset from the ranker's
LOG_PIXELS = 64  # side of the pixels a round's reward dataset holds, and of new creatives scored beside them
REPORT_NAME = "loop.json"
CATALOGUE_NAME = "catalogue.json"
PLACEMENT = "1:1"
SERVER_NAME = "server.json"  # what `prepare_server` wrote the server's folder for
LIVE_ARM = "loop"  # the arm that serves through a live server


@dataclass
class LoopConfig:
    """Settings of one closed-loop run (defaults: one seed in a few minutes on a 2-core CPU).

    rounds: rounds after round 0. users, segments, groups (None: chosen by silhouette), products: the world.
    impressions: requests served per round. initial_per_group: round-0 creatives per group. candidates_per_group:
    prompts proposed (and painted) per group each round. top_k: new arms per group each round. keep_per_group: pool
    creatives kept per group by logged CTR (others retire). steps, guidance: denoising (7.5, not the generator's own
    guidance: the loop steers backdrops through prompts, and at studio-mini's 1.5 they barely do). reward_epochs: cap
    of each reward retrain. prompt_steps, prompt_learning_rate, anchor_weight: the prompt model's weighted SFT (the
    anchor is the base model's own prompts at this share of the positive weight). lora_steps, lora_rank,
    lora_learning_rate, lora_scale: the generator's LoRA; lora_per_group: one LoRA per audience group, each on its
    group's examples and painting its group's proposals (default: one LoRA on every group's); lora_examples: what the
    LoRA learns from, "selected" (every creative the ranker selected so far) or "clicked" (every logged creative
    whose smoothed CTR in a group is above that group's mean). draft_steps, draft_learning_rate: after the LoRA has
    fitted its examples, that many DRaFT-1 steps ascend the ranker's predicted CTR of the examples' prompts painted
    from fresh noise (`studio.training.reward_tuning`; 0 skips it). alpha: LinUCB exploration. arms:
    which arms to run (from `ARMS`; add "refresh" for the ablation without learning).
    serve_url: the "loop" arm serves through the `studio serve` at this loopback URL (None: in-process), whose folder
    `serve_dir` `prepare_server` wrote (audience/, cache/ the server serves, events.db unless `serve_db` names its
    event log: a SQLite file or a postgresql:// URL); serve_seconds bounds each round's HTTP traffic, serve_concurrency
    its requests in flight.
    """

    rounds: int = 3
    seed: int = 0
    users: int = 5_000
    segments: int = 4
    groups: int | None = None
    products: int = 1
    impressions: int = 40_000
    initial_per_group: int = 3
    candidates_per_group: int = 12
    top_k: int = 2
    keep_per_group: int = 2
    steps: int = 15
    guidance: float = 7.5
    reward_epochs: int = 300
    prompt_steps: int = 40
    prompt_learning_rate: float = 5e-4
    anchor_weight: float = 0.5
    lora_steps: int = 100
    lora_rank: int = 4
    lora_learning_rate: float = 1e-3
    lora_scale: float = 1.0
    lora_per_group: bool = False
    lora_examples: str = "selected"
    draft_steps: int = 30
    draft_learning_rate: float = 3e-4
    alpha: float = 0.25
    generator: str | None = None
    prompt_model: str | None = None
    arms: tuple[str, ...] = DEFAULT_ARMS
    batch_size: int = 256
    serve_url: str | None = None
    serve_dir: str | None = None
    serve_db: str | None = None
    serve_seconds: float = 600.0
    serve_concurrency: int = 8

    def check(self) -> None:
        """Raise InputError for settings that cannot run."""
        limits = {"rounds": 1, "users": 50, "segments": 1, "products": 1, "impressions": 100, "initial_per_group": 1,
                  "candidates_per_group": 1, "top_k": 1, "keep_per_group": 1, "steps": 1, "reward_epochs": 1,
                  "prompt_steps": 1, "lora_steps": 1, "lora_rank": 1, "batch_size": 1}
        for name, low in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be a whole number >= 0, got {self.seed!r}")
        if self.groups is not None and (not isinstance(self.groups, int) or not 1 <= self.groups <= 16):
            raise InputError(f"groups must be None (chosen by silhouette) or 1 to 16, got {self.groups!r}")
        if self.products > len(PRODUCTS):
            raise InputError(f"products must be at most {len(PRODUCTS)}, got {self.products}")
        if self.candidates_per_group > 64 or self.initial_per_group > 64:
            raise InputError("candidates_per_group and initial_per_group must be at most 64 (prompts per brief)")
        if self.top_k > self.candidates_per_group:
            raise InputError(f"top_k ({self.top_k}) cannot exceed candidates_per_group ({self.candidates_per_group})")
        if self.lora_examples not in LORA_EXAMPLES:
            raise InputError(f"lora_examples must be one of {', '.join(LORA_EXAMPLES)}, got {self.lora_examples!r}")
        if not self.arms or any(arm not in ARMS for arm in self.arms) or len(set(self.arms)) != len(self.arms):
            raise InputError(f"arms must be distinct names from {', '.join(ARMS)}, got {self.arms!r}")
        if isinstance(self.draft_steps, bool) or not isinstance(self.draft_steps, int) or self.draft_steps < 0:
            raise InputError(f"draft_steps must be a whole number >= 0, got {self.draft_steps!r}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or not (
                0 <= self.guidance <= 50):
            raise InputError(f"guidance must be a number from 0 to 50, got {self.guidance!r}")
        if not self.draft_learning_rate > 0:
            raise InputError(f"draft_learning_rate must be > 0, got {self.draft_learning_rate!r}")
        if not (self.alpha >= 0 and self.anchor_weight >= 0 and self.prompt_learning_rate > 0
                and self.lora_learning_rate > 0):
            raise InputError("alpha and anchor_weight must be >= 0, learning rates > 0")
        if (self.serve_url is None) != (self.serve_dir is None):
            raise InputError("--serve-url and --serve-dir go together: the URL of the server and the folder "
                             "studio loop --prepare-server wrote for it")
        if self.serve_url is not None and LIVE_ARM not in self.arms:
            raise InputError(f"--serve-url serves the {LIVE_ARM!r} arm through the server; add it to the arms")
        if not (0 < self.serve_seconds <= 86_400 and 1 <= self.serve_concurrency <= 256):
            raise InputError("serve_seconds must be in (0, 86400] and serve_concurrency in 1..256")

    def world(self) -> dict:
        """The settings that make the world (users, groups): a server prepared for one world serves only it."""
        return {"seed": self.seed, "users": self.users, "segments": self.segments, "groups": self.groups}


@dataclass
class LoopReport:
    """What a run measured. rounds: arm -> one record per round (see `_round_record`). comparisons: relative gains
    with 95 % intervals (each arm's last round vs round 0; arm vs arm on the same requests). goals: the issue's goals
    read out. files: where things are."""

    config: dict
    seconds: float
    world: dict
    rounds: dict[str, list[dict]]
    comparisons: dict = field(default_factory=dict)
    goals: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------ world


class _World:
    """The simulator, its users and groups, one canvas per product, the traffic of each round, and the painter."""

    def __init__(self, config: LoopConfig, out: Path):
        from prompts.loading import load_prompt_model
        from studio.imaging.creatives import CreativeSettings, build_canvas
        from studio.imaging.engine import default_model, load_engine
        from studio.sim.renderer import render_product

        self.config = config
        self.simulator, self.users, self.clustering = _audience(config)
        self.clustering.save_pretrained(out / "audience")
        self.group_of_user = self.clustering.labels_
        self.profiles = [profile.to_dict() for profile in self.clustering.profiles_]
        self.group_ids = [str(p["group_id"]) for p in self.profiles]
        self.group_vectors = {str(p.group_id): np.asarray(p.vector, dtype=np.float32)
                              for p in self.clustering.profiles_}
        self.salt = _salt(config)
        bucketer = ServingPolicy(self.clustering.n_groups_, salt=self.salt)
        self.treated = np.array([bucketer.bucket(int(u)) == TREATMENT for u in self.users["user_id"]])
        self.visit = self.users["activity"].to_numpy() + 0.1

        # one product photo per product, its canvas and its product mask (saved: the oracle needs it)
        self.generator = config.generator or default_model()
        self.settings = CreativeSettings(size=64, steps=config.steps, guidance=config.guidance)
        self.products = []
        for index in range(config.products):
            kind = PRODUCTS[index]
            product_id = f"{kind}-{index}"
            canvas = build_canvas(render_product(kind, seed=config.seed * 1000 + index, size=128), self.settings)
            mask_path = out / "products" / f"{product_id}.mask.png"
            from PIL import Image

            write_file(mask_path, lambda path, keep=canvas.keep: Image.fromarray(
                (keep * 255).astype(np.uint8)).save(path, format="PNG"))
            self.products.append({"product_id": product_id, "kind": kind, "category": CATEGORIES[kind],
                                  "canvas": canvas, "mask_path": str(mask_path)})
        self.engine = load_engine(self.generator)
        self.base_writer = load_prompt_model(config.prompt_model)
        self.painted: dict[tuple, tuple[Path, int]] = {}  # (prompt, negative, seed, lora, product) -> (png, sim index)

    # -- traffic ---------------------------------------------------------------------------------------------------
    def traffic(self, round_index: int) -> dict[str, np.ndarray]:
        """Round `round_index`'s requests, the same for every arm (common random numbers: paired comparisons)."""
        config = self.config
        rng = np.random.default_rng([config.seed, 1000 + round_index])
        n = config.impressions
        user = rng.choice(config.users, size=n, p=self.visit / self.visit.sum())
        product = rng.integers(config.products, size=n)
        return {"user": user, "product": product, "group": self.group_of_user[user], "treated": self.treated[user],
                "draw": rng.random(n)}

    def group_true_ctr(self, sim_indices: list[int]) -> np.ndarray:
        """Oracle: (groups, len(sim_indices)) click probability of each group's users, weighted by how often they
        visit (as the traffic weighs them)."""
        table = self.simulator.expected_ctr(np.arange(self.config.users), np.asarray(sim_indices, dtype=np.int64))
        out = np.zeros((len(self.group_ids), len(sim_indices)))
        for g in range(len(self.group_ids)):
            mine = self.group_of_user == g
            weights = self.visit[mine]
            out[g] = (weights[:, None] * table[mine]).sum(axis=0) / weights.sum()
        return out

    # -- prompts and painting --------------------------------------------------------------------------------------
    def brief(self, product: dict, group: int):
        from prompts.brief import Brief

        return Brief.from_dict({"audience": self.profiles[group],
                                "product": {"title": product["kind"], "category": product["category"]}})

    def propose(self, writer, product: dict, group: int, n: int, seed: int) -> list:
        """Up to `n` distinct prompts of `writer` for one group (a shortfall is reported by the diversity figure)."""
        from prompts.backends import FewerPromptsWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FewerPromptsWarning)
            return writer.suggest(self.brief(product, group), n=n, seed=seed)

    def paint(self, product: dict, prompt, seed: int, lora: str | None, folder: Path, name: str) -> tuple[Path, int]:
        """One creative in `folder` (a PNG with its recipe) registered with the simulator; returns (png, sim index).

        The same (prompt, seed, LoRA, product) painted before is copied, not painted again (arms share round 0 and,
        before their LoRA differs, their proposals)."""
        from PIL import Image

        from studio.imaging.creatives import generate_creatives
        from studio.imaging.engine import LoraSpec

        key = (prompt.positive, prompt.negative, seed, lora, product["product_id"])
        folder.mkdir(parents=True, exist_ok=True)
        if key in self.painted:
            source, index = self.painted[key]
            target = folder / source.name
            shutil.copyfile(source, target)
            return target, index
        settings = replace(self.settings, negative_prompt=prompt.negative,
                           lora=None if lora is None else LoraSpec(lora, self.config.lora_scale))
        creative = generate_creatives(product["canvas"], prompt.positive, settings=settings, n=1, seed=seed,
                                      engine=self.engine, out_dir=folder, name=name, progress=False)[0]
        # the simulator measures the PNG as written: what a server would serve
        with Image.open(creative.path) as opened:
            pixels = np.asarray(opened.convert("RGB"))
        index = self.simulator.add_creative(pixels, product["canvas"].keep, product["category"])
        self.painted[key] = (creative.path, index)
        return creative.path, index

    def remember(self, staged: Path, final: Path) -> None:
        """After a staged folder moved into place, point the paint memo at the final files."""
        for key, (path, index) in list(self.painted.items()):
            if staged in path.parents:
                self.painted[key] = (final / path.relative_to(staged), index)


def _audience(config: LoopConfig):
    """The world's simulator, its users and their audience clustering (the same for the same config)."""
    from studio.learning.audience import AudienceClustering
    from studio.sim.simulator import AudienceSimulator

    simulator = AudienceSimulator(n_segments=config.segments, seed=config.seed)
    users = simulator.sample_users(config.users)
    k_range = (config.groups, config.groups) if config.groups else (2, 8)
    clustering = AudienceClustering(n_groups=config.groups, k_range=k_range, seed=config.seed,
                                    columns=["age", "region", "device"]).fit(users)
    return simulator, users, clustering


def _salt(config: LoopConfig) -> str:
    return f"loop-{config.seed}"


# ------------------------------------------------------------------------------------------------------------- arms


@dataclass
class _Creative:
    creative_id: str
    product_id: str
    category: str
    group: int  # the group it was made for
    round: int
    prompt: str
    negative: str
    image: str  # PNG path (final location)
    sim_index: int
    predicted_ctr: float | None = None  # the ranker's, capped to its trust region (see _propose_and_rank)
    raw_predicted_ctr: float | None = None  # the ranker's, uncapped


class _Arm:
    """One arm's state: its serving policy, event log, pool, prompt model, LoRA, cache and catalogue."""

    def __init__(self, name: str, world: _World, out: Path, client=None):
        from prompts.loading import load_prompt_model

        self.name, self.world, self.out = name, world, out / name
        self.out.mkdir(parents=True, exist_ok=True)
        config = world.config
        self.policy = ServingPolicy(world.clustering.n_groups_, alpha=config.alpha, salt=world.salt,
                                    seed=config.seed, rng=np.random.default_rng([config.seed, 7]))
        self.log_path: str | Path = self.out / "events.db"
        self.cache_path = self.out / "cache"
        # a live server's client (studio.serving.drive.LoopClient): the server's cache, the server's event log
        self.client = client
        if client is not None:
            self.cache_path = Path(config.serve_dir) / "cache"
            self.log_path = config.serve_db or str(Path(config.serve_dir) / "events.db")
        self.served_round: dict[str, int] = {}  # the server's impression id -> the round it served (live arm)
        self.payloads: list[dict] | None = None  # each user's request features (live arm)
        self.catalogue: dict[str, _Creative] = {}
        self.pool: dict[str, list[str]] = {p["product_id"]: [] for p in world.products}
        # the arms that fine-tune a prompt model own one; "refresh" proposes with the world's base model
        self.writer = load_prompt_model(config.prompt_model) if name in ("loop", "prompts_only") else None
        self.loras: dict[int | None, str] = {}  # group -> its LoRA; None -> the one LoRA of every group
        self.lora_examples: list[_Creative] = []
        self.cache_ids: dict[str, str] = {}  # loop creative id -> cache id (the PNG's SHA-256)
        self.loop_ids: dict[str, str] = {}  # cache id -> loop creative id (what a server's decision names)
        self.served: list[np.ndarray] = []  # per round: true CTR of each treatment request
        self.served_by: list[dict] = []  # per round: (product, group) -> {creative_id: count} in treatment

    def lora(self, group: int) -> str | None:
        """The LoRA that paints `group`'s proposals (None: the base generator)."""
        return self.loras.get(group, self.loras.get(None))

    def add(self, creatives: list[_Creative]) -> None:
        for creative in creatives:
            self.catalogue[creative.creative_id] = creative
            self.pool[creative.product_id].append(creative.creative_id)

    def write_catalogue(self) -> None:
        rows = [{"creative_id": c.creative_id, "product_id": c.product_id, "category": c.category,
                 "prompt": c.prompt, "negative_prompt": c.negative, "image": c.image, "group": c.group,
                 "round": c.round, "predicted_ctr": c.predicted_ctr} for c in self.catalogue.values()]
        write_file(self.out / CATALOGUE_NAME, lambda path: path.write_text(json.dumps(rows, indent=1) + "\n"))


# ------------------------------------------------------------------------------------------------------------- run


def run_loop(config: LoopConfig, out_dir: str | os.PathLike, progress: bool = True, client=None) -> LoopReport:
    """Run the closed loop and its two baselines for `config.rounds` rounds; write everything under `out_dir`.

    With `config.serve_url`, `client` is the server's client (`studio.serving.drive.LoopClient(serve_url, token)`;
    studio.jobs cannot import studio.serving, so the caller builds it) and the "loop" arm serves through the server.

    Files: ``loop.json`` (the report, rewritten after every finished round), ``loop.png`` (CTR per round),
    ``audience/``, ``products/`` (product masks), ``pool-0/`` (the round-0 creatives), ``checkpoint/`` (the state
    after the last round every arm finished, for `resume_loop`; removed once the run finishes), and per arm
    ``<arm>/``: ``events.db`` (the event log), ``catalogue.json`` (every creative it served: prompt, image, round),
    ``round-<r>/`` (that round's creatives, the ranker ``reward/``, the LoRA ``lora/``, ``round.json``),
    ``cache/`` (the creative cache: each round's best) and ``prompt-model/`` (the fine-tuned prompt model).
    """
    # Check inputs before any model loads or file is written
    config.check()
    final = check_output_folder(out_dir)
    if final.exists() and any(final.iterdir()):
        raise InputError(f"--out {final} is a folder that is not empty; choose a new folder (a loop writes a whole "
                         "run folder), or resume a killed run there with --resume")
    if config.serve_url is not None:
        _check_server(config, client)
    try:
        final.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create {final} ({error.strerror}); choose another output folder") from None
    return _run(config, final, progress, client, None)


def resume_loop(out_dir: str | os.PathLike, progress: bool = True) -> LoopReport:
    """Go on with a killed run from the last round every arm finished, with the settings it was started with
    (`studio loop --resume DIR`); the rounds after it come out as an uninterrupted run's would."""
    final = check_output_folder(out_dir)
    state = loop_checkpoint.load(final)  # a run served through a live server has none: one clear error
    return _run(state["config"], final, progress, None, state)


def _run(config: LoopConfig, final: Path, progress: bool, client, state: dict | None) -> LoopReport:
    import torch
    from tqdm.auto import tqdm

    remove_stale_staging(final)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is fastest and leaves the other core to others
    try:
        # 1. The world; the round-0 pool every arm starts from and the base model's proposals (diversity baseline),
        # or, resuming, the state after the last round every arm finished
        world = _World(config, final)
        if state is None:
            pool0, base_proposals = _round_zero(world, final)
            for product in world.products:
                made = sum(c.product_id == product["product_id"] for c in pool0)
                if made < 2:  # the ranker holds one creative out for early stopping and trains on the rest
                    raise InputError(f"the round-0 pool has {made} creative(s) of {product['product_id']}; the "
                                     "reward model needs at least 2 per product: raise --initial or --groups")
        arms = [_Arm(name, world, final, client if config.serve_url and name == LIVE_ARM else None)
                for name in config.arms]
        if state is None:
            for arm in arms:
                arm.add([replace(c) for c in pool0])
            report = LoopReport(config=_public_config(config), seconds=0.0, world=_world_summary(world),
                                rounds={arm.name: [] for arm in arms},
                                files={"report": str(final / REPORT_NAME), "plot": str(final / "loop.png")})
            first = 0
        else:
            loop_checkpoint.restore(final, state, world, arms)
            base_proposals, report, first = state["base_proposals"], state["report"], state["round"] + 1
        earlier = report.seconds  # a resumed run's clock goes on from the killed one's

        # 2. Rounds: every arm finishes round r before any starts r+1, so a killed run has comparable rounds
        bar = tqdm(total=(config.rounds + 1) * len(arms), initial=first * len(arms), desc="loop", unit="round",
                   disable=not progress)
        for round_index in range(first, config.rounds + 1):
            traffic = world.traffic(round_index)
            for arm in arms:
                bar.set_postfix(arm=arm.name, round=round_index)
                record = _run_round(world, arm, round_index, traffic, base_proposals)
                report.rounds[arm.name].append(record)
                report.seconds = round(earlier + time.perf_counter() - started, 1)
                report.comparisons, report.goals = _compare(arms, report, config)
                write_file(final / REPORT_NAME, lambda path: path.write_text(json.dumps(report.to_dict(), indent=2)))
                bar.update(1)
            if round_index < config.rounds and config.serve_url is None:
                loop_checkpoint.save(final, round_index, config, world, arms, base_proposals, report)
        bar.close()
        # 3. The prompt models, the plot, the final report
        for arm in arms:
            if arm.writer is not None:
                arm.writer.save_pretrained(arm.out / "prompt-model")
        report.files["plot"] = str(final / "loop.png") if loop_report.plot(final / "loop.png", report.rounds) else \
            "not written: matplotlib is not installed"
        report.seconds = round(earlier + time.perf_counter() - started, 1)
        report.comparisons, report.goals = _compare(arms, report, config)
        report.finished = True
        write_file(final / REPORT_NAME, lambda path: path.write_text(json.dumps(report.to_dict(), indent=2)))
        loop_checkpoint.remove(final)
        return report
    finally:
        torch.set_num_threads(threads)


def _round_zero(world: _World, out: Path) -> tuple[list[_Creative], dict]:
    """The round-0 pool (base prompt model x studio-mini, unranked: there is no log yet) and the base model's
    `candidates_per_group` proposals per (product, group), the diversity every later round is compared with."""
    config = world.config
    pool, proposals = [], {}
    staged_dir = out / "pool-0"
    with staged_folder(staged_dir) as staging:
        for product in world.products:
            for g in range(len(world.group_ids)):
                proposals[(product["product_id"], g)] = world.propose(
                    world.base_writer, product, g, config.candidates_per_group, seed=_seed(config, 0, g, 1))
                prompts = proposals[(product["product_id"], g)][: config.initial_per_group]
                for i, prompt in enumerate(prompts):
                    path, index = world.paint(product, prompt, _seed(config, 0, g, 100 + i), None,
                                              staging / "creatives", f"r0-g{g}-{i}")
                    pool.append(_Creative(f"r0/{product['product_id']}/g{g}-{i}", product["product_id"],
                                          product["category"], g, 0, prompt.positive, prompt.negative,
                                          str(staged_dir / "creatives" / path.name), index))
    world.remember(staging, staged_dir)
    return pool, proposals


def _seed(config: LoopConfig, round_index: int, group: int, salt: int) -> int:
    return int(config.seed) * 1_000_003 + round_index * 10_007 + group * 101 + salt


def _run_round(world: _World, arm: _Arm, round_index: int, traffic: dict, base_proposals: dict) -> dict:
    """One round of one arm inside a staged round folder; returns the round's record."""
    started = time.perf_counter()
    final = arm.out / f"round-{round_index}"
    record: dict[str, Any] = {"round": round_index}
    with staged_folder(final) as staging:
        if round_index == 0:
            record["diversity"] = _diversity(world, base_proposals, None)
        elif arm.name == "refresh":
            record.update(_refresh(world, arm, round_index, staging))
        elif arm.name != "no_loop":
            record.update(_evolve(world, arm, round_index, staging))
        added, removed = [], []
        if arm.client is not None:
            if round_index == 0:
                _cache(arm, list(arm.catalogue.values()), [], 0, staging)  # the server serves the round-0 pool too
            arm.client.refresh()  # the server follows the cache now, not at its next sync
        # (the live arm's policy only keeps the books of added / removed arms: the server decides)
        for product in world.products:
            pool = arm.pool[product["product_id"]]
            # each creative is described by its PNG, as `studio serve` describes the cache's
            features = {c: backdrop_features(Path(arm.catalogue[c].image).read_bytes())
                        for c in arm.policy.undescribed(pool)}
            a, r = arm.policy.sync_arms(product["product_id"], pool, features)
            added += a
            removed += r
        record["pool_size"] = sum(len(p) for p in arm.pool.values())
        record["added"], record["removed"] = sorted(map(str, added)), sorted(map(str, removed))
        if arm.client is None:
            record.update(_serve(world, arm, round_index, traffic))
        else:
            record.update(_serve_live(world, arm, round_index, traffic, staging))
        record["seconds"] = round(time.perf_counter() - started, 1)
        (staging / "round.json").write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    world.remember(staging, final)
    for creative in arm.catalogue.values():
        if creative.image.startswith(str(staging)):
            creative.image = str(final / Path(creative.image).relative_to(staging))
    arm.loras = {g: str(final / Path(path).relative_to(staging)) if path.startswith(str(staging)) else path
                 for g, path in arm.loras.items()}
    arm.write_catalogue()
    return _jsonable(record)


# ------------------------------------------------------------------------------------------------------ serving


def _serve(world: _World, arm: _Arm, round_index: int, traffic: dict) -> dict:
    """Serve one round through the serving policy (decide, click, learn in mini-batches) and log it."""
    import pandas as pd

    from studio.learning.eventlog import EventLog

    config = world.config
    n = config.impressions
    product_ids = np.array([p["product_id"] for p in world.products], dtype=object)[traffic["product"]]
    buckets = np.where(traffic["treated"], TREATMENT, CONTROL)
    chosen = np.empty(n, dtype=object)
    propensity = np.zeros(n)
    true_ctr = np.zeros(n)
    clicked = np.zeros(n, dtype=bool)
    for start in range(0, n, config.batch_size):
        rows = np.arange(start, min(start + config.batch_size, n))
        chosen[rows], propensity[rows] = arm.policy.decide(product_ids[rows], traffic["group"][rows], buckets[rows])
        sims = np.array([arm.catalogue[c].sim_index for c in chosen[rows]])
        true_ctr[rows] = world.simulator.click_probability(traffic["user"][rows], sims)
        clicked[rows] = traffic["draw"][rows] < true_ctr[rows]
        arm.policy.learn(traffic["group"][rows], list(chosen[rows]), clicked[rows].astype(float))
    ids = np.array([f"r{round_index}-{i}" for i in range(n)])
    with EventLog(arm.log_path) as log:
        for start in range(0, n, 8192):
            part = slice(start, start + 8192)
            log.log_impressions(pd.DataFrame({
                "impression_id": ids[part], "ts": round_index * n + np.arange(n)[part].astype(float),
                "user_id": traffic["user"][part].astype(str), "group_id": traffic["group"][part],
                "product_id": product_ids[part].astype(str), "creative_id": chosen[part].astype(str),
                "arm": chosen[part].astype(str), "propensity": propensity[part],
                "policy": np.where(traffic["treated"][part], "linucb", "uniform"), "bucket": buckets[part],
                "model_version": f"{arm.name}-round-{round_index}",
            }), clicked=ids[part][clicked[part]].tolist(),
                click_ts=round_index * n + np.flatnonzero(clicked[part]).astype(float) + start + 0.5)
    return _round_stats(world, arm, traffic, product_ids, chosen, true_ctr, clicked)


def _round_stats(world: _World, arm: _Arm, traffic: dict, product_ids: np.ndarray, chosen: np.ndarray,
                 true_ctr: np.ndarray, clicked: np.ndarray) -> dict:
    """The round's record of what was served (and the arm's memory of it), wherever it was served."""
    from studio.learning.abtest import bucket_stats

    treated = traffic["treated"]
    arm.served.append(true_ctr[treated])
    served_by: dict = {}
    for product, group, creative in zip(product_ids[treated], traffic["group"][treated], chosen[treated]):
        counts = served_by.setdefault((product, int(group)), {})
        counts[creative] = counts.get(creative, 0) + 1
    arm.served_by.append(served_by)
    by_group = {world.group_ids[g]: loop_report.mean_ci(true_ctr[treated & (traffic["group"] == g)])
                for g in range(len(world.group_ids))}
    realised = bucket_stats(TREATMENT, int(clicked[treated].sum()), int(treated.sum()))
    # where the gain comes from: treatment traffic on creatives the loop made vs on the round-0 pool
    made = np.array([arm.catalogue[c].round > 0 for c in chosen]) & treated
    origin = {"new_arm_share": float(made.sum() / max(1, treated.sum())),
              "new_arms_true_ctr": loop_report.mean_ci(true_ctr[made]),
              "round_0_arms_true_ctr": loop_report.mean_ci(true_ctr[treated & ~made])}
    return {"true_ctr": loop_report.mean_ci(true_ctr[treated]), "true_ctr_by_group": by_group, "origin": origin,
            "control_true_ctr": loop_report.mean_ci(true_ctr[~treated]),
            "realised_treatment_ctr": {"ctr": realised.ctr, "ci": [realised.ci_low, realised.ci_high],
                                       "clicks": realised.clicks, "impressions": realised.impressions}}


def _serve_live(world: _World, arm: _Arm, round_index: int, traffic: dict, staging: Path) -> dict:
    """Serve one round through the live server: the round's requests (each user's features, as the clustering was
    fitted on them) go to /v1/creative, the simulator draws each click from the served creative's true click
    probability (with the round's shared uniform draws), and clicks go to /v1/clicks; the server logs and learns.
    Every request must be served, in the loop's group and bucket, or the round is not comparable: one error."""
    import pandas as pd

    config = world.config
    n = config.impressions
    product_ids = np.array([p["product_id"] for p in world.products], dtype=object)[traffic["product"]]
    users = traffic["user"]
    if arm.payloads is None:
        arm.payloads = arm.client.user_features(world.users, world.clustering)
    user_ids = [str(int(u)) for u in world.users["user_id"]]
    chosen = np.empty(n, dtype=object)
    true_ctr, clicked = np.zeros(n), np.zeros(n, dtype=bool)
    groups, buckets = np.full(n, -2), np.empty(n, dtype=object)

    def body_of(i: int) -> dict:
        return {"user_id": user_ids[users[i]], "product_id": str(product_ids[i]), "placement": PLACEMENT,
                "features": arm.payloads[users[i]]}

    def react(i: int, decision: dict) -> bool | None:
        creative = arm.loop_ids.get(decision["creative_id"])
        if creative is None:
            return None
        chosen[i], groups[i], buckets[i] = creative, decision["group_id"], decision["bucket"]
        sim = np.array([arm.catalogue[creative].sim_index])
        true_ctr[i] = world.simulator.click_probability(users[i:i + 1], sim)[0]
        clicked[i] = traffic["draw"][i] < true_ctr[i]
        return bool(clicked[i])

    decisions, errors = arm.client.exchange(n, body_of, react)
    served = sum(d is not None for d in decisions)
    if served < n or errors:
        raise StudioError(f"the server at {config.serve_url} served {served} of {n} requests of round {round_index} "
                          f"within {config.serve_seconds:g} s (errors: {errors or 'none'}); a round must be served "
                          "whole to compare the arms on the same requests")
    if (groups != traffic["group"]).any():
        raise StudioError(f"the server groups {int((groups != traffic['group']).sum())} of {n} users differently "
                          f"from the loop's world: start it with --audience {Path(config.serve_dir) / 'audience'}")
    if (buckets != np.where(traffic["treated"], TREATMENT, CONTROL)).any():
        raise StudioError(f"the server splits users into other A/B buckets: start it with --salt {world.salt}")
    impression_ids = [d["impression_id"] for d in decisions]
    arm.served_round.update({i: round_index for i in impression_ids})
    # what the server was sent and answered, for checking against its event log
    pd.DataFrame({"impression_id": impression_ids, "creative_id": chosen.astype(str),
                  "cache_id": [d["creative_id"] for d in decisions], "user_id": users, "group_id": groups,
                  "bucket": buckets, "propensity": [d["propensity"] for d in decisions],
                  "clicked": clicked.astype(int)}).to_csv(staging / "served.csv", index=False)
    record = _round_stats(world, arm, traffic, product_ids, chosen, true_ctr, clicked)
    record["server"] = {"url": config.serve_url, "impressions": n, "clicks": int(clicked.sum()),
                        "served": "served.csv"}
    return record


def _read_log(arm: _Arm):
    """The arm's impressions joined with clicks, ids as strings, one `model_version` "<arm>-round-<r>" per round.

    In-process: the arm's own event log. Live: the server's event log (SQLite or PostgreSQL), the rows of the
    impressions the loop sent (the server may serve others too), cache ids mapped back to the loop's creatives."""
    from studio.learning.eventlog import EventLog
    from studio.learning.log_dataset import read_impressions

    if arm.client is None:
        return read_impressions(arm.log_path)
    with EventLog(arm.log_path) as log:
        frame = log.read()
    frame = frame[frame["impression_id"].isin(arm.served_round)].copy()
    if len(frame) != len(arm.served_round):
        raise StudioError(f"the server's event log holds {len(frame)} of the {len(arm.served_round)} impressions it "
                          "acknowledged to the loop: is --serve-db the log the server writes?")
    frame["creative_id"] = frame["creative_id"].map(arm.loop_ids)
    frame["model_version"] = [f"{arm.name}-round-{arm.served_round[i]}" for i in frame["impression_id"]]
    frame["group_id"] = frame["group_id"].astype(np.int64).astype(str)
    for column in ("user_id", "product_id", "creative_id"):
        frame[column] = frame[column].astype(str)
    frame["clicked"] = frame["clicked"].astype(np.int64)
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------- live server


def prepare_server(config: LoopConfig, folder: str | os.PathLike) -> dict:
    """Write the folder a `studio serve` serves this world's loop from, before the loop starts: ``audience/`` (the
    clustering the loop fits for the same config), ``cache/`` (empty: the loop fills it) and ``server.json``.
    Returns the paths and the `studio serve` command (the server's event log is ``events.db`` there)."""
    from studio.jobs.cache import CreativeCache

    config.check()
    folder = check_output_folder(folder)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty; choose a new folder for the server (one per loop run)")
    folder.mkdir(parents=True, exist_ok=True)
    _, _, clustering = _audience(config)
    clustering.save_pretrained(folder / "audience")
    with CreativeCache(folder / "cache"):
        pass
    command = ["studio", "serve", "--cache", str(folder / "cache"), "--audience", str(folder / "audience"), "--db",
               str(folder / "events.db"), "--salt", _salt(config), "--alpha", f"{config.alpha:g}",
               "--attribution-window", "2", "--sync-seconds", "1"]
    summary = {"world": config.world(), "groups": int(clustering.n_groups_), "salt": _salt(config),
               "audience": str(folder / "audience"), "cache": str(folder / "cache"), "db": str(folder / "events.db"),
               "serve_command": command}
    write_file(folder / SERVER_NAME, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def _check_server(config: LoopConfig, client) -> None:
    """Before anything is painted: a client for the URL, a folder prepared for this world with an empty cache, and a
    server that answers and takes the client's token."""
    from studio.jobs.cache import CreativeCache

    if client is None or getattr(client, "url", None) != config.serve_url.rstrip("/"):
        raise InputError("serve_url needs client=studio.serving.drive.LoopClient(serve_url, token) for the same URL "
                         "(studio loop --serve-url builds it)")
    folder = Path(config.serve_dir)
    try:
        prepared = json.loads((folder / SERVER_NAME).read_text())
    except (OSError, ValueError):
        raise InputError(f"--serve-dir {folder} is not a folder `studio loop --prepare-server` wrote (no readable "
                         f"{SERVER_NAME})") from None
    if prepared.get("world") != config.world():
        raise InputError(f"--serve-dir {folder} was prepared for the world {prepared.get('world')}, not "
                         f"{config.world()}: prepare it with the loop's --seed, --users and --groups")
    with CreativeCache(folder / "cache") as cache:
        if cache.all_creatives():
            raise InputError(f"the server's cache {folder / 'cache'} already holds creatives (an earlier run?); "
                             "prepare a new folder for each loop run")
    client.check()


# ------------------------------------------------------------------------------------------------------ evolving


def _evolve(world: _World, arm: _Arm, round_index: int, staging: Path) -> dict:
    """Retrain the ranker, retire losers, propose + paint + rank new arms, cache them, fine-tune the prompt model
    (and, for the "loop" arm, the generator). Returns this part of the round's record."""
    import torch

    from reward.scene_ridge import SceneRidge

    config = world.config
    record: dict[str, Any] = {}

    # 1. the ranker, on every round served so far (never on the round it ranks: that round is not served yet)
    dataset = _log_dataset(world, arm)
    trainer = _fit_ranker(world, dataset, seed=config.seed + round_index)
    trainer.model_.save_pretrained(staging / "reward")
    # the held-out checks select nothing, so their predicted gain of the selected arms escapes the winner's curse of
    # the ranker's own: reward models with other validation creatives and initial weights (averaged: one model's
    # error on creatives it never saw is large), and the linear check, the hacking gap (closer on most seeds)
    checkers = []
    with torch.random.fork_rng():  # the check changes nothing the loop does next
        for k in range(CHECKERS):
            checkers.append(_fit_ranker(world, dataset, seed=config.seed + round_index + CHECKER_SEED * (k + 1)).model_)
            checkers[-1].save_pretrained(staging / f"reward-check-{k}")
    linear = SceneRidge().fit(dataset)
    linear.save_pretrained(staging / "reward-check-linear")
    trained = set(trainer.split_.train) | set(trainer.split_.validation)
    seen_rounds = sorted({int(v.rsplit("-", 1)[1]) for v in dataset.impressions["model_version"].unique()})
    record["ranker"] = {"trained_creatives": sorted(trained), "trained_rounds": seen_rounds,
                        "epochs": trainer.n_epochs_, "best_epoch": trainer.best_epoch_,
                        "log": "server" if arm.client is not None else "in-process",
                        "log_rows": len(dataset.impressions)}

    # 2. retire losers by logged CTR (smoothed with the ranker's Beta prior)
    clicks = _smoothed_ctr(dataset.impressions, trainer.prior_)  # read by retiring, the SFT and the clicked LoRA examples
    retired = _retire(arm, clicks, trainer.prior_, config.keep_per_group, len(world.group_ids))

    # 3. propose, paint, rank; the top-k per group join the pool
    ranked, proposals, caps = _propose_and_rank(world, arm, trainer.model_, dataset, round_index, staging)
    overlap = sorted({c.creative_id for c in ranked} & trained)
    if overlap:  # the guard against reward hacking: never rank what the ranker trained on
        raise RuntimeError(f"the ranker trained on {len(overlap)} creatives it now ranks, e.g. {overlap[0]}")
    record["ranker"].update({"ranked_creatives": sorted(c.creative_id for c in ranked), "overlap": overlap,
                             "trust_region_caps": caps})
    selected = []
    for product in world.products:
        for g in range(len(world.group_ids)):
            mine = [c for c in ranked if c.product_id == product["product_id"] and c.group == g]
            selected += sorted(mine, key=_rank_key)[: config.top_k]
    record["hacking"] = _hacking(world, arm, trainer.model_, checkers, linear, dataset, selected)
    record["diversity"] = _diversity(world, proposals, ranked)
    record["generator_drift"] = _generator_drift(world, arm, proposals, round_index)
    arm.add(selected)
    record["selected"] = [c.creative_id for c in selected]
    record["retired"] = retired
    _cache(arm, selected, retired, round_index, staging)

    # 4. fine-tune for the next round: the prompt model (both loop arms), the generator (loop only)
    record["prompt_model"] = _fine_tune_prompts(world, arm, ranked, clicks, round_index)
    if arm.name == "loop":
        arm.lora_examples = (arm.lora_examples + selected if config.lora_examples == "selected"
                             else _clicked(world, arm, clicks))
        record["lora"] = _fine_tune_generator(world, arm, round_index, staging, trainer.model_, checkers)
    return record


def _refresh(world: _World, arm: _Arm, round_index: int, staging: Path) -> dict:
    """The "refresh" arm's round: retire losers as the loop arms do, then add `top_k` of each group's base-model
    proposals drawn at random, painted by the base generator (in round 1 the loop arms rank the same proposals)."""
    from reward.data import aggregate, fit_beta_prior

    config = world.config
    impressions = _read_log(arm)
    counts = aggregate(impressions)
    prior = fit_beta_prior(counts["clicks"].to_numpy(), counts["impressions"].to_numpy())
    retired = _retire(arm, _smoothed_ctr(impressions, prior), prior, config.keep_per_group, len(world.group_ids))
    rng = np.random.default_rng([config.seed, 2000 + round_index])  # its own stream: the other arms see no change
    proposals, selected = {}, []
    for product in world.products:
        for g in range(len(world.group_ids)):
            prompts = world.propose(world.base_writer, product, g, config.candidates_per_group,
                                    seed=_seed(config, round_index, g, 1))
            proposals[(product["product_id"], g)] = prompts
            picks = rng.choice(len(prompts), size=min(config.top_k, len(prompts)), replace=False)
            selected += [_paint_proposal(world, product, g, round_index, i, prompts[i], None, staging)
                         for i in sorted(int(i) for i in picks)]
    arm.add(selected)
    _cache(arm, selected, retired, round_index, staging)
    return {"selected": [c.creative_id for c in selected], "retired": retired,
            "diversity": _diversity(world, proposals, selected)}


def _log_dataset(world: _World, arm: _Arm):
    """The arm's event log so far as a reward dataset (each served creative's PNG, prompt and category)."""
    import pandas as pd

    from reward.data import RewardDataset, load_pixels

    impressions = _read_log(arm)
    ids = sorted(impressions["creative_id"].unique())
    creatives = pd.DataFrame([{"creative_id": c, "product_id": arm.catalogue[c].product_id,
                               "category": arm.catalogue[c].category, "prompt": arm.catalogue[c].prompt}
                              for c in ids]).set_index("creative_id")
    pixels, errors = load_pixels([arm.catalogue[c].image for c in ids], LOG_PIXELS)
    if any(errors):
        raise InputError(f"a served creative cannot be read: {next(e for e in errors if e)}")
    return RewardDataset(creatives, pixels, world.group_vectors, impressions)


def _fit_ranker(world: _World, dataset, seed: int):
    """A reward model on `dataset`; `seed` draws its validation creatives (early stopping) and its initial weights."""
    from reward.training import RewardTrainer, TrainingConfig

    epochs = world.config.reward_epochs
    return RewardTrainer(TrainingConfig(max_epochs=epochs, patience=max(10, epochs // 4), validation_fraction=0.2,
                                        test_fraction=0.0, seed=seed, progress=False)).fit(dataset)


def _smoothed_ctr(impressions, prior) -> Any:
    """Beta-smoothed CTR per (product, group, creative) over the whole log (`impressions`, one row each)."""
    from reward.data import aggregate, label

    return label(aggregate(impressions), prior)


def _clicked(world: _World, arm: _Arm, table) -> list[_Creative]:
    """Every logged creative whose smoothed CTR in a group is above that group's mean, once per such group."""
    clicked = []
    for (_product, group_id), rows in table.groupby(["product_id", "group_id"], sort=True):
        g = world.group_ids.index(group_id)
        clicked += [replace(arm.catalogue[c], group=g)
                    for c, value in zip(rows["creative_id"], rows["label"]) if value > rows["label"].mean()]
    return clicked


def _retire(arm: _Arm, table, prior, keep: int, n_groups: int) -> list[str]:
    """Pool creatives that are not among the `keep` best of any group by smoothed CTR (`table`, `_smoothed_ctr`;
    never-logged ones score the prior's mean) leave the pool."""
    retired = []
    for product, pool in arm.pool.items():
        best: set[str] = set()
        for g in range(n_groups):
            rows = table[(table["product_id"] == product) & (table["group_id"] == str(g))]
            scores = {c: prior.mean for c in pool} | dict(zip(rows["creative_id"], rows["label"]))
            best |= set(sorted(pool, key=lambda c: -scores[c])[:keep])
        retired += [c for c in pool if c not in best]
        arm.pool[product] = [c for c in pool if c in best]
    return retired


def _paint_proposal(world: _World, product: dict, group: int, round_index: int, i: int, prompt, lora: str | None,
                    staging: Path) -> _Creative:
    """Proposal `i` of `group` in a round, painted into the round's staged creatives/ at its own seed (so arms that
    share a proposal share the PNG)."""
    path, index = world.paint(product, prompt, _seed(world.config, round_index, group, 100 + i), lora,
                              staging / "creatives", f"r{round_index}-g{group}-{i}")
    return _Creative(f"r{round_index}/{product['product_id']}/g{group}-{i}", product["product_id"], product["category"],
                     group, round_index, prompt.positive, prompt.negative, str(path), index)


def _rank_key(creative: _Creative) -> tuple[float, float]:
    """Best first: by the capped prediction, ties (candidates at the cap) by the uncapped one."""
    return -creative.predicted_ctr, -creative.raw_predicted_ctr


def _propose_and_rank(world: _World, arm: _Arm, ranker, dataset, round_index: int, staging: Path):
    """Each group's proposals painted and scored by the ranker for that group. The trust region: a candidate's
    predicted CTR is capped at the highest the ranker predicts for any logged creative of the product in that group,
    so the loop never believes (or fine-tunes toward) a CTR beyond what its evidence reached; the uncapped score
    only breaks ties. Returns (ranked creatives, proposals per (product, group), caps)."""
    config = world.config
    ranked, proposals, caps = [], {}, {}
    for product in world.products:
        for g in range(len(world.group_ids)):
            cap = _trust_cap([ranker], dataset, product["product_id"], world.group_ids[g])
            caps[f"{product['product_id']}/{world.group_ids[g]}"] = cap
            prompts = world.propose(arm.writer, product, g, config.candidates_per_group,
                                    seed=_seed(config, round_index, g, 1))
            proposals[(product["product_id"], g)] = prompts
            batch = [_paint_proposal(world, product, g, round_index, i, prompt, arm.lora(g), staging)
                     for i, prompt in enumerate(prompts)]
            if not batch:
                continue
            for creative, value in zip(batch, _predict(ranker, batch, world.group_ids[g])):
                creative.raw_predicted_ctr = float(value)
                creative.predicted_ctr = min(float(value), cap)
            ranked += batch
    return ranked, proposals, caps


def _hacking(world: _World, arm: _Arm, ranker, checkers: list, linear, dataset, selected: list[_Creative]) -> dict:
    """Predicted relative gain of the new arms over what the last round served, per group, against the oracle's
    true gain, by four estimates of the new arms' CTR. ``gap_points`` = 100 x (predicted - true) with the linear
    check (``reward.scene_ridge``; the hacking gap); ``reward_check_gap_points`` with the three held-out reward
    models' mean predictions (capped to their own trust region); ``selection_gap_points`` with the ranker's capped
    ones (the scores it selected by, so biased up by the selection); ``uncapped_gap_points`` with the ranker's raw
    ones."""
    import pandas as pd

    from reward.training import predict_pairs

    estimates = ("", "reward_check_", "selection_", "uncapped_")
    last = arm.served_by[-1]
    by_group, rows = {}, []
    for (product, g), counts in sorted(last.items()):
        mine = [c for c in selected if c.product_id == product and c.group == g]
        if not mine:
            continue
        served = list(counts)
        share = np.array([counts[c] for c in served], dtype=float)
        share /= share.sum()
        group_id = world.group_ids[g]
        pairs = pd.DataFrame({"creative_id": served, "group_id": [group_id] * len(served)})
        checked = np.minimum(np.mean([_predict(m, mine, group_id) for m in checkers], axis=0),
                             _trust_cap(checkers, dataset, product, group_id))
        linear_new = _linear_ctr(linear, _read_pixels(mine), product, group_id)  # uncapped: it extrapolates mildly
        linear_old = _linear_ctr(linear, _pixels_of(dataset, served), product, group_id)
        selection_old = float(share @ predict_pairs(ranker, dataset, pairs))
        truth = world.group_true_ctr([arm.catalogue[c].sim_index for c in served] + [c.sim_index for c in mine])[g]
        row = {"weight": float(sum(counts.values())),
               "new": float(linear_new.mean()), "old": float(share @ linear_old),
               "reward_check_new": float(checked.mean()),
               "reward_check_old": float(share @ np.mean([predict_pairs(m, dataset, pairs) for m in checkers], axis=0)),
               "selection_new": float(np.mean([c.predicted_ctr for c in mine])), "selection_old": selection_old,
               "uncapped_new": float(np.mean([c.raw_predicted_ctr for c in mine])), "uncapped_old": selection_old,
               "true_new": float(truth[len(served):].mean()), "true_old": float(share @ truth[: len(served)])}
        by_group[f"{product}/{group_id}"] = {f"{e}predicted_gain": row[f"{e}new"] / row[f"{e}old"] - 1
                                             for e in estimates} | {"true_gain": row["true_new"] / row["true_old"] - 1}
        rows.append(row)
    if not rows:
        nan = float("nan")
        return {f"{e}{k}": nan for e in estimates for k in ("predicted_gain", "gap_points")} | {
            "true_gain": nan, "by_group": by_group}
    table = pd.DataFrame(rows)
    w = table["weight"].to_numpy() / table["weight"].sum()
    true = float(w @ table["true_new"] / (w @ table["true_old"]) - 1)  # impression-weighted over groups
    out: dict[str, Any] = {"true_gain": true}
    for e in estimates:
        out[f"{e}predicted_gain"] = float(w @ table[f"{e}new"] / (w @ table[f"{e}old"]) - 1)
        out[f"{e}gap_points"] = 100 * (out[f"{e}predicted_gain"] - true)
    return out | {"by_group": by_group}


def _trust_cap(models: list, dataset, product_id: str, group_id: str) -> float:
    """The highest CTR the `models` (their mean) predict for any logged creative of the product in the group (1.0 if
    none)."""
    import pandas as pd

    from reward.training import predict_pairs

    logged = dataset.creatives.index[dataset.creatives["product_id"] == product_id].tolist()
    if not logged:
        return 1.0
    pairs = pd.DataFrame({"creative_id": logged, "group_id": [group_id] * len(logged)})
    return float(np.mean([predict_pairs(model, dataset, pairs) for model in models], axis=0).max())


def _linear_ctr(linear, pixels, product_id: str, group_id: str) -> np.ndarray:
    """The linear check's predicted CTR of `pixels` (N creatives of one product) for one group."""
    return linear.predict_ctr(pixels, [product_id] * len(pixels), [group_id] * len(pixels))


def _pixels_of(dataset, creative_ids) -> Any:
    """The logged creatives' pixels, as the reward dataset holds them."""
    return dataset.pixels[dataset.creative_rows(list(creative_ids))]


def _read_pixels(creatives: list[_Creative], size: int = LOG_PIXELS) -> Any:
    """`creatives` read from their PNGs (by default at the size the reward datasets hold)."""
    from reward.data import load_pixels

    return load_pixels([c.image for c in creatives], size)[0]


def _predict(model, creatives: list[_Creative], group_id: str) -> np.ndarray:
    """`model`'s predicted CTR of `creatives` (read from their PNGs) for one group."""
    return np.asarray(model.predict_ctr(_read_pixels(creatives, model.config.image_size), [c.prompt for c in creatives],
                                        [group_id] * len(creatives), [c.category for c in creatives]), dtype=float)


def _diversity(world: _World, proposals: dict, ranked: list[_Creative] | None) -> dict:
    """Distinct prompts the prompt model proposed per (product, group), and the spread of the painted backgrounds
    (mean pairwise distance of the simulator's standardised background measurements; None before round 1)."""
    from studio.imaging.descriptors import FEATURE_SCALE

    distinct = {f"{product}/{world.group_ids[g]}": len({p.positive for p in prompts})
                for (product, g), prompts in proposals.items()}
    spread = None
    if ranked:
        values = []
        for (product, g) in proposals:
            mine = [c.sim_index for c in ranked if c.product_id == product and c.group == g]
            if len(mine) > 1:
                z = world.simulator.creative_features_[mine] / FEATURE_SCALE
                values.append(float(np.mean([np.linalg.norm(a - b) for i, a in enumerate(z) for b in z[i + 1:]])))
        spread = float(np.mean(values)) if values else None
    return {"distinct_prompts": distinct, "mean_distinct_prompts": float(np.mean(list(distinct.values()))),
            "asked": world.config.candidates_per_group, "background_spread": spread}


def _generator_drift(world: _World, arm: _Arm, proposals: dict, round_index: int) -> float | None:
    """Mean absolute background difference (0-255) between the arm's LoRA and the base generator on the first
    proposal of each group at one seed; None without a LoRA."""
    if not arm.loras:
        return None
    from studio.imaging.creatives import generate_creatives
    from studio.imaging.engine import LoraSpec

    differences = []
    for product in world.products:
        keep = product["canvas"].keep
        for g in range(len(world.group_ids)):
            prompts = proposals.get((product["product_id"], g))
            if not prompts:
                continue
            images = []
            for lora in (None, LoraSpec(arm.lora(g), world.config.lora_scale)):
                settings = replace(world.settings, negative_prompt=prompts[0].negative, lora=lora)
                creative = generate_creatives(product["canvas"], prompts[0].positive, settings=settings, n=1,
                                              seed=_seed(world.config, round_index, g, 7), engine=world.engine,
                                              progress=False)[0]
                images.append(np.asarray(creative.image.convert("RGB"), dtype=float))
            differences.append(float(np.abs(images[0] - images[1])[~keep].mean()))
    return float(np.mean(differences)) if differences else None


def _cache(arm: _Arm, selected: list[_Creative], retired: list[str], round_index: int, staging: Path) -> None:
    """The new round's best into the arm's creative cache (accepted); retired cached creatives are marked so."""
    from studio.jobs.cache import CacheKey, CreativeCache

    generator = ("studio-mini" if not arm.loras else
                 f"studio-mini+{Path(next(iter(arm.loras.values()))).parent.name}-lora{'s' if len(arm.loras) > 1 else ''}")
    score = {c.creative_id: c.predicted_ctr or 0.0 for c in selected}  # the round-0 pool is unranked: 0
    with CreativeCache(arm.cache_path) as cache:
        items, order = [], sorted(selected, key=lambda c: (c.product_id, c.group, -score[c.creative_id]))
        for c in order:
            rank = 1 + sum(score[o.creative_id] > score[c.creative_id] for o in order
                           if o.product_id == c.product_id and o.group == c.group)
            key = CacheKey(c.product_id, c.group, PLACEMENT, c.prompt, generator, f"{arm.name}-round-{round_index}")
            items.append((Path(c.image).read_bytes(), key, score[c.creative_id], rank, "accepted"))
        stored = cache.put_unit(f"{arm.name}-round-{round_index}", items, keep_existing=True)
        arm.cache_ids.update({c.creative_id: s.creative_id for c, s in zip(order, stored)})
        arm.loop_ids.update({s.creative_id: c.creative_id for c, s in zip(order, stored)})
        for creative_id in retired:
            if creative_id in arm.cache_ids:
                cache.set_status(arm.cache_ids[creative_id], "retired")


def _fine_tune_prompts(world: _World, arm: _Arm, ranked: list[_Creative], table, round_index: int) -> dict:
    """Reward-weighted SFT toward the top quarter of each group's ranked proposals and the prompts of creatives
    that earned above-average clicks in that group; the base model's own proposals anchor it against drift. Returns
    the example counts, the loss and the drift (a per-token estimate of KL(new || base) on the new model's samples).
    `table`: the smoothed CTR per (product, group, creative) of the log so far (`_smoothed_ctr`)."""
    from prompts.brief import Prompt
    from prompts.training import TrainingConfig

    config = world.config
    briefs, prompts, weights, counts = [], [], [], {"ranked": 0, "clicked": 0, "anchor": 0}
    for product in world.products:
        for g in range(len(world.group_ids)):
            brief = world.brief(product, g)
            mine = sorted((c for c in ranked if c.product_id == product["product_id"] and c.group == g),
                          key=_rank_key)
            positive: list[tuple[Prompt, float]] = []
            if mine:
                mean = np.mean([c.predicted_ctr for c in mine])
                positive += [(Prompt(c.prompt, c.negative), c.predicted_ctr / mean)
                             for c in mine[: max(1, len(mine) // 4)]]
                counts["ranked"] += max(1, len(mine) // 4)
            rows = table[(table["product_id"] == product["product_id"]) & (table["group_id"] == world.group_ids[g])]
            if len(rows):
                mean = rows["label"].mean()
                for creative_id, value in zip(rows["creative_id"], rows["label"]):
                    if value > mean:
                        c = arm.catalogue[creative_id]
                        positive.append((Prompt(c.prompt, c.negative), value / mean))
                        counts["clicked"] += 1
            if not positive:
                continue
            anchor = config.anchor_weight * float(np.mean([w for _, w in positive]))
            base = world.propose(world.base_writer, product, g, max(1, len(positive)),
                                 seed=_seed(config, round_index, g, 3))
            for prompt, weight in positive + [(p, anchor) for p in base if anchor > 0]:
                briefs.append(brief)
                prompts.append(prompt)
                weights.append(weight)
            counts["anchor"] += len(base) if anchor > 0 else 0
    if not prompts:
        return {"examples": counts, "trained": False}
    arm.writer.fit(briefs, prompts, np.asarray(weights), TrainingConfig(
        steps=config.prompt_steps, batch_size=16, learning_rate=config.prompt_learning_rate, warmup_steps=5,
        seed=config.seed + round_index))
    # drift: E_new[log p_new - log p_base] per answer token on fresh samples of the new model
    sample_briefs, samples = [], []
    for product in world.products:
        for g in range(len(world.group_ids)):
            fresh = world.propose(arm.writer, product, g, 8, seed=_seed(config, round_index, g, 5))
            sample_briefs += [world.brief(product, g)] * len(fresh)
            samples += fresh
    drift = None
    if samples:
        drift = float(np.mean(arm.writer.log_likelihood(sample_briefs, samples)
                              - world.base_writer.log_likelihood(sample_briefs, samples)))
    return {"examples": counts, "trained": True, "final_loss": float(np.mean(arm.writer.loss_history_[-5:])),
            "drift_kl_per_token": drift}


def _fine_tune_generator(world: _World, arm: _Arm, round_index: int, staging: Path, ranker, checkers: list) -> dict:
    """Reward-ranked fine-tuning: a fresh LoRA on the arm's examples (`LoopConfig.lora_examples`; or, with
    `lora_per_group`, one per group on that group's), captioned with their prompts, then (`draft_steps`) tuned
    through the ranker; it paints the next round's proposals."""
    config = world.config
    if not arm.lora_examples:  # nothing to learn from yet: the generator stays as it is
        return {"examples": 0, "trained": False}
    if not config.lora_per_group:
        path, fit = _train_lora(world, arm.lora_examples, round_index, staging / "lora", ranker, checkers)
        arm.loras = {None: path}
        return {"examples": len(arm.lora_examples), "steps": config.lora_steps, **fit}
    per_group = {}
    for g in sorted({c.group for c in arm.lora_examples}):
        mine = [c for c in arm.lora_examples if c.group == g]
        arm.loras[g], fit = _train_lora(world, mine, round_index, staging / f"lora-g{g}", ranker, checkers)
        per_group[str(g)] = {"examples": len(mine), **fit}
    return {"per_group": per_group, "steps": config.lora_steps}


def _train_lora(world: _World, examples: list, round_index: int, out: Path, ranker, checkers: list) -> tuple[str, dict]:
    """One LoRA of the generator on `examples` (their images, prompts and the product masks kept), then
    `draft_steps` of reward tuning through the ranker: its folder, its first and final losses (and `_draft`'s
    figures)."""
    from PIL import Image

    from studio.training.trainer import (
        Components,
        FolderData,
        InpaintingTrainer,
        TrainConfig,
        encode_dataset,
        load_pipeline,
    )

    config = world.config
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        shots = Path(scratch) / "shots"
        shots.mkdir()
        for i, creative in enumerate(examples):
            shutil.copyfile(creative.image, shots / f"{i}.png")
            (shots / f"{i}.txt").write_text(creative.prompt)
            keep = world.products[[p["product_id"] for p in world.products].index(creative.product_id)]["canvas"].keep
            Image.fromarray((keep * 255).astype(np.uint8)).save(shots / f"{i}.mask.png")
        pipeline = load_pipeline(world.generator)
        pipeline.set_progress_bar_config(disable=True)
        train = TrainConfig(steps=config.lora_steps, batch_size=min(8, len(examples)),
                            learning_rate=config.lora_learning_rate, lora=True, lora_rank=config.lora_rank,
                            checkpoint_every=config.lora_steps, caption_dropout=0.0, snr_gamma=None,
                            mask_modes={"product": 1.0}, seed=config.seed + round_index)
        data = encode_dataset(Components.from_pipeline(pipeline), FolderData(shots), train, progress=False)
        trainer = InpaintingTrainer(pipeline, train).fit(data, Path(scratch) / "run", progress=False)
        fit = {"first_loss": float(trainer.losses_[0]), "final_loss": float(np.mean(trainer.losses_[-5:]))}
        if config.draft_steps:
            fit["draft"] = _draft(world, pipeline, examples, ranker, checkers, round_index)
        saved = trainer.save(out)
    return str(saved), fit


def _draft(world: _World, pipeline, examples: list, ranker, checkers: list, round_index: int) -> dict:
    """DRaFT-1 on the LoRA in `pipeline.unet`: ascend the ranker's CTR logit of the examples' prompts, each painted
    for its own group on its product's canvas. The ranker's and the held-out checkers' mean predicted CTR of the
    same cases at fixed seeds, before and after, tell a real gain (both rise) from reward hacking (only the ranker's
    rises)."""
    import torch

    from studio.training.reward_tuning import RewardCase, RewardTuneConfig, RewardTuner

    config = world.config
    canvases = {p["product_id"]: p["canvas"] for p in world.products}
    cases = [RewardCase(canvases[c.product_id], world.engine.read_prompt(c.prompt).text,
                        world.engine.read_prompt(c.negative).text) for c in examples]

    for judge in (ranker, *checkers):  # they only judge: the gradient reaches the pixels, never their weights
        judge.requires_grad_(False).eval()

    def scorer(model, logits: bool = False):
        def reward(pixels, indices):
            chosen = [examples[i] for i in indices]
            groups = model.group_vectors([world.group_ids[c.group] for c in chosen])
            out = model(pixels, [c.prompt for c in chosen], groups, [c.category for c in chosen])
            return out if logits else torch.sigmoid(out)
        return reward

    tuner = RewardTuner(pipeline, RewardTuneConfig(steps=config.draft_steps, batch_size=min(4, len(cases)),
                                                   learning_rate=config.draft_learning_rate,
                                                   denoising_steps=config.steps, guidance=config.guidance,
                                                   seed=config.seed + round_index))
    judges = [scorer(ranker)] + [scorer(m) for m in checkers]
    seeds = [_seed(config, round_index, 0, 900), _seed(config, round_index, 0, 901)]
    before = tuner.score(cases, judges, seeds)
    tuner.fit(cases, scorer(ranker, logits=True), progress=False)
    after = tuner.score(cases, judges, seeds)
    checked = [float(np.mean(before[1:])), float(np.mean(after[1:]))] if checkers else None
    return {"steps": config.draft_steps, "ranker_ctr": [before[0], after[0]], "ranker_gain": after[0] / before[0] - 1,
            "checker_ctr": checked, "checker_gain": checked[1] / checked[0] - 1 if checked else None}


# ------------------------------------------------------------------------------------------------------ read-out


def _compare(arms: list[_Arm], report: LoopReport, config: LoopConfig) -> tuple[dict, dict]:
    """Gains with intervals: each arm's last finished round vs its round 0, and arm vs arm on the same requests."""
    comparisons: dict[str, Any] = {}
    done = min(len(arm.served) for arm in arms)
    if done == 0:
        return {}, {}
    last = done - 1
    comparisons["round"] = last
    for arm in arms:
        if last > 0:
            comparisons[f"{arm.name}_vs_round_0"] = loop_report.relative_gain(arm.served[last], arm.served[0])
    by_name = {arm.name: arm for arm in arms}
    for new, old in (("loop", "no_loop"), ("prompts_only", "no_loop"), ("loop", "prompts_only"), ("refresh", "no_loop"),
                     ("loop", "refresh"), ("prompts_only", "refresh")):
        if new in by_name and old in by_name and last > 0:
            comparisons[f"{new}_vs_{old}"] = loop_report.relative_gain(by_name[new].served[last],
                                                                       by_name[old].served[last], paired=True)
    goals: dict[str, Any] = {}
    if "loop" in by_name and last > 0:
        gain = comparisons["loop_vs_round_0"]
        goals["loop_gain_at_least_10_percent_ci_excludes_0"] = gain["gain"] >= 0.10 and gain["ci"][0] > 0
        if "loop_vs_no_loop" in comparisons:
            versus = comparisons["loop_vs_no_loop"]
            goals["loop_beats_no_loop_ci_excludes_0"] = versus["ci"][0] > 0
        gaps = [r["hacking"]["gap_points"] for r in report.rounds["loop"] if "hacking" in r]
        goals["hacking_gap_at_most_5_points"] = bool(gaps) and max(abs(g) for g in gaps) <= 5
        first = report.rounds["loop"][0]["diversity"]["mean_distinct_prompts"]
        least = min(r["diversity"]["mean_distinct_prompts"] for r in report.rounds["loop"])
        goals["diversity_at_least_half_of_round_0"] = least >= 0.5 * first
    goals["under_30_minutes"] = report.seconds <= 1800
    return _jsonable(comparisons), goals


def _public_config(config: LoopConfig) -> dict:
    """The config for the report, without the password of a postgresql:// event log."""
    import re

    values = asdict(config)
    if values["serve_db"]:
        values["serve_db"] = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", values["serve_db"])
    return _jsonable(values)


def _world_summary(world: _World) -> dict:
    return {"groups": len(world.group_ids), "profiles": world.profiles, "users": world.config.users,
            "products": [p["product_id"] for p in world.products], "generator": str(world.generator),
            "treatment_share": float(world.treated.mean())}


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars, tuples, NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
