"""The audience simulator: a world with known click probabilities, and the pixel measurements it reacts to."""

import numpy as np
import pytest
from PIL import Image

from studio.core.errors import InputError
from studio.sim.simulator import AudienceSimulator, measure_background


def flat(rgb, size=32):
    return np.full((size, size, 3), rgb, dtype=np.uint8)


def centre_mask(size=32):
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[8:24, 10:22] = 255
    return mask


def striped(rgb, size=32, period=4):
    image = flat(rgb, size).astype(int)
    image[:, (np.arange(size) // (period // 2)) % 2 == 0] += 60
    return np.clip(image, 0, 255).astype(np.uint8)


def world(seed=0, n_users=3000):
    sim = AudienceSimulator(n_segments=4, seed=seed)
    users = sim.sample_users(n_users)
    for rgb in [(200, 30, 35), (35, 85, 205), (45, 150, 65), (242, 242, 238), (25, 25, 28), (235, 210, 45)]:
        sim.add_creative(flat(rgb), centre_mask(), "beverage")
        sim.add_creative(striped(rgb), centre_mask(), "footwear")
    return sim, users


def test_measurements_follow_colour_brightness_and_texture():
    mask = centre_mask()
    red, blue = measure_background(flat((200, 30, 35)), mask), measure_background(flat((35, 85, 205)), mask)
    white, black = measure_background(flat((242, 242, 238)), mask), measure_background(flat((25, 25, 28)), mask)
    grey = measure_background(flat((128, 128, 128)), mask)
    assert red["warmth"] > 0.5 > -0.5 > blue["warmth"]
    assert white["brightness"] > 0.9 and black["brightness"] < 0.15
    assert red["saturation"] > 0.8 and grey["saturation"] == 0.0
    assert red["hue"] < 10 or red["hue"] > 350
    assert abs(measure_background(flat((0, 200, 0)), mask)["hue"] - 120) < 1
    assert abs(blue["hue"] - 225) < 15  # a slightly purple-ish blue
    assert grey["texture"] == 0.0 and measure_background(striped((128, 128, 128)), mask)["texture"] > 0.1


def test_only_background_pixels_count():
    mask = centre_mask()
    plain = flat((35, 85, 205))
    painted = plain.copy()
    painted[mask > 0] = (255, 255, 0)  # a loud product must not change the background measurement
    assert measure_background(painted, mask) == measure_background(plain, mask)
    assert measure_background(Image.fromarray(painted), Image.fromarray(mask)) == measure_background(plain, mask)
    assert measure_background(painted, None)["brightness"] > measure_background(plain, None)["brightness"]


def test_base_click_rate_is_realistic():
    sim, users = world()
    expected = sim.expected_ctr(users["user_id"])
    assert expected.shape == (3000, 12)
    assert 0.01 <= expected.mean() <= 0.05
    # Clicks are Bernoulli draws with those probabilities.
    repeats = np.repeat(users["user_id"].to_numpy(), 12)
    creatives = np.tile(np.arange(12), 3000)
    clicks = np.concatenate([sim.click(repeats, creatives) for _ in range(5)])
    assert abs(clicks.mean() - expected.mean()) < 0.003


def test_same_seed_same_world():
    (a, users_a), (b, users_b) = world(seed=7), world(seed=7)
    assert users_a.equals(users_b)
    ids = users_a["user_id"].to_numpy()
    creatives = ids % 12
    assert np.array_equal(a.click(ids, creatives), b.click(ids, creatives))
    _, users_c = world(seed=8)
    assert not users_a.equals(users_c)


def test_studio_sees_features_but_the_oracle_knows_segments():
    sim, users = world()
    assert list(users.columns) == ["user_id", "age", "region", "device", "activity", "interests"]
    segments = sim.segment_of(users["user_id"])
    assert set(np.unique(segments)) == {0, 1, 2, 3}
    # Segments disagree about the best creative, so personalising is worth something.
    assert len(set(sim.segment_ctr().argmax(axis=1))) > 1
    ids = users["user_id"].to_numpy()[:50]
    candidates = np.tile(np.arange(12), (50, 1))
    best, probability = sim.best_creative(ids, candidates)
    np.testing.assert_array_equal(best, sim.expected_ctr(ids).argmax(axis=1))
    np.testing.assert_allclose(probability, sim.expected_ctr(ids).max(axis=1))


def test_bad_inputs_are_refused():
    sim, _ = world(n_users=10)
    with pytest.raises(InputError, match="same size"):
        measure_background(flat((1, 2, 3)), np.zeros((5, 5)))
    with pytest.raises(InputError, match="no background"):
        measure_background(flat((1, 2, 3)), np.full((32, 32), 255, dtype=np.uint8))
    with pytest.raises(InputError, match="RGB"):
        measure_background(np.zeros((32, 32)), None)
    with pytest.raises(InputError, match="unknown product category"):
        sim.add_creative(flat((1, 2, 3)), None, "spaceships")
    with pytest.raises(InputError, match="user ids"):
        sim.click(np.array([10]), np.array([0]))
    with pytest.raises(InputError, match="one creative per user"):
        sim.click(np.array([0, 1]), np.array([0]))
    with pytest.raises(InputError, match="n_segments"):
        AudienceSimulator(n_segments=0)


def test_backdrop_features_read_the_frame_band_and_refuse_bad_input():
    """The serving bandit's creative features: the outer band of a PNG, standardised; a product in the centre does
    not move them, a different backdrop does; corrupt bytes and a band of half the side are one clear error."""
    import io

    from studio.imaging.descriptors import backdrop_features

    def png(backdrop, centre):
        pixels = np.full((64, 64, 3), backdrop, dtype=np.uint8)
        pixels[20:44, 20:44] = centre
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    red_with_blue, red_with_green = png((200, 30, 35), (35, 85, 205)), png((200, 30, 35), (45, 150, 65))
    np.testing.assert_allclose(backdrop_features(red_with_blue), backdrop_features(red_with_green))
    assert backdrop_features(red_with_blue)[0] > backdrop_features(png((35, 85, 205), (35, 85, 205)))[0]  # warmth
    with pytest.raises(InputError, match="cannot read the creative's image"):
        backdrop_features(b"\x89PNG not really")
    with pytest.raises(InputError, match="band must be"):
        backdrop_features(red_with_blue, band=0.5)
