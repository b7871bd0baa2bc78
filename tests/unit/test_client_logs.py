"""An upstream request through the SDKs writes no log line of the HTTP client's
own: those log one line per request at INFO (~20 µs of the router's CPU and a
line of its log each, bench/README.md) and request headers at DEBUG."""

from __future__ import annotations

import logging

import anthropic
import openai
import pytest

from switchboard_common.config import ProviderConfig
from switchboard_common.logs import NOISY, quiet_clients
from switchboard_provider.adapters.openai_compat import OpenAIAdapter
from tests.conftest import Loopbacks

pytestmark = pytest.mark.asyncio


async def test_an_upstream_request_logs_no_line_of_the_http_client(
    loopbacks: Loopbacks, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await loopbacks.openai(api_key=None)
    port = upstream.base_url.split(":")[-1].split("/")[0]
    levels = {name: logging.getLogger(name).level for name in NOISY}
    adapter = OpenAIAdapter(ProviderConfig(name="up", kind="openai", base_url=upstream.base_url))
    # The SDKs' default transport too (the anthropic SDK's, and the openai SDK's
    # where no aiohttp client is given).
    default = openai.AsyncOpenAI(base_url=upstream.base_url, api_key="k", max_retries=0)
    other = anthropic.AsyncAnthropic(
        base_url=upstream.base_url.removesuffix("/v1"), api_key="k", max_retries=0
    )
    try:
        # The process's level at its most verbose: only the quieting keeps them out.
        quiet_clients("DEBUG")
        caplog.set_level(logging.DEBUG)
        for client in (adapter.client, default):
            answer = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices
        with pytest.raises(anthropic.NotFoundError):
            # The loopback speaks OpenAI's API only: a 404, after a full exchange.
            await other.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        await adapter.client.close()
        await default.close()
        await other.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    mentions = [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if port in record.getMessage()
    ]
    assert mentions == []
