"""Audience clustering: users in, groups and their profiles out."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file, save_file
from sklearn.utils.estimator_checks import parametrize_with_checks

from studio.core.artefact import ArtefactError
from studio.core.errors import InputError, ModelNotFoundError
from studio.learning.audience import AudienceClustering, GroupProfile, read_table
from studio.learning.bandit import LinUCB
from studio.learning.estimator import NotFittedError

SHIPPED = Path(__file__).resolve().parents[1] / "reward" / "models" / "reward-mini" / "audience"

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
    clustering = AudienceClustering(seed=0).fit(read_table(tmp_path / "users.csv"))
    np.testing.assert_array_equal(clustering.labels_, AudienceClustering(seed=0).fit(users).labels_)
    clustering.save_pretrained(tmp_path / "clustering")
    assert sorted(p.name for p in (tmp_path / "clustering").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "clustering" / "config.json").read_text())
    assert config["class_name"] == "AudienceClustering" and config["format_version"] == 1
    loaded = AudienceClustering.from_pretrained(tmp_path / "clustering")
    np.testing.assert_array_equal(loaded.predict(users), clustering.labels_)
    np.testing.assert_array_equal(loaded.transform(users), clustering.transform(users))
    assert loaded.get_params() == clustering.get_params() and loaded.n_features_in_ == 6
    assert loaded.silhouette_ == clustering.silhouette_ and loaded.n_groups_ == 3
    assert [p.to_dict() for p in loaded.profiles_] == [p.to_dict() for p in clustering.profiles_]
    assert [p.size for p in loaded.profiles_] == [150, 150, 150]


def test_parquet_with_list_tags_reads_like_the_dataframe(tmp_path):
    users = planted_users().drop(columns="truth")
    users.assign(interests=users["interests"].str.split("|")).to_parquet(tmp_path / "users.parquet")
    from_file = AudienceClustering(n_groups=3, seed=0).fit(read_table(tmp_path / "users.parquet"))
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
        read_table(tmp_path / "missing.csv")
    (tmp_path / "users.txt").write_text("age\n1\n")
    with pytest.raises(InputError, match="expected .csv or .parquet"):
        read_table(tmp_path / "users.txt")
    with pytest.raises(InputError, match="takes a table, not the path .*users.csv.*; read it with read_table"):
        AudienceClustering().fit(tmp_path / "users.csv")
    with pytest.raises(InputError, match=r"k_range=\(2, 1000\) must be .* got n_samples=450"):
        AudienceClustering(k_range=(2, 1000)).fit(users)
    with pytest.raises(InputError, match="n_groups=0 must be"):
        AudienceClustering(n_groups=0).fit(users)
    with pytest.raises(NotFittedError, match="not fitted"):
        AudienceClustering().predict(users)
    fitted = AudienceClustering(n_groups=2).fit(users)
    with pytest.raises(InputError, match="lacks columns"):
        fitted.predict(users.drop(columns="age"))
    with pytest.raises(InputError, match="'age' has NaN or infinite values"):
        fitted.predict(users.assign(age=np.nan))
    with pytest.raises(InputError, match="'age' has NaN or infinite values"):
        AudienceClustering(n_groups=2).fit(users.assign(age=np.inf))
    with pytest.raises(InputError, match="'age' must hold numbers"):
        fitted.predict(users.assign(age="old"))
    with pytest.raises(ModelNotFoundError, match="nowhere: the folder does not exist"):
        AudienceClustering.from_pretrained(tmp_path / "nowhere")


# ------------------------------------------------------------- the shipped clustering and the artefact format
def test_the_shipped_clustering_predicts_the_groups_it_did_before_it_was_resaved():
    clustering = AudienceClustering.from_pretrained(SHIPPED)
    users = pd.DataFrame({
        "age": [19, 23, 31, 38, 45, 52, 60, 67, 74, 29, 41, 56],
        "region": ["north", "south", "east", "west", "central", "north", "south", "east", "west", "central",
                   "atlantis", "north"],
        "device": ["mobile", "mobile", "desktop", "tablet", "desktop", "tablet", "mobile", "desktop", "tablet",
                   "mobile", "desktop", "smartwatch"],
    })
    # Groups the shipped folder gave these users in its earlier, unversioned layout (the artefact was re-saved in
    # the studio format; its model.safetensors is byte for byte the same).
    assert clustering.predict(users).tolist() == [0, 2, 0, 2, 1, 1, 3, 3, 3, 2, 1, 1]
    assert [p.size for p in clustering.profiles_] == [4335, 5345, 3645, 6675]
    assert clustering.profiles_[0].top_tags == ["travel", "nightlife", "beach"]


def planted_folder(tmp_path) -> Path:
    folder = tmp_path / "clustering"
    AudienceClustering(n_groups=3, seed=0).fit(planted_users().drop(columns="truth")).save_pretrained(folder)
    return folder


def load_error(folder) -> str:
    with pytest.raises(ArtefactError) as raised:
        AudienceClustering.from_pretrained(folder)
    message = str(raised.value)
    assert "\n" not in message and str(folder) in message
    return message


def test_a_damaged_config_is_one_clear_error(tmp_path):
    folder = planted_folder(tmp_path)
    (folder / "config.json").write_text('{"class_name": "AudienceClustering", "format_version": 1, "n_gro')
    assert "config.json is damaged" in load_error(folder)


def test_a_config_missing_a_field_is_one_clear_error(tmp_path):
    folder = planted_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["categories_"]
    (folder / "config.json").write_text(json.dumps(config))
    assert "config.json is damaged (missing 'categories_')" in load_error(folder)


def test_a_truncated_weights_file_is_one_clear_error(tmp_path):
    folder = planted_folder(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:100])
    assert "model.safetensors is damaged" in load_error(folder)


def test_nan_in_the_centres_is_refused_at_load(tmp_path):
    folder = planted_folder(tmp_path)
    arrays = load_file(folder / "model.safetensors")
    arrays["cluster_centers"][2, 1] = np.inf
    save_file(arrays, folder / "model.safetensors")
    assert "cluster_centers holds NaN or infinite values" in load_error(folder)


def test_centres_that_do_not_match_the_encoding_are_refused(tmp_path):
    folder = planted_folder(tmp_path)
    arrays = load_file(folder / "model.safetensors")
    save_file({**arrays, "cluster_centers": arrays["cluster_centers"][:, :-1]}, folder / "model.safetensors")
    # age, activity + 3 regions + 3 devices + 8 tags = 16 encoded features
    assert "cluster_centers has shape (3, 15), expected (3, 16)" in load_error(folder)


def test_a_bandit_folder_is_not_a_clustering(tmp_path):
    bandit = LinUCB()
    bandit.add_arm("c0")
    bandit.save_pretrained(tmp_path / "bandit")
    assert "holds a LinUCB folder, not an AudienceClustering folder" in load_error(tmp_path / "bandit")


def test_the_old_unversioned_layout_is_refused(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "audience_clustering", "n_groups": 3}))
    assert "holds a foreign folder, not an AudienceClustering folder" in load_error(folder)


def test_a_newer_format_is_refused_with_what_to_do(tmp_path):
    folder = planted_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 2}))
    message = load_error(folder)
    assert "written by a newer studio (AudienceClustering format 2; this one reads up to 1)" in message


# ------------------------------------------------------------- the scikit-learn contract
def test_init_only_stores_hyper_parameters():
    clustering = AudienceClustering(n_groups=-5, k_range="bad")  # checked by fit, as scikit-learn does
    assert vars(clustering) == clustering.get_params()
    with pytest.raises(InputError, match="n_groups=-5 must be"):
        clustering.fit(planted_users())


def test_a_plain_array_is_a_table_of_numeric_columns():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.3, size=(40, 2)), rng.normal(5, 0.3, size=(40, 2))])
    clustering = AudienceClustering(k_range=(2, 4)).fit(X)
    assert clustering.numeric_ == ["x0", "x1"] and clustering.n_groups_ == 2 and clustering.n_features_in_ == 2
    assert len(set(clustering.labels_[:40])) == 1 and set(clustering.labels_[:40]).isdisjoint(clustering.labels_[40:])
    np.testing.assert_array_equal(clustering.predict(X.tolist()), clustering.labels_)
    with pytest.raises(InputError, match="X has 3 features, but AudienceClustering is expecting 2"):
        clustering.predict(np.ones((1, 3)))


# The checks fit tables of 10 users; the default k_range (2, 10) needs more users than its high end.
@parametrize_with_checks([AudienceClustering(k_range=(2, 4))])
def test_sklearn_checks(estimator, check):
    check(estimator)
