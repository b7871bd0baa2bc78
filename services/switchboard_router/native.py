"""A caller's request in an upstream API's own form, for upstreams that serve
that API natively (the Responses API passed through to an upstream that has it).

The surface that received the request offers it for the RPC it serves; every
attempt then carries it to the provider beside the canonical params, and an
adapter that serves the API natively answers with the upstream's own answer or
events. Those that reach the caller are collected here, in order, for the
surface to pass on instead of rendering the canonical chunks. Routing, limits,
fallback and accounting see only the canonical form, so they stay one
implementation whichever way an attempt was answered.
"""

from __future__ import annotations

import contextvars
import json
from dataclasses import dataclass, field
from typing import Any

from switchboard.provider.v1 import provider_pb2

_CALL: contextvars.ContextVar[NativeCall | None] = contextvars.ContextVar(
    "native_call", default=None
)


@dataclass
class NativeCall:
    request: provider_pb2.NativeRequest
    # The upstream's own answer or events that reached the caller, not yet taken.
    answers: list[bytes] = field(default_factory=list)

    def take(self) -> list[dict[str, Any]]:
        taken = [json.loads(answer) for answer in self.answers]
        self.answers.clear()
        return taken


def offer(api: provider_pb2.NativeApi.ValueType, body: dict[str, Any]) -> NativeCall:
    """For the calling RPC (its task's context): send `body` to upstreams that
    serve `api`; their answers collect in the returned call."""
    call = NativeCall(
        provider_pb2.NativeRequest(
            api=api, body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        )
    )
    _CALL.set(call)
    return call


def current() -> NativeCall | None:
    return _CALL.get()
