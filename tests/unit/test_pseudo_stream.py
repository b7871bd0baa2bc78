"""One whole chat answer as stream chunks, tool calls included, read back by
the openai SDK's own chunk model."""

from __future__ import annotations

import openai

from switchboard.common.v1 import openai_pb2
from switchboard_common.pseudo_stream import chunks_from_completion
from switchboard_router import render


def _completion() -> openai_pb2.ChatCompletion:
    completion = openai_pb2.ChatCompletion(id="c1", object="chat.completion", created=7, model="m")
    choice = completion.choices.add(index=0, finish_reason="tool_calls")
    choice.message.role = "assistant"
    for i, city in enumerate(("Paris", "Oslo")):
        call = choice.message.tool_calls.add(id=f"call_{i}", type="function")
        call.function.name = "weather"
        call.function.arguments = f'{{"city": "{city}"}}'
    completion.usage.prompt_tokens = 11
    completion.usage.completion_tokens = 5
    completion.usage.total_tokens = 16
    return completion


def test_tool_calls_become_openai_tool_call_chunks() -> None:
    chunks = [
        openai.types.chat.ChatCompletionChunk.model_validate(
            render.chat_chunk(chunk, "m", include_usage=True)
        )
        for chunk in chunks_from_completion(_completion())
    ]
    assert [c.choices[0].delta.role for c in chunks[:1]] == ["assistant"]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [(c.index, c.id, c.type) for c in calls] == [
        (0, "call_0", "function"),
        (1, "call_1", "function"),
    ]
    assert [c.function.arguments for c in calls if c.function] == [
        '{"city": "Paris"}',
        '{"city": "Oslo"}',
    ]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 16
    assert {c.id for c in chunks} == {"c1"}


def test_each_choice_gets_its_role_content_and_finish() -> None:
    completion = openai_pb2.ChatCompletion(id="c2", model="m")
    for i, text in enumerate(("first", "second")):
        choice = completion.choices.add(index=i, finish_reason="length")
        choice.message.role = "assistant"
        choice.message.content = text
    chunks = chunks_from_completion(completion)
    assert len(chunks) == 6  # no usage: no usage chunk
    texts = {
        c.choices[0].index: c.choices[0].delta.content for c in chunks if c.choices[0].delta.content
    }
    assert texts == {0: "first", 1: "second"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [
        "length",
        "length",
    ]
