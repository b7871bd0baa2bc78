"""Answer RPCs a service does not serve yet with a clear NOT_IMPLEMENTED (and
ErrorInfo), instead of grpc's bare "Method not implemented!"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from switchboard_common.errors import R, SwitchboardError


def fill_unimplemented(cls: type, service: ServiceDescriptor, why: str) -> None:
    filled = set()
    for method in service.methods:
        if method.name in cls.__dict__:
            continue
        message = f"{service.name}.{method.name} is not available yet: {why}"
        handler = _streaming(message) if method.server_streaming else _unary(message)
        setattr(cls, method.name, handler)
        filled.add(method.name)
    # The generated servicer is an ABC that computed its abstract set at class
    # creation; the methods set here count as implementations.
    abstract: frozenset[str] = getattr(cls, "__abstractmethods__", frozenset())
    cls.__abstractmethods__ = abstract - filled  # type: ignore[attr-defined]


def _unary(message: str) -> Any:
    async def handler(self: object, request: object, context: object) -> Any:
        raise SwitchboardError(R.ERROR_REASON_NOT_IMPLEMENTED, message)

    return handler


def _streaming(message: str) -> Any:
    async def handler(self: object, request: object, context: object) -> AsyncIterator[Any]:
        if message:  # always: the bare yield below only makes this an async generator
            raise SwitchboardError(R.ERROR_REASON_NOT_IMPLEMENTED, message)
        yield

    return handler
