"""The whole stack with TLS: clients reach the edge over HTTPS, and the edge
and every service talk mutual TLS (SWITCHBOARD_TLS_*). Plaintext is refused at
the edge and at each service; usage still flows through to ClickHouse."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509

from switchboard.common.v1 import openai_pb2
from switchboard.router.v1 import router_pb2, router_pb2_grpc
from switchboard_common.tls import TlsFiles
from switchboard_stack.certs import write_dev_certs
from switchboard_stack.harness import Stack, running_stack
from tests.conftest import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_dev_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def stack(certs: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "echo"}]}],
    }
    env = {
        "SWITCHBOARD_TLS_CERT": str(certs.cert),
        "SWITCHBOARD_TLS_KEY": str(certs.key),
        "SWITCHBOARD_TLS_CA": str(certs.ca),
        "SWITCHBOARD_EDGE_TLS_CERT": str(certs.cert),
        "SWITCHBOARD_EDGE_TLS_KEY": str(certs.key),
    }
    with running_stack(config, tmp_path_factory.mktemp("tls"), env) as running:
        yield running


def _https(stack: Stack) -> str:
    return stack.edge_url.replace("http://", "https://")


def _chat_body() -> dict[str, object]:
    return {"model": "mock-chat", "messages": [{"role": "user", "content": "over tls"}]}


def test_https_at_the_edge_and_mutual_tls_behind_it(stack: Stack, certs: TlsFiles) -> None:
    trust = ssl.create_default_context(cafile=str(certs.ca))
    with httpx.Client(base_url=_https(stack), verify=trust, timeout=10) as client:
        answer = client.post("/v1/chat/completions", json=_chat_body())
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"].startswith("[mock]")
        streamed = client.post("/v1/chat/completions", json={**_chat_body(), "stream": True})
        assert streamed.text.rstrip().endswith("data: [DONE]")
        # Usage went router → usage (mTLS) → broker → ClickHouse.
        today = dt.datetime.now(dt.UTC).date().isoformat()

        def counted() -> int:
            summary = client.get("/v1/usage/summary", params={"start": today, "end": today})
            return int(summary.json()["total_requests"])

        eventually(lambda: counted() >= 2, timeout=30, interval=0.2, what="2 calls counted")
        assert counted() == 2


def test_plaintext_is_refused_at_the_edge_and_the_services(stack: Stack) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{stack.edge_url}/v1/chat/completions", json=_chat_body(), timeout=5)
    params = openai_pb2.ChatCompletionParams(model="mock-chat")
    params.messages.add(role="user").content.string_value = "plaintext"

    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(stack.router_address) as channel:
            try:
                await router_pb2_grpc.RouterServiceStub(channel).CreateChatCompletion(
                    router_pb2.CreateChatCompletionRequest(params=params), timeout=3
                )
            except grpc.aio.AioRpcError as err:
                return err.code()
        return grpc.StatusCode.OK

    assert asyncio.run(call()) == grpc.StatusCode.UNAVAILABLE


def test_dev_certificates_name_every_service(certs: TlsFiles) -> None:
    cert = x509.load_pem_x509_certificate(Path(certs.cert).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    assert {"router", "registry.switchboard.svc.cluster.local", "localhost"} <= dns
