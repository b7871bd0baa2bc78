"""One trace per request, end to end: a streamed chat call through the Envoy
edge, with OTEL_EXPORTER_OTLP_ENDPOINT pointing every process (Envoy
included) at this test's own OTLP collector, shows up as ONE trace that holds
every hop in order: edge -> router -> admission and attempt -> provider ->
upstream call -> usage record -> relay publish -> sink insert."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import httpx
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually
from tests.support.openai_upstream import OpenAIUpstream
from tests.support.otlp_collector import OtlpCollector, ReceivedSpan, ancestors

# A whole stack of its own, with an export pipeline on every process.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # OTLP Span.SpanKind


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as running:
        yield running


@pytest.fixture(scope="module")
def stack(
    collector: OtlpCollector, upstream: OpenAIUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "TRACE_E2E_KEY",
            }
        ],
        "models": [{"name": "traced", "deployments": [{"provider": "loopback", "model": "up"}]}],
    }
    env = {
        "TRACE_E2E_KEY": UPSTREAM_KEY,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        # Export within a fraction of a second, not the default 5 s.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    # The stack stops before the collector does: its last spans still land.
    with running_stack(config, tmp_path_factory.mktemp("tracing"), env) as running:
        yield running


def _one(spans: list[ReceivedSpan], service: str, name: str, kind: int) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name and s.kind == kind]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


def test_one_trace_holds_every_hop_in_order(stack: Stack, collector: OtlpCollector) -> None:
    # The caller's own trace context: the edge joins it (W3C traceparent).
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    body = {
        "model": "traced",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "trace every hop"}],
    }
    with httpx.stream(
        "POST",
        f"{stack.edge_url}/v1/chat/completions",
        json=body,
        headers={"traceparent": f"00-{trace_id}-{caller_span}-01"},
        timeout=30,
    ) as reply:
        assert reply.status_code == 200
        request_id = reply.headers["x-request-id"]
        events = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))["usage"]

    def whole_trace() -> list[ReceivedSpan]:
        spans = collector.trace(trace_id)
        names = {s.name for s in spans}
        assert "usage sink insert" in names
        assert any(s.service == "switchboard-edge" for s in spans)
        return spans

    spans = eventually(whole_trace, timeout=30, interval=0.2, what="the whole trace exported")
    by_id = {s.span_id: s for s in spans}

    edge = next(s for s in spans if s.service == "switchboard-edge" and s.kind == SERVER)
    router = _one(
        spans,
        "switchboard-router",
        "switchboard.router.v1.RouterService/StreamChatCompletionSse",
        SERVER,
    )
    admission = _one(spans, "switchboard-router", "router.admission", 1)
    attempt = _one(spans, "switchboard-router", "router.attempt", 1)
    provider = _one(
        spans,
        "switchboard-provider",
        "switchboard.provider.v1.ProviderService/StreamGenerate",
        SERVER,
    )
    upstream_call = _one(spans, "switchboard-provider", "chat up", CLIENT)
    record = _one(spans, "switchboard-usage", "usage.record", SERVER)
    publish = next(s for s in spans if s.kind == PRODUCER)
    insert = _one(spans, "switchboard-usage", "usage sink insert", CONSUMER)

    # Each hop is a child of the one before it (the edge of the caller's span).
    assert edge.parent_id == caller_span
    assert router.parent_id == edge.span_id
    assert admission.parent_id == router.span_id
    assert attempt.parent_id == router.span_id
    assert provider.parent_id == attempt.span_id
    assert upstream_call.parent_id == provider.span_id
    assert record.parent_id == attempt.span_id
    assert publish.service == "switchboard-usage"
    assert publish.parent_id == record.span_id
    assert insert.parent_id == publish.span_id
    for span in (router, admission, attempt, provider, upstream_call, record, publish, insert):
        assert edge in ancestors(span, by_id)

    # ... and starts no earlier than it.
    order = [edge, router, admission, attempt, provider, upstream_call, record, publish, insert]
    starts = [s.start_ns for s in order]
    assert starts == sorted(starts), [(s.name, s.start_ns) for s in order]
    assert admission.end_ns <= attempt.start_ns

    # GenAI semantic-convention attributes, and the request id on every hop.
    assert upstream_call.attributes["gen_ai.operation.name"] == "chat"
    assert upstream_call.attributes["gen_ai.provider.name"] == "openai"
    assert upstream_call.attributes["gen_ai.request.model"] == "up"
    assert upstream_call.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert upstream_call.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert admission.attributes["gen_ai.request.model"] == "traced"
    assert record.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    for span in (router, attempt, provider, upstream_call, record):
        assert span.attributes["switchboard.request_id"] == request_id, span.name
