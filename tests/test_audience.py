"""Audience clustering: users in, groups and their profiles out."""

import numpy as np
import pandas as pd
import pytest

from studio.learning.audience import AudienceClustering, GroupProfile
from studio.core.errors import InputError, ModelNotFoundError

PLANTED = [  # (age, region, device, interests) of three well-separated audiences
    (24, "north", "mobile", "beach|travel|fitness"),
    (45, "south", "desktop", "luxury|fashion"),
    (66, "east", "tablet", "home|coffee|minimal"),
]


def planted_users(n_per_group: int = 150, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for group, (age, region, device, tags) in enumerate(PLANTED):
        for i in range(n_per_group):
            rows.append({"user_id": f"u{group}-{i}", "age": age + rng.normal(0, 3), "region": region,
                         "device": device, "activity": rng.gamma(2.0, 2.0), "interests": tags, "truth": group})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_k_by_silhouette_finds_the_planted_groups():
    users = planted_users()
    clustering = AudienceClustering(k_range=(2, 6), seed=0).fit(users.drop(columns="truth"))
    assert clustering.n_groups_ == 3
    assert set(clustering.silhouette_) == {2, 3, 4, 5, 6}
    # Each found group is exactly one planted group.
    crosstab = pd.crosstab(clustering.labels_, users["truth"])
    assert (crosstab.gt(0).sum(axis=1) == 1).all() and (crosstab.gt(0).sum(axis=0) == 1).all()


def test_profiles_describe_each_group_for_the_prompt_model():
    clustering = AudienceClustering(n_groups=3, seed=0).fit(planted_users().drop(columns="truth"))
    by_region = {p.demographics["region"]["value"]: p for p in clustering.profiles_}
    north = by_region["north"]
    assert isinstance(north, GroupProfile) and north.size == 150
    assert set(north.top_tags) == {"beach", "travel", "fitness"}
    assert abs(north.demographics["age"] - 24) < 2
    assert "beach" in north.summary and "north" in north.summary
    assert set(north.to_dict()) == {"group_id", "summary", "top_tags", "demographics"}
    assert north.vector.shape == (clustering.cluster_centers_.shape[1],)
    assert clustering.group_vectors().shape == (3, clustering.cluster_centers_.shape[1])


def test_same_seed_same_groups_and_list_tags_equal_pipe_tags():
    users = planted_users().drop(columns="truth")
    first = AudienceClustering(seed=3).fit(users)
    second = AudienceClustering(seed=3).fit(users)
    assert np.array_equal(first.labels_, second.labels_)
    np.testing.assert_array_equal(first.cluster_centers_, second.cluster_centers_)
    as_lists = users.assign(interests=users["interests"].str.split("|"))
    np.testing.assert_array_equal(AudienceClustering(seed=3).fit(as_lists).labels_, first.labels_)


def test_unknown_users_and_unseen_categories_get_a_group(tmp_path):
    clustering = AudienceClustering(n_groups=3, seed=0).fit(planted_users().drop(columns="truth"))
    newcomers = pd.DataFrame({
        "age": [25.0, 67.0], "region": ["atlantis", "east"], "device": ["smartwatch", "tablet"],
        "activity": [3.0, 1.0], "interests": ["beach|travel|knitting", None],
    })
    groups = clustering.predict(newcomers)
    by_region = {p.demographics["region"]["value"]: p.group_id for p in clustering.profiles_}
    assert groups[0] == by_region["north"] and groups[1] == by_region["east"]
    # A table without the interest column still works (no interests known).
    assert clustering.predict(newcomers.drop(columns="interests")).shape == (2,)


def test_csv_file_and_save_load_round_trip(tmp_path):
    users = planted_users().drop(columns="truth")
    users.to_csv(tmp_path / "users.csv", index=False)
    clustering = AudienceClustering(seed=0).fit(tmp_path / "users.csv")
    clustering.save_pretrained(tmp_path / "clustering")
    assert sorted(p.name for p in (tmp_path / "clustering").iterdir()) == ["config.json", "model.safetensors"]
    loaded = AudienceClustering.from_pretrained(tmp_path / "clustering")
    np.testing.assert_array_equal(loaded.predict(users), clustering.predict(users))
    np.testing.assert_allclose(loaded.transform(users), clustering.transform(users))
    assert [p.to_dict() for p in loaded.profiles_] == [p.to_dict() for p in clustering.profiles_]


def test_parquet_with_list_tags_reads_like_the_dataframe(tmp_path):
    users = planted_users().drop(columns="truth")
    users.assign(interests=users["interests"].str.split("|")).to_parquet(tmp_path / "users.parquet")
    from_file = AudienceClustering(n_groups=3, seed=0).fit(tmp_path / "users.parquet")
    np.testing.assert_array_equal(from_file.labels_, AudienceClustering(n_groups=3, seed=0).fit(users).labels_)


def test_cluster_on_chosen_columns_only(tmp_path):
    users = planted_users().drop(columns="truth")
    clustering = AudienceClustering(n_groups=3, seed=0, columns=["age", "region"]).fit(users)
    assert clustering.numeric_ == ["age"] and clustering.categorical_ == ["region"]
    assert set(clustering.profiles_[0].demographics) == {"age", "region"}
    clustering.save_pretrained(tmp_path / "clustering")
    loaded = AudienceClustering.from_pretrained(tmp_path / "clustering")
    np.testing.assert_array_equal(loaded.predict(users.drop(columns=["device", "activity"])), clustering.labels_)
    with pytest.raises(InputError, match="requested columns"):
        AudienceClustering(columns=["shoe_size"]).fit(users)


def test_bad_inputs_say_what_was_expected(tmp_path):
    users = planted_users().drop(columns="truth")
    with pytest.raises(InputError, match="does not exist"):
        AudienceClustering().fit(tmp_path / "missing.csv")
    (tmp_path / "users.txt").write_text("age\n1\n")
    with pytest.raises(InputError, match="expected .csv or .parquet"):
        AudienceClustering().fit(tmp_path / "users.txt")
    with pytest.raises(InputError, match="k_range"):
        AudienceClustering(k_range=(2, 1000)).fit(users)
    with pytest.raises(InputError, match="not fitted"):
        AudienceClustering().predict(users)
    fitted = AudienceClustering(n_groups=2).fit(users)
    with pytest.raises(InputError, match="lacks columns"):
        fitted.predict(users.drop(columns="age"))
    with pytest.raises(InputError, match="missing values"):
        fitted.predict(users.assign(age=np.nan))
    with pytest.raises(ModelNotFoundError):
        AudienceClustering.from_pretrained(tmp_path / "nowhere")
