"""The linear check (reward.scene_ridge): against a known linear truth, a baseline, and its own saved folder."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from reward.data import RewardDataset
from reward.encoders import scene_statistics
from reward.scene_ridge import SceneRidge
from studio.core.artefact import ArtefactError
from studio.core.errors import InputError

N_CREATIVES, IMPRESSIONS = 30, 4000


def _pixels(rng: np.random.Generator, n: int) -> torch.Tensor:
    """Scenes that differ in colour, brightness and texture."""
    colour = rng.uniform(0.1, 0.9, size=(n, 3, 1, 1))
    texture = rng.uniform(0.0, 0.25, size=(n, 1, 1, 1)) * rng.normal(size=(n, 3, 64, 64))
    return torch.tensor(np.clip(colour + texture, 0, 1), dtype=torch.float32)


def _world(tastes: dict[str, np.ndarray], logged: dict[str, range], seed: int = 0):
    """A log whose true CTR is logit-linear in the standardised scene statistics, one taste per group; returns the
    dataset and the true CTR (group -> (N_CREATIVES,))."""
    rng = np.random.default_rng(seed)
    pixels = _pixels(rng, N_CREATIVES)
    stats = scene_statistics(pixels).numpy()
    z = (stats - stats.mean(axis=0)) / stats.std(axis=0)
    truth = {g: 1 / (1 + np.exp(-(np.log(0.04 / 0.96) + z @ taste))) for g, taste in tastes.items()}
    rows = [pd.DataFrame({"product_id": "p", "group_id": g, "creative_id": f"c{i}",
                          "clicked": rng.random(IMPRESSIONS) < truth[g][i]})
            for g in tastes for i in logged[g]]
    creatives = pd.DataFrame({"creative_id": [f"c{i}" for i in range(N_CREATIVES)], "product_id": "p",
                              "category": "beverage", "prompt": ""}).set_index("creative_id")
    logged_ids = sorted({i for g in tastes for i in logged[g]})
    dataset = RewardDataset(creatives.iloc[logged_ids], pixels[logged_ids],
                            {g: np.zeros(8) for g in tastes}, pd.concat(rows, ignore_index=True))
    return dataset, pixels, truth


def _relative_error(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(predicted / true - 1)))


def _taste(rng: np.random.Generator) -> np.ndarray:
    taste = rng.normal(size=11)
    return 0.6 * taste / np.linalg.norm(taste)


def test_it_prices_creatives_it_never_saw_far_better_than_each_groups_logged_mean():
    rng = np.random.default_rng(7)
    tastes = {"0": _taste(rng), "1": _taste(rng)}
    dataset, pixels, truth = _world(tastes, {"0": range(20), "1": range(20)})
    model = SceneRidge().fit(dataset)
    unseen = list(range(20, N_CREATIVES))
    for group in tastes:
        predicted = model.predict_ctr(pixels[unseen], ["p"] * len(unseen), [group] * len(unseen))
        logged_mean = np.full(len(unseen), truth[group][:20].mean())  # the best constant, even with no label noise
        assert _relative_error(predicted, truth[group][unseen]) < 0.3 * _relative_error(logged_mean,
                                                                                      truth[group][unseen])


def test_a_group_with_three_logged_creatives_borrows_the_slopes_of_the_others():
    """Group 1 shares group 0's taste but has three logged creatives, too few for eleven slopes of its own: shrunk
    toward the slopes pooled over both groups, it prices unseen creatives far better than a fit on its rows alone."""
    rng = np.random.default_rng(3)
    taste = _taste(rng)
    dataset, pixels, truth = _world({"0": taste, "1": taste}, {"0": range(20), "1": range(3)})
    alone, _, _ = _world({"1": taste}, {"1": range(3)})
    unseen = list(range(20, N_CREATIVES))

    def error(model: SceneRidge) -> float:
        return _relative_error(model.predict_ctr(pixels[unseen], ["p"] * len(unseen), ["1"] * len(unseen)),
                               truth["1"][unseen])

    assert error(SceneRidge().fit(dataset)) < 0.5 * error(SceneRidge().fit(alone))


def test_its_folder_predicts_the_same_and_bad_calls_are_clear_errors(tmp_path):
    rng = np.random.default_rng(1)
    dataset, pixels, _ = _world({"0": _taste(rng)}, {"0": range(12)})
    model = SceneRidge().fit(dataset)
    folder = model.save_pretrained(tmp_path / "linear")
    again = SceneRidge.from_pretrained(folder)
    assert np.array_equal(again.predict_ctr(pixels, ["p"] * N_CREATIVES, ["0"] * N_CREATIVES),
                          model.predict_ctr(pixels, ["p"] * N_CREATIVES, ["0"] * N_CREATIVES))
    with pytest.raises(InputError, match="no impression of 'p/9'"):
        model.predict_ctr(pixels[:1], ["p"], ["9"])
    with pytest.raises(InputError, match=r"expected pixels \(N, 3, H, W\).*got pixels \(2, 3, 64, 64\), 1 product"):
        model.predict_ctr(pixels[:2], ["p"], ["0", "0"])
    with pytest.raises(InputError, match="not fitted yet"):
        SceneRidge().predict_ctr(pixels[:1], ["p"], ["0"])
    from reward.model import RewardConfig, RewardModel

    RewardModel(RewardConfig(group_ids=["0"])).save_pretrained(tmp_path / "neural")
    with pytest.raises(ArtefactError, match="SceneRidge"):
        SceneRidge.from_pretrained(tmp_path / "neural")
    # saving replaces the whole folder, so a folder holding anything else is refused and keeps what it held
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "events.db").write_bytes(b"a log")
    with pytest.raises(InputError, match="holds something other than a scene ridge"):
        model.save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "events.db").read_bytes() == b"a log"
    config = json.loads((folder / "config.json").read_text())
    del config["groups"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtefactError, match="is damaged .*'groups'"):
        SceneRidge.from_pretrained(folder)
