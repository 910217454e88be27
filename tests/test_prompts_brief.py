"""Briefs: built from a group profile and a product, round-tripped through JSON, and refused when malformed."""

import json

import pytest

from prompts.brief import MAX_BRIEF_BYTES, Brief, group_profile_from_tags
from studio.core.errors import InputError

GROUP_PROFILE = {  # what the audience module's GroupProfile.to_dict() gives
    "group_id": "g3",
    "summary": "25-34, urban, into eco and outdoors",
    "top_tags": ["eco", "outdoors", "coffee", "tech"],
    "demographics": {"age": "25-34", "region": "urban"},
}


def make_brief(**overrides) -> dict:
    data = {
        "audience": GROUP_PROFILE,
        "product": {"title": "Green tea bottle 500 ml", "category": "beverage", "attributes": {"colour": "green"}},
        "brand": {"required_words": ["natural"], "banned_words": ["cheap"], "tone": "calm"},
        "placement": {"aspect_ratio": "16:9"},
    }
    data.update(overrides)
    return data


def test_a_brief_reads_a_group_profile_and_round_trips_through_json():
    brief = Brief.from_dict(make_brief())

    assert brief.audience.group_id == "g3"
    assert brief.audience.known_tags() == ("eco", "outdoors", "coffee")  # strongest three in the vocabulary
    assert brief.product.kind() == "bottle" and brief.product.colour() == "green"
    assert brief.placement.shape() == "landscape"
    assert Brief.from_json(brief.to_json()) == brief
    assert Brief.from_dict(json.loads(brief.to_json(indent=2))).to_dict() == brief.to_dict()


def test_weighted_tags_and_minimal_briefs_are_accepted():
    weighted = dict(GROUP_PROFILE, top_tags=[["luxury", 0.9], ["fashion", 0.4]])
    brief = Brief.from_dict({"group": weighted, "product": "leather bag"})

    assert brief.audience.top_tags == ("luxury", "fashion")
    assert brief.product.kind() == "bag"
    assert brief.brand.tone == "neutral" and brief.placement.shape() == "square"
    assert Brief.from_dict({"audience": group_profile_from_tags("beach, travel"), "product": {"category": "kitchen"}}
                           ).product.kind() == "mug"


def test_demographic_shares_from_the_audience_module_become_text():
    profile = dict(GROUP_PROFILE, demographics={"region": {"value": "west", "share": 0.4}, "age": 31})

    assert Brief.from_dict(make_brief(audience=profile)).audience.demographics == {"region": "west (40%)", "age": "31"}


def test_a_brief_loads_from_a_file(tmp_path):
    path = tmp_path / "brief.json"
    path.write_text(json.dumps(make_brief()), encoding="utf-8")

    assert Brief.load(path).product.title == "Green tea bottle 500 ml"


@pytest.mark.parametrize("data, message", [
    ({}, "empty"),
    ({"product": {"title": "mug"}}, "missing 'audience'"),
    ({"audience": GROUP_PROFILE}, "missing 'product'"),
    (make_brief(product={"title": "  ", "category": ""}), "neither a title nor a category"),
    (make_brief(audience={"group_id": "g1", "summary": "", "top_tags": []}), "at least one interest tag"),
    (make_brief(product={"title": "x" * 5000}), "keep it under"),
    (make_brief(audience=dict(GROUP_PROFILE, summary="y" * (MAX_BRIEF_BYTES + 10))), "bytes"),
    (make_brief(product={"title": 42}), "must be text"),
    (make_brief(placement={"aspect_ratio": "wide"}), "aspect_ratio"),
    (make_brief(brand={"required_words": ["bold"], "banned_words": ["bold"]}), "both required and banned"),
    (make_brief(product={"title": "bad \udcff text"}), "UTF-8"),
])
def test_malformed_briefs_get_one_clear_error(data, message):
    with pytest.raises(InputError, match=message):
        Brief.from_dict(data)


def test_non_utf8_empty_and_broken_json_are_refused(tmp_path):
    latin1 = json.dumps(make_brief(product={"title": "Café mug"}), ensure_ascii=False).encode("latin-1")
    with pytest.raises(InputError, match="UTF-8"):
        Brief.from_json(latin1)
    with pytest.raises(InputError, match="empty"):
        Brief.from_json("   ")
    with pytest.raises(InputError, match="not valid JSON"):
        Brief.from_json("{'audience': ")
    with pytest.raises(InputError, match="does not exist"):
        Brief.load(tmp_path / "missing.json")
    with pytest.raises(InputError, match="no interest tags"):
        group_profile_from_tags(" , ")
