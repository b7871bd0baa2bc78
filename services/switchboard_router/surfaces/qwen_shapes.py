"""Seed API 001's shapes: the {code, message, data} envelope (HTTP status equal
to code), server-sent events, and its error codes with their Chinese messages."""

from __future__ import annotations

import json
from typing import Any

from google.api import httpbody_pb2

from switchboard.common.v1 import openai_pb2
from switchboard_common.errors import R, SwitchboardError

INVALID_MODEL = "无效的模型名称或模型类型不匹配"
EMPTY_MESSAGES = "消息列表不能为空"
BAD_MESSAGES = "消息格式错误"
OUT_OF_RANGE = "参数值超出有效范围"
UNAUTHORIZED = "未授权:API Key缺失或无效"
RATE_LIMITED = "请求频率超限"
UPSTREAM = "百炼平台返回错误:"
TIMEOUT = "请求超时"
SERVER = "服务器错误"

_UPSTREAM = frozenset(
    {
        R.ERROR_REASON_UPSTREAM_ERROR,
        R.ERROR_REASON_UPSTREAM_AUTH,
        R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
    }
)
_LIMITED = frozenset(
    {
        R.ERROR_REASON_RATE_LIMITED,
        R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
        R.ERROR_REASON_BUDGET_EXCEEDED,
    }
)


def bad(param: str, message: str) -> SwitchboardError:
    return SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, message, param=param)


def _code_and_message(err: SwitchboardError) -> tuple[int, str]:
    reason, param = err.reason, err.param or ""
    if reason in (R.ERROR_REASON_MISSING_API_KEY, R.ERROR_REASON_INVALID_API_KEY):
        return 401, UNAUTHORIZED
    if reason in (R.ERROR_REASON_MODEL_NOT_FOUND, R.ERROR_REASON_MODEL_NOT_ALLOWED):
        return 400, INVALID_MODEL
    if reason == R.ERROR_REASON_INVALID_REQUEST:
        if param == "model":
            return 400, INVALID_MODEL
        if param.startswith("messages"):
            return 400, err.message if err.message in (EMPTY_MESSAGES, BAD_MESSAGES) else (
                f"{BAD_MESSAGES}:{err.message}"
            )
        if param:
            return 400, f"{OUT_OF_RANGE}:{err.message}"
        return 400, f"参数错误:{err.message}"
    if reason == R.ERROR_REASON_REQUEST_TOO_LARGE:
        return 400, f"参数错误:{err.message}"
    if reason in _LIMITED:
        return 429, RATE_LIMITED
    if reason in _UPSTREAM:
        return 502, UPSTREAM + err.message
    if reason == R.ERROR_REASON_UPSTREAM_TIMEOUT:
        return 504, TIMEOUT
    if reason == R.ERROR_REASON_NOT_FOUND:
        return 404, "资源不存在"
    if reason in (R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT, R.ERROR_REASON_SERVICE_UNAVAILABLE):
        return 500, f"{SERVER}:{err.message}"
    return 500, SERVER


def error(err: SwitchboardError) -> tuple[int, dict[str, Any]]:
    code, message = _code_and_message(err)
    return code, {"code": code, "message": message, "data": None}


def json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()


def usage(usage: openai_pb2.Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def event(payload: dict[str, Any]) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(
        content_type="text/event-stream", data=b"data: " + json_bytes(payload) + b"\n\n"
    )


def envelope(data: Any) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(
        content_type="application/json",
        data=json_bytes({"code": 200, "message": "success", "data": data}),
    )


DONE = httpbody_pb2.HttpBody(content_type="text/event-stream", data=b"data: [DONE]\n\n")
