"""What every surface shares: the surface a call came through (recorded on its
usage records), and errors rendered in that surface's shape.

The edge (deploy/envoy/edge.lua) answers with the HTTP status and body a
service puts in trailing metadata; a SurfaceError puts the surface's own there
instead of OpenAI's.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.api import httpbody_pb2

from switchboard.usage.v1 import usage_pb2
from switchboard_common.errors import (
    ERROR_BODY_HEADER,
    HTTP_STATUS_HEADER,
    R,
    SwitchboardError,
)
from switchboard_common.logs import log_fields

log = logging.getLogger(__name__)

# RouterService's own API (/v1 at the edge, and gRPC callers).
OPENAI = "openai"
# The surface of the call being served; read when its usage records are made.
_SURFACE: contextvars.ContextVar[str] = contextvars.ContextVar("surface", default=OPENAI)

# The usage records of the call being served, for surfaces whose answers carry
# what OpenAI's usage shape has no field for (Anthropic's cache writes). A list
# is mutated, not replaced, so that records accounted in any task it reaches count.
_RECORDS: contextvars.ContextVar[list[usage_pb2.UsageRecord] | None] = contextvars.ContextVar(
    "surface_records", default=None
)

# A surface's rendering of an error: the HTTP status and the JSON body.
Render = Callable[[SwitchboardError], tuple[int, dict[str, Any]]]


def current() -> str:
    return _SURFACE.get()


def enter(name: str) -> None:
    """Tag the calling RPC (its task's context) with the surface it came through."""
    _SURFACE.set(name)


def watch_usage() -> list[usage_pb2.UsageRecord]:
    """From now on, the calling RPC's accounted usage records are appended here."""
    records: list[usage_pb2.UsageRecord] = []
    _RECORDS.set(records)
    return records


def accounted(record: usage_pb2.UsageRecord) -> None:
    """Called by accounting for every record of the calling RPC."""
    records = _RECORDS.get()
    if records is not None:
        records.append(record)


def read_json(body: httpbody_pb2.HttpBody) -> dict[str, Any]:
    """A request body that must be a JSON object (the edge checked its size and depth)."""
    try:
        payload = json.loads(body.data or b"null")
    except (ValueError, UnicodeDecodeError):
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "The request body is not valid JSON."
        ) from None
    if not isinstance(payload, dict):
        raise SwitchboardError(
            R.ERROR_REASON_INVALID_REQUEST, "The request body must be a JSON object."
        )
    return payload


def json_body(payload: Any, content_type: str = "application/json") -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(
        content_type=content_type,
        data=json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
    )


def sse_event(name: str, payload: dict[str, Any]) -> httpbody_pb2.HttpBody:
    """A named server-sent event (Anthropic's and the Responses API's framing)."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return httpbody_pb2.HttpBody(
        content_type="text/event-stream", data=f"event: {name}\ndata: {data}\n\n".encode()
    )


class SurfaceError(SwitchboardError):
    """A SwitchboardError (same reason, gRPC status and details) that the edge
    answers with its surface's status and body."""

    def __init__(self, err: SwitchboardError, status: int, body: dict[str, Any]) -> None:
        super().__init__(
            err.reason,
            err.message,
            param=err.param,
            retry_after_s=err.retry_after_s,
            metadata=err.metadata,
        )
        self.status = status
        self.body = body

    def edge_metadata(self) -> tuple[tuple[str, str], ...]:
        rendered = json.dumps(self.body, ensure_ascii=True, separators=(",", ":"))
        extra = tuple(
            item
            for item in super().edge_metadata()
            if item[0] not in (HTTP_STATUS_HEADER, ERROR_BODY_HEADER)
        )
        return ((HTTP_STATUS_HEADER, str(self.status)), (ERROR_BODY_HEADER, rendered), *extra)


def as_switchboard_error(exc: Exception) -> SwitchboardError:
    if isinstance(exc, SwitchboardError):
        return exc
    # Details stay in the log; the caller gets a generic message.
    log.error("unhandled error", exc_info=exc, extra=log_fields(surface=current()))
    return SwitchboardError(R.ERROR_REASON_INTERNAL, "internal error")


@contextlib.contextmanager
def rendered(render: Render) -> Iterator[None]:
    """Errors raised inside leave in the surface's shape."""
    try:
        yield
    except (SurfaceError, grpc.aio.AbortError):
        raise
    except Exception as exc:
        err = as_switchboard_error(exc)
        raise SurfaceError(err, *render(err)) from None
