"""The usage sink's ClickHouse format schema (formats/usage_row.proto) against
the UsageEvent it decodes, and the sink's framing of payloads, without a
ClickHouse: the schema is compiled here with protoc, and what the sink sends is
read back with it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_tools import protoc  # type: ignore[import-untyped]

from switchboard.usage.v1 import events_pb2, usage_pb2
from switchboard_usage import sink

# UsageEvent fields the stored row does not carry (ClickHouse skips them).
NOT_STORED = {"pricing_version", "publish_time"}


@pytest.fixture(scope="module")
def envelope(tmp_path_factory: pytest.TempPathFactory) -> Descriptor:
    out = tmp_path_factory.mktemp("schema") / "usage_row.binpb"
    schema = sink.FORMAT.schema
    assert (
        protoc.main(["protoc", f"-I{schema.parent}", f"--descriptor_set_out={out}", schema.name])
        == 0
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindMessageTypeByName("Envelope")


def _message(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def _compatible(theirs: Descriptor, ours: Descriptor, path: str, skip: set[str]) -> None:
    """Every field of theirs (the published message) is in ours under the same
    number, name and wire type: enums as int32, messages field by field."""
    for field in theirs.fields:
        if field.name in skip:
            continue
        mine = ours.fields_by_number.get(field.number)
        assert mine is not None, f"{path}{field.name} ({field.number}) is missing"
        assert mine.name == field.name, f"{path}{field.name} is named {mine.name}"
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert mine.type == FieldDescriptor.TYPE_MESSAGE, f"{path}{field.name}"
            _compatible(_message(field), _message(mine), f"{path}{field.name}.", set())
        elif field.type == FieldDescriptor.TYPE_ENUM:
            assert mine.type == FieldDescriptor.TYPE_INT32, f"{path}{field.name}"
        else:
            assert mine.type == field.type, f"{path}{field.name}"


def test_the_schema_reads_every_usage_event_field(envelope: Descriptor) -> None:
    row = _message(envelope.fields_by_name["row"])
    assert row.name == sink.FORMAT.message
    _compatible(events_pb2.UsageEvent.DESCRIPTOR, row, "", NOT_STORED)
    # The appended fields are beyond any UsageEvent field.
    appended = {f.number for f in row.fields} - {
        f.number for f in events_pb2.UsageEvent.DESCRIPTOR.fields
    }
    assert appended == {1000, 1001}
    assert row.fields_by_number[1000].type == FieldDescriptor.TYPE_SFIXED32
    assert row.fields_by_number[1001].type == FieldDescriptor.TYPE_SFIXED64


def _field_path(row: Descriptor, column: str) -> list[FieldDescriptor]:
    """The fields a decoded column comes from, as ClickHouse names nested ones
    (record.start_time.seconds → record_start_time_seconds)."""
    for field in row.fields:
        if column == field.name:
            return [field]
        if field.type == FieldDescriptor.TYPE_MESSAGE and column.startswith(f"{field.name}_"):
            rest = column.removeprefix(f"{field.name}_")
            try:
                return [field, *_field_path(_message(field), rest)]
            except LookupError:
                continue
    raise LookupError(column)


def test_every_input_column_is_a_schema_field_and_every_column_is_selected(
    envelope: Descriptor,
) -> None:
    row = _message(envelope.fields_by_name["row"])
    structure = dict(part.split(" ") for part in sink.FORMAT.structure.split(", "))
    for column in structure:
        assert _field_path(row, column)[-1].type != FieldDescriptor.TYPE_MESSAGE, column
    # The insert's SELECT reads input columns only.
    for name in re.findall(r"\b(record_\w+|kafka_\w+|\w+_cost_nanos|currency)\b", sink.SELECT):
        assert name in structure, name


def _event(i: int) -> events_pb2.UsageEvent:
    record = usage_pb2.UsageRecord(
        event_id=f"0190a000-0000-7000-8000-{i:012d}",
        key_name="k",
        operation=usage_pb2.OPERATION_RERANK,
        prompt_tokens=i,
        latency_ms=1.25,
        surface="openai",
    )
    record.start_time.FromSeconds(1_700_000_000 + i)
    return events_pb2.UsageEvent(record=record, total_cost_nanos=i * 7, currency="USD")


@pytest.mark.parametrize("offset", [0, 127, 128, 300, 2**40])
def test_the_envelope_holds_each_payload_with_its_partition_and_offset(
    envelope: Descriptor, offset: int
) -> None:
    events = [_event(i) for i in range(3)]
    messages = [(e.SerializeToString(), i % 2, offset + i) for i, e in enumerate(events)]
    encoded = sink.encode(messages)
    # Length-prefixed (a varint), then the envelope.
    length, start = 0, 0
    for shift, byte in enumerate(encoded):
        length |= (byte & 0x7F) << (7 * shift)
        if byte < 0x80:
            start = shift + 1
            break
    assert length == len(encoded) - start
    parsed: Any = message_factory.GetMessageClass(envelope).FromString(encoded[start:])
    assert len(parsed.row) == len(events)
    for row, event, (_, partition, at) in zip(parsed.row, events, messages, strict=True):
        assert (row.kafka_partition, row.kafka_offset) == (partition, at)
        assert row.record.event_id == event.record.event_id
        assert row.record.operation == usage_pb2.OPERATION_RERANK
        assert row.record.start_time.seconds == event.record.start_time.seconds
        assert row.total_cost_nanos == event.total_cost_nanos
