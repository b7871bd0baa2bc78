"""How the router reaches its provider: the provider service over a gRPC
channel (SWITCHBOARD_PROVIDER_PLACEMENT=service, the default), or the
provider's own code in this process (router; embedded_provider.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import grpc

from switchboard.provider.v1 import provider_pb2_grpc
from switchboard_common.channels import channel as service_channel
from switchboard_common.config import SwitchboardConfig
from switchboard_common.env import SettingsError
from switchboard_common.settings import Settings

if TYPE_CHECKING:
    from switchboard_router.embedded_provider import EmbeddedProvider


@dataclass(frozen=True)
class ProviderLink:
    stub: provider_pb2_grpc.ProviderServiceAsyncStub
    # The channel the health monitor probes; None: the provider is in this process.
    channel: grpc.aio.Channel | None
    # Registry snapshots for a provider in this process (one over gRPC follows its own).
    reconfigure: Callable[[SwitchboardConfig, int], None] | None
    close: Callable[[], Awaitable[None]]


def embedded_provider() -> EmbeddedProvider:
    """The provider for SWITCHBOARD_PROVIDER_PLACEMENT=router. Imported only
    then: it needs the upstream SDKs, which a router image does not carry unless
    it was built with the provider's extra too (deploy/docker/Dockerfile)."""
    try:
        from switchboard_router.embedded_provider import EmbeddedProvider
    except ImportError as exc:
        raise SettingsError(
            "SWITCHBOARD_PROVIDER_PLACEMENT=router needs the provider's packages in the "
            f"router's environment (pip install 'switchboard[router,provider]'): {exc}"
        ) from None
    return EmbeddedProvider()


def provider_link(placement: str, settings: Settings) -> ProviderLink:
    if placement == "router":
        embedded = embedded_provider()
        # It answers as the stub does (embedded_provider.py).
        stub = cast("provider_pb2_grpc.ProviderServiceAsyncStub", embedded)
        return ProviderLink(stub, None, embedded.reconfigure, embedded.close)
    channel = service_channel(settings.address("provider"), settings.tls)
    return ProviderLink(
        provider_pb2_grpc.ProviderServiceStub(channel), channel, None, channel.close
    )
