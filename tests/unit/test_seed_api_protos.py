"""The seed APIs' RPCs: each declares its access policy (CLIENT for calls, ADMIN
for config, PUBLIC for health) and an HTTP route under its document's prefix."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2
from google.protobuf.descriptor import ServiceDescriptor

from switchboard.common.v1 import access_pb2
from switchboard.router.v1 import (
    inference_manager_pb2,
    multi_llm_pb2,
    qwen_chat_pb2,
    vision_chat_pb2,
)

SERVICES = [
    # ListLlmModels also answers 002 at /api/v1/llm/models.
    (qwen_chat_pb2.DESCRIPTOR.services_by_name["QwenChatService"], ("/api/llm/", "/api/v1/llm/")),
    (multi_llm_pb2.DESCRIPTOR.services_by_name["MultiLlmService"], ("/api/llm/", "/api/v1/llm/")),
    (vision_chat_pb2.DESCRIPTOR.services_by_name["VisionChatService"], ("/api/v1/",)),
    (
        inference_manager_pb2.DESCRIPTOR.services_by_name["InferenceManagerService"],
        (
            "/api/models",
            "/api/v1/models",
            "/api/system/",
            "/api/v1/system/",
            "/api/monitoring/",
            "/api/v1/monitoring/",
            "/api/auth/",
            "/api/v1/auth/",
            "/api/config",
            "/api/v1/config",
        ),
    ),
]
# Seed 004's model management is engine administration: the admin key's.
ADMIN = {
    "UpdateModelConfig",
    "UpdateLoadBalancing",
    "ListManagedModels",
    "CreateManagedModel",
    "GetManagedModel",
    "UpdateManagedModel",
    "DeleteManagedModel",
    "StartManagedModel",
    "StopManagedModel",
    "RestartManagedModel",
    "GetManagedModelLogs",
    "GetSystemStatus",
    "GetSystemGpu",
    "GetMonitoringMetrics",
    "GetConfig",
    "UpdateConfig",
    "ListConfigAlerts",
    "CreateConfigAlert",
    "UpdateConfigAlert",
    "EnableConfigAlert",
    "DisableConfigAlert",
    "DeleteConfigAlert",
}
PUBLIC = {"GetLlmHealth", "IssueToken"}


@pytest.mark.parametrize(("service", "prefixes"), SERVICES, ids=lambda s: getattr(s, "name", ""))
def test_every_rpc_has_its_policy_and_route(
    service: ServiceDescriptor, prefixes: tuple[str, ...]
) -> None:
    for method in service.methods:
        options = method.GetOptions()
        expected = (
            access_pb2.ACCESS_ADMIN
            if method.name in ADMIN
            else access_pb2.ACCESS_PUBLIC
            if method.name in PUBLIC
            else access_pb2.ACCESS_CLIENT
        )
        assert options.Extensions[access_pb2.access] == expected, method.name
        rule = options.Extensions[annotations_pb2.http]
        paths = [getattr(r, r.WhichOneof("pattern")) for r in [rule, *rule.additional_bindings]]
        assert paths, method.name
        for path in paths:
            assert path.startswith(prefixes), (method.name, path)
