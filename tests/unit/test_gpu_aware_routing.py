"""GPU-aware routing: a deployment bound to a GPU is excluded when its GPU is
unhealthy and moved behind the others when it is saturated, with the reason in
the plan's notes; unbound deployments and GPUs with no news are left alone."""

from __future__ import annotations

import random

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common.config import parse_config
from switchboard_common.gpu_health import GpuHealthBoard
from switchboard_router.catalog import Catalog
from switchboard_router.limits import LocalLimiter
from switchboard_router.routing import Routing

CONFIG = {
    "providers": [{"name": "vllm", "kind": "openai", "base_url": "http://gpu/v1"}],
    "models": [
        {
            "name": "llama",
            "strategy": "priority",
            "deployments": [
                {
                    "provider": "vllm",
                    "model": "a",
                    "priority": 0,
                    "gpu_node": "n1",
                    "gpu_uuid": "GPU-a",
                },
                {
                    "provider": "vllm",
                    "model": "b",
                    "priority": 1,
                    "gpu_node": "n1",
                    "gpu_uuid": "GPU-b",
                },
                {"provider": "vllm", "model": "c", "priority": 2},
            ],
        }
    ],
}


def _node(**devices: gpu_pb2.GpuDevice) -> gpu_pb2.NodeStatus:
    status = gpu_pb2.NodeStatus(hostname="n1", nvml_state=gpu_pb2.NVML_STATE_AVAILABLE)
    for uuid, device in devices.items():
        device.uuid = uuid.replace("_", "-")
        status.devices.append(device)
    return status


def _plan(board: GpuHealthBoard | None) -> tuple[list[str], list[str]]:
    catalog = Catalog(parse_config(CONFIG), created=0)
    routing = Routing(LocalLimiter(), rng=random.Random(1))
    routing.gpu = board
    plan, notes = routing.plan(catalog, catalog.resolve("llama", None), False)
    return [c.deployment.model for c in plan], notes


def test_without_gpu_state_the_strategy_decides() -> None:
    assert _plan(None) == (["a", "b", "c"], [])
    # A board that has heard nothing from the node: serve as usual.
    assert _plan(GpuHealthBoard()) == (["a", "b", "c"], [])


def test_saturated_gpu_goes_last_and_unhealthy_gpu_is_excluded() -> None:
    board = GpuHealthBoard(saturated_percent=90)
    board.observe_status(
        _node(
            GPU_a=gpu_pb2.GpuDevice(utilization_gpu_percent=97),
            GPU_b=gpu_pb2.GpuDevice(utilization_gpu_percent=20),
        )
    )
    order, notes = _plan(board)
    assert order == ["b", "c", "a"]
    assert notes == ["deprioritised llama.vllm.a: utilization_gpu_percent 97 >= 90"]

    board.observe_status(
        _node(
            GPU_a=gpu_pb2.GpuDevice(utilization_gpu_percent=10),
            GPU_b=gpu_pb2.GpuDevice(utilization_gpu_percent=10, last_xid=79),
        )
    )
    order, notes = _plan(board)
    assert order == ["a", "c"]
    assert notes == ["excluded llama.vllm.b: XID 79"]


def test_the_notes_travel_with_every_candidate() -> None:
    board = GpuHealthBoard()
    board.observe_status(
        gpu_pb2.NodeStatus(
            hostname="n1", nvml_state=gpu_pb2.NVML_STATE_UNAVAILABLE, reason="driver gone"
        )
    )
    catalog = Catalog(parse_config(CONFIG), created=0)
    routing = Routing(LocalLimiter())
    routing.gpu = board
    plan, _ = routing.plan(catalog, catalog.resolve("llama", None), False)
    assert [c.deployment.model for c in plan] == ["c"]
    assert all("NVML unavailable on n1: driver gone" in c.route_notes[0] for c in plan)
