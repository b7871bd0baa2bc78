"""Mutual TLS between services: with SWITCHBOARD_TLS_* set, every service
serves only TLS, asks for a client certificate from the CA, and the services
reach each other (router → registry, provider, usage) over it."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_common.channels import channel
from switchboard_common.tls import TlsFiles
from switchboard_stack.certs import write_dev_certs
from tests.support.inprocess import services

pytestmark = pytest.mark.integration

CONFIG = {
    "providers": [{"name": "mock", "kind": "mock"}],
    "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "echo"}]}],
}


def _chat() -> router_pb2.CreateChatCompletionRequest:
    params = openai_pb2.ChatCompletionParams(model="mock-chat")
    params.messages.add(role="user").content.string_value = "over tls"
    return router_pb2.CreateChatCompletionRequest(params=params)


@pytest.mark.asyncio
async def test_services_talk_mutual_tls_and_refuse_plaintext(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_dev_certs(tmp_path / "certs")
    monkeypatch.setenv("SWITCHBOARD_TLS_CERT", str(files.cert))
    monkeypatch.setenv("SWITCHBOARD_TLS_KEY", str(files.key))
    monkeypatch.setenv("SWITCHBOARD_TLS_CA", str(files.ca))
    async with services(CONFIG, tmp_path, monkeypatch) as settings:
        address = settings.address("router")
        async with channel(address, settings.tls) as secure:
            answer = await router_pb2_grpc.RouterServiceStub(secure).CreateChatCompletion(_chat())
        assert answer.choices[0].message.content.startswith("[mock]")

        async with grpc.aio.insecure_channel(address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterServiceStub(plaintext).CreateChatCompletion(
                    _chat(), timeout=2
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # Trusting the server is not enough: the server wants our certificate too.
        server_only = grpc.ssl_channel_credentials(root_certificates=files.ca.read_bytes())
        async with grpc.aio.secure_channel(address, server_only) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await router_pb2_grpc.RouterServiceStub(anonymous).CreateChatCompletion(
                    _chat(), timeout=2
                )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_partial_tls_settings_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_TLS_CERT", "/nonexistent.pem")
    monkeypatch.delenv("SWITCHBOARD_TLS_KEY", raising=False)
    monkeypatch.delenv("SWITCHBOARD_TLS_CA", raising=False)
    with pytest.raises(ValueError, match="missing"):
        TlsFiles.from_env()
