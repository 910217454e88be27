"""The Models tab's work: which generator, prompt model and reward model the studio uses (ids, versions, sizes),
the local model folders to choose from, checking a choice at once (offline: one line, no download, no retries), and
a closed-loop run's rounds with their LoRAs and measured gains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from studio.core import hub
from studio.core.errors import InputError
from studio.imaging.provenance import weights_hash

ROLES = ("generator", "prompt model", "reward model")
_NEEDS = {"generator": "model_index.json", "prompt model": "config.json", "reward model": "config.json"}


def resolve(role: str, name: str | None) -> str:
    """The folder (or hub id) a model choice resolves to, or one ModelNotFoundError line; never a download."""
    name = (name or "").strip() or None
    if role == "generator":
        from studio.imaging.engine import default_model

        return hub.resolve_model(name or default_model(), kind="generator", needs="model_index.json").path_or_id
    if role == "prompt model":
        from prompts.backends import resolve_prompt_model

        return str(resolve_prompt_model(name).path_or_id)
    if role == "reward model":
        from reward.model import resolve_model_folder

        return str(resolve_model_folder(name or "reward-mini"))
    raise InputError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def describe(role: str, name: str | None) -> dict:
    """One model as the tab shows it: role, name, where it is, its version (weights hash) and size on disk."""
    where = resolve(role, name)
    folder = Path(where)
    local = folder.is_dir()
    return {"role": role, "name": (name or "").strip() or _default_name(role), "location": where,
            "version": weights_hash(folder).removeprefix("sha256:")[:12] if local else "not downloaded",
            "size_mb": round(folder_bytes(folder) / 2**20, 2) if local else None}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def local_folders(root: str | os.PathLike, role: str = "generator") -> list[str]:
    """Model folders of a role under `root` (one level deep, and `root` itself): what a marketer can choose from."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    needs = _NEEDS[role]
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return [str(p) for p in candidates if (p / needs).is_file()]


def offline_note() -> str:
    return ("Offline (HF_HUB_OFFLINE): hub ids work only when already in the local cache." if hub.offline()
            else "Online: a hub id not in the local cache is checked with one short request.")


def _default_name(role: str) -> str:
    return {"generator": "studio-mini", "prompt model": "prompts-mini", "reward model": "reward-mini"}[role]


LOOP_COLUMNS = ["arm", "round", "true_ctr", "ci_low", "ci_high", "impressions", "new_creatives", "retired",
                "hacking_gap_points", "lora", "lora_final_loss"]


def loop_rounds(folder: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A `studio loop` run's rounds (per arm: true CTR with its interval, arms added and retired, the hacking gap,
    the round's LoRA folder and loss) and its gains (each comparison with its 95 % interval), from `loop.json`."""
    path = Path(folder).expanduser() / "loop.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        arms = report["rounds"]
    except FileNotFoundError:
        raise InputError(f"no loop report at {path}; give the --out folder of a `studio loop` run") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path} is not a loop report ({type(error).__name__}: {error})") from None
    rows = []
    for arm, records in arms.items():
        for record in records:
            number = int(record["round"])
            ctr = record.get("true_ctr") or {}
            lora = Path(folder).expanduser() / arm / f"round-{number}" / "lora"
            rows.append((arm, number, ctr.get("mean"), *(ctr.get("ci") or (None, None)), ctr.get("n"),
                         len(record.get("added") or []), len(record.get("retired") or []),
                         (record.get("hacking") or {}).get("gap_points"), str(lora) if lora.is_dir() else "",
                         (record.get("lora") or {}).get("final_loss")))
    gains = [(name, value.get("gain"), *(value.get("ci") or (None, None)), value.get("paired"))
             for name, value in (report.get("comparisons") or {}).items() if isinstance(value, dict)]
    return (pd.DataFrame(rows, columns=LOOP_COLUMNS),
            pd.DataFrame(gains, columns=["comparison", "gain", "ci_low", "ci_high", "paired"]))
