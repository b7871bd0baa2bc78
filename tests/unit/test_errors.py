"""SwitchboardError's renderings: gRPC code, HTTP status, OpenAI body, Status, edge headers."""

from __future__ import annotations

import json

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from switchboard.common.v1 import errors_pb2
from switchboard_common.errors import (
    DOMAIN,
    ERROR_BODY_HEADER,
    HTTP_STATUS_HEADER,
    R,
    Reason,
    SwitchboardError,
    from_status,
    reason_name,
)

ALL_REASONS = [r for r in errors_pb2.ErrorReason.values() if r != R.ERROR_REASON_UNSPECIFIED]
C = grpc.StatusCode

# The contract (protos/switchboard/common/v1/errors.proto comments): gRPC code and HTTP status.
CONTRACT: list[tuple[Reason, grpc.StatusCode, int]] = [
    (R.ERROR_REASON_INVALID_REQUEST, C.INVALID_ARGUMENT, 400),
    (R.ERROR_REASON_MISSING_API_KEY, C.UNAUTHENTICATED, 401),
    (R.ERROR_REASON_INVALID_API_KEY, C.UNAUTHENTICATED, 401),
    (R.ERROR_REASON_MODEL_NOT_ALLOWED, C.PERMISSION_DENIED, 403),
    (R.ERROR_REASON_MODEL_NOT_FOUND, C.NOT_FOUND, 404),
    (R.ERROR_REASON_REQUEST_TOO_LARGE, C.INVALID_ARGUMENT, 413),
    (R.ERROR_REASON_RATE_LIMITED, C.RESOURCE_EXHAUSTED, 429),
    (R.ERROR_REASON_BUDGET_EXCEEDED, C.RESOURCE_EXHAUSTED, 429),
    (R.ERROR_REASON_UPSTREAM_ERROR, C.UNAVAILABLE, 502),
    (R.ERROR_REASON_UPSTREAM_AUTH, C.FAILED_PRECONDITION, 502),
    (R.ERROR_REASON_UPSTREAM_RATE_LIMITED, C.RESOURCE_EXHAUSTED, 429),
    (R.ERROR_REASON_UPSTREAM_TIMEOUT, C.DEADLINE_EXCEEDED, 504),
    (R.ERROR_REASON_UPSTREAM_INVALID_REQUEST, C.INVALID_ARGUMENT, 400),
    (R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT, C.UNAVAILABLE, 503),
    (R.ERROR_REASON_NOT_FOUND, C.NOT_FOUND, 404),
    (R.ERROR_REASON_ALREADY_EXISTS, C.ALREADY_EXISTS, 409),
    (R.ERROR_REASON_CONFLICT, C.ABORTED, 409),
    (R.ERROR_REASON_FAILED_PRECONDITION, C.FAILED_PRECONDITION, 400),
    (R.ERROR_REASON_NOT_IMPLEMENTED, C.UNIMPLEMENTED, 501),
    (R.ERROR_REASON_SERVICE_UNAVAILABLE, C.UNAVAILABLE, 503),
    (R.ERROR_REASON_CANCELLED, C.CANCELLED, 499),
    (R.ERROR_REASON_INTERNAL, C.INTERNAL, 500),
    (R.ERROR_REASON_PERMISSION_DENIED, C.PERMISSION_DENIED, 403),
    (R.ERROR_REASON_MODEL_NOT_RUNNING, C.UNAVAILABLE, 503),
    (R.ERROR_REASON_INSUFFICIENT_RESOURCES, C.RESOURCE_EXHAUSTED, 409),
]


def _name(reason: Reason) -> str:
    return errors_pb2.ErrorReason.Name(reason)


def test_contract_table_covers_every_reason() -> None:
    assert sorted(r for r, _, _ in CONTRACT) == sorted(ALL_REASONS)


@pytest.mark.parametrize("reason", ALL_REASONS, ids=_name)
def test_every_reason_has_a_mapping(reason: Reason) -> None:
    err = SwitchboardError(reason, "boom")
    assert isinstance(err.code, grpc.StatusCode)
    assert 400 <= err.http_status <= 599
    body = err.openai_body()["error"]
    assert isinstance(body, dict)
    assert body["type"]
    assert body["code"] == _name(reason).removeprefix("ERROR_REASON_").lower()


@pytest.mark.parametrize(
    ("reason", "code", "http"), CONTRACT, ids=[_name(r) for r, _, _ in CONTRACT]
)
def test_reason_maps_to_contract_code_and_status(
    reason: Reason, code: grpc.StatusCode, http: int
) -> None:
    err = SwitchboardError(reason, "boom")
    assert err.code == code
    assert err.http_status == http


@pytest.mark.parametrize(
    ("reason", "openai_type"),
    [
        (R.ERROR_REASON_INVALID_REQUEST, "invalid_request_error"),
        (R.ERROR_REASON_INVALID_API_KEY, "authentication_error"),
        (R.ERROR_REASON_MODEL_NOT_ALLOWED, "permission_error"),
        (R.ERROR_REASON_RATE_LIMITED, "rate_limit_error"),
        (R.ERROR_REASON_BUDGET_EXCEEDED, "insufficient_quota"),
        (R.ERROR_REASON_INTERNAL, "server_error"),
    ],
)
def test_openai_error_types(reason: Reason, openai_type: str) -> None:
    body = SwitchboardError(reason, "x").openai_body()["error"]
    assert isinstance(body, dict)
    assert body["type"] == openai_type


def test_reason_name_strips_prefix() -> None:
    assert reason_name(R.ERROR_REASON_MODEL_NOT_FOUND) == "MODEL_NOT_FOUND"
    assert SwitchboardError(R.ERROR_REASON_RATE_LIMITED, "x").reason_name == "RATE_LIMITED"


def test_openai_body_shape() -> None:
    err = SwitchboardError(R.ERROR_REASON_INVALID_REQUEST, "bad n", param="n")
    assert err.openai_body() == {
        "error": {
            "message": "bad n",
            "type": "invalid_request_error",
            "code": "invalid_request",
            "param": "n",
        }
    }
    body = SwitchboardError(R.ERROR_REASON_INTERNAL, "oops").openai_body()["error"]
    assert isinstance(body, dict)
    assert list(body) == ["message", "type", "code", "param"]
    assert body["param"] is None


def test_to_status_carries_error_info_and_code() -> None:
    err = SwitchboardError(
        R.ERROR_REASON_MODEL_NOT_FOUND, "no such model", metadata={"model": "gpt-x"}
    )
    status = err.to_status()
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == "no such model"
    assert len(status.details) == 1
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "MODEL_NOT_FOUND",
        DOMAIN,
        {"model": "gpt-x"},
    )


@pytest.mark.parametrize("retry_after", [None, 0.0, 1.0, 2.5, 30.0, 0.25])
@pytest.mark.parametrize("param", [None, "messages[0].content"])
def test_status_round_trip_preserves_everything(
    retry_after: float | None, param: str | None
) -> None:
    err = SwitchboardError(
        R.ERROR_REASON_RATE_LIMITED,
        "slow down ✋",
        param=param,
        retry_after_s=retry_after,
        metadata={"key": "team-a"},
    )
    wire = status_pb2.Status.FromString(err.to_status().SerializeToString())
    back = from_status(wire)
    assert back.reason == err.reason
    assert back.message == err.message
    assert back.param == param
    assert back.metadata == {"key": "team-a"}
    if retry_after is None:
        assert back.retry_after_s is None
    else:
        assert back.retry_after_s == pytest.approx(retry_after, abs=1e-6)


def test_from_status_without_details_is_internal() -> None:
    back = from_status(status_pb2.Status(code=13, message="mystery"))
    assert back.reason == R.ERROR_REASON_INTERNAL
    assert back.message == "mystery"
    assert back.param is None
    assert back.retry_after_s is None


def test_from_status_unknown_reason_name_is_internal() -> None:
    status = status_pb2.Status(code=2, message="m")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="NEW_THING", domain=DOMAIN))
    assert from_status(status).reason == R.ERROR_REASON_INTERNAL


def _headers(err: SwitchboardError) -> dict[str, str]:
    items = err.edge_metadata()
    assert len({k for k, _ in items}) == len(items)
    return dict(items)


def test_edge_metadata_carries_status_and_body() -> None:
    err = SwitchboardError(R.ERROR_REASON_REQUEST_TOO_LARGE, "too big", param="messages")
    headers = _headers(err)
    assert headers[HTTP_STATUS_HEADER] == "413"
    assert json.loads(headers[ERROR_BODY_HEADER]) == err.openai_body()
    assert "retry-after" not in headers


def test_edge_metadata_is_printable_ascii_for_non_ascii_message() -> None:
    message = "modèle «introuvable» 模型 🚫\nnext line"
    headers = _headers(SwitchboardError(R.ERROR_REASON_MODEL_NOT_FOUND, message, param="modèle"))
    for key, value in headers.items():
        assert key.isascii()
        assert key == key.lower()
        assert all(0x20 <= ord(ch) < 0x7F for ch in value), (key, value)
    body = json.loads(headers[ERROR_BODY_HEADER])
    assert body["error"]["message"] == message
    assert body["error"]["param"] == "modèle"


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (7.0, "7"), (30.6, "31")]
)
def test_edge_metadata_includes_retry_after(retry_after: float, header: str) -> None:
    err = SwitchboardError(R.ERROR_REASON_RATE_LIMITED, "slow", retry_after_s=retry_after)
    assert _headers(err)["retry-after"] == header


@pytest.mark.parametrize("retry_after", [1.4, 2.5])
def test_edge_retry_after_is_never_shorter_than_asked(retry_after: float) -> None:
    err = SwitchboardError(R.ERROR_REASON_RATE_LIMITED, "slow", retry_after_s=retry_after)
    assert int(_headers(err)["retry-after"]) >= retry_after
