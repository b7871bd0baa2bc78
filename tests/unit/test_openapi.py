"""The published OpenAPI document: fresh, and covering every route the edge
transcodes (generated from the protos' google.api.http rules)."""

from __future__ import annotations

import json

from google.api import annotations_pb2

from switchboard.router.v1 import multi_llm_pb2, qwen_chat_pb2, vision_chat_pb2
from switchboard_stack import openapi


def test_the_committed_document_is_fresh() -> None:
    assert openapi.main(["--check"]) == 0, (
        "deploy/console/openapi.json is stale: "
        "PYTHONPATH=services:gen .venv/bin/python -m switchboard_stack.openapi"
    )


def test_every_seed_route_is_documented_with_its_policy() -> None:
    document = json.loads(openapi.OUT.read_text())
    for module, name in (
        (qwen_chat_pb2, "QwenChatService"),
        (multi_llm_pb2, "MultiLlmService"),
        (vision_chat_pb2, "VisionChatService"),
    ):
        for method in module.DESCRIPTOR.services_by_name[name].methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            for binding in [rule, *rule.additional_bindings]:
                verb = binding.WhichOneof("pattern")
                assert verb is not None
                op = document["paths"][getattr(binding, verb)][verb]
                assert op["operationId"] == f"{name}.{method.name}"
                assert op["x-access"] in {"public", "client key", "admin key"}
                assert op["summary"]


def test_the_edge_services_are_the_templates() -> None:
    services = openapi.edge_services()
    assert "switchboard.router.v1.RouterService" in services
    assert "switchboard.router.v1.MultiLlmService" in services
    assert len(services) == len(set(services)) >= 7
