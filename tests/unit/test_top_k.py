"""top_k (seed 004's generate, and llama.cpp/vLLM clients): validated by the
router, sent by each provider kind in its own form."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import SwitchboardError
from switchboard_provider.adapters.anthropic.request import messages_request
from switchboard_provider.adapters.gemini.request_mapping import chat_request, completion_request
from switchboard_provider.adapters.openai_compat import _params_dict
from switchboard_router.validation import validate_chat, validate_completion


def _chat(**body: Any) -> openai_pb2.ChatCompletionParams:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return json_format.ParseDict({"model": "m", **body}, openai_pb2.ChatCompletionParams())


def _completion(**body: Any) -> openai_pb2.CompletionParams:
    return json_format.ParseDict(
        {"model": "m", "prompt": "hi", **body}, openai_pb2.CompletionParams()
    )


def test_openai_kind_sends_it_as_a_body_field() -> None:
    assert _params_dict(_chat(top_k=40))["top_k"] == 40
    assert _params_dict(_completion(top_k=5))["top_k"] == 5
    assert "top_k" not in _params_dict(_chat())


def test_gemini_takes_it_as_top_k() -> None:
    _, config = chat_request(_chat(top_k=40))
    assert config.top_k == 40
    _, config = completion_request(_completion(top_k=3))
    assert config.top_k == 3


def test_anthropic_takes_it_as_top_k() -> None:
    assert messages_request(_chat(top_k=40), "claude-up", 4096)["top_k"] == 40
    assert "top_k" not in messages_request(_chat(), "claude-up", 4096)


@pytest.mark.parametrize("value", [0, -1, 2_000_000])
def test_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(SwitchboardError) as chat:
        validate_chat(_chat(top_k=value))
    assert chat.value.param == "top_k"
    with pytest.raises(SwitchboardError) as completion:
        validate_completion(_completion(top_k=value))
    assert completion.value.param == "top_k"
