"""The closed loop's read-out: CTR intervals, relative gains with intervals, the goals, and the plot.

Every "true" CTR here is the simulator's expected click probability of what was served (the oracle), never the
clicks: the loop itself only sees clicks. Intervals are normal approximations (delta method) over impressions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from studio.core.atomic import write_file

Z95 = 1.959964


def mean_ci(values: np.ndarray) -> dict:
    """Mean of per-impression expected CTRs with its 95 % interval."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"mean": float("nan"), "ci": [float("nan"), float("nan")], "n": 0}
    mean = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(values)}


def relative_gain(new: np.ndarray, old: np.ndarray, paired: bool = False) -> dict:
    """mean(new) / mean(old) - 1 with a 95 % delta-method interval.

    paired: `new` and `old` are the same requests served two ways (same users, same order), so the interval uses the
    per-request differences; else the two samples are independent.
    """
    new, old = np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64)
    m_new, m_old = new.mean(), old.mean()
    gain = m_new / m_old - 1.0
    if paired:
        influence = (new - (1.0 + gain) * old) / m_old
        se = influence.std(ddof=1) / np.sqrt(len(new))
    else:
        se = np.sqrt(new.var(ddof=1) / len(new) / m_old**2 + m_new**2 * old.var(ddof=1) / len(old) / m_old**4)
    return {"gain": float(gain), "ci": [float(gain - Z95 * se), float(gain + Z95 * se)], "paired": paired}


def excludes_zero(gain: dict) -> bool:
    return gain["ci"][0] > 0 or gain["ci"][1] < 0


def plot(path: Path, rounds: dict[str, list[dict]]) -> bool:
    """CTR per round with intervals per arm (left) and per audience group for each arm (right); False without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"loop": "-", "prompts_only": "--", "no_loop": ":", "refresh": "-."}
    for arm, records in rounds.items():
        x = [r["round"] for r in records]
        mean = np.array([r["true_ctr"]["mean"] for r in records])
        low = np.array([r["true_ctr"]["ci"][0] for r in records])
        high = np.array([r["true_ctr"]["ci"][1] for r in records])
        left.errorbar(x, mean, yerr=[mean - low, high - mean], label=arm, capsize=3, linestyle=styles.get(arm, "-"))
        for group in sorted(records[0]["true_ctr_by_group"], key=int):
            right.plot(x, [r["true_ctr_by_group"][group]["mean"] for r in records], linestyle=styles.get(arm, "-"),
                       marker="o", markersize=3, color=f"C{int(group) % 10}", label=f"{arm} g{group}")
    left.set(title="True CTR of the served treatment (oracle, 95 % CI)", xlabel="round", ylabel="CTR")
    right.set(title="True CTR per audience group (colour) and arm (line style)", xlabel="round", ylabel="CTR")
    left.legend()
    right.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    try:
        write_file(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    finally:
        plt.close(figure)
    return True
