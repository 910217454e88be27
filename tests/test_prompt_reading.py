"""What studio-mini reads of a marketer's sentence: its own words, colour names as its colours, nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from studio.core.errors import InputError
from studio.core.vocabulary import COLOURS
from studio.imaging.creatives import CreativeSettings, generate_creatives
from studio.imaging.engine import load_engine
from studio.imaging.prompt_reading import colour_word, read_colours, read_prompt
from studio.imaging.provenance import read_recipe
from studio.sim.renderer import render_product

KNOWN = {"a", "teal", "red", "marble", "plain", "in", "on", "bright", "soft", "light", ","}


def knows(word: str) -> bool:
    return word.lower() in KNOWN


def test_unknown_words_are_left_out_and_known_ones_kept_in_order():
    reading = read_prompt("a teal marble table in a bright kitchen, soft light", knows)
    assert reading.text == "a teal marble in a bright, soft light"
    assert reading.dropped == ("table", "kitchen")
    assert reading.replaced == {}
    assert reading.record() == {"prompt_read": reading.text, "prompt_replaced": {},
                                "prompt_dropped": ["table", "kitchen"]}


def test_a_prompt_of_known_words_is_read_as_typed():
    prompt = "a  red marble ,soft light"  # odd spacing survives: the model reads exactly what was typed
    reading = read_prompt(prompt, knows)
    assert reading.text == prompt and not reading.changed and reading.record() == {}


def test_colour_names_become_the_vocabulary_colour_unless_the_prompt_names_one():
    reading = read_prompt("a crimson plain backdrop", knows)
    assert reading.text == "a red plain" and reading.replaced == {"crimson": "red"}
    # an explicit vocabulary colour wins: the colour name is left out, not turned into a second colour
    explicit = read_prompt("a teal crimson plain backdrop", knows)
    assert explicit.text == "a teal plain" and explicit.replaced == {} and "crimson" in explicit.dropped
    # the first colour name wins: "velvet" (an xkcd purple) after "crimson" is not a second colour
    first = read_prompt("a crimson velvet backdrop", knows)
    assert first.text == "a red" and first.replaced == {"crimson": "red"} and first.dropped == ("velvet", "backdrop")


def test_closed_colours_change_only_the_first_colour_name_and_keep_every_other_word():
    reading = read_colours("our gift on a crimson velvet table in a sunlit kitchen")
    assert reading.text == "our gift on a red velvet table in a sunlit kitchen"
    assert reading.replaced == {"crimson": "red"} and reading.dropped == ()
    # a vocabulary colour in the prompt wins, and then nothing changes
    assert not read_colours("a teal crimson table by the sea").changed


@pytest.mark.parametrize(("name", "expected"), [
    ("crimson", "red"), ("scarlet", "red"), ("emerald", "green"), ("ivory", "white"), ("charcoal", "black"),
    ("tangerine", "orange"), ("mustard", "yellow"), ("chocolate", "brown"), ("turquoise", "teal"), ("Azure", "blue"),
])
def test_colour_names_map_to_the_palette_colour_nearest_their_xkcd_colour(name, expected):
    assert colour_word(name) == expected


def test_words_that_name_no_hue_map_to_nothing():
    for word in ("kitchen", "table", "dark", "pale", "the"):
        assert colour_word(word) is None
    assert set(COLOURS) >= {colour_word(name) for name in ("navy", "lilac", "olive", "rust")}


@pytest.mark.slow
def test_studio_mini_paints_a_colour_name_as_its_own_colour_and_records_the_reading(tmp_path):
    engine = load_engine(device="cpu")
    assert engine.closed_colours and not engine.closed_vocabulary  # the shipped v2
    product = render_product("box", seed=3, size=128)
    settings = CreativeSettings(size=64, steps=4)

    def paint(prompt: str, name: str):
        creative = generate_creatives(product, prompt, settings=settings, n=1, seed=5, engine=engine,
                                      out_dir=tmp_path, name=name, progress=False)[0]
        return np.asarray(creative.image), read_recipe(creative.path)

    named, named_recipe = paint("our gift on a crimson marble table in a sunlit kitchen, soft light", "named")
    plain, plain_recipe = paint("our gift on a red marble table in a sunlit kitchen, soft light", "plain")
    assert np.array_equal(named, plain)  # the same text reached the model
    assert named_recipe.prompt_reading == {"prompt_read": "our gift on a red marble table in a sunlit kitchen, soft light",
                                           "prompt_replaced": {"crimson": "red"}, "prompt_dropped": []}
    assert plain_recipe.prompt_reading is None  # read as typed
    engine.check_prompt("our gift, sunlit kitchen!")  # every word is read: no colour is fine


@pytest.mark.slow
def test_a_closed_vocabulary_model_paints_a_sentence_as_the_words_it_knows(tiny_pipeline_dir, tmp_path):
    """studio-mini v1's reading (`"vocabulary": "closed"`): unknown words are left out, colour names mapped."""
    import shutil

    from studio.core.artefact import PIPELINE_CLASS, PIPELINE_FORMAT, write_manifest

    folder = tmp_path / "v1-like"
    shutil.copytree(tiny_pipeline_dir, folder)
    write_manifest(folder, PIPELINE_CLASS, PIPELINE_FORMAT, name="studio-mini", vocabulary="closed")
    engine = load_engine(str(folder), device="cpu")
    assert engine.closed_vocabulary
    known = engine.read_prompt("on a red marble table in a, soft light")  # the tiny tokenizer holds these whole
    reading = engine.read_prompt("our gift on a crimson marble table in a sunlit kitchen, soft light")
    assert not known.changed and reading.text == known.text
    assert reading.record() == {"prompt_read": known.text, "prompt_replaced": {"crimson": "red"},
                                "prompt_dropped": ["our", "gift", "sunlit", "kitchen"]}
    with pytest.raises(InputError, match="no word this model knows"):
        engine.check_prompt("our gift, sunlit kitchen!")
    # a negative prompt may be read as nothing: it is optional
    engine.check_prompt("distorted gibberish", name="negative prompt", allow_empty=True)


@pytest.mark.slow
def test_an_open_vocabulary_model_reads_every_prompt_as_typed(tiny_pipeline_dir):
    engine = load_engine(str(tiny_pipeline_dir), device="cpu")
    assert not engine.closed_vocabulary and not engine.closed_colours
    prompt = "our gift on a crimson table in a sunlit kitchen"
    assert engine.read_prompt(prompt).text == prompt


@pytest.mark.slow
def test_a_model_with_closed_colours_reads_colour_names_as_its_colours(tiny_pipeline_dir, tmp_path):
    import shutil

    from studio.core.artefact import PIPELINE_CLASS, PIPELINE_FORMAT, write_manifest

    folder = tmp_path / "v2-like"
    shutil.copytree(tiny_pipeline_dir, folder)
    write_manifest(folder, PIPELINE_CLASS, PIPELINE_FORMAT, name="studio-mini", version=2,
                   vocabulary="closed-colours")
    engine = load_engine(str(folder), device="cpu")
    assert engine.closed_colours and not engine.closed_vocabulary
    assert engine.read_prompt("our gift on a crimson table").text == "our gift on a red table"
