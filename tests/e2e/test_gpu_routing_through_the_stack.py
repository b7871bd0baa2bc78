"""GPU-aware routing through the whole stack: the gpu service reads scripted
NVML readings (SWITCHBOARD_GPU_SCRIPT); a model's two self-hosted deployments
are bound to its two GPUs. While one GPU is saturated every call goes to the
other, and the response says why; when that GPU reports an XID fault its
deployment is excluded; when both are healthy again the strategy decides."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from switchboard_stack.harness import Stack, running_stack
from tests.conftest import eventually

pytestmark = pytest.mark.e2e

NODE = "gpu-node-e2e"


def _device(index: int, **changes: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index}",
        "name": "NVIDIA L4",
        "utilization_gpu_percent": 10,
        "memory_used_mib": 1000,
        "memory_total_mib": 23034,
        **changes,
    }


def _script(path: Path, *devices: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"devices": list(devices)}))
    tmp.replace(path)


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpu-routing") / "gpu.json"
    _script(path, _device(0), _device(1))
    return path


@pytest.fixture(scope="module")
def stack(script: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "local", "kind": "mock"}],
        "models": [
            {
                "name": "llama",
                "strategy": "round_robin",
                "deployments": [
                    {
                        "provider": "local",
                        "model": "on-gpu-0",
                        "gpu_node": NODE,
                        "gpu_uuid": "GPU-0",
                    },
                    {
                        "provider": "local",
                        "model": "on-gpu-1",
                        "gpu_node": NODE,
                        "gpu_uuid": "GPU-1",
                    },
                ],
            }
        ],
    }
    env = {
        "SWITCHBOARD_GPU_SCRIPT": str(script),
        "SWITCHBOARD_GPU_INTERVAL_S": "0.1",
        "SWITCHBOARD_NODE_NAME": NODE,
        "SWITCHBOARD_GPU_SATURATED_PERCENT": "90",
    }
    with running_stack(config, tmp_path_factory.mktemp("stack"), env) as running:
        yield running


def _served(stack: Stack) -> tuple[str, str]:
    reply = httpx.post(
        f"{stack.edge_url}/v1/chat/completions",
        json={"model": "llama", "messages": [{"role": "user", "content": "where?"}]},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return reply.headers["x-switchboard-deployment"], reply.headers.get(
        "x-switchboard-route-notes", ""
    )


def _until(stack: Stack, check: Any, within_s: float = 15) -> list[tuple[str, str]]:
    """Calls until the last four all satisfy check (the router hears the gpu
    service within a sample or two)."""
    seen: list[tuple[str, str]] = []

    def settled() -> list[tuple[str, str]]:
        seen.append(_served(stack))
        assert len(seen) >= 4, seen
        assert all(check(*s) for s in seen[-4:]), seen[-6:]
        return seen[-4:]

    return eventually(settled, timeout=within_s, what="routing settling")


def test_routing_follows_gpu_health(stack: Stack, script: Path) -> None:
    both = {d for d, _ in _until(stack, lambda d, n: not n, within_s=15)[:2]}
    assert both == {"llama.local.on-gpu-0", "llama.local.on-gpu-1"}

    _script(script, _device(0, utilization_gpu_percent=97), _device(1))
    # Round robin puts every other call on GPU 1 anyway: settled means with the note.
    settled = _until(stack, lambda d, n: d == "llama.local.on-gpu-1" and "deprioritised" in n)
    assert all(
        "deprioritised llama.local.on-gpu-0: utilization_gpu_percent 97 >= 90" in n
        for _, n in settled
    )

    _script(script, _device(0), _device(1, last_xid=79))
    settled = _until(stack, lambda d, n: d == "llama.local.on-gpu-0" and "excluded" in n)
    assert all("excluded llama.local.on-gpu-1: XID 79" in n for _, n in settled)

    _script(script, _device(0), _device(1))
    _until(stack, lambda d, n: not n)
