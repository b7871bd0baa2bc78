"""Every API surface against /v1/chat/completions on the same edge, in the same
run: the agent APIs (/v1/messages, /v1/responses mapped onto chat and passed
through natively to an upstream with its own Responses API) and the seed APIs of the
services Switchboard replaces (001's /api/llm/chat, 002's /api/v1/llm/generate,
003's /api/v1/chat/completions). What each mapping adds to latency (one client,
interleaved rounds so drift on a shared machine hits every API alike) and to
the time to the first streamed token. The same tiny prompt each way; responses
are stored, as clients store them by default."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

PING = "ping"
MESSAGES = [{"role": "user", "content": PING}]
# Path and body per API.
APIS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": MESSAGES}),
    "messages": ("/v1/messages", {"max_tokens": 256, "messages": MESSAGES}),
    "responses": ("/v1/responses", {"input": PING}),
    # Passed through to an upstream that has its own Responses API.
    "responses_native": ("/v1/responses", {"input": PING}),
    "seed_001": ("/api/llm/chat", {"messages": MESSAGES}),
    "seed_002": ("/api/v1/llm/generate", {"messages": MESSAGES, "parameters": {}}),
    "seed_003": ("/api/v1/chat/completions", {"messages": MESSAGES}),
}
# A streamed chat asks for usage, as the agent APIs always carry it.
_STREAM_EXTRA = {"chat": {"stream_options": {"include_usage": True}}}
# Where a surface streams on a path of its own.
_STREAM_PATH = {"seed_002": "/api/v1/llm/generate/stream"}
# Where a surface asks another model (same upstream, another provider's options).
_MODEL = {"responses_native": "bench-native"}

Load = Callable[..., dict[str, Any]]


def _bodies(tmp: Path, model: str) -> dict[str, tuple[Path, Path]]:
    """Per API: the unary body and the streamed one (loadgen streams by file name)."""
    out = {}
    for api, (_, body) in APIS.items():
        named = _MODEL.get(api, model)
        unary = tmp / f"agent-{api}.json"
        unary.write_text(json.dumps({"model": named, **body}))
        streamed = tmp / f"agent-{api}-stream.json"
        streamed.write_text(
            json.dumps({"model": named, **body, "stream": True, **_STREAM_EXTRA.get(api, {})})
        )
        out[api] = (unary, streamed)
    return out


def measure(
    edge: Any,
    tmp: Path,
    load: Load,
    requests: int,
    stream_requests: int,
    rounds: int,
    apis: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows: per API (all, or `apis` beside chat), c1 latency and stream TTFT,
    each with what it adds over chat."""
    base = edge.url.removesuffix("/v1/chat/completions")
    chosen = ["chat", *[a for a in apis if a != "chat"]] if apis else list(APIS)
    systems = {
        api: dataclasses.replace(edge, name=f"{edge.name}-{api}", url=base + APIS[api][0])
        for api in chosen
    }
    streaming = {
        api: dataclasses.replace(system, url=base + _STREAM_PATH[api])
        if api in _STREAM_PATH
        else system
        for api, system in systems.items()
    }
    bodies = _bodies(tmp, edge.model)
    latency: dict[str, list[float]] = {api: [] for api in chosen}
    ttft: dict[str, list[float]] = {api: [] for api in chosen}
    errors = dict.fromkeys(chosen, 0)
    for _ in range(rounds):
        for api, system in systems.items():
            unary, streamed = bodies[api]
            r = load(system, unary, mode="closed", concurrency=1, requests=requests)
            latency[api].append(r["latency_ms"]["p50"])
            s = load(
                streaming[api], streamed, mode="closed", concurrency=1, requests=stream_requests
            )
            if s["ttft_ms"]:
                ttft[api].append(s["ttft_ms"]["p50"])
            errors[api] += r["errors"] + s["errors"]
    rows = []
    for api in chosen:
        added = [a - c for a, c in zip(latency[api], latency["chat"], strict=True)]
        firsts = [a - c for a, c in zip(ttft[api], ttft["chat"], strict=False)]
        rows.append(
            {
                "scenario": f"surface_{api}",
                "path": APIS[api][0],
                "p50_ms": statistics.median(latency[api]),
                "added_over_chat_p50_ms": statistics.median(added),
                "ttft_p50_ms": statistics.median(ttft[api]) if ttft[api] else None,
                "added_ttft_over_chat_p50_ms": statistics.median(firsts) if firsts else None,
                "rounds": rounds,
                "errors": errors[api],
            }
        )
    return rows


def main() -> int:
    """Only these rows, against the bench's mock upstream and stack:
    `python bench/surfaces.py [--rounds N] [--apis API ...]` (`make bench` runs them all)."""
    import argparse
    import contextlib
    import sys
    import tempfile

    import run  # bench/run.py: the stack, the mock upstream and the load generator

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rounds", type=int, default=run.FULL.rounds)
    parser.add_argument("--apis", nargs="*", choices=list(APIS), help="only these, beside chat")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="switchboard-surfaces-") as tmp_name:
        tmp = Path(tmp_name)
        with contextlib.ExitStack() as stack:
            upstream, _ = stack.enter_context(run.mock_upstream())
            edge, _, _ = stack.enter_context(run.switchboard(upstream, tmp))
            bodies = run._bodies(tmp)
            run.load(edge, bodies["small"], mode="closed", concurrency=4, requests=100)
            rows = measure(
                edge,
                tmp,
                run.load,
                run.FULL.c1_requests,
                run.FULL.stream_requests,
                args.rounds,
                args.apis,
            )
    json.dump(rows, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
