"""Tracing: off by default it installs nothing and every hook is a no-op;
on, the gRPC interceptors and the relay/sink carry one trace across hops."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from aiokafka import TopicPartition
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from switchboard_common import tracing
from switchboard_common.channels import channel
from switchboard_common.interceptors import ServerInterceptor
from switchboard_common.pipeline import sink
from switchboard_common.pipeline.outbox import Outbox
from switchboard_common.pipeline.relay import OutboxSource, Relay
from tests.unit.test_pipeline_outbox import FakeProducerHolder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory (not the process-global provider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider.get_tracer("test"), provider.shutdown)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


def _named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def test_off_by_default_installs_nothing() -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT: no SDK loaded, no provider set, no
    interceptors, non-recording spans, nothing propagated."""
    script = """
import sys
from opentelemetry import trace
from switchboard_common import tracing
from switchboard_common.server import main  # what every service imports
assert tracing.setup("router") is False
assert not tracing.enabled()
assert tracing.client_interceptors() == []
assert not tracing.start("x").is_recording()
assert tracing.traceparent() == ""
assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
assert not [m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
print("off")
"""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO / 'services'}:{REPO / 'gen'}"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "off"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def _echo_service() -> grpc.GenericRpcHandler:
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_echo)
    return grpc.method_handlers_generic_handler("test.v1.Echo", {"Say": handler})


@pytest.mark.asyncio
async def test_grpc_hops_share_one_trace(exported: InMemorySpanExporter) -> None:
    server = grpc.aio.server(interceptors=[ServerInterceptor("test")])
    server.add_generic_rpc_handlers([_echo_service()])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with channel(f"127.0.0.1:{port}", None) as client:
            say: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = client.unary_unary(
                "/test.v1.Echo/Say"
            )
            with tracing.span("caller"):
                assert await say(b"hi") == b"hi"
                await health_pb2_grpc.HealthStub(client).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
    spans = exported.get_finished_spans()
    assert sorted(s.name for s in spans) == ["caller", "test.v1.Echo/Say"], "probes untraced"
    caller = _named(spans, "caller")
    served = _named(spans, "test.v1.Echo/Say")
    assert served.kind is SpanKind.SERVER
    assert served.parent is not None
    assert served.parent.span_id == caller.context.span_id
    assert served.context.trace_id == caller.context.trace_id
    assert served.attributes is not None
    assert served.attributes["rpc.grpc.status_code"] == "OK"
    assert served.attributes["rpc.service"] == "test.v1.Echo"


@pytest.mark.asyncio
async def test_the_relay_and_the_sink_carry_the_trace(
    tmp_path: Path, exported: InMemorySpanExporter
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", "traced", "t.events", max_bytes=1 << 20)
    await outbox.open()
    try:
        with tracing.span("record") as record:
            trace = tracing.traceparent()
        await outbox.append([("a", b"a", b"1"), ("b", b"b", b"2")], traces=[trace, ""])
        holder = FakeProducerHolder()
        assert await Relay("unit", [OutboxSource(outbox)], holder).publish_once() == 2
    finally:
        await outbox.close()
    traced, untraced = holder.fake.headers
    assert untraced is None, "an untraced record is sent without headers"
    assert traced is not None
    publish = _named(exported.get_finished_spans(), "publish t.events")
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == record.get_span_context().span_id
    ((name, value),) = traced
    context = publish.get_span_context()
    assert context is not None
    assert name == "traceparent"
    assert value.decode().startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")

    messages: list[Any] = [
        SimpleNamespace(topic="t.events", offset=0, headers=traced),
        SimpleNamespace(topic="t.events", offset=1, headers=()),
    ]
    spans = sink._insert_spans("usage", {TopicPartition("t.events", 0): messages})
    assert len(spans) == 1, "one span per traced message"
    sink._end(spans, None)
    insert = _named(exported.get_finished_spans(), "usage sink insert")
    assert insert.kind is SpanKind.CONSUMER
    assert insert.parent is not None
    assert insert.parent.span_id == publish.context.span_id
    assert insert.context.trace_id == publish.context.trace_id


def test_a_malformed_traceparent_starts_no_trace() -> None:
    assert tracing.parent("00-not-a-trace-01") is None
    assert tracing.parent(b"") is None
    assert tracing.parent(None) is None
