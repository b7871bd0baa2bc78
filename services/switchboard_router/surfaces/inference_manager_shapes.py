"""Seed API 004's shapes (the inference manager): JSON answers, server-sent
events, paging ({items, total, page, size, pages}) and errors as
{"error": {code, message, details}, "timestamp", "path"} with the document's
codes. The edge fills in "path" (deploy/envoy/edge.lua), which it knows."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from google.api import httpbody_pb2

from switchboard_common.errors import R, SwitchboardError

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class ValidationFailed(SwitchboardError):
    """A request body that parsed but does not validate: 422, naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(R.ERROR_REASON_INVALID_REQUEST, message, param=field)


_CODES: dict[int, tuple[int, str]] = {
    R.ERROR_REASON_INVALID_REQUEST: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_REQUEST_TOO_LARGE: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_FAILED_PRECONDITION: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_UPSTREAM_INVALID_REQUEST: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_MISSING_API_KEY: (401, "AUTHENTICATION_FAILED"),
    R.ERROR_REASON_INVALID_API_KEY: (401, "AUTHENTICATION_FAILED"),
    R.ERROR_REASON_PERMISSION_DENIED: (403, "AUTHORIZATION_FAILED"),
    R.ERROR_REASON_MODEL_NOT_ALLOWED: (403, "AUTHORIZATION_FAILED"),
    R.ERROR_REASON_MODEL_NOT_FOUND: (404, "MODEL_NOT_FOUND"),
    R.ERROR_REASON_NOT_FOUND: (404, "MODEL_NOT_FOUND"),
    R.ERROR_REASON_ALREADY_EXISTS: (409, "MODEL_ALREADY_EXISTS"),
    R.ERROR_REASON_CONFLICT: (409, "CONFLICT"),
    R.ERROR_REASON_INSUFFICIENT_RESOURCES: (409, "INSUFFICIENT_RESOURCES"),
    R.ERROR_REASON_RATE_LIMITED: (429, "RATE_LIMIT_EXCEEDED"),
    R.ERROR_REASON_UPSTREAM_RATE_LIMITED: (429, "RATE_LIMIT_EXCEEDED"),
    R.ERROR_REASON_BUDGET_EXCEEDED: (429, "RATE_LIMIT_EXCEEDED"),
    R.ERROR_REASON_MODEL_NOT_RUNNING: (503, "MODEL_NOT_RUNNING"),
    # A model with no running engine has no healthy deployment.
    R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT: (503, "MODEL_NOT_RUNNING"),
    R.ERROR_REASON_SERVICE_UNAVAILABLE: (503, "SERVICE_UNAVAILABLE"),
    R.ERROR_REASON_UPSTREAM_ERROR: (502, "UPSTREAM_ERROR"),
    R.ERROR_REASON_UPSTREAM_AUTH: (502, "UPSTREAM_ERROR"),
    R.ERROR_REASON_UPSTREAM_TIMEOUT: (504, "OPERATION_TIMEOUT"),
    R.ERROR_REASON_NOT_IMPLEMENTED: (501, "NOT_IMPLEMENTED"),
}


def now() -> str:
    return timestamp(dt.datetime.now(dt.UTC))


def timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(err: SwitchboardError, model_id: str = "") -> tuple[int, dict[str, Any]]:
    status, code = _CODES.get(err.reason, (500, "INTERNAL_ERROR"))
    if isinstance(err, ValidationFailed):
        status = 422
    details: dict[str, Any] = {}
    if model_id:
        details["model_id"] = model_id
    if err.param:
        details["field"] = err.param
    if err.retry_after_s is not None:
        details["retry_after"] = max(1, round(err.retry_after_s))
    message = err.message if status != 500 else "internal error"
    return status, {
        "error": {"code": code, "message": message, "details": details},
        "timestamp": now(),
        "path": "",
    }


def page_of(items: list[Any], page: int, size: int) -> dict[str, Any]:
    """One page of items, as the document's paged answers."""
    if page < 0:
        raise ValidationFailed("page", "page starts at 1")
    if size < 0 or size > MAX_PAGE_SIZE:
        raise ValidationFailed("size", f"size must be between 1 and {MAX_PAGE_SIZE}")
    page, size = page or 1, size or DEFAULT_PAGE_SIZE
    start = (page - 1) * size
    return {
        "items": items[start : start + size],
        "total": len(items),
        "page": page,
        "size": size,
        "pages": math.ceil(len(items) / size),
    }


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def answer(payload: Any) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=_json(payload))


def event(payload: Any) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(
        content_type="text/event-stream", data=b"data: " + _json(payload) + b"\n\n"
    )


DONE = httpbody_pb2.HttpBody(content_type="text/event-stream", data=b"data: [DONE]\n\n")
