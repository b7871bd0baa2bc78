"""Every error reason leaves each seed API in that API's shape, with the status
its document gives (and a 500 for what the documents do not foresee)."""

from __future__ import annotations

import json

import pytest

from switchboard.common.v1 import errors_pb2
from switchboard_common.errors import (
    ERROR_BODY_HEADER,
    HTTP_STATUS_HEADER,
    R,
    Reason,
    SwitchboardError,
)
from switchboard_common.logs import request_id_var
from switchboard_router.surfaces import llm_models, multi_llm_shapes, qwen_shapes, vision_chat
from switchboard_router.surfaces.surface import SurfaceError, rendered

REASONS = [r for r in errors_pb2.ErrorReason.values() if r != R.ERROR_REASON_UNSPECIFIED]


@pytest.mark.parametrize("reason", REASONS, ids=errors_pb2.ErrorReason.Name)
def test_every_reason_renders_in_each_shape(reason: Reason) -> None:
    err = SwitchboardError(reason, "what happened", retry_after_s=1.5)
    status, body = qwen_shapes.error(err)
    assert set(body) == {"code", "message", "data"}
    assert body["code"] == status
    assert status in {400, 401, 404, 429, 500, 502, 504}
    status, body = multi_llm_shapes.error(err, model="m")
    assert set(body["error"]) == {"code", "message", "details", "request_id"}
    assert (status, body["error"]["code"]) in {
        (400, "INVALID_REQUEST"), (401, "UNAUTHORIZED"), (404, "MODEL_NOT_FOUND"),
        (429, "RATE_LIMIT_EXCEEDED"), (503, "MODEL_UNAVAILABLE"), (500, "INTERNAL_ERROR"),
    }  # fmt: skip
    assert body["error"]["details"]["retry_after"] == 2
    status, body = vision_chat.error(err)
    assert body == {"detail": "what happened"}
    status, body = llm_models.error(err)
    assert {"code", "message", "data", "error"} <= set(body)


@pytest.mark.parametrize(
    ("reason", "status", "message"),
    [
        (R.ERROR_REASON_MISSING_API_KEY, 401, "未授权:API Key缺失或无效"),
        (R.ERROR_REASON_MODEL_NOT_FOUND, 400, "无效的模型名称或模型类型不匹配"),
        (R.ERROR_REASON_RATE_LIMITED, 429, "请求频率超限"),
        (R.ERROR_REASON_UPSTREAM_ERROR, 502, "百炼平台返回错误:boom"),
        (R.ERROR_REASON_UPSTREAM_TIMEOUT, 504, "请求超时"),
        (R.ERROR_REASON_INTERNAL, 500, "服务器错误"),
    ],
)
def test_qwen_codes_and_messages(reason: Reason, status: int, message: str) -> None:
    assert qwen_shapes.error(SwitchboardError(reason, "boom")) == (
        status,
        {"code": status, "message": message, "data": None},
    )


def test_internal_errors_do_not_leak_their_message() -> None:
    token = request_id_var.set("req_12345")
    try:
        status, body = multi_llm_shapes.error(SwitchboardError(R.ERROR_REASON_INTERNAL, "secret"))
    finally:
        request_id_var.reset(token)
    assert status == 500
    assert body["error"]["message"] == "internal error"
    assert body["error"]["request_id"] == "req_12345"


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT, 503),
        (R.ERROR_REASON_MODEL_NOT_FOUND, 503),
        (R.ERROR_REASON_UPSTREAM_ERROR, 500),
        (R.ERROR_REASON_UPSTREAM_TIMEOUT, 500),
        (R.ERROR_REASON_INVALID_API_KEY, 401),
        (R.ERROR_REASON_RATE_LIMITED, 429),
    ],
)
def test_vision_chat_statuses(reason: Reason, status: int) -> None:
    assert vision_chat.error(SwitchboardError(reason, "x"))[0] == status


def test_a_surface_error_travels_as_the_edges_status_and_body() -> None:
    with pytest.raises(SurfaceError) as caught, rendered(vision_chat.error):
        raise SwitchboardError(R.ERROR_REASON_UPSTREAM_ERROR, "the model failed", retry_after_s=3)
    err = caught.value
    assert err.reason == R.ERROR_REASON_UPSTREAM_ERROR
    metadata = dict(err.edge_metadata())
    assert metadata[HTTP_STATUS_HEADER] == "500"
    assert json.loads(metadata[ERROR_BODY_HEADER]) == {"detail": "the model failed"}
    assert metadata["retry-after"] == "3"


def test_an_unexpected_exception_is_rendered_without_its_text() -> None:
    with pytest.raises(SurfaceError) as caught, rendered(vision_chat.error):
        raise RuntimeError("database password is hunter2")
    assert caught.value.body == {"detail": "internal error"}
    assert caught.value.status == 500
