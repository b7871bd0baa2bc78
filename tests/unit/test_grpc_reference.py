"""The committed gRPC reference is what the descriptors render now."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

from switchboard.common.v1 import access_pb2
from switchboard.router.v1 import router_pb2
from switchboard_stack import grpc_reference


def test_committed_reference_is_fresh() -> None:
    rendered = grpc_reference.render(grpc_reference.load())
    assert grpc_reference.REFERENCE.read_text() == rendered, (
        "docs/grpc-reference.md is stale: run python -m switchboard_stack.grpc_reference"
    )
    assert grpc_reference.main(["--check"]) == 0


def test_every_router_rpc_and_message_is_in_it() -> None:
    text = grpc_reference.REFERENCE.read_text()
    service = router_pb2.DESCRIPTOR.services_by_name["RouterService"]
    for method in service.methods:
        assert f"#### {method.name}\n" in text
    for name in router_pb2.DESCRIPTOR.message_types_by_name:
        assert f"### switchboard.router.v1.{name}\n" in text
    # The protos' comments came through (the descriptor set carries source info).
    assert "gRPC callers: set content_text or content_parts instead." in text


def test_access_policy_is_read_from_the_method_option(tmp_path: Path) -> None:
    file = descriptor_pb2.FileDescriptorProto(
        name="switchboard/x/v1/x.proto", package="switchboard.x.v1"
    )
    file.message_type.add(name="Ping")
    method = file.service.add(name="XService").method.add(
        name="Ping", input_type=".switchboard.x.v1.Ping", output_type=".switchboard.x.v1.Ping"
    )
    method.options.Extensions[access_pb2.access] = access_pb2.ACCESS_CLIENT
    path = tmp_path / "x.binpb"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString())
    text = grpc_reference.render(grpc_reference.load(path))
    assert "| CLIENT | — |" in text
    assert "### switchboard.x.v1.Ping\n\n(no fields)" in text
