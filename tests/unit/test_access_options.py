"""The access policy: every RPC in protos/ declares one, and the interceptor's
decision for each kind of caller (switchboard_common/policy.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from google.protobuf.descriptor import FileDescriptor

from switchboard.common.v1 import access_pb2
from switchboard.gpu.v1 import gpu_pb2
from switchboard.registry.v1 import registry_pb2
from switchboard.router.v1 import router_pb2
from switchboard.usage.v1 import usage_pb2
from switchboard_common.config import SwitchboardConfig
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.keys import KeyTable
from switchboard_common.policy import (
    ADMIN,
    ANONYMOUS,
    EDGE_HEADER,
    AccessPolicy,
    method_access,
)
from tests.support.routes import (
    README_END,
    README_START,
    access,
    descriptors,
    methods,
    readme_table,
    routes,
)

REPO = Path(__file__).resolve().parents[2]
A = access_pb2.Access
ADMIN_KEY = "admin-0123456789"
CLIENT_KEY = "sk-client-0123456789"


def _path(file: FileDescriptor, service: str, method: str) -> str:
    return f"/{file.services_by_name[service].full_name}/{method}"


CHAT = _path(router_pb2.DESCRIPTOR, "RouterService", "CreateChatCompletion")
HEALTH = _path(router_pb2.DESCRIPTOR, "RouterService", "GetHealth")
GPU_STATUS = _path(gpu_pb2.DESCRIPTOR, "GpuService", "GetGpuStatus")
RECORD = _path(usage_pb2.DESCRIPTOR, "UsageLedgerService", "RecordUsage")
WATCH = _path(registry_pb2.DESCRIPTOR, "RegistrySnapshotService", "WatchSnapshot")


def test_every_rpc_declares_its_access() -> None:
    ours = descriptors()
    proto_files = {
        p.relative_to(REPO / "protos").as_posix() for p in (REPO / "protos").rglob("*.proto")
    }
    # The descriptor set holds every proto of ours (gen-check keeps it current).
    assert {f.name for f in ours} == {p for p in proto_files if p.startswith("switchboard/")}
    declared = {rpc: access(method) for rpc, method in methods()}
    assert [rpc for rpc, a in declared.items() if a == A.ACCESS_UNSPECIFIED] == []
    assert len(declared) > 40


def test_internal_rpcs_have_no_edge_route() -> None:
    assert [str(r) for r in routes() if r.access == A.ACCESS_INTERNAL] == []


def test_the_readme_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    start, end = readme.index(README_START), readme.index(README_END) + len(README_END)
    assert readme[start:end] == readme_table(), "regenerate: python -m tests.support.routes"


def test_declared_accesses_are_read_from_the_descriptors() -> None:
    assert method_access(CHAT) == A.ACCESS_CLIENT
    assert method_access(HEALTH) == A.ACCESS_PUBLIC
    assert method_access(GPU_STATUS) == A.ACCESS_ADMIN
    assert method_access(RECORD) == A.ACCESS_INTERNAL
    assert method_access("/grpc.health.v1.Health/Check") == A.ACCESS_PUBLIC
    assert method_access("/switchboard.router.v1.RouterService/NoSuchMethod") == (
        A.ACCESS_UNSPECIFIED
    )


def _keys(*, open_: bool = False) -> KeyTable:
    if open_:
        return KeyTable(SwitchboardConfig())
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    return KeyTable(
        SwitchboardConfig.model_validate({"keys": [{"name": "team-a", "key_sha256": digest}]})
    )


def _bearer(key: str) -> list[tuple[str, str | bytes]]:
    return [("authorization", f"Bearer {key}")]


def _reason(policy: AccessPolicy, method: str, metadata: list[tuple[str, str | bytes]]) -> str:
    with pytest.raises(SwitchboardError) as refused:
        policy.admit(method, metadata)
    return refused.value.reason_name


def test_client_methods() -> None:
    policy = AccessPolicy(ADMIN_KEY, _keys())
    assert _reason(policy, CHAT, []) == "MISSING_API_KEY"
    assert _reason(policy, CHAT, _bearer("sk-wrong")) == "INVALID_API_KEY"
    caller = policy.admit(CHAT, [("x-api-key", CLIENT_KEY)])
    assert caller.key is not None
    assert caller.name == "team-a"
    assert not caller.sees_all
    assert policy.admit(CHAT, _bearer(ADMIN_KEY)) == ADMIN
    assert ADMIN.sees_all


def test_client_methods_on_an_open_edge_need_no_key() -> None:
    policy = AccessPolicy(None, _keys(open_=True))
    assert policy.admit(CHAT, []) == ANONYMOUS
    assert ANONYMOUS.sees_all


def test_a_table_before_the_first_registry_update_refuses_every_key() -> None:
    policy = AccessPolicy(ADMIN_KEY, KeyTable())
    assert _reason(policy, CHAT, _bearer(CLIENT_KEY)) == "INVALID_API_KEY"
    assert policy.admit(CHAT, _bearer(ADMIN_KEY)) == ADMIN


def test_admin_methods() -> None:
    policy = AccessPolicy(ADMIN_KEY, _keys())
    assert _reason(policy, GPU_STATUS, []) == "MISSING_API_KEY"
    assert _reason(policy, GPU_STATUS, _bearer("sk-wrong")) == "INVALID_API_KEY"
    # A client key is no admin key, and the answer does not say it is a valid one.
    assert _reason(policy, GPU_STATUS, _bearer(CLIENT_KEY)) == "INVALID_API_KEY"
    assert policy.admit(GPU_STATUS, _bearer(ADMIN_KEY)) == ADMIN
    off = AccessPolicy(None, _keys())
    assert _reason(off, GPU_STATUS, _bearer(ADMIN_KEY)) == "PERMISSION_DENIED"


def test_internal_methods_refuse_calls_through_the_edge() -> None:
    policy = AccessPolicy(ADMIN_KEY)
    assert policy.admit(RECORD, []) == ANONYMOUS
    assert policy.admit(WATCH, []) == ANONYMOUS
    edge = [(EDGE_HEADER, "1"), *_bearer(ADMIN_KEY)]
    assert _reason(policy, RECORD, edge) == "PERMISSION_DENIED"


def test_public_methods_admit_anyone() -> None:
    policy = AccessPolicy(ADMIN_KEY, _keys())
    assert policy.admit(HEALTH, []) == ANONYMOUS
    assert policy.admit(HEALTH, _bearer("sk-wrong")) == ANONYMOUS


def test_a_method_without_a_policy_is_refused() -> None:
    policy = AccessPolicy(ADMIN_KEY, _keys())
    method = "/switchboard.router.v1.RouterService/NoSuchMethod"
    with pytest.raises(SwitchboardError) as refused:
        policy.admit(method, _bearer(ADMIN_KEY))
    assert refused.value.reason == R.ERROR_REASON_PERMISSION_DENIED
    assert refused.value.metadata == {"method": method}


def test_a_service_with_client_methods_must_mount_a_key_table() -> None:
    router = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
    gpu = gpu_pb2.DESCRIPTOR.services_by_name["GpuService"].full_name
    with pytest.raises(RuntimeError, match="CreateChatCompletion"):
        AccessPolicy(ADMIN_KEY).mount([router], None)
    AccessPolicy(ADMIN_KEY).mount([gpu], None)
    AccessPolicy(ADMIN_KEY).mount([router], _keys())
