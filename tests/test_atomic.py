"""studio.core.atomic: whole files and whole folders, or the old ones untouched."""

import pytest

from studio.core.atomic import replace_folder, write_file


def test_write_file_replaces_content_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    assert write_file(target, lambda path: path.write_text("new")) == target
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_file_creates_the_parent_folder(tmp_path):
    target = tmp_path / "a" / "b" / "file.txt"
    write_file(target, lambda path: path.write_bytes(b"x"))
    assert target.read_bytes() == b"x"


def test_write_file_that_raises_keeps_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")

    def half_write(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_file(target, half_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_replace_folder_swaps_an_existing_folder(tmp_path):
    folder, staging = tmp_path / "model", tmp_path / ".model.staging"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    assert replace_folder(staging, folder) == folder
    assert [p.name for p in folder.iterdir()] == ["new.txt"]
    assert (folder / "new.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging, no .model.old


def test_replace_folder_when_the_target_does_not_exist(tmp_path):
    folder, staging = tmp_path / "model", tmp_path / ".model.staging"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    replace_folder(staging, folder)
    assert (folder / "new.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
