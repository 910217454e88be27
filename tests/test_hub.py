"""studio.core.hub.resolve_model: folders, shipped names and hub ids, and one fast line for what is not here."""

import time

import pytest
from huggingface_hub import HfApi, constants

from studio.core import hub
from studio.core.errors import InputError, ModelNotFoundError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty local hub cache; `cached(id, *files)` puts a snapshot of `id` holding `files` in it."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def cached(repo_id: str, *files: str):
        repo = tmp_path / "hub-cache" / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("a" * 40)
        snapshot = repo / "snapshots" / ("a" * 40)
        snapshot.mkdir(parents=True)
        for name in files:
            (snapshot / name).write_text("{}")
        return snapshot

    return cached


@pytest.fixture()
def no_network(monkeypatch):
    """Fail the test if the hub is asked anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked while offline")

    monkeypatch.setattr(HfApi, "model_info", refuse)


def test_folders_and_shipped_names_resolve_to_themselves(tmp_path):
    (tmp_path / "shipped" / "mini").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")

    assert hub.resolve_model(tmp_path / "mine", needs="config.json") == hub.ResolvedModel(str(tmp_path / "mine"), True)
    assert hub.resolve_model("mini", shipped=tmp_path / "shipped").path_or_id == str(tmp_path / "shipped" / "mini")
    assert hub.resolve_model(None, default="mini", shipped=tmp_path / "shipped").is_local


def test_missing_or_wrong_folders_say_so_in_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError, match="generator folder .* does not exist; check the path"):
        hub.resolve_model(tmp_path / "nowhere", kind="generator")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"not a generator folder \(no model_index.json in it\)"):
        hub.resolve_model(tmp_path / "empty", kind="generator", needs="model_index.json")
    with pytest.raises(ModelNotFoundError, match="train one"):
        hub.resolve_model("not-shipped", hub_ids=False, how_to_get="train one")
    with pytest.raises(InputError, match="empty"):
        hub.resolve_model("  ")


def test_a_cached_hub_id_is_its_snapshot_folder_and_never_asks_the_hub(cache, no_network, monkeypatch):
    snapshot = cache("owner/model", "config.json")

    for offline in ("1", ""):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        assert hub.resolve_model("owner/model", needs="config.json") == hub.ResolvedModel(str(snapshot), True)


def test_a_missing_hub_id_offline_fails_fast_with_how_to_get_it(cache, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache("owner/partial")  # an interrupted download: no config.json, so not usable offline either
    for name in ("nobody-has/this-model", "owner/partial"):
        started = time.perf_counter()
        with pytest.raises(ModelNotFoundError) as caught:
            hub.resolve_model(name, kind="prompt model", needs="config.json")
        message = str(caught.value)
        assert time.perf_counter() - started < 1.0
        assert "\n" not in message and f"prompt model {name!r} is not available locally" in message
        assert f"`hf download {name}`" in message


def test_a_missing_hub_id_online_is_one_request_and_one_line(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def unreachable(self, repo_id, timeout=None, **kwargs):
        asked.append(repo_id)
        raise OSError("[Errno -2] Name or service not known\nretrying")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(ModelNotFoundError) as caught:
        hub.resolve_model("nobody-has/this-model", kind="generator", how_to_get="pass --model FOLDER")
    assert asked == ["nobody-has/this-model"]
    assert str(caught.value) == ("generator 'nobody-has/this-model' is not available locally and the hub did not give "
                                 "it ([Errno -2] Name or service not known); pass --model FOLDER")

    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, timeout=None, **kwargs: object())
    assert hub.resolve_model("someone/public-model") == hub.ResolvedModel("someone/public-model", False)


def test_load_failures_name_the_folder_or_the_download(tmp_path):
    local = hub.load_failed("prompt model", hub.ResolvedModel(str(tmp_path), True), ValueError("bad json\nmore"))
    remote = hub.load_failed("prompt model", hub.ResolvedModel("owner/x", False), OSError("timed out"))

    assert str(local).startswith(f"{tmp_path} could not be loaded as a prompt model (bad json); ")
    assert isinstance(remote, ModelNotFoundError) and "`hf download owner/x`" in str(remote)
