"""google.protobuf.Value fields hold OpenAI's polymorphic JSON (a string or an
array, say); this reads them as the plain Python value they carry."""

from __future__ import annotations

from google.protobuf import json_format, struct_pb2


def to_python(value: struct_pb2.Value) -> object:
    result: object = json_format.MessageToDict(value)
    return result


def texts(value: object) -> list[str]:
    """The inputs of a prompt or embedding `input`: a string, an array of
    strings, an array of token ids, or an array of token-id arrays."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return []
    if all(isinstance(v, int | float) for v in value):
        return [_tokens(value)]
    return [
        v if isinstance(v, str) else _tokens(v) if isinstance(v, list) else str(v) for v in value
    ]


def _tokens(ids: list[object]) -> str:
    # A Value stores numbers as doubles: token id 5 arrives as 5.0.
    return " ".join(str(int(v)) if isinstance(v, int | float) else str(v) for v in ids)
