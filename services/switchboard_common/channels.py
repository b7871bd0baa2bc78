"""Client channels to other Switchboard services: plaintext, or mutual TLS when
the process has certificates (switchboard_common.tls)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from switchboard_common.server import CHANNEL_OPTIONS
from switchboard_common.tls import TlsFiles


def channel(
    address: str,
    tls: TlsFiles | None,
    options: Sequence[tuple[str, int | str]] = CHANNEL_OPTIONS,
) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(address, options=list(options))
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=list(options))
