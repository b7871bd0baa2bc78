"""make bench: Switchboard side by side with a direct call and with LiteLLM,
against the same mock upstream, on this machine, in one run.

Systems: the upstream called directly; Switchboard through the Envoy edge (the
full stack, accounting on); Switchboard over gRPC to the router; LiteLLM proxy.
Scenarios: added latency at concurrency 1 (interleaved rounds, median of round
medians), a closed-loop concurrency sweep, the open-loop throughput frontier
(highest rate with p99 < 50 ms and no errors), streaming TTFT and inter-chunk
gaps, a large prompt, CPU-µs per request per process, and RSS per process.

Writes bench/results.json (or --out), prints a markdown table, and plots
latency against throughput (latency_vs_rps.png).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import surfaces

from switchboard_stack.harness import free_port, running_stack

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LITELLM = REPO / ".venv-bench" / "bin" / "litellm"
P99_LIMIT_MS = 50.0
SOAK_FRACTION = 0.7
# The usage lag is also measured under traffic at this fraction of the frontier.
LAG_LOAD_FRACTION = 0.5
LAG_MODEL = "bench-lag"
SOAK_RSS_GROWTH_LIMIT = 0.10
REDIS_URL = os.environ.get("SWITCHBOARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
CHUNKS = 64
# The suffix of the baseline's systems (--baseline).
BEFORE = "-before"
# SWITCHBOARD_PROVIDER_PLACEMENT values, and the suffix of a second stack's
# systems that runs with it (--provider-placement service router).
PLACEMENTS = {"service": "-provider-service", "router": "-in-router"}
CHUNK_MS = 2


@dataclass(frozen=True)
class Profile:
    rounds: int
    c1_requests: int
    sweep: tuple[int, ...]
    sweep_s: float
    frontier_start: float
    frontier_max: float
    frontier_step_s: float
    bisect: int
    stream_requests: int
    large_requests: int
    warmup: int

    sink_events: int
    lag_probes: int
    # The soak: this long at SOAK_FRACTION of the edge's frontier (0: no soak).
    soak_s: float = 0.0


FULL = Profile(5, 200, (1, 4, 16, 64), 5.0, 50, 12800, 4.0, 3, 20, 100, 200, 200_000, 20, 600.0)
QUICK = Profile(2, 40, (1, 16), 1.5, 50, 1600, 1.5, 1, 4, 10, 40, 20_000, 3)


@dataclass
class System:
    name: str
    url: str = ""
    grpc: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    # The model the bodies ask for on this system.
    model: str = "bench"
    # The usage service's Prometheus endpoint (the edge path): its outbox gauges.
    usage_metrics: str = ""
    # The usage service's gRPC address (the edge path): bench/usage_ack.py asks it.
    usage: str = ""
    # Every process of the stack by name, the idle ones included (bench/idle_cpu.py).
    node_pids: dict[str, int] = field(default_factory=dict)


def _tree(pid: int) -> list[int]:
    """The process and its children: a service run as SWITCHBOARD_WORKERS is a
    supervisor (the pid file's pid) whose workers do the work."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def _proc_cpu_ticks(pid: int) -> int:
    ticks = 0
    for each in _tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """Thread id → (thread name, CPU ticks: utime + stime) of one process."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[int(tid)] = (name, int(fields[11]) + int(fields[12]))
    return out


def _rss_mb(pid: int) -> float:
    total = 0.0
    for each in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def _bodies(tmp: Path) -> dict[str, Path]:
    messages = [{"role": "user", "content": "ping"}]
    large = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 2400}]  # ~64 KB
    specs = {
        "small": {"model": "bench", "messages": messages},
        "stream": {
            "model": "bench",
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        "large": {"model": "bench", "messages": large},
    }
    paths = {}
    for name, body in specs.items():
        paths[name] = tmp / f"{name}.json"
        paths[name].write_text(json.dumps(body))
    return paths


def load(system: System, body: Path, **opts: Any) -> dict[str, Any]:
    """One load run with the right client; returns loadgen's JSON summary."""
    stream = "stream" in body.name
    if system.model != "bench":
        retargeted = body.with_name(f"{body.stem}-{system.model}.json")
        if not retargeted.exists():
            spec = {**json.loads(body.read_text()), "model": system.model}
            retargeted.write_text(json.dumps(spec))
        body = retargeted
    if system.grpc:
        cmd = [sys.executable, str(BENCH / "grpc_load.py"), "--address", system.grpc]
    else:
        cmd = ["node", str(BENCH / "loadgen.mjs"), "--url", system.url]
    cmd += ["--body", str(body), "--stream", "true" if stream else "false"]
    for key, value in opts.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    # A soak runs for minutes: allow its duration plus time to drain.
    limit = 600 + float(opts.get("duration", 0))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=limit)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


# -- systems ---------------------------------------------------------------


@contextlib.contextmanager
def mock_upstream() -> Iterator[tuple[str, int]]:
    port = free_port()
    env = dict(os.environ, MOCK_CHUNKS=str(CHUNKS), MOCK_CHUNK_MS=str(CHUNK_MS))
    proc = subprocess.Popen(
        ["node", str(BENCH / "mock_upstream.mjs"), str(port)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("LISTENING"):
        proc.kill()
        raise RuntimeError(f"mock upstream did not start: {line!r}")
    try:
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


# Limits high enough never to refuse, so what is measured is their cost: with
# REDIS_URL each call runs the sliding-window script for the model's and the
# chosen deployment's RPM and TPM, and settles TPM afterwards.
NEVER = {"rpm": 10_000_000, "tpm": 4_000_000_000}


@contextlib.contextmanager
def baseline_tree(ref: str, tmp: Path) -> Iterator[Path]:
    """REF's code checked out beside this one (a detached git worktree), so its
    stack runs on the same machine in the same run: before and after side by side.
    It runs with this checkout's venv, so REF must not need other dependencies."""
    tree = tmp / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), ref], check=True
    )
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)])


@contextlib.contextmanager
def switchboard(
    upstream: str,
    tmp: Path,
    workers: int = 1,
    tree: Path | None = None,
    suffix: str = "",
    placement: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[System, System, System]]:
    """The bench stack from this checkout, or from `tree` (another checkout's
    services and gen/, e.g. baseline_tree's), its systems' names ending in `suffix`;
    `placement`: SWITCHBOARD_PROVIDER_PLACEMENT (None: the stack's default);
    `extra_env`: more variables for every service (an A/B of a setting)."""
    config = {
        "providers": [
            {"name": "mock", "kind": "openai", "base_url": upstream, "timeout_s": 60},
            {"name": "mock-b", "kind": "openai", "base_url": upstream, "timeout_s": 60},
            # The same upstream, asked in its own Responses API (bench/surfaces.py).
            {
                "name": "mock-native",
                "kind": "openai",
                "base_url": upstream,
                "timeout_s": 60,
                "options": {"responses": "native"},
            },
        ],
        "models": [
            {"name": "bench", "deployments": [{"provider": "mock", "model": "bench"}]},
            {
                "name": "bench-native",
                "deployments": [{"provider": "mock-native", "model": "bench"}],
            },
            # The usage-lag probes' own model, so that their rows can be told apart.
            {"name": LAG_MODEL, "deployments": [{"provider": "mock", "model": "bench"}]},
            {
                "name": "bench-routed",
                "strategy": "least_latency",
                **NEVER,
                "deployments": [
                    {"provider": "mock", "model": "bench", **NEVER},
                    {"provider": "mock-b", "model": "bench", **NEVER},
                ],
            },
        ],
    }
    env = {
        "SWITCHBOARD_LOG_LEVEL": "INFO",
        "REDIS_URL": REDIS_URL,
        # The router and the provider run this many processes each (README: workers).
        "SWITCHBOARD_WORKERS": str(workers),
    }
    if placement is not None:
        env["SWITCHBOARD_PROVIDER_PLACEMENT"] = placement
    env.update(extra_env or {})
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "services"), str(tree / "gen")])
    with running_stack(config, tmp / f"switchboard{suffix}", env) as stack:
        pids = stack.pids()
        edge = System(
            f"switchboard-edge{suffix}",
            url=f"{stack.edge_url}/v1/chat/completions",
            # Accounting is on: the usage service (outbox, relay, sink, embedded
            # ClickHouse) and the broker are part of what this path costs.
            pids={n: pids[n] for n in ("envoy", "router", "provider", "usage", "broker")},
            usage_metrics=f"http://127.0.0.1:{stack.env['SWITCHBOARD_USAGE_METRICS_PORT']}/metrics",
            usage=f"127.0.0.1:{stack.env['SWITCHBOARD_USAGE_PORT']}",
            node_pids=pids,
        )
        direct_grpc = System(
            f"switchboard-grpc{suffix}",
            grpc=stack.router_address,
            pids={n: pids[n] for n in ("router", "provider")},
        )
        routed = dataclasses.replace(
            edge, name=f"switchboard-edge-routed{suffix}", model="bench-routed"
        )
        yield edge, direct_grpc, routed


@contextlib.contextmanager
def warm_edge(
    tmp: Path, baseline: str | None = None, placement: str | None = None
) -> Iterator[tuple[System, dict[str, Path]]]:
    """One edge stack against its own mock upstream, from this checkout or
    `baseline`'s code, warmed with 400 requests: what the per-process tools
    (profile.py, thread_cpu.py) measure. Yields the edge and the bodies."""
    with contextlib.ExitStack() as stack:
        bodies = _bodies(tmp)
        upstream, _ = stack.enter_context(mock_upstream())
        tree = stack.enter_context(baseline_tree(baseline, tmp)) if baseline else None
        edge, _, _ = stack.enter_context(switchboard(upstream, tmp, tree=tree, placement=placement))
        load(edge, bodies["small"], mode="closed", concurrency=4, requests=400)
        yield edge, bodies


@contextlib.contextmanager
def litellm(upstream: str, tmp: Path) -> Iterator[System]:
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "bench",
                        "litellm_params": {
                            "model": "openai/bench",
                            "api_base": upstream,
                            "api_key": "sk-bench",
                        },
                    }
                ]
            }
        )
    )
    env = dict(
        os.environ,
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY="False",
    )
    log = (tmp / "litellm.log").open("w")
    proc = subprocess.Popen(
        [str(LITELLM), "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"litellm exited; see {tmp / 'litellm.log'}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health/liveliness", timeout=1
                ):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("litellm did not become ready in 120 s") from None
                time.sleep(0.25)
        yield System(
            "litellm",
            url=f"http://127.0.0.1:{port}/v1/chat/completions",
            pids={"litellm": proc.pid},
        )
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- scenarios -------------------------------------------------------------


def c1_latency(systems: list[System], body: Path, p: Profile) -> dict[str, dict[str, Any]]:
    """Interleaved rounds so drift on a shared machine hits every system alike."""
    per_round: dict[str, list[tuple[float, float]]] = {s.name: [] for s in systems}
    for _ in range(p.rounds):
        for system in systems:
            r = load(system, body, mode="closed", concurrency=1, requests=p.c1_requests)
            per_round[system.name].append((r["latency_ms"]["p50"], r["latency_ms"]["p99"]))
    direct = per_round["direct"]
    out = {}
    for name, rounds in per_round.items():
        pairs = list(zip(rounds, direct, strict=True))
        out[name] = {
            "p50_ms": statistics.median(r[0] for r in rounds),
            "p99_ms": statistics.median(r[1] for r in rounds),
            "added_p50_ms": statistics.median(r[0] - d[0] for r, d in pairs),
            "added_p99_ms": statistics.median(r[1] - d[1] for r, d in pairs),
            "rounds": p.rounds,
            "requests_per_round": p.c1_requests,
        }
        # The plain edge path of the same stack (the baseline's, for its systems).
        skeleton = per_round.get("switchboard-edge" + name.removeprefix("switchboard-edge-routed"))
        if skeleton is not None and name.startswith("switchboard-edge-routed"):
            # Against the plain edge path in the same rounds: what routing, Redis
            # limits and breakers add on top of it.
            same = list(zip(rounds, skeleton, strict=True))
            out[name]["over_edge_p50_ms"] = statistics.median(r[0] - e[0] for r, e in same)
            out[name]["over_edge_p99_ms"] = statistics.median(r[1] - e[1] for r, e in same)
    return out


def sweep(system: System, body: Path, p: Profile) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Closed-loop RPS and latency per concurrency; CPU per request at the busiest level."""
    rows = []
    cpu: dict[str, Any] = {}
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    for concurrency in p.sweep:
        before = {n: _proc_cpu_ticks(pid) for n, pid in system.pids.items()}
        r = load(system, body, mode="closed", concurrency=concurrency, duration=p.sweep_s)
        after = {n: _proc_cpu_ticks(pid) for n, pid in system.pids.items()}
        rows.append(
            {
                "concurrency": concurrency,
                "rps": r["rps"],
                "p50_ms": r["latency_ms"]["p50"] if r["latency_ms"] else None,
                "p99_ms": r["latency_ms"]["p99"] if r["latency_ms"] else None,
                "errors": r["errors"],
            }
        )
        if concurrency == max(p.sweep) and r["ok"]:
            per = {n: (after[n] - before[n]) * tick_us / r["ok"] for n in system.pids}
            total = sum(per.values())
            cpu = {
                "cpu_us_per_request": per,
                "total_cpu_us_per_request": total,
                # Requests one fully busy core serves, all of the system's processes counted.
                "requests_per_core_s": 1e6 / total if total else None,
            }
    return rows, cpu


def frontier(system: System, body: Path, p: Profile) -> dict[str, Any]:
    """Open-loop rates, doubling until p99 >= 50 ms or an error, then bisected."""
    steps: list[dict[str, Any]] = []

    def passes(rate: float) -> bool:
        r = load(
            system, body, mode="open", rate=rate, duration=p.frontier_step_s, max_in_flight=512
        )
        lat = r["latency_ms"] or {}
        ok = bool(r["errors"] == 0 and lat.get("p99", 1e9) < P99_LIMIT_MS)
        steps.append(
            {
                "rate": rate,
                "rps": r["rps"],
                "p50_ms": lat.get("p50"),
                "p99_ms": lat.get("p99"),
                "errors": r["errors"],
                "passed": ok,
            }
        )
        return ok

    good, bad, rate = 0.0, 0.0, p.frontier_start
    while rate <= p.frontier_max:
        if passes(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    for _ in range(p.bisect if bad else 0):
        mid = round((good + bad) / 2)
        if passes(mid):
            good = mid
        else:
            bad = mid
    return {"frontier_rps": good, "capped": not bad, "steps": steps}


def _outbox_now(metrics_url: str) -> tuple[float, float]:
    """The usage outbox's records (pending + published) and payload bytes now."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:  # noqa: S310 - loopback
        text = reply.read().decode()
    records = payload = 0.0
    for line in text.splitlines():
        if 'outbox="usage"' not in line:
            continue
        if line.startswith("switchboard_outbox_records{"):
            records += float(line.rsplit(" ", 1)[1])
        elif line.startswith("switchboard_outbox_bytes{"):
            payload += float(line.rsplit(" ", 1)[1])
    return records, payload


def outbox_at(system: System, body: Path, rate: float, seconds: float) -> dict[str, Any]:
    """What the usage outbox holds while the edge serves `rate` (its frontier):
    records wait there from their ack until ClickHouse confirms them."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            samples.append(_outbox_now(system.usage_metrics))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        load(system, body, mode="open", rate=rate, duration=seconds, max_in_flight=512)
    finally:
        done.set()
        sampler.join()
    records = sorted(r for r, _ in samples) or [0.0]
    return {
        "rate": rate,
        "seconds": seconds,
        "records_p50": records[len(records) // 2],
        "records_max": records[-1],
        "bytes_max": max((b for _, b in samples), default=0.0),
    }


def soak(system: System, body: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop load at `rate` for `seconds`: errors must stay at zero and each
    process's RSS flat (growth under 10% from after a warm-up to the end)."""
    load(system, body, mode="open", rate=rate, duration=30, max_in_flight=512)
    start = {n: _rss_mb(pid) for n, pid in system.pids.items()}
    samples: list[dict[str, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(15):
            samples.append({n: _rss_mb(pid) for n, pid in system.pids.items()})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        r = load(system, body, mode="open", rate=rate, duration=seconds, max_in_flight=512)
    finally:
        done.set()
        sampler.join()
    end = {n: _rss_mb(pid) for n, pid in system.pids.items()}
    growth = {n: (end[n] - start[n]) / start[n] if start[n] else 0.0 for n in start}
    return {
        "rate": rate,
        "seconds": seconds,
        "requests": r["requests"],
        "errors": r["errors"],
        "rps": r["rps"],
        "latency_ms": r["latency_ms"],
        "rss_start_mb": start,
        "rss_end_mb": end,
        "rss_growth": growth,
        "rss_samples_mb": samples,
        # The local broker keeps every message in memory (Tansu's memory:// engine is
        # the only one compiled in), so its growth is retained data, not a leak:
        # reported, not judged.
        "passed": r["errors"] == 0
        and max(g for n, g in growth.items() if n != "broker") < SOAK_RSS_GROWTH_LIMIT,
    }


def sink_throughput(p: Profile) -> dict[str, Any]:
    """The usage sink draining a pre-filled topic into a fresh embedded ClickHouse."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "sink_bench.py"), "--events", str(p.sink_events)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def usage_lag(edge: System, body: Path, p: Profile, model: str = "") -> dict[str, Any]:
    """Seconds from a response at the edge to its row being counted in ClickHouse.
    With `model`, the probes ask that model and only its rows are counted, so
    other traffic (usage_lag_loaded's) does not count as a probe's row, and the
    count costs the same however many rows the day holds."""
    base = edge.url.removesuffix("/v1/chat/completions")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    summary = f"{base}/v1/usage/summary?start={today}&end={today}"
    if model:
        summary += f"&model={model}"
        probe = body.with_name(f"{body.stem}-{model}.json")
        probe.write_text(json.dumps({**json.loads(body.read_text()), "model": model}))
        body = probe

    def counted() -> float:
        with urllib.request.urlopen(summary, timeout=5) as reply:  # noqa: S310 - loopback
            return float(json.loads(reply.read())["total_requests"])

    data = body.read_bytes()
    lags = []
    for _ in range(p.lag_probes):
        before = counted()
        request = urllib.request.Request(  # noqa: S310 - loopback
            edge.url, data=data, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - loopback
            pass
        answered = time.perf_counter()
        while counted() <= before:
            if time.perf_counter() - answered > 30:
                raise RuntimeError("a usage record did not arrive within 30 s")
            time.sleep(0.02)
        lags.append(time.perf_counter() - answered)
    lags.sort()
    return {
        "probes": len(lags),
        "p50_s": lags[len(lags) // 2],
        "p99_s": lags[min(len(lags) - 1, int(0.99 * len(lags)))],
    }


def usage_lag_loaded(edge: System, body: Path, p: Profile, rate: float) -> dict[str, Any]:
    """usage_lag while open-loop traffic at `rate` RPS goes through the same edge
    (issue 20 asks for the lag at half the frontier): the probes ask LAG_MODEL,
    the traffic the bench model, in 5 s loadgen runs until the probes end."""
    stop = threading.Event()
    served: list[dict[str, Any]] = []

    def traffic() -> None:
        while not stop.is_set():
            served.append(load(edge, body, mode="open", rate=rate, duration=5, max_in_flight=512))

    background = threading.Thread(target=traffic, daemon=True)
    background.start()
    try:
        time.sleep(2.0)  # the traffic reaches its rate before the first probe
        lag = usage_lag(edge, body, p, model=LAG_MODEL)
    finally:
        stop.set()
        background.join()
    return {
        **lag,
        "rate": rate,
        "traffic_rps": statistics.mean(r["rps"] for r in served) if served else 0.0,
        "traffic_errors": sum(r["errors"] for r in served),
    }


def streaming(system: System, body: Path, p: Profile) -> dict[str, Any]:
    r = load(system, body, mode="closed", concurrency=1, requests=p.stream_requests)
    return {
        "ttft_p50_ms": r["ttft_ms"]["p50"] if r["ttft_ms"] else None,
        "ttft_p99_ms": r["ttft_ms"]["p99"] if r["ttft_ms"] else None,
        "interchunk_p50_ms": r["interchunk_ms"]["p50"] if r["interchunk_ms"] else None,
        "interchunk_p99_ms": r["interchunk_ms"]["p99"] if r["interchunk_ms"] else None,
        "coalesced_events": r.get("coalesced_events"),
        "errors": r["errors"],
    }


# -- output ----------------------------------------------------------------


def versions() -> dict[str, str]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unavailable"

    import grpc
    import openai

    out = {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "openai": openai.__version__,
        "node": run("node", "--version"),
        "envoy": run(str(Path(sys.executable).parent / "envoy"), "--version")
        .split("version:")[-1]
        .strip(),
        "cpus": str(os.cpu_count()),
    }
    if LITELLM.exists():
        out["litellm"] = run(
            str(LITELLM.parent / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        )
    return out


NONE = "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    by = {(r["system"], r["scenario"]): r for r in rows}
    systems = list(dict.fromkeys(r["system"] for r in rows if r["scenario"] == "c1"))

    def f(value: Any, digits: int = 2) -> str:
        return NONE if value is None else f"{value:.{digits}f}"

    lines = [
        "| system | c1 p50 ms | c1 p99 ms | added p50 ms | added p99 ms | frontier RPS | "
        "best sweep RPS | TTFT p50 ms | added TTFT ms | inter-chunk p99 ms | coalesced | "
        "large added p50 ms | CPU µs/req | idle RSS MB |",
        "|---|" + "---|" * 13,
    ]
    for s in systems:
        c1 = by.get((s, "c1"), {})
        fr = by.get((s, "frontier"), {})
        sw = by.get((s, "sweep"), {})
        st = by.get((s, "stream"), {})
        lg = by.get((s, "large_prompt"), {})
        cpu = by.get((s, "cpu"), {})
        rss = by.get((s, "rss"), {})
        best = max((x["rps"] for x in sw.get("levels", [])), default=None)
        rss_idle = " + ".join(f"{k} {v:.0f}" for k, v in rss.get("idle_mb", {}).items())
        frontier_rps = f(fr.get("frontier_rps"), 0) + ("+" if fr.get("capped") else "")
        cells = [
            s,
            f(c1.get("p50_ms")),
            f(c1.get("p99_ms")),
            f(c1.get("added_p50_ms")),
            f(c1.get("added_p99_ms")),
            frontier_rps,
            f(best, 0),
            f(st.get("ttft_p50_ms")),
            f(st.get("added_ttft_p50_ms")),
            f(st.get("interchunk_p99_ms")),
            str(st.get("coalesced_events", NONE)),
            f(lg.get("added_p50_ms")),
            f(cpu.get("total_cpu_us_per_request"), 0),
            rss_idle or NONE,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for s in systems:
        c1 = by.get((s, "c1"), {})
        if "over_edge_p50_ms" in c1:
            lines.append(
                f"\n{s} (least-latency over two deployments, model and deployment RPM/TPM in "
                f"Redis, breakers on) over the plain edge path, same rounds: p50 "
                f"{f(c1['over_edge_p50_ms'])} ms, p99 {f(c1['over_edge_p99_ms'])} ms"
            )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in rows:
        if r["scenario"] != "frontier":
            continue
        steps = sorted((s for s in r["steps"] if s["p99_ms"] is not None), key=lambda s: s["rps"])
        xs = [s["rps"] for s in steps]
        (line,) = ax.plot(xs, [s["p99_ms"] for s in steps], marker="o", label=f"{r['system']} p99")
        ax.plot(
            xs,
            [s["p50_ms"] for s in steps],
            linestyle="--",
            color=line.get_color(),
            alpha=0.6,
            label=f"{r['system']} p50",
        )
    ax.axhline(P99_LIMIT_MS, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("achieved requests/s (open loop)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency vs throughput, mock upstream, same machine")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in under 2 minutes")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM baseline")
    parser.add_argument("--out", type=Path, default=BENCH)
    parser.add_argument(
        "--soak-s", type=float, default=None, help="soak duration (full run: 600; 0 skips it)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="SWITCHBOARD_WORKERS for the stack: processes of the router and of the provider",
    )
    parser.add_argument(
        "--provider-placement",
        choices=PLACEMENTS,
        nargs="+",
        default=["service"],
        help="SWITCHBOARD_PROVIDER_PLACEMENT for this checkout's stack (not the baseline's): "
        "the provider as its own service, or inside each router process; a second value "
        "also runs a second stack of this checkout with that placement, its systems' names "
        "ending in " + ", ".join(f"{s!r} ({p})" for p, s in PLACEMENTS.items()),
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run REF's stack (a git worktree of it) as the '-before' systems, "
        "so before and after are measured side by side in one run",
    )
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    if args.soak_s is not None:
        profile = dataclasses.replace(profile, soak_s=args.soak_s)
    use_litellm = not args.no_litellm
    if use_litellm and not LITELLM.exists():
        print(
            "LiteLLM is not installed (make bench installs it); running without it", file=sys.stderr
        )
        use_litellm = False
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    meta = {
        "mode": "quick" if args.quick else "full",
        "commit": commit(),
        "versions": versions(),
        "workers": args.workers,
        "provider_placement": args.provider_placement[0],
    }
    rows: list[dict[str, Any]] = []

    def row(system: str, scenario: str, **fields: Any) -> None:
        rows.append({"system": system, "scenario": scenario, **fields, **meta})
        # A second stack's placement is its suffix's, not the main stack's; the
        # baseline's is its default (older commits have no other).
        for placement, suffix in [*PLACEMENTS.items(), ("service", BEFORE)]:
            if system.endswith(suffix):
                rows[-1]["provider_placement"] = placement
        if not system.startswith("switchboard-"):
            del rows[-1]["provider_placement"]

    with (
        tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        bodies = _bodies(tmp)
        upstream, upstream_pid = stack.enter_context(mock_upstream())
        systems = [
            System("direct", url=f"{upstream}/chat/completions", pids={"upstream": upstream_pid})
        ]
        for index, placement in enumerate(dict.fromkeys(args.provider_placement)):
            suffix = PLACEMENTS[placement] if index else ""
            systems += list(
                stack.enter_context(
                    switchboard(upstream, tmp, args.workers, suffix=suffix, placement=placement)
                )
            )
        if args.baseline:
            tree = stack.enter_context(baseline_tree(args.baseline, tmp))
            systems += list(stack.enter_context(switchboard(upstream, tmp, 1, tree, BEFORE)))
            meta["baseline"] = args.baseline
        if use_litellm:
            systems.append(stack.enter_context(litellm(upstream, tmp)))
        for system in systems:
            row(system.name, "rss", idle_mb={n: _rss_mb(pid) for n, pid in system.pids.items()})
            load(system, bodies["small"], mode="closed", concurrency=4, requests=profile.warmup)
        print(f"[bench] systems up: {', '.join(s.name for s in systems)}", file=sys.stderr)

        for name, result in c1_latency(systems, bodies["small"], profile).items():
            row(name, "c1", **result)
        print("[bench] c1 latency done", file=sys.stderr)
        large = c1_latency(
            systems,
            bodies["large"],
            dataclasses.replace(profile, c1_requests=profile.large_requests, rounds=1),
        )
        for name, result in large.items():
            row(name, "large_prompt", **result)
        direct_ttft = None
        for system in systems:
            if system.model != "bench":
                # The routed variant shares the edge's processes: its c1 rows
                # above are what it is for.
                continue
            levels, cpu = sweep(system, bodies["small"], profile)
            row(system.name, "sweep", levels=levels)
            if system.name != "direct":
                row(system.name, "cpu", **cpu)
            edge_limit = frontier(system, bodies["small"], profile)
            row(system.name, "frontier", **edge_limit)
            if system.usage_metrics and edge_limit["frontier_rps"]:
                held = outbox_at(
                    system, bodies["small"], edge_limit["frontier_rps"], profile.sweep_s * 2
                )
                row(system.name, "outbox_at_frontier", **held)
            st = streaming(system, bodies["stream"], profile)
            if system.name == "direct":
                direct_ttft = st["ttft_p50_ms"]
            st["added_ttft_p50_ms"] = (
                st["ttft_p50_ms"] - direct_ttft
                if st["ttft_p50_ms"] is not None and direct_ttft is not None
                else None
            )
            row(system.name, "stream", **st)
            row(
                system.name,
                "rss_after_load",
                loaded_mb={n: _rss_mb(pid) for n, pid in system.pids.items()},
            )
            print(
                f"[bench] {system.name} done ({time.monotonic() - started:.0f}s)", file=sys.stderr
            )

        for system in systems:
            if system.name in ("switchboard-edge", f"switchboard-edge{BEFORE}"):
                # The probes ask a model only they use, and count only its rows: a
                # count of the day's every row grew with the bench's own traffic
                # (~90 ms at 200k rows), on the usage service's one ClickHouse
                # thread, where it delayed the insert it was waiting for.
                lag = usage_lag(system, bodies["small"], profile, model=LAG_MODEL)
                row(system.name, "usage_lag", **lag)
            if system.name == "switchboard-edge":
                edge_frontier = next(
                    r["frontier_rps"]
                    for r in rows
                    if r["system"] == system.name and r["scenario"] == "frontier"
                )
                for surface_row in surfaces.measure(
                    system, tmp, load, profile.c1_requests, profile.stream_requests, profile.rounds
                ):
                    row(system.name, surface_row.pop("scenario"), **surface_row)
                print("[bench] API surfaces done", file=sys.stderr)
                # No frontier step may meet its p99 bound on a loaded machine:
                # then half the bisection's starting rate.
                basis = edge_frontier or profile.frontier_start
                rate = round(LAG_LOAD_FRACTION * basis)
                loaded = usage_lag_loaded(system, bodies["small"], profile, rate)
                row(system.name, "usage_lag_loaded", frontier_basis=basis, **loaded)
                if profile.soak_s > 0 and edge_frontier:
                    rate = round(SOAK_FRACTION * edge_frontier)
                    print(f"[bench] soak: {profile.soak_s:.0f}s at {rate} RPS", file=sys.stderr)
                    row(system.name, "soak", **soak(system, bodies["small"], rate, profile.soak_s))
    row("switchboard-usage-sink", "sink", **sink_throughput(profile))
    print("[bench] usage lag and sink throughput done", file=sys.stderr)

    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "latency_vs_rps.png")
    table = markdown(rows)
    for r in rows:
        if r["scenario"] == "usage_lag":
            p50, p99 = r["p50_s"], r["p99_s"]
            table += (
                f"\n\nusage lag (response → counted), {r['system']}: "
                f"p50 {p50:.2f} s, p99 {p99:.2f} s"
            )
        if r["scenario"] == "usage_lag_loaded":
            table += (
                f"\nusage lag under {r['traffic_rps']:.0f} RPS of traffic (half the frontier), "
                f"{r['system']}: p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s"
            )
        if r["scenario"] == "soak":
            worst = max(
                ((n, g) for n, g in r["rss_growth"].items() if n != "broker"), key=lambda kv: kv[1]
            )
            table += (
                f"\nsoak: {r['seconds']:.0f} s at {r['rate']} RPS, {r['requests']} requests, "
                f"{r['errors']} errors, largest RSS growth {worst[0]} {worst[1]:+.1%} "
                f"({'pass' if r['passed'] else 'FAIL'})"
            )
        if r["scenario"].startswith("surface_") and r["scenario"] != "surface_chat":
            ttft = r["added_ttft_over_chat_p50_ms"]
            added = r["added_over_chat_p50_ms"]
            table += f"\n{r['path']} over /v1/chat/completions: p50 {added:+.2f} ms" + (
                f", TTFT {ttft:+.2f} ms" if ttft is not None else ""
            )
        if r["scenario"] == "outbox_at_frontier":
            table += (
                f"\nusage outbox at {r['rate']:.0f} RPS (the frontier), {r['system']}: "
                f"p50 {r['records_p50']:.0f} records, max {r['records_max']:.0f} "
                f"({r['bytes_max'] / 1024:.0f} KiB)"
            )
        if r["scenario"] == "sink":
            rate, events = r["events_per_second"], r["events"]
            table += f"\nsink throughput: {rate:,.0f} events/s ({events:,} events)"
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    print(
        f"\n[bench] {meta['mode']} run took {time.monotonic() - started:.0f}s; "
        f"wrote {args.out / 'results.json'} and {args.out / 'latency_vs_rps.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
