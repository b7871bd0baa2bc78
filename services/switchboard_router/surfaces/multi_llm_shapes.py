"""Seed API 002's shapes: JSON answers, server-sent events, and errors as
{"error": {code, message, details, request_id}} with the document's codes:
INVALID_REQUEST 400, UNAUTHORIZED 401, MODEL_NOT_FOUND 404,
RATE_LIMIT_EXCEEDED 429, MODEL_UNAVAILABLE 503, INTERNAL_ERROR 500."""

from __future__ import annotations

import json
from typing import Any

from google.api import httpbody_pb2

from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import request_id_var

_CODES: dict[int, tuple[int, str]] = {
    R.ERROR_REASON_INVALID_REQUEST: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_REQUEST_TOO_LARGE: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_FAILED_PRECONDITION: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_UPSTREAM_INVALID_REQUEST: (400, "INVALID_REQUEST"),
    R.ERROR_REASON_MISSING_API_KEY: (401, "UNAUTHORIZED"),
    R.ERROR_REASON_INVALID_API_KEY: (401, "UNAUTHORIZED"),
    R.ERROR_REASON_PERMISSION_DENIED: (401, "UNAUTHORIZED"),
    # A model the key may not use does not exist for that key.
    R.ERROR_REASON_MODEL_NOT_ALLOWED: (404, "MODEL_NOT_FOUND"),
    R.ERROR_REASON_MODEL_NOT_FOUND: (404, "MODEL_NOT_FOUND"),
    R.ERROR_REASON_NOT_FOUND: (404, "MODEL_NOT_FOUND"),
    R.ERROR_REASON_RATE_LIMITED: (429, "RATE_LIMIT_EXCEEDED"),
    R.ERROR_REASON_UPSTREAM_RATE_LIMITED: (429, "RATE_LIMIT_EXCEEDED"),
    R.ERROR_REASON_BUDGET_EXCEEDED: (429, "RATE_LIMIT_EXCEEDED"),
    R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT: (503, "MODEL_UNAVAILABLE"),
    R.ERROR_REASON_SERVICE_UNAVAILABLE: (503, "MODEL_UNAVAILABLE"),
    R.ERROR_REASON_UPSTREAM_ERROR: (503, "MODEL_UNAVAILABLE"),
    R.ERROR_REASON_UPSTREAM_AUTH: (503, "MODEL_UNAVAILABLE"),
    R.ERROR_REASON_UPSTREAM_TIMEOUT: (503, "MODEL_UNAVAILABLE"),
}


def error(err: SwitchboardError, model: str = "") -> tuple[int, dict[str, Any]]:
    status, code = _CODES.get(err.reason, (500, "INTERNAL_ERROR"))
    details: dict[str, Any] = {"reason": err.reason_name.lower()}
    if model:
        details["model"] = model
    if err.param:
        details["param"] = err.param
    if err.retry_after_s is not None:
        details["retry_after"] = max(1, round(err.retry_after_s))
    message = err.message if status != 500 else "internal error"
    body = {
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "request_id": request_id_var.get() or "",
        }
    }
    return status, body


def _json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def answer(payload: Any) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="application/json", data=_json(payload))


def event(payload: Any) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(
        content_type="text/event-stream", data=b"data: " + _json(payload) + b"\n\n"
    )


DONE = httpbody_pb2.HttpBody(content_type="text/event-stream", data=b"data: [DONE]\n\n")
