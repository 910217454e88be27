"""`studio simulate` end to end: creatives, audience, A/B traffic, SQLite log, and the read-out."""

import json

from studio.cli import main
from studio.learning.eventlog import EventLog


def test_simulate_learns_which_creative_each_group_prefers(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "--impressions", "20000", "--seed", "0", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    control, treatment = report["buckets"]["control"], report["buckets"]["treatment"]
    assert control["impressions"] + treatment["impressions"] == 20_000
    assert 0.01 < control["ctr"] < 0.05  # uniform serving sees the simulator's realistic base rate
    # LinUCB beats uniform serving: more clicks, less regret against the oracle.
    assert report["lift"]["lift"] > 0 and report["lift"]["ci_high"] > report["lift"]["ci_low"]
    assert report["regret"]["treatment_cumulative"] < 0.85 * report["regret"]["control_cumulative"]
    oracle = report["oracle"]
    assert oracle["control_expected_ctr"] < oracle["treatment_expected_ctr"] < oracle["oracle_ctr_last_quarter"]
    assert 0.6 < oracle["ratio_last_quarter"] <= 1.0
    # The off-policy estimate from the control log alone brackets what the treatment bucket really got.
    ope = report["off_policy"]
    for method in ("ips", "snips", "dr"):
        low, high = ope[method]["ci"]
        assert low <= ope["realised_treatment_ctr"] <= high
    assert report["groups"]["n_groups"] >= 2 and report["groups"]["adjusted_rand_vs_hidden_segments"] > 0.5

    # Everything is on disk: the event log holds every impression with its decision-time propensity.
    with EventLog(out / "events.db") as log:
        assert log.counts() == {"impressions": 20_000, "clicks": control["clicks"] + treatment["clicks"]}
        logged = log.read()
    assert set(logged.loc[logged["bucket"] == "control", "propensity"].round(6)) == {round(1 / 6, 6)}
    assert set(logged.loc[logged["bucket"] == "treatment", "policy"]) == {"linucb"}
    assert (out / "simulate.png").stat().st_size > 10_000
    assert json.loads((out / "report.json").read_text())["lift"] == report["lift"]
    assert len(list((out / "creatives").rglob("*.png"))) == 4 * 6
    assert (out / "audience" / "model.safetensors").is_file()


def test_simulate_refuses_bad_settings_and_keeps_a_previous_run(tmp_path, capsys):
    assert main(["simulate", "--arms", "1", "--out", str(tmp_path / "a")]) == 2
    assert "argument --arms: must be from 2 to 100, got 1" in capsys.readouterr().err
    out = tmp_path / "b"
    out.mkdir()
    (out / "events.db").write_bytes(b"an earlier experiment")
    assert main(["simulate", "--impressions", "2000", "--out", str(out)]) == 2
    assert "is a folder that is not empty" in capsys.readouterr().err
    assert (out / "events.db").read_bytes() == b"an earlier experiment"
