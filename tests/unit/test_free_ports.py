"""free_port(): ports from a block of the test worker's own, below the kernel's
ephemeral range, so neither another worker nor the kernel hands one out too."""

from __future__ import annotations

import itertools
import socket

import pytest

from switchboard_stack import harness


def _ports(monkeypatch: pytest.MonkeyPatch, worker: str | None, count: int) -> list[int]:
    if worker is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setattr(harness, "_ports", None)
    return [harness.free_port() for _ in range(count)]


def _block(port: int) -> int:
    return (port - harness._POOL_FIRST) // harness._BLOCK


def test_workers_hand_out_ports_from_blocks_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = {worker: _ports(monkeypatch, worker, 50) for worker in (None, "gw0", "gw1", "gw2")}
    for ports in blocks.values():
        assert len(set(ports)) == len(ports)
        assert all(harness._POOL_FIRST <= p < harness._ephemeral_first() for p in ports)
    for (_, a), (_, b) in itertools.combinations(blocks.items(), 2):
        assert {_block(p) for p in a}.isdisjoint({_block(p) for p in b})


def test_a_taken_port_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free = harness.free_port()
        monkeypatch.setattr(harness, "_ports", iter([taken.getsockname()[1], free]))
        assert harness.free_port() == free
