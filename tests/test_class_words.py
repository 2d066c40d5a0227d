"""Issue 22, item 7: a class name given as a word suggests the classes whose names hold that word first
(``cat`` -> the cats, not 'crate', 'oxcart', 'castle'), then names spelled alike."""

from __future__ import annotations

import pytest
import torch

from labutils.errors import ClassError
from labutils.models import class_names, resolve_class, similar_classes


@pytest.mark.parametrize("query", ["cat", "Cat", "cats", " cat "])
def test_a_word_suggests_the_classes_named_with_it(query):
    with pytest.raises(ClassError) as caught:
        resolve_class(query)
    hint = str(caught.value).split("did you mean ")[1]
    suggested = [name.strip("'") for name in hint.split("?")[0].split(", ")]
    assert suggested[:4] == ["tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"], suggested
    assert not {"crate", "oxcart", "castle", "carton", "cab", "catamaran"} & set(suggested)


def test_whole_words_only_then_spelling():
    names = class_names()
    assert [names[i] for i in similar_classes("mountain dog", names)][:2] == [
        "Greater Swiss Mountain dog", "Bernese mountain dog"]
    assert "polecat" not in [names[i] for i in similar_classes("cat", names)]  # a word inside a word is no match
    assert [names[i] for i in similar_classes("tiger kat", names)][0] == "tiger cat"  # no word match: spelling
    assert [names[i] for i in similar_classes("catamarn", names)][0] == "catamaran"
    assert similar_classes("   ", names) == []


def test_a_classes_tensor_on_the_meta_device_is_one_class_error():
    """Issue 22, item 6: it was a raw NotImplementedError ("Cannot copy out of meta tensor")."""
    from labutils.inputs import class_targets

    with pytest.raises(ClassError, match="meta device"):
        class_targets(torch.tensor([[1, 2]], device="meta"), 1)
    assert class_targets(torch.tensor([[1, 2]]), 1).tolist() == [[1, 2]]
