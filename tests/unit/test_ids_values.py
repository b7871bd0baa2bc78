"""uuid7 identifiers, and reading google.protobuf.Value fields as plain Python."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from google.protobuf import json_format, struct_pb2

from switchboard_common.ids import uuid7
from switchboard_common.values import texts, to_python


def test_uuid7_version_and_variant() -> None:
    for _ in range(100):
        value = uuid.UUID(uuid7())
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_uuid7_is_canonical_lowercase_text() -> None:
    text = uuid7()
    assert text == str(uuid.UUID(text))
    assert len(text) == 36


def test_uuid7_leads_with_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7())
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_uuid7_ids_from_different_milliseconds_sort_by_time() -> None:
    ids = []
    for _ in range(5):
        ids.append(uuid7())
        # Only the millisecond orders ids; within one millisecond the rest is random.
        deadline = time.monotonic() + 0.002
        while time.monotonic() < deadline:
            pass
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_uuid7_unique_over_10k() -> None:
    assert len({uuid7() for _ in range(10_000)}) == 10_000


def _value(data: object) -> struct_pb2.Value:
    return json_format.Parse(json.dumps(data), struct_pb2.Value())


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("hi", "hi"),
        (None, None),
        (True, True),
        (1.5, 1.5),
        (["a", 1], ["a", 1.0]),
        ({"type": "text", "text": "x"}, {"type": "text", "text": "x"}),
        ([[1, 2], []], [[1.0, 2.0], []]),
    ],
)
def test_to_python(data: object, expected: object) -> None:
    assert to_python(_value(data)) == expected


def test_to_python_of_string_field_set_directly() -> None:
    value = struct_pb2.Value()
    value.string_value = "héllo"
    assert to_python(value) == "héllo"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("one", ["one"], id="string"),
        pytest.param("", [""], id="empty-string"),
        pytest.param(["a", "b"], ["a", "b"], id="strings"),
        pytest.param([1, 2, 3], ["1 2 3"], id="tokens"),
        pytest.param([1.0, 2.0], ["1 2"], id="tokens-as-floats"),
        pytest.param([[1, 2], [3]], ["1 2", "3"], id="token-arrays"),
        pytest.param(None, [], id="none"),
        pytest.param(5, [], id="number"),
        pytest.param({"a": "b"}, [], id="object"),
    ],
)
def test_texts(value: object, expected: list[str]) -> None:
    assert texts(value) == expected


def test_texts_of_a_proto_value_string() -> None:
    assert texts(to_python(_value("prompt"))) == ["prompt"]
    assert texts(to_python(_value([5, 6]))) == ["5 6"]


def test_texts_of_proto_token_arrays_are_integers() -> None:
    assert texts(to_python(_value([[1, 2], [3]]))) == ["1 2", "3"]
