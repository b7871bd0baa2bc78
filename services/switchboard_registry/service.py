"""RegistryService: CRUD over the registry's database for admins (the
/v1/admin/… routes at the edge), and the snapshot stream routers follow."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import grpc

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.config import load_config
from switchboard_common.logs import log_fields
from switchboard_common.server import Mounted
from switchboard_common.settings import Settings
from switchboard_registry import load_balancing, service_settings
from switchboard_registry import operations as ops
from switchboard_registry.bootstrap import apply_config
from switchboard_registry.store import (
    ALERT_RULES,
    DEPLOYMENTS,
    KEYS,
    MODELS,
    PROVIDERS,
    SERVICE_SETTINGS,
    Store,
)
from switchboard_registry.validation import invalid

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["RegistryService"]
SNAPSHOT_SERVICE = pb.DESCRIPTOR.services_by_name["RegistrySnapshotService"]
Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# How often a watcher looks for writes made by another registry replica.
POLL_S = 1.0


def page(
    items: Sequence[T], size: int, token: str, key: Callable[[T], str]
) -> tuple[list[T], str, int]:
    """Keyset paging over items sorted by key: the token is the last key served."""
    if size < 0:
        raise invalid("page_size", "must be 0 (the default) or more")
    size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = ""
    if token:
        try:
            padded = token.encode() + b"=" * (-len(token) % 4)
            after = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise invalid("page_token", "is not a token from a previous page") from None
    rest = [item for item in items if key(item) > after] if after else list(items)
    chunk = rest[:size]
    if len(rest) <= size:
        return chunk, "", len(items)
    next_token = base64.urlsafe_b64encode(key(chunk[-1]).encode()).decode().rstrip("=")
    return chunk, next_token, len(items)


class RegistryServicer(
    registry_pb2_grpc.RegistryServiceServicer, registry_pb2_grpc.RegistrySnapshotServiceServicer
):
    """Every RegistryService method is ADMIN and every RegistrySnapshotService
    method INTERNAL (protos): the access policy checks callers before these run."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.draining = asyncio.Event()

    # -- providers -------------------------------------------------------------

    async def CreateProvider(
        self, request: pb.CreateProviderRequest, context: Context
    ) -> pb.CreateProviderResponse:
        created = await self.store.write(lambda tx: ops.create_provider(tx, request.provider))
        return pb.CreateProviderResponse(provider=created)

    async def GetProvider(
        self, request: pb.GetProviderRequest, context: Context
    ) -> pb.GetProviderResponse:
        return pb.GetProviderResponse(provider=await self.store.get(PROVIDERS, request.name))

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Context
    ) -> pb.ListProvidersResponse:
        items = [
            p
            for p in await self.store.list_all(PROVIDERS)
            if not request.kind or p.kind == request.kind
        ]
        chunk, token, total = page(items, request.page_size, request.page_token, _name)
        return pb.ListProvidersResponse(providers=chunk, next_page_token=token, total_size=total)

    async def UpdateProvider(
        self, request: pb.UpdateProviderRequest, context: Context
    ) -> pb.UpdateProviderResponse:
        paths = ops.mask_paths(request.provider, request.update_mask, "provider")
        updated = await self.store.write(
            lambda tx: ops.update_provider(tx, request.provider, paths)
        )
        return pb.UpdateProviderResponse(provider=updated)

    async def DeleteProvider(
        self, request: pb.DeleteProviderRequest, context: Context
    ) -> pb.DeleteProviderResponse:
        await self.store.write(lambda tx: ops.delete_provider(tx, request.name, request.etag))
        return pb.DeleteProviderResponse()

    # -- models ------------------------------------------------------------------

    async def CreateModel(
        self, request: pb.CreateModelRequest, context: Context
    ) -> pb.CreateModelResponse:
        created = await self.store.write(lambda tx: ops.create_model(tx, request.model))
        return pb.CreateModelResponse(model=created)

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=await self.store.get(MODELS, request.name))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        items = [
            m
            for m in await self.store.list_all(MODELS)
            if (request.status != pb.ONLINE_FILTER_ONLINE or m.online)
            and (request.status != pb.ONLINE_FILTER_OFFLINE or not m.online)
            and (not request.kind or m.kind == request.kind)
            and (not request.tag or request.tag in m.tags)
            and (not request.provider or any(d.provider == request.provider for d in m.deployments))
        ]
        chunk, token, total = page(items, request.page_size, request.page_token, _name)
        return pb.ListModelsResponse(models=chunk, next_page_token=token, total_size=total)

    async def UpdateModel(
        self, request: pb.UpdateModelRequest, context: Context
    ) -> pb.UpdateModelResponse:
        paths = ops.mask_paths(request.model, request.update_mask, "model")
        updated = await self.store.write(lambda tx: ops.update_model(tx, request.model, paths))
        return pb.UpdateModelResponse(model=updated)

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: Context
    ) -> pb.DeleteModelResponse:
        await self.store.write(lambda tx: ops.delete_model(tx, request.name, request.etag))
        return pb.DeleteModelResponse()

    # -- deployments ----------------------------------------------------------------

    async def CreateDeployment(
        self, request: pb.CreateDeploymentRequest, context: Context
    ) -> pb.CreateDeploymentResponse:
        created = await self.store.write(lambda tx: ops.create_deployment(tx, request.deployment))
        return pb.CreateDeploymentResponse(deployment=created)

    async def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: Context
    ) -> pb.ListDeploymentsResponse:
        items = [
            d
            for d in await self.store.list_all(DEPLOYMENTS)
            if (not request.model or d.model == request.model)
            and (not request.provider or d.provider == request.provider)
        ]
        chunk, token, total = page(items, request.page_size, request.page_token, lambda d: d.id)
        return pb.ListDeploymentsResponse(
            deployments=chunk, next_page_token=token, total_size=total
        )

    async def UpdateDeployment(
        self, request: pb.UpdateDeploymentRequest, context: Context
    ) -> pb.UpdateDeploymentResponse:
        paths = ops.mask_paths(request.deployment, request.update_mask, "deployment")
        updated = await self.store.write(
            lambda tx: ops.update_deployment(tx, request.deployment, paths)
        )
        return pb.UpdateDeploymentResponse(deployment=updated)

    async def DeleteDeployment(
        self, request: pb.DeleteDeploymentRequest, context: Context
    ) -> pb.DeleteDeploymentResponse:
        await self.store.write(lambda tx: ops.delete_deployment(tx, request.id, request.etag))
        return pb.DeleteDeploymentResponse()

    # -- API keys ----------------------------------------------------------------------

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        secret = ops.new_secret()
        created = await self.store.write(
            lambda tx: ops.create_key(
                tx,
                request.key,
                secret_sha256=ops.sha256_hex(secret),
                display_prefix=secret[: ops.DISPLAY_PREFIX_LENGTH],
            )
        )
        log.info("API key created", extra=log_fields(key=created.name))
        return pb.CreateApiKeyResponse(key=created, secret=secret)

    async def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: Context
    ) -> pb.ListApiKeysResponse:
        items = [
            k for k in await self.store.list_all(KEYS) if request.include_revoked or not k.revoked
        ]
        chunk, token, total = page(items, request.page_size, request.page_token, _name)
        return pb.ListApiKeysResponse(keys=chunk, next_page_token=token, total_size=total)

    async def UpdateApiKey(
        self, request: pb.UpdateApiKeyRequest, context: Context
    ) -> pb.UpdateApiKeyResponse:
        paths = ops.mask_paths(request.key, request.update_mask, "key")
        updated = await self.store.write(lambda tx: ops.update_key(tx, request.key, paths))
        return pb.UpdateApiKeyResponse(key=updated)

    async def RevokeApiKey(
        self, request: pb.RevokeApiKeyRequest, context: Context
    ) -> pb.RevokeApiKeyResponse:
        revoked = await self.store.write(lambda tx: ops.revoke_key(tx, request.name))
        log.info("API key revoked", extra=log_fields(key=revoked.name))
        return pb.RevokeApiKeyResponse(key=revoked)

    # -- defaults and alert rules -----------------------------------------------------------

    async def SetDefaultModel(
        self, request: pb.SetDefaultModelRequest, context: Context
    ) -> pb.SetDefaultModelResponse:
        default = await self.store.write(lambda tx: ops.set_default(tx, request.use, request.model))
        return pb.SetDefaultModelResponse(default_model=default)

    async def ListDefaultModels(
        self, request: pb.ListDefaultModelsRequest, context: Context
    ) -> pb.ListDefaultModelsResponse:
        return pb.ListDefaultModelsResponse(defaults=await self.store.defaults())

    async def SetLoadBalancing(
        self, request: pb.SetLoadBalancingRequest, context: Context
    ) -> pb.SetLoadBalancingResponse:
        lb = await self.store.write(
            lambda tx: load_balancing.set_load_balancing(tx, request.load_balancing)
        )
        return pb.SetLoadBalancingResponse(load_balancing=lb)

    async def GetLoadBalancing(
        self, request: pb.GetLoadBalancingRequest, context: Context
    ) -> pb.GetLoadBalancingResponse:
        return pb.GetLoadBalancingResponse(load_balancing=await self.store.load_balancing())

    async def SetServiceSettings(
        self, request: pb.SetServiceSettingsRequest, context: Context
    ) -> pb.SetServiceSettingsResponse:
        settings = await self.store.write(
            lambda tx: service_settings.set_service_settings(tx, request.settings)
        )
        return pb.SetServiceSettingsResponse(settings=settings)

    async def GetServiceSettings(
        self, request: pb.GetServiceSettingsRequest, context: Context
    ) -> pb.GetServiceSettingsResponse:
        stored = await self.store.setting(SERVICE_SETTINGS, pb.ServiceSettings())
        return pb.GetServiceSettingsResponse(settings=stored)

    async def CreateAlertRule(
        self, request: pb.CreateAlertRuleRequest, context: Context
    ) -> pb.CreateAlertRuleResponse:
        created = await self.store.write(lambda tx: ops.create_alert_rule(tx, request.rule))
        return pb.CreateAlertRuleResponse(rule=created)

    async def ListAlertRules(
        self, request: pb.ListAlertRulesRequest, context: Context
    ) -> pb.ListAlertRulesResponse:
        return pb.ListAlertRulesResponse(rules=await self.store.list_all(ALERT_RULES))

    async def UpdateAlertRule(
        self, request: pb.UpdateAlertRuleRequest, context: Context
    ) -> pb.UpdateAlertRuleResponse:
        updated = await self.store.write(lambda tx: ops.update_alert_rule(tx, request.rule))
        return pb.UpdateAlertRuleResponse(rule=updated)

    async def DeleteAlertRule(
        self, request: pb.DeleteAlertRuleRequest, context: Context
    ) -> pb.DeleteAlertRuleResponse:
        await self.store.write(lambda tx: ops.delete_alert_rule(tx, request.name))
        return pb.DeleteAlertRuleResponse()

    # -- internal: what routers follow ------------------------------------------------------

    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: Context
    ) -> pb.GetSnapshotResponse:
        return pb.GetSnapshotResponse(snapshot=await self.store.snapshot())

    async def WatchSnapshot(
        self, request: pb.WatchSnapshotRequest, context: Context
    ) -> AsyncIterator[pb.WatchSnapshotResponse]:
        sent = request.known_version
        changes = await self.store.changes_since(sent) if sent else None
        if changes is None:
            snapshot = await self.store.snapshot()
            yield pb.WatchSnapshotResponse(version=snapshot.version, snapshot=snapshot)
            sent = snapshot.version
            changes = []
        while not self.draining.is_set():
            for version, change in changes:
                yield pb.WatchSnapshotResponse(version=version, change=change)
                sent = version
            waiter = asyncio.ensure_future(self.store.wait_changed(sent, POLL_S))
            drained = asyncio.ensure_future(self.draining.wait())
            await asyncio.wait({waiter, drained}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            drained.cancel()
            if self.draining.is_set():
                return
            changes = await self.store.changes_since(sent)
            if changes is None:
                snapshot = await self.store.snapshot()
                yield pb.WatchSnapshotResponse(version=snapshot.version, snapshot=snapshot)
                sent = snapshot.version
                changes = []


def _name(item: Any) -> str:
    return str(item.name)


async def setup(server: grpc.aio.Server, settings: Settings) -> Mounted:
    store = await Store.open(settings.registry_url())
    await apply_config(store, load_config(settings.config_path))
    servicer = RegistryServicer(store)
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    registry_pb2_grpc.add_RegistrySnapshotServiceServicer_to_server(servicer, server)
    return Mounted(
        [SERVICE.full_name, SNAPSHOT_SERVICE.full_name],
        [store.close],
        drainers=[servicer.draining.set],
    )
