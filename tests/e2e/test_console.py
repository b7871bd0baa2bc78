"""The web console end to end, in headless Chromium, against the real stack.

The edge serves the console at /console; a browser (Debian's chromium, driven by
playwright-core from tests/e2e/console/drive.mjs) loads it, streams a chat from the
loopback OpenAI upstream and sees the tokens arrive, switches a model offline,
sees the offline error in the playground, sees its call in the usage chart, and
looks at latency percentiles and the GPU page. A second scenario works the
registry, engine and monitoring screens: the kind filter, the default model of
a use, a model's default parameters, the model group, an engine started,
logged and stopped (a process speaking vLLM's HTTP surface, run by the real
engine service), the host's gauges, and an alert's webhook delivery. This test
then checks through the API that what the page showed is so. Screenshots go to
the test's tmp directory and to build/console-screenshots/{tour,gpu-devices,
operations}/ (or under
$SWITCHBOARD_CONSOLE_SCREENSHOTS), replaced on each run."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
import yaml

from switchboard_common.settings import Settings
from switchboard_stack import envoy
from switchboard_stack.harness import REPO, Stack, running_stack
from tests.conftest import UPSTREAM_KEY, eventually
from tests.support.openai_upstream import Behaviour, OpenAIUpstream

# A browser beside a whole stack: not beside another stack.
pytestmark = [pytest.mark.e2e, pytest.mark.serial]

ADMIN_KEY = "console-e2e-admin-key-0123456789"
PROVIDER_KEY = UPSTREAM_KEY
STREAM_MODEL = "loop-chat"
OFFLINE_MODEL = "mock-chat"
PROMPT = "route this call through the switchboard console please"
REPLY = f"echo: {PROMPT}"
# Spaces the streamed tokens out, so the page is seen showing part of the reply.
CHUNK_DELAY_S = 0.1
DRIVER = Path(__file__).parent / "console" / "drive.mjs"
CHROMIUM = os.environ.get("SWITCHBOARD_CHROMIUM", "/usr/bin/chromium")
PLAYWRIGHT = REPO / "node_modules" / "playwright-core" / "package.json"
SCREENSHOTS = Path(
    os.environ.get("SWITCHBOARD_CONSOLE_SCREENSHOTS") or REPO / "build" / "console-screenshots"
)
DRIVER_TIMEOUT_S = 150
# The operations scenario's registry, engine and alert.
RERANK_MODEL = "loop-rerank"
GROUP = "console-group"
GROUP_A = "group-a"
GROUP_B = "group-b"
ENGINE = "console-engine"
ALERT_RULE = "console-hot"
WEBHOOK_SECRET = "console-webhook-secret-0123456789"
FAKE_VLLM = REPO / "tests" / "support" / "fake_vllm.py"
# One scripted GPU (this machine has none), hot enough for ALERT_RULE.
GPU_SCRIPT = {
    "driver_version": "550.54.15",
    "cuda_version": "12.4",
    "devices": [
        {
            "index": 0,
            "uuid": "GPU-console-0",
            "name": "NVIDIA L4",
            "utilization_gpu_percent": 41,
            "memory_used_mib": 6144,
            "memory_total_mib": 23034,
            "temperature_c": 71,
            "power_w": 40,
            "power_limit_w": 72,
        }
    ],
}


def _node() -> str:
    """node, Chromium and playwright-core, or a failure that says how to get them."""
    node = shutil.which("node")
    missing = []
    if node is None:
        missing.append("node is not on PATH")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(
            f"{CHROMIUM} is missing: `make test` installs it (Debian's chromium), or run "
            "`apt-get install -y --no-install-recommends chromium`"
        )
    if not PLAYWRIGHT.is_file():
        missing.append("node_modules/playwright-core is missing: run `make install`")
    if missing or node is None:
        pytest.fail("the console test needs a browser: " + "; ".join(missing), pytrace=False)
    return node


@pytest.fixture(scope="module")
def upstream(upstream: OpenAIUpstream) -> OpenAIUpstream:
    upstream.behaviour = Behaviour(chunk_delay_s=CHUNK_DELAY_S)
    return upstream


class _Hook(BaseHTTPRequestHandler):
    """The alert webhook's receiver on loopback: keeps each delivery key whose
    signature checks out."""

    received: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        wanted = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        ok = self.headers.get("x-switchboard-signature") == wanted
        if ok:
            self.received.append(self.headers["x-switchboard-delivery"])
        self.send_response(200 if ok else 401)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what arrived."""


@pytest.fixture(scope="module")
def webhook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def stack(
    upstream: OpenAIUpstream, webhook: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    # The engine service runs "vllm" as it would on a GPU node: here a process that
    # speaks vLLM's HTTP surface, healthy at once (its ready file exists).
    vllm = tmp / "vllm"
    vllm.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VLLM}" "$@"\n')
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    ready = tmp / "vllm-ready"
    ready.touch()
    gpu_script = tmp / "gpu.json"
    gpu_script.write_text(json.dumps(GPU_SCRIPT))
    pricing = {"input_per_1k": 0.5, "output_per_1k": 1.5, "currency": "USD"}
    config = {
        "providers": [
            {
                "name": "loopback",
                "kind": "openai",
                "base_url": upstream.base_url,
                "api_key_env": "CONSOLE_E2E_PROVIDER_KEY",
                "timeout_s": 10,
            },
            {"name": "mock", "kind": "mock"},
        ],
        "models": [
            {
                "name": STREAM_MODEL,
                "deployments": [{"provider": "loopback", "model": "gpt-loop"}],
                "pricing": pricing,
            },
            {
                "name": OFFLINE_MODEL,
                "deployments": [{"provider": "mock", "model": "mock-echo"}],
                "pricing": pricing,
            },
            *(
                {"name": name, "deployments": [{"provider": "mock", "model": f"{name}-echo"}]}
                for name in (GROUP_A, GROUP_B)
            ),
            {
                "name": RERANK_MODEL,
                "kind": "rerank",
                "deployments": [{"provider": "loopback", "model": "rerank-loop"}],
            },
        ],
    }
    env = {
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "CONSOLE_E2E_PROVIDER_KEY": PROVIDER_KEY,
        "SWITCHBOARD_VLLM_BIN": str(vllm),
        "FAKE_VLLM_READY_FILE": str(ready),
        "SWITCHBOARD_ENGINE_HEALTH_INTERVAL_S": "0.25",
        "SWITCHBOARD_GPU_SCRIPT": str(gpu_script),
        "SWITCHBOARD_ALERT_WEBHOOK_URL": webhook,
        "SWITCHBOARD_ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    with running_stack(config, tmp / "stack", env) as running:
        yield running


def test_every_console_file_has_a_route(tmp_path: Path) -> None:
    """Envoy serves each file from its own route: a file without one would 404."""
    rendered = envoy.render(Settings.from_env(), tmp_path / "envoy.yaml").read_text()
    config = yaml.safe_load(rendered)
    (listener,) = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (host,) = manager["route_config"]["virtual_hosts"]
    served = {
        r["match"]["path"]: Path(r["direct_response"]["body"]["filename"])
        for r in host["routes"]
        if "filename" in r.get("direct_response", {}).get("body", {})
    }
    files = {p.name for p in envoy.CONSOLE_DIR.iterdir() if p.is_file()}
    assert {f.name for f in served.values()} == files
    for path, file in served.items():
        assert file.parent == envoy.CONSOLE_DIR
        assert path == "/console/" + ("" if file.name == "index.html" else file.name)
        assert file.stat().st_size <= envoy.CONSOLE_MAX_FILE_BYTES


def _drive(
    node: str, stack: Stack, shots: Path, scenario: str, **extra: str
) -> dict[str, dict[str, Any]]:
    """Run a scenario of the browser script; its steps by name, or a failure with its output."""
    env = {
        **os.environ,
        "EDGE_URL": stack.edge_url,
        "ADMIN_KEY": ADMIN_KEY,
        "SHOTS": str(shots),
        "CHROMIUM": CHROMIUM,
        "SCENARIO": scenario,
        **extra,
    }
    # Its own process group, so a timeout takes Chromium down with it.
    with subprocess.Popen(
        [node, str(DRIVER)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"the browser script ran past {DRIVER_TIMEOUT_S}s:\n{out}\n{err}")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not any(r.get("done") for r in records):
        failed: dict[str, Any] = next((r for r in records if "failed" in r), {})
        pytest.fail(
            f"the console failed at step {failed.get('failed')!r}: {failed.get('error')}\n"
            f"screenshot: {failed.get('screenshot')}\nstdout:\n{out}\nstderr:\n{err}",
            pytrace=False,
        )
    return {r["step"]: r for r in records if "step" in r}


def test_console_streams_switches_offline_and_charts_usage(
    stack: Stack,
    upstream: OpenAIUpstream,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = _node()
    admin = httpx.Client(
        base_url=stack.edge_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    with admin:
        # The edge serves the files with their types, and a policy that keeps the page
        # to its own origin.
        page = admin.get("/console/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        script = admin.get("/console/console.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert admin.get("/console/missing.js").status_code == 404

        shots = tmp_path / "screenshots"
        steps = _drive(
            node,
            stack,
            shots,
            "tour",
            STREAM_MODEL=STREAM_MODEL,
            OFFLINE_MODEL=OFFLINE_MODEL,
            PROMPT=PROMPT,
            REPLY=REPLY,
        )

        # The active chat model was picked in the page: the registry has it.
        assert "activate" in steps
        defaults = admin.get("/v1/admin/defaults").json()["defaults"]
        assert {"use": "MODEL_USE_CHAT", "model": STREAM_MODEL} in defaults

        # Streamed: the page showed part of the reply before all of it.
        chat = steps["stream_chat"]
        assert chat["reply"] == REPLY
        assert REPLY.startswith(chat["partial"])
        assert chat["partial"] != REPLY
        assert f"deployment {STREAM_MODEL}.loopback.gpt-loop" in chat["meta"]
        (served,) = [c for c in upstream.served if c.model == "gpt-loop"]
        assert served.stream
        assert served.completed

        # Switched offline in the page: the API says so, and calls are refused.
        model = admin.get(f"/v1/admin/models/{OFFLINE_MODEL}")
        assert model.status_code == 200, model.text
        assert model.json()["model"]["online"] is False
        assert "offline" in steps["offline_chat_fails"]["error"]
        with (
            openai.OpenAI(
                base_url=f"{stack.edge_url}/v1", api_key="unused", max_retries=0, timeout=10
            ) as client,
            pytest.raises(openai.NotFoundError, match="offline"),
        ):
            client.chat.completions.create(
                model=OFFLINE_MODEL, messages=[{"role": "user", "content": "hi"}]
            )

        # The usage chart's points are the call the page made, as the API counts it.
        usage = steps["usage_chart"]
        series = admin.get(
            "/v1/usage/timeseries", params={"window": "1h", "interval": "1m", "model": STREAM_MODEL}
        )
        assert series.status_code == 200, series.text
        points = series.json()["points"]
        assert usage["requests"] == sum(p["requests"] for p in points) == 1
        assert usage["tokens"] == sum(p["tokens"] for p in points)
        assert usage["tokens"] == served.prompt_tokens + served.completion_tokens

        assert steps["performance"]["latency_p50_ms"] > 0

        # The stack's GPU is scripted (this machine has none): the page draws the gpu
        # service's device with its four gauges. (NVML unavailable: gpu-devices scenario.)
        gpu = admin.get("/v1/admin/gpu/status").json()["status"]
        shown = steps["gpu"]
        assert gpu["nvml_state"] == "NVML_STATE_AVAILABLE"
        assert shown["devices"] == len(gpu["devices"]) == 1
        assert shown["gauges"] == 4

    files = sorted(p.name for p in shots.glob("*.png"))
    assert files == [
        "01-models.png",
        "01b-active-model.png",
        "02-playground-stream.png",
        "03-models-offline.png",
        "04-playground-offline-error.png",
        "05-usage.png",
        "06-performance.png",
        "07-gpus.png",
    ]
    _keep(shots, "tour", capsys)


def _keep(shots: Path, scenario: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Copy the screenshots where people look for them (the last run's), and say where."""
    kept = SCREENSHOTS / scenario
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(shots, kept)
    with capsys.disabled():
        print(f"\nconsole screenshots: {kept} (and {shots})")


# A node with two GPUs as the GPU service reports it (gpu.proto, JSON as the edge
# prints it): GPU 1 has no power or temperature reading, which must show as
# "not reported", never as 0.
GPU_STATUS = {
    "status": {
        "hostname": "gpu-node-1",
        "labels": {},
        "nvml_state": "NVML_STATE_AVAILABLE",
        "reason": "",
        "driver_version": "570.86.15",
        "cuda_version": "12.8",
        "sample_time": "2026-11-24T05:00:00Z",
        "devices": [
            {
                "index": 0,
                "uuid": "GPU-0000",
                "name": "NVIDIA H100 80GB HBM3",
                "utilization_gpu_percent": 37,
                "utilization_memory_percent": 20,
                "memory_used_mib": 40960,
                "memory_total_mib": 81559,
                "temperature_c": 64,
                "power_w": 312.5,
                "power_limit_w": 700,
                "sm_clock_mhz": 1980,
                "processes": [{"pid": 4242, "name": "vllm", "used_memory_mib": 40000}],
                "health": "GPU_HEALTH_OK",
                "nvml_errors": [],
                "health_reason": "",
            },
            {
                "index": 1,
                "uuid": "GPU-0001",
                "name": "NVIDIA H100 80GB HBM3",
                "utilization_gpu_percent": 98,
                "memory_used_mib": 80000,
                "memory_total_mib": 81559,
                "processes": [],
                "health": "GPU_HEALTH_ALERTING",
                "nvml_errors": [],
                "health_reason": "gpu-hot firing",
            },
        ],
    },
    "active_alerts": [
        {
            "alert_id": "a-1",
            "rule_name": "gpu-busy",
            "metric": "utilization_gpu_percent",
            "hostname": "gpu-node-1",
            "gpu_uuid": "GPU-0001",
            "gpu_index": 1,
            "state": "ALERT_STATE_FIRING",
            "severity": "SEVERITY_WARNING",
            "value": 98,
            "threshold": 95,
            "time": "2026-11-24T04:59:00Z",
            "message": "utilization_gpu_percent 98 > 95 for 60s",
            "start_time": "2026-11-24T04:59:00Z",
            "comparator": "COMPARATOR_GREATER_THAN",
        }
    ],
    "rules": [],
    "registry_version": "3",
}


# A node without NVML, as the gpu service reports it: with its host's readings.
NO_NVML_REASON = "NVML Shared Library Not Found"
GPU_UNAVAILABLE = {
    "status": {
        "hostname": "cpu-node-1",
        "labels": {},
        "nvml_state": "NVML_STATE_UNAVAILABLE",
        "reason": NO_NVML_REASON,
        "driver_version": "",
        "cuda_version": "",
        "sample_time": "2026-11-24T05:00:00Z",
        "devices": [],
        "host": {
            "cpu_percent": 12.5,
            "cpu_count": 8,
            "memory_percent": 40,
            "memory_used_mib": "13107",
            "memory_total_mib": "32768",
            "disk_percent": 55,
            "disk_used_mib": "563200",
            "disk_total_mib": "1024000",
            "load_average_1m": 0.8,
        },
    },
    "active_alerts": [],
    "rules": [],
    "registry_version": "3",
}


def test_gpu_page_draws_each_reading_and_no_made_up_ones(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page is given the GPU service's answer for a node with two GPUs, then for
    one without NVML (everything else is the real stack)."""
    node = _node()
    shots = tmp_path / "screenshots"
    alerts = {"alerts": GPU_STATUS["active_alerts"]}
    steps = _drive(
        node,
        stack,
        shots,
        "gpu-devices",
        GPU_STATUS=json.dumps(GPU_STATUS),
        GPU_ALERTS=json.dumps(alerts),
        GPU_UNAVAILABLE=json.dumps(GPU_UNAVAILABLE),
    )
    shown = steps["gpu_devices"]
    assert shown["devices"] == 2
    assert shown["gauges"] == [
        "GPU 0 utilisation: 37%",
        "GPU 0 memory: 50%",
        "GPU 0 temperature: 64 °C",
        "GPU 0 power: 313 W",
        "GPU 1 utilisation: 98%",
        "GPU 1 memory: 98%",
        "GPU 1 temperature: not reported",
        "GPU 1 power: not reported",
    ]
    assert shown["badges"] == ["ok", "alerting"]
    assert "gpu-busy" in shown["active"]
    assert shown["firing_rows"] == 1
    # NVML unavailable: its reason, and no readings drawn (no made-up zeros); the host's
    # readings still are.
    gone = steps["gpu_unavailable"]
    assert NO_NVML_REASON in gone["unavailable"]
    assert gone["gauges"] == 0
    assert gone["host"] == 3
    _keep(shots, "gpu-devices", capsys)


def test_console_registry_engines_host_and_notifications(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = _node()
    admin = httpx.Client(
        base_url=stack.edge_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    with admin:
        created = admin.post(
            "/v1/admin/engines",
            json={
                "name": ENGINE,
                "config": {"framework": "ENGINE_FRAMEWORK_VLLM", "model_path": "org/tiny-model"},
            },
        )
        assert created.status_code == 200, created.text
        rule = admin.post(
            "/v1/admin/alert-rules",
            json={
                "name": ALERT_RULE,
                "metric": "temperature_c",
                "comparator": "COMPARATOR_GREATER_THAN",
                "threshold": 60,
                "severity": "SEVERITY_WARNING",
                "notification_channels": ["webhook"],
            },
        )
        assert rule.status_code == 200, rule.text

        shots = tmp_path / "screenshots"
        steps = _drive(
            node,
            stack,
            shots,
            "operations",
            RERANK_MODEL=RERANK_MODEL,
            GROUP=GROUP,
            GROUP_A=GROUP_A,
            GROUP_B=GROUP_B,
            ENGINE=ENGINE,
            ALERT_RULE=ALERT_RULE,
        )

        # The kind filter showed the rerank model alone; a use of a kind offers that kind.
        assert steps["model_kinds"]["shown"] == [RERANK_MODEL]
        assert steps["model_kinds"]["chips"] == ["rerank"]
        assert steps["default_rerank"]["offered"] == [RERANK_MODEL]
        assert RERANK_MODEL not in steps["default_rerank"]["chat_offers"]
        defaults = admin.get("/v1/admin/defaults").json()["defaults"]
        assert {"use": "MODEL_USE_RERANK", "model": RERANK_MODEL} in defaults

        # The model's defaults and catalogue fields, as the registry stores them.
        model = admin.get(f"/v1/admin/models/{GROUP_A}").json()["model"]
        assert model["default_parameters"] == {"temperature": 0.3, "max_tokens": 64}
        assert (model["keyword"], model["release_date"]) == ("console-keyword", "2026-11-30")
        assert "streaming" not in model  # left checked: unset, streams
        assert steps["default_parameters"]["row"] == "Defaults: temperature 0.3 · max_tokens 64"

        # The model group: stored, and a call for it is served by one of its models.
        lb = admin.get("/v1/admin/load-balancing").json()["load_balancing"]
        assert lb["group"] == GROUP
        assert lb["weights"] == {GROUP_A: 3, GROUP_B: 1}
        assert lb["strategy"] == "ROUTING_STRATEGY_WEIGHTED_RANDOM"
        assert f"{GROUP_A} (3)" in steps["model_group"]["summary"]
        served = admin.post(
            "/v1/chat/completions",
            json={"model": GROUP, "messages": [{"role": "user", "content": "which one?"}]},
        )
        assert served.status_code == 200, served.text
        assert served.headers["x-switchboard-model"] in (GROUP_A, GROUP_B)

        # The engine: started and stopped from the page, each a task that succeeded.
        start = steps["engine_start"]
        assert start["before"] in ("created", "stopped")
        for fact in ("vllm", "port ", "pid "):
            assert fact in start["facts"]
        assert start["task"] == "start: succeeded"
        assert start["gauges"] == 1
        assert steps["engine_stop"]["task"] == "stop: succeeded"
        engine = admin.get(f"/v1/admin/engines/{ENGINE}").json()["engine"]
        assert engine["state"] == "ENGINE_STATE_STOPPED"
        task = admin.get(f"/v1/admin/engine-tasks/{engine['task_id']}").json()["task"]
        assert (task["kind"], task["state"]) == ("TASK_KIND_STOP", "TASK_STATE_SUCCEEDED")
        # The log lines the page showed are the engine's own (vLLM's format, parsed).
        shown = steps["engine_logs"]["messages"]
        assert steps["engine_logs"]["heading"] == f"Log of {ENGINE}"
        logs = admin.get(f"/v1/admin/engines/{ENGINE}/logs", params={"lines": 200})
        assert logs.status_code == 200, logs.text
        logged = [m["line"]["message"] for m in logs.json()]
        assert shown
        assert set(shown) <= set(logged)

        # Host gauges beside the GPUs, from the gpu service's psutil readings.
        host = admin.get("/v1/admin/gpu/status").json()["status"]["host"]
        gauges = steps["host"]["gauges"]
        assert [g.split(":")[0] for g in gauges] == ["Host CPU", "Host memory", "Host disk"]
        cpu, memory, disk = steps["host"]["values"]
        assert 0 <= cpu <= 100
        assert abs(memory - host["memory_percent"]) < 10
        assert abs(disk - host["disk_percent"]) < 2

        # The alert's webhook went out, and the page showed its delivery as the API does.
        shown_keys = steps["notifications"]["keys"]
        assert shown_keys == [f"{k.split(':')[0]}:ALERT_STATE_FIRING:webhook" for k in shown_keys]
        assert "webhook" in steps["notifications"]["channels"]
        assert "temperature_c > 60" in steps["notifications"]["rule"]
        listed = admin.get("/v1/admin/gpu/notifications").json()
        delivered = {
            n["key"]
            for n in listed["notifications"]
            if n["status"] == "DELIVERY_STATUS_DELIVERED" and n["rule_name"] == ALERT_RULE
        }
        assert set(shown_keys) <= delivered
        eventually(lambda: set(shown_keys) <= set(_Hook.received), what="the webhook's receipt")
        assert steps["notifications"]["cells"][:4] == [ALERT_RULE, "firing", "webhook", "delivered"]

    files = sorted(p.name for p in shots.glob("*.png"))
    assert files == [
        "09-models-rerank.png",
        "10-model-defaults.png",
        "11-model-group.png",
        "12-engine-running.png",
        "13-engine-stopped.png",
        "14-host-and-notifications.png",
    ]
    _keep(shots, "operations", capsys)
