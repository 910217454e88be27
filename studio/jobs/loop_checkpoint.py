"""Resuming a killed `studio loop`: the state after each finished round, and putting it back.

Once every arm has finished round r, `save` writes ``checkpoint/`` in the run folder (staged, so a kill while it is
written keeps the previous one): ``state.pkl`` (the settings, the simulator with every creative registered so far,
the paint memo, each arm's bandit, catalogue, pool, LoRAs and served history, the report so far, the random states)
and per arm a copy of its event log, its creative cache and its fine-tuned prompt model. `restore` puts that back and
removes what the killed round left behind (its round folders, its event-log rows, its cache entries), so a resumed
run goes on as if it had never stopped: the same rounds, to the digit. A finished run removes its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from studio.core.atomic import staged_folder
from studio.core.errors import InputError

CHECKPOINT_NAME = "checkpoint"
STATE_NAME = "state.pkl"
_WORLD_FIELDS = ("simulator", "painted")  # the rest of the world is rebuilt from the settings
_ARM_FIELDS_REBUILT = ("world", "writer", "client")  # not pickled: the world, the prompt model (saved), a server


def save(folder: Path, round_index: int, config, world, arms: list, base_proposals: dict, report) -> None:
    """Write ``folder/checkpoint`` for a run whose arms have all finished `round_index`."""
    import torch

    with staged_folder(folder / CHECKPOINT_NAME) as staging:
        for arm in arms:
            mine = staging / arm.name
            mine.mkdir()
            if arm.writer is not None:
                arm.writer.save_pretrained(mine / "prompt-model")
            _copy_sqlite(Path(arm.log_path), mine / "events.db")
            _copy_cache(arm.cache_path, mine / "cache")
        state = {
            "round": round_index, "config": config, "base_proposals": base_proposals, "report": report,
            "world": {name: getattr(world, name) for name in _WORLD_FIELDS},
            "arms": {arm.name: {key: value for key, value in vars(arm).items() if key not in _ARM_FIELDS_REBUILT}
                     for arm in arms},
            "random": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        (staging / STATE_NAME).write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


def load(folder: Path) -> dict:
    """The checkpoint of the run in `folder`, or InputError saying why it cannot be resumed."""
    path = folder / CHECKPOINT_NAME / STATE_NAME
    if not path.is_file():
        try:
            report = json.loads((folder / "loop.json").read_text())
        except (OSError, ValueError):
            report = {}
        if report.get("finished"):
            why = "it finished"
        elif (report.get("config") or {}).get("serve_url"):
            why = ("its loop arm served through a live server, whose event log cannot be rewound to the last finished "
                   "round")
        else:
            why = "it has no checkpoint (it stopped before round 0 ended, or is not a loop run)"
        raise InputError(f"cannot resume {folder}: {why}; start a new run in a new folder")
    try:
        return pickle.loads(path.read_bytes())  # our own file, written by `save` in this run folder
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise InputError(f"cannot resume {folder}: its checkpoint is damaged ({type(error).__name__}); start a new "
                         "run in a new folder") from None


def restore(folder: Path, state: dict, world, arms: list) -> None:
    """Put the checkpoint's state back into a freshly built `world` and `arms`, and remove what later rounds wrote."""
    import torch

    from prompts.loading import load_prompt_model

    saved = folder / CHECKPOINT_NAME
    for name, value in state["world"].items():
        setattr(world, name, value)
    for arm in arms:
        vars(arm).update(state["arms"][arm.name])
        for later in arm.out.glob("round-*"):
            if int(later.name.split("-")[1]) > state["round"]:
                shutil.rmtree(later)
        _remove_sqlite(Path(arm.log_path))
        _copy_sqlite(saved / arm.name / "events.db", Path(arm.log_path))
        shutil.rmtree(arm.cache_path, ignore_errors=True)
        _copy_cache(saved / arm.name / "cache", arm.cache_path)
        if arm.writer is not None:
            arm.writer = load_prompt_model(saved / arm.name / "prompt-model")
        arm.write_catalogue()
    torch.set_rng_state(state["random"]["torch"])
    np.random.set_state(state["random"]["numpy"])
    random.setstate(state["random"]["python"])


def remove(folder: Path) -> None:
    shutil.rmtree(folder / CHECKPOINT_NAME, ignore_errors=True)


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (its WAL included), through SQLite's own backup."""
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _copy_cache(source: Path, target: Path) -> None:
    """A creative cache folder: its index through SQLite's backup, its blobs as files."""
    from studio.jobs.cache import BLOBS_NAME, INDEX_NAME

    if not source.is_dir():  # an arm that caches nothing (no_loop)
        return
    target.mkdir(parents=True)
    if (source / INDEX_NAME).is_file():
        _copy_sqlite(source / INDEX_NAME, target / INDEX_NAME)
    if (source / BLOBS_NAME).is_dir():
        shutil.copytree(source / BLOBS_NAME, target / BLOBS_NAME, ignore=shutil.ignore_patterns("*.tmp"))
