"""The local stack will not start over ports something else holds."""

from __future__ import annotations

import socket

import pytest

from switchboard_stack.components import Component
from switchboard_stack.supervisor import Stack, StackError


def test_the_stack_refuses_ports_already_in_use() -> None:
    """A component whose port something else holds would look healthy to its
    probe; the stack refuses to start instead, naming the port."""

    async def never() -> bool:
        return False

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        taken = Component("router", ["true"], never, stage=0, ports=(port,))
        with pytest.raises(StackError, match=f"port {port} \\(router\\) is already in use"):
            Stack.check_ports_free([taken])
    Stack.check_ports_free([taken])  # released: fine
