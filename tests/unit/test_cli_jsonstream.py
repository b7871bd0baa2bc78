"""The JSON-array stream decoder behind `gpu watch`: Envoy's transcoder sends a
server stream as `[{...}` `,{...}` … `]`, split wherever TCP splits it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchboard_cli.jsonstream import JsonArrayDecoder

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def feed_in_pieces(text: str, cuts: list[int]) -> tuple[list[Any], JsonArrayDecoder]:
    decoder = JsonArrayDecoder()
    out: list[Any] = []
    start = 0
    for cut in [*sorted({c % (len(text) + 1) for c in cuts}), len(text)]:
        out.extend(decoder.feed(text[start:cut]))
        start = cut
    return out, decoder


@given(st.lists(values, max_size=6), st.lists(st.integers(min_value=0), max_size=12), st.booleans())
def test_any_array_split_anywhere_decodes_to_its_elements(
    items: list[Any], cuts: list[int], spaced: bool
) -> None:
    separators = (", ", ": ") if spaced else (",", ":")
    text = json.dumps(items, separators=separators)
    if spaced:
        text = text.replace("[", "[\n", 1)
    out, decoder = feed_in_pieces(text, cuts)
    assert out == items
    assert decoder.done


def test_elements_come_out_as_soon_as_they_are_complete() -> None:
    decoder = JsonArrayDecoder()
    assert decoder.feed('[{"a": 1}') == [{"a": 1}]
    assert decoder.feed(',{"b"') == []
    assert decoder.feed(": 2}") == [{"b": 2}]
    assert not decoder.done
    assert decoder.feed("]") == []
    assert decoder.done


def test_a_number_at_the_end_of_a_chunk_waits_for_the_next() -> None:
    decoder = JsonArrayDecoder()
    assert decoder.feed("[12") == []
    assert decoder.feed("3,4") == [123]
    assert decoder.feed("]") == [4]


@pytest.mark.parametrize("text", ['{"a": 1}', '[{"a": 1} {"b": 2}]', "[1] 2"])
def test_text_that_is_not_one_array_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|after the end"):
        JsonArrayDecoder().feed(text)


def test_an_empty_array() -> None:
    decoder = JsonArrayDecoder()
    assert decoder.feed("[ ]") == []
    assert decoder.done
