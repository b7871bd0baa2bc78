"""Self-hosted engines (make bench, after run.py): a real llama-server with the
small test model (make engines), started through the engine service, measured
three ways in one run on this machine:

- start → first token: from the start request to the first streamed token
  through the edge (engine launch, health, registry push, routing);
- decode speed: completion tokens per second of the same requests sent to
  llama-server directly and through Switchboard's edge, interleaved;
- the router's added latency on a real engine: median latency of one-token
  requests through the edge minus direct, interleaved, each started once the
  previous one's accounting has settled (SETTLE_S).

Writes bench/engine_results.json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from switchboard_engine.commands import llama_server_path
from switchboard_engine.install import bundled_model_path

from switchboard_stack.harness import running_stack

BENCH = Path(__file__).resolve().parent
ADMIN_KEY = "bench-engines-admin-key"
PROMPT = [{"role": "user", "content": "Write one sentence about the sea."}]
# A request through the edge is accounted after its answer: outbox, broker and
# a ClickHouse insert, ~30 ms of CPU. On a machine where the engine shares the
# cores, that work slows the engine's next prompt, whichever path sent it (a
# direct request right after an edge one took 105 ms instead of 69): each timed
# request waits this long after the previous one, so the figure is the router's.
SETTLE_S = 0.4


def _wait(what: str, check: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"engine bench: never {what}")


def _first_token(client: httpx.Client, base: str) -> bool:
    body = {"model": "smol", "messages": PROMPT, "max_tokens": 8, "stream": True}
    try:
        with client.stream("POST", f"{base}/v1/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                return False
            return any(line.startswith("data: {") for line in reply.iter_lines())
    except httpx.HTTPError:
        return False


def _timed(client: httpx.Client, url: str, max_tokens: int, tag: str) -> tuple[float, int]:
    # A prompt of its own per request: llama-server's prompt cache would favour
    # whichever path asked second.
    messages = [{"role": "user", "content": f"({tag}) Write one sentence about the sea."}]
    body = {"model": "smol", "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    time.sleep(SETTLE_S)
    started = time.perf_counter()
    reply = client.post(url, json=body)
    elapsed = time.perf_counter() - started
    reply.raise_for_status()
    return elapsed, int(reply.json()["usage"]["completion_tokens"])


@dataclass
class Engine:
    """A running stack with the test model's engine started through it."""

    edge: str  # the edge's chat completions URL
    direct: str  # llama-server's own
    start_to_first_token_s: float


@contextlib.contextmanager
def engine_stack() -> Iterator[Engine]:
    """A stack on a temporary home, the engine `smol` created and started
    through its admin API, until the first token has come through the edge;
    stopped and torn down after."""
    model = bundled_model_path()
    server = llama_server_path()
    if model is None or server is None or not server.exists():
        raise SystemExit("engine bench: run `make engines` first")
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "m"}]}],
    }
    env = {"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY, "SWITCHBOARD_ENGINE_HEALTH_INTERVAL_S": "0.25"}
    with tempfile.TemporaryDirectory() as tmp, running_stack(config, Path(tmp), env) as stack:
        admin = httpx.Client(
            base_url=stack.edge_url,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=60,
        )
        client = httpx.Client(timeout=120)
        with admin, client:
            config_body = {"framework": "ENGINE_FRAMEWORK_LLAMA_CPP", "model_path": str(model)}
            admin.post(
                "/v1/admin/engines", json={"name": "smol", "config": config_body}
            ).raise_for_status()
            t0 = time.perf_counter()
            admin.post("/v1/admin/engines/smol:start", json={}).raise_for_status()
            _wait("a first token", lambda: _first_token(client, stack.edge_url))
            start_to_first_token_s = time.perf_counter() - t0
            engine = admin.get("/v1/admin/engines/smol").json()["engine"]
            direct = f"{engine['base_url'].rstrip('/')}/chat/completions"
            if not direct.startswith("http"):
                direct = f"http://127.0.0.1:{engine['port']}/v1/chat/completions"
            try:
                yield Engine(
                    f"{stack.edge_url}/v1/chat/completions", direct, start_to_first_token_s
                )
            finally:
                admin.post("/v1/admin/engines/smol:stop", json={"force": True})


def measure(rounds: int) -> dict[str, Any]:
    with engine_stack() as engine, httpx.Client(timeout=120) as client:
        speed: dict[str, list[float]] = {"direct": [], "edge": []}
        one: dict[str, list[float]] = {"direct": [], "edge": []}
        paths = [("direct", engine.direct), ("edge", engine.edge)]
        for i in range(rounds):
            # Interleaved, in turns: drift on a shared machine hits both alike.
            for name, url in paths if i % 2 else paths[::-1]:
                # Tags of one shape: a longer prompt would cost its path ~4 ms a token.
                tag = f"{i:03d}{0 if name == 'direct' else 1}"
                elapsed, tokens = _timed(client, url, 64, f"{tag}L")
                speed[name].append(tokens / elapsed)
                one[name].append(_timed(client, url, 1, f"{tag}S")[0] * 1000)
        start_to_first_token_s = engine.start_to_first_token_s
    direct_tps = statistics.median(speed["direct"])
    edge_tps = statistics.median(speed["edge"])
    return {
        "start_to_first_token_s": round(start_to_first_token_s, 2),
        "tokens_per_s_direct": round(direct_tps, 1),
        "tokens_per_s_edge": round(edge_tps, 1),
        "edge_over_direct_tokens_per_s": round(edge_tps / direct_tps, 3),
        "one_token_ms_direct_p50": round(statistics.median(one["direct"]), 2),
        "one_token_ms_edge_p50": round(statistics.median(one["edge"]), 2),
        "router_added_ms_p50": round(
            statistics.median(one["edge"]) - statistics.median(one["direct"]), 2
        ),
        "rounds": rounds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=BENCH / "engine_results.json")
    args = parser.parse_args()
    results = measure(args.rounds)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("| figure | value |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
