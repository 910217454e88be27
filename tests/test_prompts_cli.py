"""`studio prompts suggest` and `studio prompts train` as a user types them."""

import json

import pytest

from studio.cli import main

pytestmark = pytest.mark.slow  # loads models


def test_suggest_takes_tags_and_a_product_title_and_prints_json(capsys):
    code = main(["prompts", "suggest", "--group", "eco,outdoors", "--product", "Green tea bottle", "--n", "3",
                 "--seed", "1", "--required", "natural", "--json"])
    result = json.loads(capsys.readouterr().out)

    assert code == 0
    assert result["brief"]["product"]["title"] == "Green tea bottle"
    assert len(result["prompts"]) == 3 and result["warnings"] == []
    assert all("natural" in p["positive"] and p["negative"] for p in result["prompts"])


def test_suggest_reads_a_group_profile_file_and_prints_a_numbered_list(tmp_path, capsys):
    group = tmp_path / "group.json"
    group.write_text(json.dumps({"group_id": "g7", "summary": "night owls", "top_tags": ["nightlife", "fashion"],
                                 "demographics": {"age": "18-24"}}))

    assert main(["prompts", "suggest", "--group", str(group), "--product", "bag", "--n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1. ") and lines[1].strip().startswith("negative: ") and lines[2].startswith("2. ")


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    latin1 = tmp_path / "group.json"
    latin1.write_bytes('{"top_tags": ["café"]}'.encode("latin-1"))
    cases = [
        (["--group", "eco", "--product", "  "], "neither a title nor a category"),
        (["--product", "bottle"], "give --group"),
        (["--group", str(latin1), "--product", "bottle"], "not UTF-8"),
        (["--group", "missing.json", "--product", "bottle"], "does not exist"),
        (["--group", "eco", "--product", "bottle", "--model", "nobody-has/this-model"], "download it first"),
        (["--group", "eco", "--product", "bottle", "--n", "0"], "argument --n: must be from 1 to 64"),
    ]
    for arguments, message in cases:
        assert main(["prompts", "suggest", *arguments]) == 2
        last_line = capsys.readouterr().err.strip().splitlines()[-1]
        assert last_line.startswith("studio: error: ") and message in last_line


def test_train_writes_a_model_that_suggest_can_use(tmp_path, capsys):
    out = tmp_path / "mini"

    assert main(["prompts", "train", "--out", str(out), "--steps", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and (out / "model.safetensors").is_file()
    main(["prompts", "suggest", "--group", "eco", "--product", "mug", "--model", str(out), "--n", "2", "--json"])
    assert "prompts" in json.loads(capsys.readouterr().out)  # an untrained model may give fewer, never crash
