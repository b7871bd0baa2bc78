"""The monitor socket (/ws/monitor) on a real WebSocket server, with a real
client: a socket admitted with a login token is closed when the token expires,
while one admitted with the admin key stays open. The feed behind it is idle
here; what it relays is covered by tests/e2e/seeds/test_004_monitor.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common.tokens import Claims, issue
from switchboard_gpu.monitor_ws import CLOSE_EXPIRED, MonitorSocket
from switchboard_stack.harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

ADMIN_KEY = "monitor-socket-test-admin-key"
WAIT_S = 10.0


class IdleFeed:
    """A feed with nothing to say: the connection's lifetime is the point."""

    async def watch(
        self, events: Sequence[str], active: Sequence[gpu_pb2.GpuAlert]
    ) -> AsyncIterator[gpu_pb2.WatchMonitorResponse]:
        await asyncio.Event().wait()
        yield gpu_pb2.WatchMonitorResponse()  # never reached


async def _subscribed(url: str) -> Any:
    ws = await connect(url)
    await ws.send(json.dumps({"action": "subscribe", "events": ["model_status"]}))
    assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"] == "subscribed"
    return ws


async def test_a_socket_admitted_with_a_token_closes_when_it_expires() -> None:
    socket = MonitorSocket(cast(Any, IdleFeed()), list, ADMIN_KEY)
    address = f"127.0.0.1:{free_port()}"
    await socket.start(address, None)
    try:
        # JWT expiry is in whole seconds from the issuing second, so ttl_s=1 left
        # anything from a second to a few ms to connect in (a loaded CI run got a
        # 401): 2 leaves at least one, and the close still comes within two.
        token = issue(ADMIN_KEY, Claims(subject="ops", admin=True, key_name=""), ttl_s=2)
        by_token = await _subscribed(f"ws://{address}/ws/monitor?token={token}")
        by_key = await _subscribed(f"ws://{address}/ws/monitor?token={ADMIN_KEY}")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(by_token.recv(), WAIT_S)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CLOSE_EXPIRED
        assert "expired" in closed.value.rcvd.reason
        # The key does not expire: that socket still answers.
        await by_key.send(json.dumps({"action": "ping"}))
        assert json.loads(await asyncio.wait_for(by_key.recv(), WAIT_S))["type"] == "pong"
        await by_key.close()
    finally:
        await socket.close()
