"""Click histories of the simulator's groups: the creatives each group clicked, read back from a simulated log.

`simulate_histories` builds a small seeded world -- a pool of rendered creatives with varied backdrops (colour,
material, lighting), the audience simulator's segments as the groups (their tastes are the known truth), and uniform
random serving logged to an event log -- and returns each group's clicked creatives as a
`studio.imaging.personal.History` whose weights are the click counts. `histories_from_log` reads the same from any
event log (e.g. a `studio simulate` run: events.db and creatives/), grouping by its `group_id`.

A group's history is biased towards its taste only as far as its clicks are: the click-weighted mean of the
creatives' measured backgrounds moves along the group's taste vector (see `history_taste_mean`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from studio.core.atomic import staged_folder
from studio.core.errors import InputError
from studio.core.vocabulary import CATEGORIES
from studio.imaging.descriptors import background_vector, measure_background, standardise
from studio.imaging.personal import History
from studio.learning.eventlog import EventLog
from studio.sim.renderer import render_scene, sample_attributes
from studio.sim.simulator import AudienceSimulator


@dataclass
class HistoryWorld:
    """A simulated world with a click log. folder: where it lives (creatives/, events.db, world.json); simulator:
    the AudienceSimulator (its creatives registered in `creatives` order); creatives: one dict per creative
    (creative_id, path, attributes, category); groups: the group ids (the simulator's segments)."""

    folder: Path
    simulator: AudienceSimulator
    creatives: list[dict]
    groups: list[int]

    def history(self, group: int | str) -> History:
        """The creatives `group` clicked (weights: click counts); one clear error for an unknown group or one that
        never clicked."""
        return histories_from_log(self.folder / "events.db", self.folder / "creatives")[_group_id(group, self.groups)]


def _group_id(group: int | str, groups: list[int]) -> int:
    try:
        value = int(group)
    except (TypeError, ValueError):
        raise InputError(f"group must be a group number, one of {groups}, got {group!r}") from None
    if value not in groups:
        raise InputError(f"unknown group {group!r}; the simulated world has groups {groups}")
    return value


def simulate_histories(folder: str | os.PathLike, *, n_creatives: int = 96, impressions: int = 60_000,
                       segments: int = 4, image_size: int = 64, seed: int = 0,
                       taste_strength: float = 2.0, progress: bool = False) -> HistoryWorld:
    """Build (once) and return the seeded world in `folder`; a folder that already holds it is reused.

    taste_strength: logit per standardised unit of background (the simulator's default 0.5 makes clicks nearly
    taste-blind at a few thousand clicks; 2.0 gives histories whose mean visibly follows each taste).
    """
    folder = Path(folder)
    config = {"n_creatives": n_creatives, "impressions": impressions, "segments": segments,
              "image_size": image_size, "seed": seed, "taste_strength": taste_strength}
    simulator = AudienceSimulator(n_segments=segments, seed=seed, taste_strength=taste_strength)
    rng = np.random.default_rng([seed, 16])
    creatives = []
    scenes = []
    for index in range(n_creatives):
        attributes = sample_attributes(rng)
        scene = render_scene(size=image_size, seed=int(rng.integers(2**31)), **attributes)
        category = CATEGORIES[attributes["product"]]
        simulator.add_creative(scene.image, scene.product_mask, category)
        creatives.append({"creative_id": f"c{index:04d}", "path": f"creatives/c{index:04d}.png",
                          "attributes": attributes, "category": category, "caption": scene.caption})
        scenes.append(scene)
    groups = list(range(segments))
    world_file = folder / "world.json"
    if world_file.is_file() and json.loads(world_file.read_text()).get("config") == config:
        return HistoryWorld(folder, simulator, creatives, groups)
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} holds something else than this simulated world; pass a new folder")
    with staged_folder(folder) as staging:
        (staging / "creatives").mkdir()
        for creative, scene in zip(creatives, scenes):
            scene.image.save(staging / creative["path"], format="PNG")
        _log_clicks(staging / "events.db", simulator, creatives, impressions, rng)
        (staging / "world.json").write_text(json.dumps({"config": config, "creatives": creatives}, indent=1) + "\n")
    return HistoryWorld(folder, simulator, creatives, groups)


def _log_clicks(path: Path, simulator: AudienceSimulator, creatives: list[dict], impressions: int,
                rng: np.random.Generator) -> None:
    """Uniform random serving to the simulator's users, logged with group_id = the user's segment."""
    import pandas as pd

    users = simulator.sample_users(2_000)["user_id"].to_numpy()
    user = rng.choice(users, size=impressions)
    shown = rng.integers(len(creatives), size=impressions)
    clicked = simulator.click(user, shown)
    ids = np.char.add("imp-", np.arange(impressions).astype(str))
    with EventLog(path) as log:
        log.log_impressions(pd.DataFrame({
            "impression_id": ids, "ts": np.arange(impressions, dtype=float), "user_id": user.astype(str),
            "group_id": simulator.segment_of(user), "product_id": "pool",
            "creative_id": [creatives[c]["creative_id"] for c in shown], "arm": shown.astype(str),
            "propensity": np.full(impressions, 1.0 / len(creatives)), "policy": "uniform", "bucket": "control",
            "model_version": "histories",
        }), clicked=ids[clicked].tolist(), click_ts=np.flatnonzero(clicked).astype(float) + 0.5)


def histories_from_log(events: str | os.PathLike, creatives: str | os.PathLike) -> dict[int, History]:
    """Each group's clicked creatives in an event log: {group_id: History}, weights = clicks per creative.

    creatives: the folder of the creatives' PNGs, named `<creative_id>.png` (a `studio simulate` run's creatives/).
    A group whose clicks name no PNG there is left out.
    """
    with EventLog(events) as log:
        frame = log.read()
    clicks = frame[frame["clicked"] == 1]
    folder = Path(creatives)
    out: dict[int, History] = {}
    for group, rows in clicks.groupby("group_id"):
        counts = rows["creative_id"].value_counts().sort_index()
        paths = [(folder / f"{cid}.png", int(n)) for cid, n in counts.items() if (folder / f"{cid}.png").is_file()]
        if paths:
            out[int(group)] = History([Image.open(p).convert("RGB") for p, _ in paths], f"group:{int(group)}",
                                      weights=[float(n) for _, n in paths])
    return out


def history_for_group(group: int | str, folder: str | os.PathLike | None = None, *, seed: int = 0) -> History:
    """Group `group`'s history in the simulated world at `folder` (default: a seeded world in the user's cache,
    built once): what `studio generate --history-group G` paints for."""
    if folder is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = root / "creative-studio" / f"history-world-seed{seed}"
    _group_id(group, [int(group)] if str(group).lstrip("-").isdigit() else [])  # a bad group fails before any work
    world = simulate_histories(folder, seed=seed)
    histories = histories_from_log(world.folder / "events.db", world.folder / "creatives")
    group_id = _group_id(group, world.groups)
    if group_id not in histories:
        raise InputError(f"group {group_id} clicked nothing in the simulated log; there is no history to paint for")
    return histories[group_id]


def group_taste_mean(world: HistoryWorld, group: int | str) -> np.ndarray:
    """The click-weighted mean of the group's clicked creatives' standardised background measurements (the
    simulator's BACKGROUND_FEATURES, measured outside the product, z = (x - FEATURE_CENTRE) / FEATURE_SCALE)."""
    group_id = _group_id(group, world.groups)
    with EventLog(world.folder / "events.db") as log:
        frame = log.read()
    rows = frame[(frame["clicked"] == 1) & (frame["group_id"] == group_id)]
    if rows.empty:
        raise InputError(f"group {group_id} clicked nothing in the simulated log")
    index = {c["creative_id"]: i for i, c in enumerate(world.creatives)}
    counts = rows["creative_id"].map(index).value_counts()
    features = standardise(world.simulator.creative_features_[counts.index.to_numpy()])
    return np.average(features, axis=0, weights=counts.to_numpy(dtype=float))


def taste_features(image: Image.Image, product_mask: Image.Image | np.ndarray | None) -> np.ndarray:
    """A creative's standardised background measurements (see `group_taste_mean`)."""
    return standardise(background_vector(measure_background(image, product_mask)))
