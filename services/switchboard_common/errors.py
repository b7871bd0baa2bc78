"""One error type for every service, and its three renderings: a gRPC status
code, a google.rpc.Status with ErrorInfo (and RetryInfo), and the OpenAI error
body plus HTTP status that the edge answers with.

The edge cannot derive 413 or 502 from a gRPC code alone, so the error also
travels as two trailing-metadata entries that deploy/envoy/edge.lua turns into
the HTTP status and body, then strips.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TypeAlias

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from switchboard.common.v1 import errors_pb2

DOMAIN = "switchboard"
HTTP_STATUS_HEADER = "x-switchboard-http-status"
ERROR_BODY_HEADER = "x-switchboard-error"

Reason: TypeAlias = errors_pb2.ErrorReason.ValueType
R = errors_pb2.ErrorReason


@dataclass(frozen=True)
class _Mapping:
    code: grpc.StatusCode
    http: int
    type: str


_MAPPINGS: dict[Reason, _Mapping] = {
    R.ERROR_REASON_INVALID_REQUEST: _Mapping(
        grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"
    ),
    R.ERROR_REASON_MISSING_API_KEY: _Mapping(
        grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"
    ),
    R.ERROR_REASON_INVALID_API_KEY: _Mapping(
        grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"
    ),
    R.ERROR_REASON_MODEL_NOT_ALLOWED: _Mapping(
        grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"
    ),
    R.ERROR_REASON_MODEL_NOT_FOUND: _Mapping(
        grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error"
    ),
    R.ERROR_REASON_REQUEST_TOO_LARGE: _Mapping(
        grpc.StatusCode.INVALID_ARGUMENT, 413, "invalid_request_error"
    ),
    R.ERROR_REASON_RATE_LIMITED: _Mapping(
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"
    ),
    R.ERROR_REASON_BUDGET_EXCEEDED: _Mapping(
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "insufficient_quota"
    ),
    R.ERROR_REASON_UPSTREAM_ERROR: _Mapping(grpc.StatusCode.UNAVAILABLE, 502, "upstream_error"),
    R.ERROR_REASON_UPSTREAM_AUTH: _Mapping(
        grpc.StatusCode.FAILED_PRECONDITION, 502, "upstream_error"
    ),
    R.ERROR_REASON_UPSTREAM_RATE_LIMITED: _Mapping(
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"
    ),
    R.ERROR_REASON_UPSTREAM_TIMEOUT: _Mapping(
        grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"
    ),
    R.ERROR_REASON_UPSTREAM_INVALID_REQUEST: _Mapping(
        grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"
    ),
    R.ERROR_REASON_NO_HEALTHY_DEPLOYMENT: _Mapping(
        grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"
    ),
    R.ERROR_REASON_NOT_FOUND: _Mapping(grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    R.ERROR_REASON_ALREADY_EXISTS: _Mapping(grpc.StatusCode.ALREADY_EXISTS, 409, "conflict_error"),
    R.ERROR_REASON_CONFLICT: _Mapping(grpc.StatusCode.ABORTED, 409, "conflict_error"),
    R.ERROR_REASON_FAILED_PRECONDITION: _Mapping(
        grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"
    ),
    R.ERROR_REASON_NOT_IMPLEMENTED: _Mapping(
        grpc.StatusCode.UNIMPLEMENTED, 501, "not_implemented_error"
    ),
    R.ERROR_REASON_SERVICE_UNAVAILABLE: _Mapping(
        grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"
    ),
    R.ERROR_REASON_CANCELLED: _Mapping(grpc.StatusCode.CANCELLED, 499, "cancelled"),
    R.ERROR_REASON_INTERNAL: _Mapping(grpc.StatusCode.INTERNAL, 500, "server_error"),
    R.ERROR_REASON_PERMISSION_DENIED: _Mapping(
        grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"
    ),
    R.ERROR_REASON_MODEL_NOT_RUNNING: _Mapping(
        grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"
    ),
    R.ERROR_REASON_INSUFFICIENT_RESOURCES: _Mapping(
        grpc.StatusCode.RESOURCE_EXHAUSTED, 409, "insufficient_resources"
    ),
}

_BY_NAME: dict[str, Reason] = {
    errors_pb2.ErrorReason.Name(r).removeprefix("ERROR_REASON_"): r for r in _MAPPINGS
}


def reason_name(reason: Reason) -> str:
    return errors_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


class SwitchboardError(Exception):
    """An error meant for the caller. The message must be safe to show: no secrets."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s
        self.metadata = metadata or {}

    @property
    def code(self) -> grpc.StatusCode:
        return _MAPPINGS[self.reason].code

    @property
    def http_status(self) -> int:
        return _MAPPINGS[self.reason].http

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)

    def openai_body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": _MAPPINGS[self.reason].type,
                "code": self.reason_name.lower(),
                "param": self.param,
            }
        }

    def to_status(self) -> status_pb2.Status:
        # The field at fault travels in ErrorInfo too (and in BadRequest below):
        # ErrorInfo is the one detail every client is told to read.
        metadata = self.metadata if self.param is None else {**self.metadata, "param": self.param}
        info = error_details_pb2.ErrorInfo(
            reason=self.reason_name, domain=DOMAIN, metadata=metadata
        )
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        status.details.add().Pack(info)
        if self.retry_after_s is not None:
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=int(self.retry_after_s),
                    nanos=int((self.retry_after_s % 1) * 1e9),
                )
            )
            status.details.add().Pack(retry)
        if self.param is not None:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=self.param, description=self.message
                    )
                ]
            )
            status.details.add().Pack(bad)
        return status

    def edge_metadata(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata the edge turns into the HTTP status and OpenAI body."""
        # ensure_ascii keeps the header value printable ASCII whatever the message holds.
        body = json.dumps(self.openai_body(), ensure_ascii=True, separators=(",", ":"))
        items = [(HTTP_STATUS_HEADER, str(self.http_status)), (ERROR_BODY_HEADER, body)]
        if self.retry_after_s is not None:
            # Round up: a client that waits exactly this long must not be early.
            items.append(("retry-after", str(max(1, math.ceil(self.retry_after_s)))))
        return tuple(items)


def from_status(status: status_pb2.Status) -> SwitchboardError:
    """Rebuild the error a downstream service raised, to pass it on unchanged."""
    reason: Reason = R.ERROR_REASON_INTERNAL
    retry_after: float | None = None
    param: str | None = None
    metadata: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = _BY_NAME.get(info.reason, reason)
            # "param" is rebuilt from BadRequest; to_status adds it to ErrorInfo again.
            metadata = {k: v for k, v in info.metadata.items() if k != "param"}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                param = bad.field_violations[0].field
    return SwitchboardError(
        reason, status.message, param=param, retry_after_s=retry_after, metadata=metadata
    )


_CODE_FALLBACK: dict[grpc.StatusCode, Reason] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: R.ERROR_REASON_UPSTREAM_TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: R.ERROR_REASON_SERVICE_UNAVAILABLE,
    grpc.StatusCode.CANCELLED: R.ERROR_REASON_CANCELLED,
    grpc.StatusCode.INVALID_ARGUMENT: R.ERROR_REASON_INVALID_REQUEST,
    grpc.StatusCode.NOT_FOUND: R.ERROR_REASON_NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED: R.ERROR_REASON_NOT_IMPLEMENTED,
}


def from_rpc_error(exc: grpc.aio.AioRpcError, service: str) -> SwitchboardError:
    """Turn a failed call to another Switchboard service into our error type."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return from_status(status)
    reason = _CODE_FALLBACK.get(exc.code(), R.ERROR_REASON_INTERNAL)
    if exc.code() == grpc.StatusCode.UNAVAILABLE:
        return SwitchboardError(reason, f"the {service} service is unavailable")
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return SwitchboardError(reason, f"the {service} service did not answer in time")
    return SwitchboardError(reason, exc.details() or f"the {service} service failed")
