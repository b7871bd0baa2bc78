"""The Responses API passed through to upstreams that serve it natively
(provider option `responses: native`; see switchboard_router/native.py).

Such an upstream gets the caller's request with the whole conversation as input
items (a stored response is expanded here, and the upstream is asked not to
store: the conversation is kept here, for its key, whichever provider answers
next). Its answer or events come back as it sent them, with the response
object's identity made ours: our id, the model name the caller asked for, and
the caller's own previous_response_id and store.

With nothing stored upstream, a reasoning item can only be sent back with its
encrypted content, so that is always asked for and kept in the conversation
stored here; the caller sees it only when its own `include` asked for it.
"""

from __future__ import annotations

from typing import Any

from google.api import httpbody_pb2

from switchboard.provider.v1 import provider_pb2
from switchboard_router import native
from switchboard_router.surfaces import responses_shapes as shapes
from switchboard_router.surfaces import surface

# The events that carry the response object, and those of them that end it.
_SNAPSHOTS = (
    "response.created",
    "response.in_progress",
    "response.completed",
    "response.incomplete",
    "response.failed",
)
_FINAL = ("response.completed", "response.incomplete")
ENCRYPTED = "reasoning.encrypted_content"


def _as_input(item: dict[str, Any]) -> dict[str, Any]:
    # Ids name items the upstream stored; it stores nothing of ours (store is
    # false), so only reasoning items keep theirs (their encrypted content needs it).
    if item.get("type") == "reasoning":
        return item
    return {k: v for k, v in item.items() if k not in ("id", "status")}


def _resendable(item: dict[str, Any]) -> bool:
    # A reasoning item without its encrypted content (another path's) would be
    # refused: the upstream keeps nothing to find it by.
    return item.get("type") != "reasoning" or bool(item.get("encrypted_content"))


def offer(
    request: dict[str, Any], conversation: list[dict[str, Any]] | None
) -> native.NativeCall | None:
    """Offer the request to native upstreams, its input preceded by the stored
    conversation's items; None when that conversation was stored without them."""
    if conversation is None:
        return None
    body = {k: v for k, v in request.items() if k not in ("previous_response_id", "stream")}
    body["input"] = [_as_input(item) for item in conversation if _resendable(item)]
    body["store"] = False
    asked = request.get("include")
    body["include"] = [*(i for i in asked or [] if i != ENCRYPTED), ENCRYPTED]
    return native.offer(provider_pb2.NATIVE_API_OPENAI_RESPONSES, body)


def shown(value: Any, request: dict[str, Any]) -> Any:
    """What the caller sees of an upstream object: reasoning items' encrypted
    content only when its `include` asked for it."""
    if ENCRYPTED in (request.get("include") or []):
        return value
    return _without_encrypted(value)


def _without_encrypted(value: Any) -> Any:
    if isinstance(value, list):
        return [_without_encrypted(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {
        k: _without_encrypted(v)
        for k, v in value.items()
        if not (k == "encrypted_content" and value.get("type") == "reasoning")
    }


def as_ours(upstream: dict[str, Any], request: dict[str, Any], response_id: str) -> dict[str, Any]:
    """The upstream's response object under our identity."""
    return {
        **upstream,
        "id": response_id,
        "model": request.get("model"),
        "previous_response_id": request.get("previous_response_id"),
        "store": request.get("store", True),
        "metadata": request.get("metadata") or {},
    }


class NativeStream:
    """The upstream's events, passed on with the response object made ours."""

    def __init__(self, request: dict[str, Any], response_id: str) -> None:
        self.request = request
        self.response_id = response_id
        self.next_sequence = 0
        # The output items as the upstream sent them (kept in the conversation).
        self.output: list[dict[str, Any]] = []
        # The response the stream ended with (completed or incomplete; as the
        # upstream sent its output), and its event as the caller gets it: held
        # back until the response is stored, so that a client reading it back
        # at once finds it.
        self.final: dict[str, Any] | None = None
        self.final_event: httpbody_pb2.HttpBody | None = None

    def events(self, upstream: list[dict[str, Any]]) -> list[httpbody_pb2.HttpBody]:
        out = []
        for event in upstream:
            kind = str(event.get("type"))
            if kind in _SNAPSHOTS and isinstance(event.get("response"), dict):
                event = {
                    **event,
                    "response": as_ours(event["response"], self.request, self.response_id),
                }
            if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
                self.output.append(event["item"])
            if isinstance(event.get("sequence_number"), int):
                self.next_sequence = event["sequence_number"] + 1
            passed = surface.sse_event(kind, shown(event, self.request))
            if kind in _FINAL:
                self.final = event["response"]
                self.final_event = passed
            else:
                out.append(passed)
        return out

    def failed(self, code: str, message: str) -> httpbody_pb2.HttpBody:
        """The last event of a stream that broke after it started."""
        output = shown(self.output, self.request)
        response = shapes.failed(self.request, self.response_id, output, code, message)
        body = {
            "type": "response.failed",
            "sequence_number": self.next_sequence,
            "response": response,
        }
        return surface.sse_event("response.failed", body)
