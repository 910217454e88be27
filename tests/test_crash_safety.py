"""kill -9 at random moments, then a rerun: nothing half-written survives, no stale staging, no lost click."""

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


def kill_at(command: list[str], seconds: float) -> None:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()


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
    subprocess.run([*simulate, "--out", str(reference)], check=True, capture_output=True, timeout=300)
    out = tmp_path / "runs" / "sim"
    out.parent.mkdir()
    # Kill times spread from start-up (imports) to the last batches and the report.
    for seconds in np.random.default_rng(0).uniform(0.3, 4.0, size=20):
        kill_at([*simulate, "--out", str(out)], seconds)
        assert not out.exists() or not any(out.iterdir())  # the folder is all there or not at all
    subprocess.run([*simulate, "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert staging_left(out.parent) == []
    impressions, clicks, integrity = events(out / "events.db")
    assert integrity == "ok"
    assert (impressions, clicks) == events(reference / "events.db")[:2]  # 0 lost impressions or clicks
    assert len(clicks) > 0
