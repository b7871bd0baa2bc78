"""Client channels to other Switchboard services: plaintext, or mutual TLS when
the process has certificates (switchboard_common.tls); they carry the trace."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from switchboard_common.server import CHANNEL_OPTIONS
from switchboard_common.tls import TlsFiles
from switchboard_common.tracing import client_interceptors


def channel(
    address: str,
    tls: TlsFiles | None,
    options: Sequence[tuple[str, int | str]] = CHANNEL_OPTIONS,
) -> grpc.aio.Channel:
    # The caller's trace travels in the metadata (no interceptors while tracing is off).
    interceptors = client_interceptors() or None
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        address, tls.channel_credentials(), options=list(options), interceptors=interceptors
    )
