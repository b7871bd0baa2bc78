"""The registry service on a real database, SQLite and the machine's
PostgreSQL alike: CRUD with field-named errors, etags, paging and filters,
admin auth, the config bootstrap rules, and the snapshot stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
import pytest_asyncio
from google.protobuf import field_mask_pb2

from switchboard.registry.v1 import registry_pb2 as pb
from switchboard.registry.v1 import registry_pb2_grpc
from switchboard_common.server import CHANNEL_OPTIONS
from tests.support.databases import registry_database
from tests.support.grpc_errors import reason
from tests.support.inprocess import services

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ADMIN_KEY = "registry-test-admin-key"
ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)
CONFIG: dict[str, Any] = {
    "providers": [{"name": "mock", "kind": "mock"}],
    "models": [
        {
            "name": "base-chat",
            "aliases": ["base"],
            "description": "from the file",
            "deployments": [{"provider": "mock", "model": "mock-echo"}],
        }
    ],
    "keys": [{"name": "file-key", "key_sha256": "ab" * 32}],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with registry_database(backend, tmp_path) as url:
        yield url


class Registry(NamedTuple):
    """The registry's two services: admin CRUD, and the snapshot services follow."""

    admin: registry_pb2_grpc.RegistryServiceAsyncStub
    snapshots: registry_pb2_grpc.RegistrySnapshotServiceAsyncStub


@contextlib.asynccontextmanager
async def registry(
    config: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database: str,
    admin_key: str | None = ADMIN_KEY,
) -> AsyncIterator[Registry]:
    monkeypatch.setenv("REGISTRY_DATABASE_URL", database)
    if admin_key is None:
        monkeypatch.delenv("SWITCHBOARD_ADMIN_KEY", raising=False)
    else:
        monkeypatch.setenv("SWITCHBOARD_ADMIN_KEY", admin_key)
    async with (
        services(config, tmp_path, monkeypatch, ("registry",)) as settings,
        grpc.aio.insecure_channel(settings.address("registry"), options=CHANNEL_OPTIONS) as ch,
    ):
        yield Registry(
            registry_pb2_grpc.RegistryServiceStub(ch),
            registry_pb2_grpc.RegistrySnapshotServiceStub(ch),
        )


@pytest_asyncio.fixture
async def stubs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> AsyncIterator[Registry]:
    async with registry(CONFIG, tmp_path, monkeypatch, database) as s:
        yield s


@pytest.fixture
def stub(stubs: Registry) -> registry_pb2_grpc.RegistryServiceAsyncStub:
    return stubs.admin


@pytest.fixture
def snapshots(stubs: Registry) -> registry_pb2_grpc.RegistrySnapshotServiceAsyncStub:
    return stubs.snapshots


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


async def test_crud_round_trip_with_etags(stub: registry_pb2_grpc.RegistryServiceAsyncStub) -> None:
    provider = (
        await stub.CreateProvider(
            pb.CreateProviderRequest(
                provider=pb.Provider(
                    name="local-vllm", kind=pb.PROVIDER_KIND_OPENAI, base_url="http://10.0.0.5/v1"
                )
            ),
            metadata=ADMIN,
        )
    ).provider
    assert provider.timeout_s == 60.0
    assert provider.etag
    model = (
        await stub.CreateModel(
            pb.CreateModelRequest(
                model=pb.Model(name="llama", aliases=["llama-3"], tags=["self-hosted"])
            ),
            metadata=ADMIN,
        )
    ).model
    # Unset online and kind mean a chat model that is online.
    assert model.online
    assert model.kind == pb.MODEL_KIND_CHAT
    assert not model.deployments
    deployment = (
        await stub.CreateDeployment(
            pb.CreateDeploymentRequest(
                deployment=pb.Deployment(
                    model="llama", provider="local-vllm", upstream_model="meta/llama-3-8b"
                )
            ),
            metadata=ADMIN,
        )
    ).deployment
    assert deployment.id.startswith("llama.local-vllm.meta-llama-3-8b")
    assert deployment.enabled
    assert deployment.weight == 1

    got = (await stub.GetModel(pb.GetModelRequest(name="llama-3"), metadata=ADMIN)).model
    assert got.name == "llama"
    assert [d.id for d in got.deployments] == [deployment.id]

    updated = (
        await stub.UpdateModel(
            pb.UpdateModelRequest(model=pb.Model(name="llama", online=False, etag=got.etag)),
            metadata=ADMIN,
        )
    ).model
    # No mask: only the populated field changed.
    assert not updated.online
    assert list(updated.tags) == ["self-hosted"]
    assert updated.etag != got.etag

    stale = await _error(
        stub.UpdateModel(
            pb.UpdateModelRequest(model=pb.Model(name="llama", description="x", etag=got.etag)),
            metadata=ADMIN,
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    assert reason(stale) == "CONFLICT"

    masked = (
        await stub.UpdateModel(
            pb.UpdateModelRequest(
                model=pb.Model(name="llama"),
                update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
            ),
            metadata=ADMIN,
        )
    ).model
    assert list(masked.tags) == []
    assert not masked.online

    await stub.DeleteDeployment(pb.DeleteDeploymentRequest(id=deployment.id), metadata=ADMIN)
    await stub.DeleteModel(pb.DeleteModelRequest(name="llama"), metadata=ADMIN)
    await stub.DeleteProvider(pb.DeleteProviderRequest(name="local-vllm"), metadata=ADMIN)
    gone = await _error(stub.GetModel(pb.GetModelRequest(name="llama"), metadata=ADMIN))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.CreateProviderRequest(provider=pb.Provider(name="p")), "provider.kind"),
        (
            pb.CreateProviderRequest(
                provider=pb.Provider(name="p", kind=pb.PROVIDER_KIND_OPENAI, base_url="ftp://x")
            ),
            "provider.base_url",
        ),
        (
            pb.CreateProviderRequest(
                provider=pb.Provider(name="p", kind=pb.PROVIDER_KIND_MOCK, api_key_env="sk-abc!")
            ),
            "provider.api_key_env",
        ),
        (pb.CreateModelRequest(model=pb.Model(name="a/b")), "model.name"),
        (pb.CreateModelRequest(model=pb.Model(name="m", fallbacks=["nope"])), "model.fallbacks[0]"),
        (
            pb.CreateModelRequest(model=pb.Model(name="m", pricing=pb.Pricing(input_per_1k=-1))),
            "model.pricing.input_per_1k",
        ),
        (
            pb.CreateDeploymentRequest(
                deployment=pb.Deployment(model="base-chat", provider="nope", upstream_model="x")
            ),
            "deployment.provider",
        ),
    ],
    ids=["kind", "base-url", "env-name", "name", "fallback", "price", "provider-ref"],
)
async def test_invalid_entities_name_the_field(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub, request_: Any, field: str
) -> None:
    methods: dict[type, Any] = {
        pb.CreateProviderRequest: stub.CreateProvider,
        pb.CreateModelRequest: stub.CreateModel,
        pb.CreateDeploymentRequest: stub.CreateDeployment,
    }
    method = methods[type(request_)]
    err = await _error(method(request_, metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(f"{field}:"), err.details()


async def test_conflicting_creates_are_already_exists(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    again = await _error(
        stub.CreateProvider(
            pb.CreateProviderRequest(provider=pb.Provider(name="mock", kind=pb.PROVIDER_KIND_MOCK)),
            metadata=ADMIN,
        )
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS
    # A new model may not take an existing model's alias as its name or alias.
    clash = await _error(
        stub.CreateModel(pb.CreateModelRequest(model=pb.Model(name="base")), metadata=ADMIN)
    )
    assert clash.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "alias of model 'base-chat'" in (clash.details() or "")


async def test_deleting_a_provider_in_use_is_refused(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    err = await _error(stub.DeleteProvider(pb.DeleteProviderRequest(name="mock"), metadata=ADMIN))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "used by 1 deployment(s) (base-chat.mock.mock-echo)" in (err.details() or "")


async def test_concurrent_updates_with_one_etag_let_exactly_one_win(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    etag = (await stub.GetModel(pb.GetModelRequest(name="base-chat"), metadata=ADMIN)).model.etag
    results = await asyncio.gather(
        *(
            stub.UpdateModel(
                pb.UpdateModelRequest(
                    model=pb.Model(name="base-chat", description=f"writer {i}", etag=etag)
                ),
                metadata=ADMIN,
            )
            for i in range(5)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1
    assert len(losers) == 4
    assert all(e.code() == grpc.StatusCode.ABORTED for e in losers)
    final = (await stub.GetModel(pb.GetModelRequest(name="base-chat"), metadata=ADMIN)).model
    assert final.description == winners[0].model.description


async def test_paging_and_filters(stub: registry_pb2_grpc.RegistryServiceAsyncStub) -> None:
    for i in range(7):
        await stub.CreateModel(
            pb.CreateModelRequest(
                model=pb.Model(
                    name=f"m{i}",
                    online=i % 2 == 0,
                    tags=["even"] if i % 2 == 0 else [],
                    kind=pb.MODEL_KIND_EMBEDDING if i == 6 else pb.MODEL_KIND_CHAT,
                )
            ),
            metadata=ADMIN,
        )
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListModels(
            pb.ListModelsRequest(page_size=3, page_token=token), metadata=ADMIN
        )
        assert page.total_size == 8
        names += [m.name for m in page.models]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert names == ["base-chat", *(f"m{i}" for i in range(7))]

    async def listed(**filters: Any) -> list[str]:
        response = await stub.ListModels(pb.ListModelsRequest(**filters), metadata=ADMIN)
        return [m.name for m in response.models]

    assert await listed(status=pb.ONLINE_FILTER_OFFLINE) == ["m1", "m3", "m5"]
    assert await listed(tag="even") == ["m0", "m2", "m4", "m6"]
    assert await listed(kind=pb.MODEL_KIND_EMBEDDING) == ["m6"]
    assert await listed(provider="mock") == ["base-chat"]
    assert await listed(tag="no-such-tag") == []
    bad = await _error(stub.ListModels(pb.ListModelsRequest(page_token="%%%"), metadata=ADMIN))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_keys_show_their_secret_once_and_revoke(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
    snapshots: registry_pb2_grpc.RegistrySnapshotServiceAsyncStub,
) -> None:
    created = await stub.CreateApiKey(
        pb.CreateApiKeyRequest(key=pb.ApiKey(name="team-a", models=["base-chat"], budget=5)),
        metadata=ADMIN,
    )
    assert created.secret.startswith("sb-")
    assert len(created.secret) > 40
    assert created.secret.startswith(created.key.display_prefix)
    listed = await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=ADMIN)
    assert created.secret not in str(listed)
    snapshot = (await snapshots.GetSnapshot(pb.GetSnapshotRequest())).snapshot
    assert {c.name for c in snapshot.credentials} == {"file-key", "team-a"}

    revoked = (await stub.RevokeApiKey(pb.RevokeApiKeyRequest(name="team-a"), metadata=ADMIN)).key
    assert revoked.revoked
    assert revoked.HasField("revoke_time")
    snapshot = (await snapshots.GetSnapshot(pb.GetSnapshotRequest())).snapshot
    assert {c.name for c in snapshot.credentials} == {"file-key"}
    active = await stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=ADMIN)
    assert [k.name for k in active.keys] == ["file-key"]


async def test_admin_calls_need_the_admin_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    async with registry(CONFIG, tmp_path, monkeypatch, database) as (stub, snapshots):
        missing = await _error(stub.ListModels(pb.ListModelsRequest()))
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = await _error(
            stub.ListModels(pb.ListModelsRequest(), metadata=(("authorization", "Bearer nope"),))
        )
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    off_registry = registry(CONFIG, tmp_path, monkeypatch, database, admin_key=None)
    async with off_registry as (stub, snapshots):
        off = await _error(stub.ListModels(pb.ListModelsRequest(), metadata=ADMIN))
        assert off.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "SWITCHBOARD_ADMIN_KEY" in (off.details() or "")
        # Routers need no admin key to follow the registry.
        assert (await snapshots.GetSnapshot(pb.GetSnapshotRequest())).snapshot.models


async def test_watch_sends_a_snapshot_then_each_change(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
    snapshots: registry_pb2_grpc.RegistrySnapshotServiceAsyncStub,
) -> None:
    call = snapshots.WatchSnapshot(pb.WatchSnapshotRequest())
    first = await anext(aiter(call))
    assert first.HasField("snapshot")
    version = first.version
    await stub.UpdateModel(
        pb.UpdateModelRequest(model=pb.Model(name="base-chat", online=False)), metadata=ADMIN
    )
    async with asyncio.timeout(5):
        change = await anext(aiter(call))
    assert change.version == version + 1
    assert change.change.kind == pb.Change.KIND_UPSERT
    assert not change.change.model.online
    call.cancel()

    # A watcher that already holds a version gets only what came after it.
    await stub.CreateProvider(
        pb.CreateProviderRequest(provider=pb.Provider(name="p2", kind=pb.PROVIDER_KIND_MOCK)),
        metadata=ADMIN,
    )
    resumed = snapshots.WatchSnapshot(pb.WatchSnapshotRequest(known_version=version + 1))
    async with asyncio.timeout(5):
        caught_up = await anext(aiter(resumed))
    assert caught_up.version == version + 2
    assert caught_up.change.provider.name == "p2"
    resumed.cancel()


async def test_bootstrap_rules_across_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    async with registry(CONFIG, tmp_path, monkeypatch, database) as (stub, snapshots):
        await stub.UpdateModel(
            pb.UpdateModelRequest(model=pb.Model(name="base-chat", description="edited via API")),
            metadata=ADMIN,
        )
        await stub.RevokeApiKey(pb.RevokeApiKeyRequest(name="file-key"), metadata=ADMIN)
        version = (await snapshots.GetSnapshot(pb.GetSnapshotRequest())).snapshot.version

    # Same file: nothing is rewritten, the API's edit and the revocation stand.
    async with registry(CONFIG, tmp_path, monkeypatch, database) as (stub, snapshots):
        snapshot = (await snapshots.GetSnapshot(pb.GetSnapshotRequest())).snapshot
        assert snapshot.version == version
        assert snapshot.models[0].description == "edited via API"
        assert not snapshot.credentials

    # The file's entry changed: the file wins for the fields it sets; a key the
    # file no longer lists, and a revoked key, are kept as they are.
    edited: dict[str, Any] = {
        **CONFIG,
        "models": [{**CONFIG["models"][0], "description": "file v2"}],
        "keys": [{"name": "file-key", "key_sha256": "cd" * 32}],
    }
    async with registry(edited, tmp_path, monkeypatch, database) as (stub, snapshots):
        snapshot = (await snapshots.GetSnapshot(pb.GetSnapshotRequest())).snapshot
        assert snapshot.version > version
        assert snapshot.models[0].description == "file v2"
        assert [k.revoked for k in snapshot.keys] == [True]
        assert not snapshot.credentials
