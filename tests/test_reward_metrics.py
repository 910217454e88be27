"""Metrics and labels of the reward model, checked on cases whose answers are known by hand."""

import numpy as np
import pandas as pd
import pytest

from reward import metrics
from reward.data import BetaPrior, aggregate, fit_beta_prior, label, load_pixels
from studio.core.errors import InputError


def test_auc_and_log_loss_of_perfect_and_useless_scores():
    clicked = np.array([0, 0, 1, 1])
    assert metrics.auc(clicked, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.auc(clicked, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.auc(clicked, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert metrics.log_loss(clicked, [0.5] * 4) == pytest.approx(np.log(2))
    with pytest.raises(InputError, match="with and without clicks"):
        metrics.auc([0, 0, 0], [0.1, 0.2, 0.3])


def test_a_calibrated_predictor_has_small_ece_and_a_shifted_one_does_not():
    rng = np.random.default_rng(0)
    ctr = rng.uniform(0.01, 0.08, size=200_000)
    clicked = rng.random(ctr.size) < ctr
    assert metrics.expected_calibration_error(clicked, ctr) < 0.002
    assert metrics.expected_calibration_error(clicked, ctr * 2) == pytest.approx(ctr.mean(), rel=0.05)


def test_ranking_metrics_within_lists():
    lists = np.array(["a", "a", "a", "b", "b"])
    ctr = np.array([0.01, 0.02, 0.04, 0.03, 0.01])
    # a perfect ranking: NDCG 1, top-1 picks 0.04 and 0.03 against means 0.07/3 and 0.02
    assert metrics.ndcg(lists, ctr, ctr) == pytest.approx(1.0)
    expected = (0.04 + 0.03) / (0.07 / 3 + 0.02) - 1
    assert metrics.top_k_uplift(lists, ctr, ctr, k=1) == pytest.approx(expected)
    # the reversed ranking picks the worst of each list: a negative uplift
    assert metrics.top_k_uplift(lists, -ctr, ctr, k=1) == pytest.approx((0.01 + 0.01) / (0.07 / 3 + 0.02) - 1)
    assert metrics.ndcg(lists, -ctr, ctr) < 1.0
    # k = all creatives: no uplift at all
    assert metrics.top_k_uplift(lists, ctr, ctr, k=3) == pytest.approx(0.0)


def test_method_of_moments_recovers_a_known_beta_prior():
    rng = np.random.default_rng(1)
    true = BetaPrior(alpha=3.0, beta=97.0)  # mean CTR 3 %, prior weight 100 impressions
    rates = rng.beta(true.alpha, true.beta, size=4_000)
    impressions = rng.integers(200, 2_000, size=rates.size)
    clicks = rng.binomial(impressions, rates)
    fitted = fit_beta_prior(clicks, impressions)
    assert fitted.mean == pytest.approx(0.03, rel=0.03)
    assert fitted.alpha + fitted.beta == pytest.approx(100.0, rel=0.15)


def test_smoothed_labels_shrink_small_samples_towards_the_mean():
    impressions = pd.DataFrame({
        "product_id": ["p"] * 1010, "group_id": ["g"] * 1010,
        "creative_id": ["few"] * 10 + ["many"] * 1000,
        "clicked": [1] + [0] * 9 + [1] * 50 + [0] * 950,
    })
    table = label(aggregate(impressions), BetaPrior(alpha=3.0, beta=97.0))
    few, many = table.set_index("creative_id").loc[["few", "many"], "label"]
    assert few == pytest.approx(4 / 110)  # raw 10 % is mostly noise: pulled close to 3 %
    assert many == pytest.approx(53 / 1100)  # raw 5 % on 1000 impressions barely moves


def test_logs_without_impressions_or_clicks_are_refused():
    with pytest.raises(InputError, match="no impressions"):
        fit_beta_prior(np.array([]), np.array([]))
    with pytest.raises(InputError, match="no clicks"):
        fit_beta_prior(np.array([0, 0]), np.array([100, 50]))
    with pytest.raises(InputError, match="missing"):
        aggregate(pd.DataFrame({"creative_id": ["a"]}))


def test_a_corrupt_image_is_reported_not_fatal(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 35)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    pixels, errors = load_pixels([tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "missing.png"], size=16)
    assert pixels.shape == (3, 3, 16, 16)
    assert errors[0] is None and "not a readable image" in errors[1] and errors[2] is not None
    assert pixels[0, 0].mean().item() == pytest.approx(200 / 255, abs=1e-3)


def test_normalised_auc_by_hand():
    # 4 impressions, 2 clicked. The model orders (0.9 click, 0.6 no, 0.4 click, 0.1 no): of the 4 (click, no-click)
    # pairs it ranks 3 right -> AUC 0.75. The oracle ranks all 4 right -> AUC 1. Normalised: (0.75 - .5) / (1 - .5).
    clicked = np.array([1, 0, 1, 0])
    model_auc = metrics.auc(clicked, np.array([0.9, 0.6, 0.4, 0.1]))
    oracle_auc = metrics.auc(clicked, np.array([0.8, 0.3, 0.7, 0.2]))
    assert (model_auc, oracle_auc) == (0.75, 1.0)
    assert metrics.normalised_auc(model_auc, oracle_auc) == pytest.approx(0.5)
    assert metrics.normalised_auc(0.5, 0.7) == 0.0  # a random scorer
    assert metrics.normalised_auc(0.6, 0.7) == pytest.approx(0.5)
    with pytest.raises(InputError, match="better than chance"):
        metrics.normalised_auc(0.6, 0.5)


def test_a_constant_scorer_has_no_uplift():
    # ties share the top slot, so scoring every creative alike is a random pick: uplift 0, not the first creative's
    lists = np.array(["a", "a", "a", "b", "b"])
    ctr = np.array([0.01, 0.02, 0.06, 0.02, 0.04])
    assert metrics.top_k_uplift(lists, np.zeros(5), ctr, k=1) == pytest.approx(0.0)
    # two tied at the top of list a share it: (0.02 + 0.06) / 2 for a, 0.04 for b
    scores = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    assert metrics.top_k_uplift(lists, scores, ctr, k=1) == pytest.approx((0.04 + 0.04) / (0.03 + 0.03) - 1)
