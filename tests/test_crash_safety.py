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


def test_simulate_killed_20_times_then_rerun_loses_nothing(tmp_path):
    simulate = [*STUDIO, "simulate", "--impressions", "20000", "--seed", "3"]
    reference = tmp_path / "reference"
    started = time.monotonic()
    subprocess.run([*simulate, "--out", str(reference)], check=True, capture_output=True, timeout=300)
    duration = time.monotonic() - started
    out = tmp_path / "runs" / "sim"
    out.parent.mkdir()
    # Kill times spread from start-up (imports) to the last batches and the report; a run that beats its kill time
    # must be complete, and is removed so the next trial starts afresh.
    kills, rng = 0, np.random.default_rng(0)
    for _ in range(40):
        kills += kill_at([*simulate, "--out", str(out)], rng.uniform(0.05, 1.0) * duration)
        if out.exists() and any(out.iterdir()):  # the run got its folder into place: then all of it is there
            assert (out / "report.json").is_file()
            assert events(out / "events.db")[:2] == events(reference / "events.db")[:2]
            shutil.rmtree(out)
        if kills == 20:
            break
    assert kills == 20
    subprocess.run([*simulate, "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert staging_left(out.parent) == []
    impressions, clicks, integrity = events(out / "events.db")
    assert integrity == "ok"
    assert (impressions, clicks) == events(reference / "events.db")[:2]  # 0 lost impressions or clicks
    assert len(clicks) > 0
