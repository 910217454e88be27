"""kill -9 at random moments, then a rerun: nothing half-written survives, no stale staging, no lost click."""

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from studio.core.atomic import STAGING_PREFIX

pytestmark = pytest.mark.slow

STUDIO = [sys.executable, "-m", "studio.cli"]


def kill_at(command: list[str], seconds: float) -> bool:
    """Run `command` and kill -9 it after `seconds`; False if it finished first."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def events(path: Path) -> tuple[list, list, str]:
    connection = sqlite3.connect(path)
    try:
        impressions = connection.execute("SELECT * FROM impressions ORDER BY impression_id").fetchall()
        clicks = connection.execute("SELECT * FROM clicks ORDER BY impression_id").fetchall()
        return impressions, clicks, connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def staging_left(folder: Path) -> list[Path]:
    return list(folder.glob(f"{STAGING_PREFIX}*"))


def run_kills(command: list[str], out: Path, duration: float, complete) -> int:
    """kill -9 `command` at random moments (20 real kills); after each, `out` must be empty or `complete(out)`."""
    kills, rng = 0, np.random.default_rng(1)
    for _ in range(40):
        kills += kill_at(command, rng.uniform(0.05, 1.0) * duration)
        if complete(out):  # it got there before the kill: start the next trial afresh
            shutil.rmtree(out)
        assert [path for path in out.glob("*") if not path.name.startswith(".")] == []
        if kills == 20:
            break
    return kills


def pngs(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.png"))
            if not any(part.startswith(".") for part in path.relative_to(folder).parts)}


def test_simulate_killed_20_times_then_rerun_loses_nothing(tmp_path):
    simulate = [*STUDIO, "simulate", "--impressions", "20000", "--seed", "3"]
    reference = tmp_path / "reference"
    started = time.monotonic()
    subprocess.run([*simulate, "--out", str(reference)], check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    out = tmp_path / "runs" / "sim"
    out.parent.mkdir()
    # The run folder moves into place whole at the end: after a kill it is absent, or complete.
    complete = lambda folder: (folder / "report.json").is_file() and (  # noqa: E731
        events(folder / "events.db")[:2] == events(reference / "events.db")[:2])
    assert run_kills([*simulate, "--out", str(out)], out, duration, complete) == 20
    subprocess.run([*simulate, "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert staging_left(out.parent) == []
    impressions, clicks, integrity = events(out / "events.db")
    assert integrity == "ok"
    assert (impressions, clicks) == events(reference / "events.db")[:2]  # 0 lost impressions or clicks
    assert len(clicks) > 0


def test_generate_killed_20_times_then_rerun_gives_the_uninterrupted_files(tmp_path, tiny_pipeline_dir, product_photo):
    generate = [*STUDIO, "generate", "--product", str(product_photo), "--prompt", "a red table", "--model",
                str(tiny_pipeline_dir), "--steps", "4", "--size", "128", "--n", "3"]
    reference = tmp_path / "reference"
    started = time.monotonic()
    subprocess.run([*generate, "--out", str(reference)], check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    expected = pngs(reference)
    assert len(expected) == 3
    out = tmp_path / "out"
    # Files land one by one at the very end (each an atomic rename): what is there is always whole.
    whole = lambda folder: pngs(folder) != {} and all(expected.get(k) == v for k, v in pngs(folder).items())  # noqa: E731
    assert run_kills([*generate, "--out", str(out)], out, duration, whole) == 20
    subprocess.run([*generate, "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert pngs(out) == expected
    assert staging_left(out) == []


def test_campaign_killed_20_times_then_rerun_gives_the_uninterrupted_folder(tmp_path, tiny_pipeline_dir,
                                                                             product_photo):
    campaign = [*STUDIO, "campaign", "--product", str(product_photo), "--model", str(tiny_pipeline_dir), "--steps",
                "2", "--size", "64", "--prompts-per-group", "1"]
    reference = tmp_path / "reference"
    started = time.monotonic()
    subprocess.run([*campaign, "--out", str(reference)], check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    expected = pngs(reference)
    out = tmp_path / "runs" / "campaign"
    # The campaign folder moves into place whole at the end: after a kill it is absent, or complete.
    complete = lambda folder: (folder / "campaign.json").is_file() and pngs(folder) == expected  # noqa: E731
    assert run_kills([*campaign, "--out", str(out)], out, duration, complete) == 20
    subprocess.run([*campaign, "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert pngs(out) == expected and (out / "campaign.json").is_file()
    assert staging_left(out.parent) == []
