"""The closed loop (`studio loop`, `studio.jobs.loop`): invariants checked against the event logs, the files and an
independently rebuilt simulator, on a tiny world (a few hundred users, two groups, two rounds)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.cli import main
from studio.core.errors import InputError
from studio.jobs.loop import DEFAULT_ARMS, LoopConfig, resume_loop, run_loop

TINY = ["--rounds", "2", "--seed", "3", "--users", "300", "--groups", "2", "--impressions", "2000", "--initial", "2",
        "--candidates", "4", "--top-k", "1", "--steps", "2", "--lora-steps", "2", "--reward-epochs", "20",
        "--prompt-steps", "3", "--draft-steps", "0"]  # DRaFT has its own tests
SMALL = LoopConfig(rounds=2, seed=3, users=300, groups=2, impressions=2000, initial_per_group=2, candidates_per_group=4,
                   top_k=1, steps=2, lora_steps=2, reward_epochs=20, prompt_steps=3, draft_steps=0)  # TINY in Python


# -- bad input: one clear error, nothing written ----------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [0, -1])
def test_rounds_below_one_are_refused(tmp_path, rounds):
    with pytest.raises(InputError, match="rounds must be a whole number >= 1"):
        run_loop(LoopConfig(rounds=rounds), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("settings", [{"draft_steps": -1}, {"draft_steps": 1.5}, {"draft_learning_rate": 0.0},
                                      {"guidance": -1.0}, {"guidance": float("nan")}, {"guidance": "7.5"}])
def test_bad_draft_and_guidance_settings_are_refused(tmp_path, settings):
    with pytest.raises(InputError, match=next(iter(settings)).split("_")[0]):
        run_loop(LoopConfig(rounds=1, **settings), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unwritable_and_non_empty_out_are_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="not writable|is a file"):
        run_loop(LoopConfig(rounds=1), blocker / "out", progress=False)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_loop(LoopConfig(rounds=1), full, progress=False)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert main(["loop", "--rounds", "0", "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "f").write_text("x")
    assert main(["loop", "--rounds", "1", "--out", str(tmp_path / "f" / "o")]) == 2
    assert main(["loop", "--draft-steps", "-1", "--out", str(tmp_path / "o")]) == 2
    assert main(["loop", "--draft-lr", "0", "--out", str(tmp_path / "o")]) == 2
    assert main(["loop", "--guidance", "nan", "--out", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("studio: error")]
    assert len(errors) == 5 and all("Traceback" not in e for e in errors)
    assert not (tmp_path / "o").exists()


# -- one tiny run through the CLI, checked against what it wrote --------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("loop") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["loop", *TINY, "--out", str(out), "--json"])
    return code, json.loads(stdout.getvalue()), out


def _log(out: Path, arm: str):
    from studio.learning.eventlog import EventLog

    with EventLog(out / arm / "events.db") as log:
        frame = log.read()
    frame["round"] = frame["model_version"].str.rsplit("-", n=1).str[1].astype(int)
    return frame


@pytest.mark.slow
def test_cli_exit_code_json_and_files(run):
    code, report, out = run
    assert code == 0
    assert report["finished"] is True
    assert json.loads((out / "loop.json").read_text()) == report
    assert (out / "loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for arm in ("loop", "prompts_only", "no_loop"):
        assert [r["round"] for r in report["rounds"][arm]] == [0, 1, 2]
        assert [p.name for p in sorted((out / arm).glob("round-*"))] == ["round-0", "round-1", "round-2"]
    assert (out / "loop" / "round-1" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert not (out / "prompts_only" / "round-1" / "lora").exists()
    assert not list(out.rglob(".studio-staging-*"))
    # every creative is painted at the loop's guidance, not at the 1.5 the shipped studio-mini declares for itself
    from studio.imaging.engine import model_guidance
    from studio.imaging.provenance import read_recipe

    assert model_guidance() == 1.5 != LoopConfig().guidance
    painted = sorted(out.glob("*/round-*/creatives/*.png")) + sorted((out / "pool-0").rglob("*.png"))
    assert len(painted) > 10 and {read_recipe(p).guidance for p in painted} == {LoopConfig().guidance}


@pytest.mark.slow
def test_ranker_never_trained_on_the_round_it_ranks(run):
    _, report, out = run
    for arm in ("loop", "prompts_only"):
        log = _log(out, arm)
        for record in report["rounds"][arm][1:]:
            r, ranker = record["round"], record["ranker"]
            earlier = set(log.loc[log["round"] < r, "creative_id"])
            assert ranker["trained_rounds"] == list(range(r))
            assert set(ranker["trained_creatives"]) <= earlier
            ranked = set(ranker["ranked_creatives"])
            assert ranked and all(c.startswith(f"r{r}/") for c in ranked)
            assert not ranked & earlier and ranker["overlap"] == []
            # the saved ranker knows exactly the groups of this world
            saved = json.loads((out / arm / f"round-{r}" / "reward" / "config.json").read_text())
            assert sorted(saved["group_ids"]) == ["0", "1"]


@pytest.mark.slow
def test_the_held_out_checks_are_their_own_models_and_change_nothing_the_loop_does(run, tmp_path, monkeypatch):
    """The predicted gain is read from a linear check (the hacking gap) and from CHECKERS reward models, all fitted
    beside the ranker on the same rounds and saved; they select nothing, so the same run with one checker selects,
    serves, fine-tunes and measures the linear gap exactly the same."""
    from reward.scene_ridge import SceneRidge
    from studio.jobs import loop

    _, report, out = run
    for record in report["rounds"]["loop"][1:]:
        folder = out / "loop" / f"round-{record['round']}"
        assert sorted(p.name for p in folder.glob("reward-check-*")) == [
            *(f"reward-check-{k}" for k in range(loop.CHECKERS)), "reward-check-linear"]
        linear = SceneRidge.from_pretrained(folder / "reward-check-linear")
        assert {key.split("/")[1] for key in linear.groups_} == {"0", "1"}
        hacking = record["hacking"]
        for estimate in ("", "reward_check_", "selection_", "uncapped_"):
            assert hacking[f"{estimate}gap_points"] == pytest.approx(
                100 * (hacking[f"{estimate}predicted_gain"] - hacking["true_gain"]))
    monkeypatch.setattr(loop, "CHECKERS", 1)
    again = run_loop(SMALL, tmp_path / "one-checker", progress=False).to_dict()
    for arm in ("loop", "prompts_only"):
        for mine, theirs in zip(report["rounds"][arm], again["rounds"][arm], strict=True):
            assert mine.get("selected") == theirs.get("selected") and mine["true_ctr"] == theirs["true_ctr"]
            if "hacking" in mine:
                for estimate in ("", "selection_"):
                    assert mine["hacking"][f"{estimate}gap_points"] == theirs["hacking"][f"{estimate}gap_points"]
    assert not (tmp_path / "one-checker" / "loop" / "round-1" / "reward-check-1").exists()


@pytest.mark.slow
def test_new_arms_enter_the_bandit_and_losers_leave(run):
    _, report, out = run
    log = _log(out, "loop")
    pool = set(log.loc[log["round"] == 0, "creative_id"])
    for record in report["rounds"]["loop"][1:]:
        r = record["round"]
        assert sorted(record["added"]) == sorted(record["selected"]) and len(record["selected"]) == 2  # top-1 x 2
        assert sorted(record["removed"]) == sorted(record["retired"])
        pool = (pool - set(record["retired"])) | set(record["selected"])
        served = set(log.loc[log["round"] == r, "creative_id"])
        assert served == pool  # every pool arm is served (uniform control), nothing else
        assert not served & set(record["retired"])
        assert record["pool_size"] == len(pool)
    from studio.jobs.cache import CreativeCache

    with CreativeCache(out / "loop" / "cache") as cache:
        entries = cache.all_creatives()
    assert len(entries) == 4  # 2 groups x top-1 x 2 rounds
    assert {e.key.reward_version for e in entries} == {"loop-round-1", "loop-round-2"}
    retired = {c for record in report["rounds"]["loop"][1:] for c in record["retired"]}
    assert sum(e.status == "retired" for e in entries) == len(retired & {c for rec in report["rounds"]["loop"][1:]
                                                                          for c in rec["selected"]})


@pytest.mark.slow
def test_no_loop_pool_stays_the_round_zero_pool(run):
    _, report, out = run
    log = _log(out, "no_loop")
    pool = set(log.loc[log["round"] == 0, "creative_id"])
    assert len(pool) == 4 and all(c.startswith("r0/") for c in pool)
    for r in (1, 2):
        assert set(log.loc[log["round"] == r, "creative_id"]) == pool
        assert report["rounds"]["no_loop"][r]["added"] == [] and report["rounds"]["no_loop"][r]["removed"] == []
    assert {c["creative_id"] for c in json.loads((out / "no_loop" / "catalogue.json").read_text())} == pool


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    """The `run` fixture's run with --refresh-arm: (report, run folder)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("loop") / "with-refresh"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["loop", *TINY, "--refresh-arm", "--out", str(out), "--json"]) == 0
    return json.loads(stdout.getvalue()), out


@pytest.mark.slow
def test_the_refresh_arm_gets_new_arms_learns_nothing_and_changes_no_other_arm(run, refreshed):
    """--refresh-arm: each round the refresh arm retires losers and adds top-k of the base model's proposals drawn at
    random (in round 1 the very proposals the loop arms rank), with no reward model, LoRA or prompt-model update;
    every other arm serves exactly what it serves without it (the arms share only the traffic)."""
    _, plain, _ = run
    report, out = refreshed
    for arm in ("loop", "prompts_only", "no_loop"):
        assert [(r["true_ctr"], r["added"]) for r in report["rounds"][arm]] == [
            (r["true_ctr"], r["added"]) for r in plain["rounds"][arm]]
    log = _log(out, "refresh")
    pool = set(log.loc[log["round"] == 0, "creative_id"])
    for record in report["rounds"]["refresh"][1:]:
        r = record["round"]
        assert len(record["selected"]) == 2 and all(c.startswith(f"r{r}/") for c in record["selected"])  # top-1 x 2
        assert sorted(record["added"]) == sorted(record["selected"])
        assert sorted(record["removed"]) == sorted(record["retired"]) and record["retired"]
        pool = (pool - set(record["retired"])) | set(record["selected"])
        assert set(log.loc[log["round"] == r, "creative_id"]) == pool
        assert not {"ranker", "hacking", "lora", "prompt_model"} & record.keys()
        assert not (out / "refresh" / f"round-{r}" / "reward").exists()
    ranked = set(report["rounds"]["prompts_only"][1]["ranker"]["ranked_creatives"])
    for creative_id in report["rounds"]["refresh"][1]["selected"]:
        assert creative_id in ranked  # the same proposal, painted with the same seed: the same PNG
        name = creative_id.split("/")[-1]
        [mine] = (out / "refresh" / "round-1" / "creatives").glob(f"r1-{name}-*.png")
        [theirs] = (out / "prompts_only" / "round-1" / "creatives").glob(f"r1-{name}-*.png")
        assert mine.read_bytes() == theirs.read_bytes()
    assert not (out / "refresh" / "prompt-model").exists()
    last = {arm: [r["true_ctr"]["mean"] for r in records] for arm, records in report["rounds"].items()}
    for new, old, base in (("loop", "refresh", last["refresh"][-1]), ("prompts_only", "refresh", last["refresh"][-1]),
                           ("refresh", "no_loop", last["no_loop"][-1]), ("refresh", "round_0", last["refresh"][0])):
        assert report["comparisons"][f"{new}_vs_{old}"]["gain"] == pytest.approx(last[new][-1] / base - 1)


@pytest.mark.slow
def test_a_killed_run_with_the_refresh_arm_resumes_as_if_never_killed(refreshed, tmp_path, monkeypatch):
    """Killed while the refresh arm serves round 2, then resumed: every round of every arm, the refresh arm's random
    picks included, equals the uninterrupted run's."""
    from studio.jobs import loop

    uninterrupted, _ = refreshed
    serve = loop._serve

    def killed_in_round_2(world, arm, round_index, traffic):
        if round_index == 2 and arm.name == "refresh":
            raise KeyboardInterrupt
        return serve(world, arm, round_index, traffic)

    monkeypatch.setattr(loop, "_serve", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_loop(replace(SMALL, arms=DEFAULT_ARMS + ("refresh",)), tmp_path / "run", progress=False)
    monkeypatch.setattr(loop, "_serve", serve)
    resumed = resume_loop(tmp_path / "run", progress=False).to_dict()
    for arm, records in uninterrupted["rounds"].items():
        assert len(resumed["rounds"][arm]) == len(records) == 3
        for mine, theirs in zip(resumed["rounds"][arm], records, strict=True):
            for field in ("true_ctr", "selected", "retired", "added", "removed", "pool_size", "hacking"):
                assert mine.get(field) == theirs.get(field), (arm, mine["round"], field)
    assert _log(tmp_path / "run", "refresh").groupby("round").size().to_dict() == {0: 2000, 1: 2000, 2: 2000}


@pytest.mark.slow
def test_true_ctr_matches_an_independently_rebuilt_oracle(run):
    from studio.sim.simulator import AudienceSimulator

    _, report, out = run
    config = report["config"]
    simulator = AudienceSimulator(n_segments=config["segments"], seed=config["seed"])
    simulator.sample_users(config["users"])
    mask = np.asarray(Image.open(out / "products" / "bottle-0.mask.png")) > 127
    truth = {}
    for arm in ("loop", "prompts_only", "no_loop"):
        index = {}
        for creative in json.loads((out / arm / "catalogue.json").read_text()):
            pixels = np.asarray(Image.open(creative["image"]).convert("RGB"))
            index[creative["creative_id"]] = simulator.add_creative(pixels, mask, creative["category"])
        log = _log(out, arm)
        treated = log[log["bucket"] == "treatment"]
        per_round = []
        for record in report["rounds"][arm]:
            rows = treated[treated["round"] == record["round"]]
            p = simulator.click_probability(rows["user_id"].astype(int).to_numpy(),
                                            rows["creative_id"].map(index).to_numpy())
            assert record["true_ctr"]["mean"] == pytest.approx(p.mean(), rel=1e-9)
            assert record["true_ctr"]["n"] == len(rows)
            per_round.append(p)
        truth[arm] = per_round
    # the same requests reach every arm (paired comparisons), and the paired gain is recomputed from the oracle
    logs = {arm: _log(out, arm) for arm in ("loop", "no_loop")}
    assert (logs["loop"]["user_id"].to_numpy() == logs["no_loop"]["user_id"].to_numpy()).all()
    gain = truth["loop"][2].mean() / truth["no_loop"][2].mean() - 1
    assert report["comparisons"]["loop_vs_no_loop"]["gain"] == pytest.approx(gain, rel=1e-9)
    assert report["comparisons"]["loop_vs_round_0"]["gain"] == pytest.approx(
        truth["loop"][2].mean() / truth["loop"][0].mean() - 1, rel=1e-9)


@pytest.mark.slow
def test_a_killed_run_with_draft_resumes_as_if_never_killed(tmp_path, monkeypatch):
    """DRaFT (on by default) tunes each round's LoRA from seeded noise: a run killed while serving round 2 and
    resumed from the round-1 checkpoint paints, tunes and serves exactly as the uninterrupted run."""
    from studio.jobs import loop

    config = replace(SMALL, draft_steps=2, arms=("loop",))
    uninterrupted = run_loop(config, tmp_path / "whole", progress=False).to_dict()
    serve = loop._serve

    def killed_in_round_2(world, arm, round_index, traffic):
        if round_index == 2:
            raise KeyboardInterrupt
        return serve(world, arm, round_index, traffic)

    monkeypatch.setattr(loop, "_serve", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_loop(config, tmp_path / "run", progress=False)
    monkeypatch.setattr(loop, "_serve", serve)
    resumed = resume_loop(tmp_path / "run", progress=False).to_dict()
    assert [r["lora"]["draft"]["steps"] for r in uninterrupted["rounds"]["loop"][1:]] == [2, 2]
    for mine, theirs in zip(resumed["rounds"]["loop"], uninterrupted["rounds"]["loop"], strict=True):
        for field in ("true_ctr", "selected", "retired", "hacking", "lora"):
            assert mine.get(field) == theirs.get(field), (mine["round"], field)


@pytest.mark.slow
def test_a_killed_run_keeps_every_finished_round_and_resumes_as_if_never_killed(run, tmp_path, monkeypatch):
    """Killed in round 2 after the loop arm finished it: rounds 0-1 of every arm and round 2 of the loop arm stay on
    disk. `studio loop --resume` then removes the round-2 leftovers, runs round 2 again from the round-1
    checkpoint, and every round of every arm equals the uninterrupted run's."""
    from studio.jobs import loop

    _, uninterrupted, _ = run
    serve = loop._serve

    def killed_in_round_2(world, arm, round_index, traffic):
        if round_index == 2 and arm.name == "prompts_only":
            raise KeyboardInterrupt  # what SIGTERM becomes in the CLI
        return serve(world, arm, round_index, traffic)

    monkeypatch.setattr(loop, "_serve", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run_loop(SMALL, tmp_path / "run", progress=False)
    report = json.loads((tmp_path / "run" / "loop.json").read_text())
    assert report["finished"] is False
    assert {arm: [r["round"] for r in records] for arm, records in report["rounds"].items()} == {
        "loop": [0, 1, 2], "prompts_only": [0, 1], "no_loop": [0, 1]}
    assert sorted(p.name for p in (tmp_path / "run" / "prompts_only").glob("round-*")) == ["round-0", "round-1"]
    assert (tmp_path / "run" / "loop" / "round-2" / "round.json").is_file()
    assert not list((tmp_path / "run").rglob(".studio-staging-*"))
    # every creative the finished rounds name is on disk
    for arm in ("loop", "prompts_only"):
        for creative in json.loads((tmp_path / "run" / arm / "catalogue.json").read_text()):
            assert Path(creative["image"]).is_file()

    monkeypatch.setattr(loop, "_serve", serve)
    code = main(["loop", "--resume", str(tmp_path / "run"), "--json"])
    assert code == 0
    resumed = json.loads((tmp_path / "run" / "loop.json").read_text())
    assert resumed["finished"] is True and not (tmp_path / "run" / "checkpoint").exists()
    for arm, records in uninterrupted["rounds"].items():
        assert len(resumed["rounds"][arm]) == len(records) == 3
        for mine, theirs in zip(resumed["rounds"][arm], records, strict=True):
            for field in ("true_ctr", "selected", "retired", "added", "removed", "pool_size", "hacking"):
                assert mine.get(field) == theirs.get(field), (arm, mine["round"], field)
    for arm in ("loop", "prompts_only", "no_loop"):  # the log holds each round once
        log = _log(tmp_path / "run", arm)
        assert log.groupby("round").size().to_dict() == {0: 2000, 1: 2000, 2: 2000}
    with pytest.raises(InputError, match="it finished"):
        loop.resume_loop(tmp_path / "run", progress=False)


@pytest.mark.slow
def test_resuming_a_folder_without_a_checkpoint_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["loop", "--resume", str(tmp_path / "empty")]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    live = tmp_path / "live"  # a run whose loop arm a server served writes no checkpoint: its log cannot be rewound
    live.mkdir()
    (live / "loop.json").write_text(json.dumps({"config": {"serve_url": "http://127.0.0.1:8000"}, "finished": False}))
    assert main(["loop", "--resume", str(live)]) == 2
    assert "served through a live server" in capsys.readouterr().err
    damaged = tmp_path / "damaged" / "checkpoint"  # a checkpoint cut short: one line, and the folder left as it was
    damaged.mkdir(parents=True)
    (damaged / "state.pkl").write_bytes(b"\x80\x05truncated")
    assert main(["loop", "--resume", str(damaged.parent)]) == 2
    assert "its checkpoint is damaged" in capsys.readouterr().err
    assert (damaged / "state.pkl").read_bytes() == b"\x80\x05truncated"


@pytest.mark.slow
def test_a_pool_too_small_to_rank_is_one_clear_error(tmp_path):
    config = LoopConfig(rounds=1, users=100, groups=1, impressions=100, initial_per_group=1, candidates_per_group=1, top_k=1,
                        steps=1)
    with pytest.raises(InputError, match="at least 2 per product"):
        run_loop(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "loop.json").exists()


@pytest.mark.slow
def test_per_group_loras_train_on_their_group_and_paint_its_proposals(tmp_path, monkeypatch):
    """`lora_per_group`: after round r each group has a LoRA fitted on its own selected creatives only, and round
    r+1 paints that group's proposals with it (and no other group's)."""
    from studio.jobs import loop

    painted = []  # (round, group, lora) of every proposal painted
    paint = loop._World.paint

    def recording(self, product, prompt, seed, lora, folder, name):
        if name.startswith("r"):
            round_index, group = name[1:].split("-g")[0], name.split("-g")[1].split("-")[0]
            painted.append((int(round_index), int(group), lora))
        return paint(self, product, prompt, seed, lora, folder, name)

    monkeypatch.setattr(loop._World, "paint", recording)
    config = replace(SMALL, arms=("loop",), lora_per_group=True, draft_steps=1)  # DRaFT tunes each group's LoRA
    report = run_loop(config, tmp_path / "run", progress=False).to_dict()
    rounds = report["rounds"]["loop"]
    selected_by_group = {0: 0, 1: 0}
    for record in rounds[1:]:
        for creative in record["selected"]:
            selected_by_group[int(creative.split("/g")[1].split("-")[0])] += 1
        fits = record["lora"]["per_group"]
        assert {int(g): fit["examples"] for g, fit in fits.items()} == selected_by_group  # its own group's, so far
        assert all(fit["draft"]["steps"] == 1 for fit in fits.values())
        for g in fits:
            assert (tmp_path / "run" / "loop" / f"round-{record['round']}" / f"lora-g{g}").is_dir()
    assert {(g, lora) for r, g, lora in painted if r == 1} == {(0, None), (1, None)}  # no LoRA before round 1's fit
    assert {(g, Path(lora).name, Path(lora).parent.name) for r, g, lora in painted if r == 2} == {
        (0, "lora-g0", "round-1"), (1, "lora-g1", "round-1")}


@pytest.mark.slow
def test_clicked_loras_learn_from_every_logged_creative_above_its_groups_mean(tmp_path, monkeypatch):
    """`lora_examples="clicked"`: each round's LoRA learns from the logged creatives whose smoothed CTR in a group is
    above that group's mean (once per such group), read from the event log of the rounds served so far."""
    from studio.jobs import loop
    from studio.learning.log_dataset import read_impressions

    calls = []  # (the smoothed table it read, what it chose as (creative, group id))
    clicked = loop._clicked

    def recording(world, arm, table):
        chosen = clicked(world, arm, table)
        calls.append((table.copy(), {(c.creative_id, world.group_ids[c.group]) for c in chosen}))
        return chosen

    monkeypatch.setattr(loop, "_clicked", recording)
    config = replace(SMALL, arms=("loop",), lora_examples="clicked")
    report = run_loop(config, tmp_path / "run", progress=False).to_dict()
    log = read_impressions(tmp_path / "run" / "loop" / "events.db")
    assert len(calls) == 2
    for round_index, (table, chosen) in enumerate(calls, start=1):
        served = log[log["model_version"].str.rsplit("-", n=1).str[1].astype(int) < round_index]
        assert set(table["creative_id"]) == set(served["creative_id"])  # every creative served before this round
        expected = set()
        for group_id, rows in table.groupby("group_id"):
            expected |= {(c, group_id) for c, v in zip(rows["creative_id"], rows["label"]) if v > rows["label"].mean()}
        assert chosen == expected
        assert 0 < len(expected) < len(table)
        assert report["rounds"]["loop"][round_index]["lora"]["examples"] == len(expected)



@pytest.mark.slow
def test_draft_tunes_the_lora_through_the_ranker_and_reports_what_the_checkers_see(tmp_path):
    """`draft_steps`: after the LoRA fits its examples, DRaFT ascends the ranker's CTR of the examples' prompts; the
    round records the ranker's and the held-out checkers' predicted CTR of the same cases before and after, and
    the saved LoRA is the tuned one (it differs from the same run's LoRA without DRaFT)."""
    from safetensors.torch import load_file

    config = replace(SMALL, rounds=1, arms=("loop",))
    tuned = run_loop(replace(config, draft_steps=4, draft_learning_rate=1e-2), tmp_path / "tuned",
                     progress=False).to_dict()
    plain = run_loop(config, tmp_path / "plain", progress=False).to_dict()
    draft = tuned["rounds"]["loop"][1]["lora"]["draft"]
    assert draft["steps"] == 4
    assert draft["ranker_ctr"][1] > draft["ranker_ctr"][0]  # it ascends what it is given
    assert draft["ranker_gain"] == pytest.approx(draft["ranker_ctr"][1] / draft["ranker_ctr"][0] - 1)
    assert len(draft["checker_ctr"]) == 2 and draft["checker_gain"] is not None
    assert "draft" not in plain["rounds"]["loop"][1]["lora"]
    weights = [load_file(str(run / "loop" / "round-1" / "lora" / "pytorch_lora_weights.safetensors"))
               for run in (tmp_path / "tuned", tmp_path / "plain")]
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
