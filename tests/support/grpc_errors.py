"""Read the google.rpc.Status a Switchboard service attached to a failed call."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def rich_status(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    raise AssertionError(f"no google.rpc.Status on {exc.code()}: {exc.details()}")


def reason(exc: grpc.aio.AioRpcError) -> str:
    for detail in rich_status(exc).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason: str = info.reason
            return reason
    raise AssertionError("no ErrorInfo")


def retry_delay_s(exc: grpc.aio.AioRpcError) -> float | None:
    for detail in rich_status(exc).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: float = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return delay
    return None
