"""The bad-input corpus: every surface a user or an attacker reaches, each case one clear line and nothing half-written.

Each case runs the real `studio` command line in-process (`studio.cli.main`), as a user types it, and asserts:
exit code 2, exactly one line on stderr that starts with ``studio: error:`` and names the problem, and that the
output folder holds nothing (or what it held before).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from studio.cli import main
from studio.imaging.provenance import RECIPE_KEY

pytestmark = pytest.mark.slow  # some cases load (tiny or embedded) models

REWARD_MINI = Path(__file__).resolve().parents[1] / "reward" / "models" / "reward-mini"
PROMPTS_MINI = Path(__file__).resolve().parents[1] / "prompts" / "models" / "prompts-mini"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb(path: Path) -> Path:
    """A valid-looking PNG whose header claims 100,000 x 100,000 pixels (decoding it would need 30 GB)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + png_chunk(b"IEND", b""))
    return path


def with_recipe(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, text)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, pnginfo=info)
    return path


def damaged_copy(source: Path, folder: Path, file: str, how: str) -> Path:
    shutil.copytree(source, folder)
    target = folder / file
    if how == "truncate":
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 3)])
    elif how == "garbage":
        target.write_bytes(b"{ not json")
    elif how == "remove":
        target.unlink()
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory, product_photo, tiny_pipeline_dir) -> dict[str, Path]:
    """Every bad file of the corpus, made once."""
    root = tmp_path_factory.mktemp("bad")
    photo = Image.open(product_photo)
    made: dict[str, Path] = {"photo": product_photo, "tiny": tiny_pipeline_dir}
    made["folder"] = root / "a-folder"
    made["folder"].mkdir()
    made["text"] = root / "notes.txt"
    made["text"].write_text("not an image")
    made["empty"] = root / "empty.png"
    made["empty"].write_bytes(b"")
    made["corrupt"] = root / "corrupt.png"
    made["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    made["truncated"] = root / "truncated.png"
    made["truncated"].write_bytes(product_photo.read_bytes()[:200])
    made["bomb"] = bomb(root / "bomb.png")
    made["mask_small"] = root / "mask-small.png"
    Image.new("L", (10, 10), 255).save(made["mask_small"])
    made["mask_full"] = root / "mask-full.png"
    Image.new("L", photo.size, 255).save(made["mask_full"])
    made["mask_empty"] = root / "mask-empty.png"
    Image.new("L", photo.size, 0).save(made["mask_empty"])
    made["busy"] = root / "busy.png"  # noise everywhere: no plain background to find the product on
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(made["busy"])
    made["no_recipe"] = root / "plain.png"
    Image.new("RGB", (8, 8)).save(made["no_recipe"])
    made["recipe_list"] = with_recipe(root / "recipe-list.png", "[1, 2]")
    made["recipe_null"] = with_recipe(root / "recipe-null.png", "null")
    made["recipe_deep"] = with_recipe(root / "recipe-deep.png", "[" * 100_000 + "]" * 100_000)
    made["recipe_types"] = with_recipe(root / "recipe-types.png", json.dumps({"model": 1, "seed": "x"}))
    made["not_json"] = root / "brief.json"
    made["not_json"].write_text("{ nope")
    made["model_index_damaged"] = damaged_copy(tiny_pipeline_dir, root / "tiny-index", "model_index.json", "garbage")
    made["model_unet_truncated"] = damaged_copy(tiny_pipeline_dir, root / "tiny-unet",
                                                "unet/diffusion_pytorch_model.safetensors", "truncate")
    made["model_no_vae"] = root / "tiny-novae"
    shutil.copytree(tiny_pipeline_dir, made["model_no_vae"])
    shutil.rmtree(made["model_no_vae"] / "vae")
    made["prompts_truncated"] = damaged_copy(PROMPTS_MINI, root / "prompts-trunc", "model.safetensors", "truncate")
    made["prompts_tokenizer"] = damaged_copy(PROMPTS_MINI, root / "prompts-tok", "tokenizer.json", "garbage")
    made["prompts_config"] = damaged_copy(PROMPTS_MINI, root / "prompts-config", "config.json", "garbage")
    made["reward_truncated"] = damaged_copy(REWARD_MINI, root / "reward-trunc", "model.safetensors", "truncate")
    made["reward_config"] = damaged_copy(REWARD_MINI, root / "reward-config", "config.json", "garbage")
    made["reward_audience"] = damaged_copy(REWARD_MINI, root / "reward-aud", "audience/config.json", "garbage")
    made["audience_missing"] = root / "no-audience"
    made["audience_missing"].mkdir()
    made["audience_damaged"] = REWARD_MINI / "audience"  # replaced below by a damaged copy
    made["audience_damaged"] = damaged_copy(REWARD_MINI / "audience", root / "aud-damaged", "model.safetensors",
                                            "truncate")
    made["log_text"] = root / "log-text" / "events.db"
    made["log_text"].parent.mkdir()
    made["log_text"].write_bytes(b"this is not sqlite" * 100)
    made["log_foreign"] = root / "log-foreign" / "events.db"
    made["log_foreign"].parent.mkdir()
    connection = sqlite3.connect(made["log_foreign"])
    connection.execute("CREATE TABLE impressions (id INTEGER, colour TEXT)")
    connection.commit()
    connection.close()
    made["log_empty"] = root / "log-empty" / "events.db"
    made["log_empty"].parent.mkdir()
    made["log_damaged"] = root / "log-damaged" / "events.db"
    made["log_damaged"].parent.mkdir()
    from studio.learning.eventlog import EventLog

    EventLog(made["log_empty"]).close()
    with EventLog(made["log_damaged"]) as log:
        log.log_impressions([{"impression_id": f"i{i}", "user_id": "u", "product_id": "p", "creative_id": "c",
                              "arm": 0, "propensity": 1.0, "group_id": 0} for i in range(2000)])
    raw = bytearray(made["log_damaged"].read_bytes())
    raw[4096: 4 * 4096] = b"\xff" * (3 * 4096)  # scribble over the first data pages
    made["log_damaged"].write_bytes(bytes(raw))
    made["a_file"] = root / "a-file"
    made["a_file"].write_text("in the way")
    return made


# (id, arguments with {placeholders} for files, text the one-line error must contain)
GENERATE = ["generate", "--product", "{photo}", "--prompt", "a red table", "--model", "{tiny}", "--steps", "1",
            "--size", "64", "--n", "1", "--out", "{out}"]


def generate(*changes: str, drop: tuple[str, ...] = ()) -> list[str]:
    """The GENERATE command with options replaced or added (`changes` as flag, value pairs) or dropped."""
    arguments = list(GENERATE)
    for flag in drop:
        index = arguments.index(flag)
        del arguments[index:index + 2]
    for flag, value in zip(changes[::2], changes[1::2]):
        if flag in arguments:
            arguments[arguments.index(flag) + 1] = value
        else:
            arguments[-2:-2] = [flag, value]
    return arguments


CAMPAIGN = ["campaign", "--product", "{photo}", "--model", "{tiny}", "--steps", "1", "--size", "64",
            "--prompts-per-group", "1", "--out", "{out}"]

TQDM_BAR = re.compile(r"^(creatives|campaign|batch): +\d+%\|")

CASES = [
    # files
    ("generate-missing-photo", generate("--product", "{missing}"), "no such file"),
    ("generate-photo-is-folder", generate("--product", "{folder}"), "a-folder"),
    ("generate-photo-text", generate("--product", "{text}"), "notes.txt"),
    ("generate-photo-empty", generate("--product", "{empty}"), "empty.png"),
    ("generate-photo-corrupt", generate("--product", "{corrupt}"), "corrupt.png"),
    ("generate-photo-truncated", generate("--product", "{truncated}"), "truncated.png"),
    ("generate-photo-bomb", generate("--product", "{bomb}"), "decompression bomb"),
    ("generate-busy-photo-no-mask", generate("--product", "{busy}"), "mask"),
    # masks
    ("generate-mask-missing", generate("--mask", "{missing}"), "no such file"),
    ("generate-mask-wrong-size", generate("--mask", "{mask_small}"), "mask"),
    ("generate-mask-everything", generate("--mask", "{mask_full}"), "mask"),
    ("generate-mask-nothing", generate("--mask", "{mask_empty}"), "mask"),
    ("generate-mask-corrupt", generate("--mask", "{corrupt}"), "corrupt.png"),
    # prompts
    ("generate-prompt-empty", generate("--prompt", ""), "prompt"),
    ("generate-prompt-blank", generate("--prompt", "   "), "prompt"),
    ("generate-prompt-too-long", generate("--prompt", "a red table " * 60), "prompt"),
    ("generate-negative-too-long", generate("--negative-prompt", "blurry " * 120), "negative prompt"),
    # numbers
    ("generate-seed-2-64", generate("--seed", str(2**64)), "argument --seed"),
    ("generate-seed-negative", generate("--seed", "-1"), "argument --seed"),
    ("generate-seed-text", generate("--seed", "lucky"), "argument --seed"),
    ("generate-size-huge", generate("--size", "100000"), "argument --size"),
    ("generate-size-tiny", generate("--size", "10"), "argument --size"),
    ("generate-n-zero", generate("--n", "0"), "argument --n"),
    ("generate-n-huge", generate("--n", "100000"), "argument --n"),
    ("generate-steps-zero", generate("--steps", "0"), "argument --steps"),
    ("generate-guidance-nan", generate("--guidance", "nan"), "argument --guidance"),
    ("generate-guidance-inf", generate("--guidance", "inf"), "argument --guidance"),
    ("generate-strength-zero", generate("--strength", "0"), "argument --strength"),
    ("generate-lora-scale-nan", generate("--lora-scale", "nan"), "argument --lora-scale"),
    ("generate-extend-huge", generate("--mode", "outpaint", "--extend", "left=2000000"), "extend"),
    ("generate-extend-garbage", generate("--mode", "outpaint", "--extend", "sideways"), "extension"),
    ("generate-extend-negative", generate("--mode", "outpaint", "--extend", "left=-5"), "extension"),
    ("generate-placement-unknown", generate("--placement", "3:1"), "argument --placement"),
    ("generate-scheduler-unknown", generate("--scheduler", "warp"), "scheduler"),
    ("generate-device-missing", generate("--device", "cuda"), "cuda"),
    ("generate-unknown-option", generate("--colour", "red"), "unrecognized arguments"),
    # models
    ("generate-model-missing", generate("--model", "{missing}"), "missing"),
    ("generate-model-index-damaged", generate("--model", "{model_index_damaged}"), "tiny-index"),
    ("generate-model-unet-truncated", generate("--model", "{model_unet_truncated}"), "tiny-unet"),
    ("generate-model-no-vae", generate("--model", "{model_no_vae}"), "vae"),
    ("generate-lora-missing", generate("--lora", "{missing}"), "LoRA"),
    ("generate-lora-not-weights", generate("--lora", "{text}"), "LoRA"),
    # output folders
    ("generate-out-is-file", generate("--out", "{a_file}"), "a-file"),
    # inspect: recipe chunks
    ("inspect-missing", ["inspect", "{missing}"], "no such file"),
    ("inspect-text", ["inspect", "{text}"], "not a readable image"),
    ("inspect-no-recipe", ["inspect", "{no_recipe}"], "no Creative Studio recipe"),
    ("inspect-recipe-list", ["inspect", "{recipe_list}"], "recipe chunk is damaged"),
    ("inspect-recipe-null", ["inspect", "{recipe_null}"], "recipe chunk is damaged"),
    ("inspect-recipe-deep", ["inspect", "{recipe_deep}"], "recipe chunk is damaged"),
    ("inspect-recipe-types", ["inspect", "{recipe_types}"], "recipe chunk is damaged"),
    ("inspect-bomb", ["inspect", "{bomb}"], "not a readable image"),
    # prompts
    ("prompts-n-zero", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--n", "0"], "--n"),
    ("prompts-n-huge", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--n", "100000"], "--n"),
    ("prompts-brief-missing", ["prompts", "suggest", "--brief", "{missing}"], "missing"),
    ("prompts-brief-not-json", ["prompts", "suggest", "--brief", "{not_json}"], "brief.json"),
    ("prompts-temperature-nan", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--temperature",
                                 "nan"], "temperature"),
    ("prompts-top-p-two", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--top-p", "2"], "top"),
    ("prompts-model-missing", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--model",
                               "{missing}"], "missing"),
    ("prompts-model-truncated", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--model",
                                 "{prompts_truncated}"], "prompts-trunc"),
    ("prompts-model-tokenizer", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--model",
                                 "{prompts_tokenizer}"], "prompts-tok"),
    ("prompts-model-config", ["prompts", "suggest", "--group", "eco", "--product", "bottle", "--model",
                              "{prompts_config}"], "prompts-config"),
    # reward
    ("reward-score-model-missing", ["reward", "score", "{photo}", "--model", "{missing}"], "missing"),
    ("reward-score-model-truncated", ["reward", "score", "{photo}", "--model", "{reward_truncated}"], "reward-trunc"),
    ("reward-score-model-config", ["reward", "score", "{photo}", "--model", "{reward_config}"], "reward-config"),
    ("reward-score-only-bad-images", ["reward", "score", "{corrupt}", "--model", "reward-mini"], "corrupt.png"),
    ("reward-train-log-missing", ["reward", "train", "--log", "{missing}", "--out", "{out}"], "missing"),
    ("reward-train-log-text", ["reward", "train", "--log", "{log_text}", "--out", "{out}"], "events.db"),
    ("reward-train-log-foreign", ["reward", "train", "--log", "{log_foreign}", "--out", "{out}"], "not a studio event"),
    ("reward-train-log-empty", ["reward", "train", "--log", "{log_empty}", "--out", "{out}"], "no impressions"),
    ("reward-train-log-damaged", ["reward", "train", "--log", "{log_damaged}", "--out", "{out}"], "events.db"),
    ("reward-eval-log-missing", ["reward", "eval", "--log", "{missing}", "--model", "reward-mini"], "missing"),
    # campaign
    ("campaign-photo-corrupt", [*CAMPAIGN[:2], "{corrupt}", *CAMPAIGN[3:]], "corrupt.png"),
    ("campaign-out-is-file", [*CAMPAIGN[:-1], "{a_file}"], "a-file"),
    ("campaign-groups-missing", [*CAMPAIGN, "--groups", "{audience_missing}"], "no-audience"),
    ("campaign-groups-damaged", [*CAMPAIGN, "--groups", "{audience_damaged}"], "aud-damaged"),
    ("campaign-reward-damaged", [*CAMPAIGN, "--reward-model", "{reward_truncated}"], "reward-trunc"),
    ("campaign-reward-audience-damaged", [*CAMPAIGN, "--reward-model", "{reward_audience}"], "reward-aud"),
    ("campaign-prompt-model-damaged", [*CAMPAIGN, "--prompt-model", "{prompts_truncated}"], "prompts-trunc"),
    ("campaign-seed-2-64", [*CAMPAIGN, "--seed", str(2**64)], "argument --seed"),
    # simulate
    ("simulate-impressions-huge", ["simulate", "--impressions", str(10**11), "--out", "{out}"], "--impressions"),
    ("simulate-alpha-nan", ["simulate", "--alpha", "nan", "--out", "{out}"], "--alpha"),
    ("simulate-out-is-file", ["simulate", "--impressions", "1000", "--out", "{a_file}"], "a-file"),
    ("simulate-users-huge", ["simulate", "--users", str(10**9), "--out", "{out}"], "--users"),
]


@pytest.mark.parametrize(("arguments", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_clear_line_and_leaves_nothing(files, tmp_path, capsys, arguments, expected):
    out = tmp_path / "out"
    names = {**files, "missing": tmp_path / "missing", "out": out}
    argv = [argument.format(**names) for argument in arguments]
    before = files["a_file"].read_text()

    code = main(argv)

    captured = capsys.readouterr()
    # The studio's own progress bars may have started before the error; everything else is the one error line.
    lines = [line for line in captured.err.strip().splitlines() if line and not TQDM_BAR.search(line)]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("studio: error: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))  # nothing half-written
    assert files["a_file"].read_text() == before


def test_inspect_prints_a_hostile_recipe_without_terminal_escapes(tmp_path, capsys):
    from studio.imaging.provenance import Recipe, save_png

    recipe = Recipe(model="m", weights_hash=None, prompt="red\x1b[2J\x1b]0;owned\x07 table", negative_prompt="",
                    seed=1, steps=2, scheduler="s", guidance=7.5, strength=1.0, mode="background", placement="1:1",
                    random_init=False)
    path = save_png(Image.new("RGB", (8, 8)), recipe, tmp_path / "hostile.png", keep=None)
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\x07" not in shown
    assert "red\\x1b[2J" in shown  # escaped, still readable


def test_the_python_api_checks_seeds_and_counts(product_photo, tiny_pipeline_dir, tmp_path):
    from studio.core.errors import InputError
    from studio.imaging.creatives import CreativeSettings, generate_creatives

    settings = CreativeSettings(size=64, steps=1)
    for bad in ({"seed": 2**64}, {"seed": -1}, {"n": 0}, {"n": 10**6}, {"seed": 2**63 - 1, "n": 2}):
        with pytest.raises(InputError):
            generate_creatives(product_photo, "a red table", settings=settings, engine=str(tiny_pipeline_dir),
                               out_dir=tmp_path / "out", **{"n": 1, "seed": 0, **bad})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
