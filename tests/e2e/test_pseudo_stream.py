"""Pseudo-streaming through Envoy with the openai SDK's own stream parser: a
model marked `streaming: false`, and an upstream that answers a stream request
with one JSON body, still give a `stream: true` call valid SSE, and say so."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from switchboard_stack.harness import Stack
from tests.conftest import UPSTREAM_KEY, StartStack, loopback_provider
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

pytestmark = pytest.mark.e2e

PROMPT = "say it all at once"
REPLY = f"echo: {PROMPT}"
HEADER = "x-switchboard-pseudo-stream"


@pytest.fixture(scope="module")
def stack(upstream: OpenAIUpstream, start_stack: StartStack) -> Stack:
    config = {
        "providers": [loopback_provider("loopback", upstream, "PSEUDO_KEY")],
        "models": [
            {"name": "streams", "deployments": [{"provider": "loopback", "model": "a"}]},
            {
                "name": "whole",
                "streaming": False,
                "deployments": [{"provider": "loopback", "model": "b"}],
            },
        ],
    }
    return start_stack(config, {"PSEUDO_KEY": UPSTREAM_KEY})


@pytest.fixture
def client(stack: Stack, upstream: OpenAIUpstream) -> Iterator[openai.OpenAI]:
    upstream.reset()
    upstream.behaviour = Behaviour()
    with openai.OpenAI(base_url=f"{stack.edge_url}/v1", api_key="x", max_retries=0) as c:
        yield c


def _streamed(client: openai.OpenAI, model: str) -> tuple[str | None, list[object]]:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    return raw.headers.get(HEADER), list(raw.parse())


def _check(chunks: list[object], upstream: OpenAIUpstream) -> None:
    typed = [c for c in chunks if isinstance(c, openai.types.chat.ChatCompletionChunk)]
    assert len(typed) == len(chunks)
    with_choices = [c for c in typed if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == REPLY
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert typed[-1].choices == []
    assert typed[-1].usage is not None
    assert typed[-1].usage.completion_tokens == upstream.served[-1].completion_tokens


def test_a_model_that_cannot_stream_is_pseudo_streamed(
    client: openai.OpenAI, upstream: OpenAIUpstream
) -> None:
    header, chunks = _streamed(client, "whole")
    assert header == "true"
    # The upstream was asked for its whole answer, not a stream.
    assert upstream.served[-1].stream is False
    _check(chunks, upstream)


def test_an_upstream_that_ignores_stream_is_pseudo_streamed(
    client: openai.OpenAI, upstream: OpenAIUpstream
) -> None:
    upstream.behaviour = Behaviour(stream_as_json=True)
    header, chunks = _streamed(client, "streams")
    assert header == "true"
    _check(chunks, upstream)


def test_a_real_stream_is_not_labelled(client: openai.OpenAI, upstream: OpenAIUpstream) -> None:
    header, chunks = _streamed(client, "streams")
    assert header is None
    assert upstream.served[-1].stream is True
    # One chunk per upstream token: really streamed.
    assert len(chunks) > 5
