"""End to end, through Envoy with the openai SDK, against the REAL llama-server
(llama.cpp, built by `make engines`) and the real SmolLM2-135M model: create a
model with its engine, start it (starting -> running), chat with real tokens
(stream and not) and see them counted, read its logs, kill -9 the engine (the
crash shows, it comes back, calls resume), kill -9 the engine service (the
engine is adopted, no orphan), stop (calls get 503 model_not_running), delete.
Also: an engine whose config went away while the service was down is killed
when the service comes back.

Prints the start-to-first-token time it measured."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from switchboard_engine.commands import llama_server_path
from switchboard_engine.install import bundled_model_path

from switchboard_stack.harness import Stack, running_stack

pytestmark = pytest.mark.e2e

ADMIN_KEY = "e2e-engines-admin-key-0123"
WAIT_S = 60.0
T = TypeVar("T")


def _model() -> Path:
    server, model = llama_server_path(), bundled_model_path()
    if server is None or not server.exists() or model is None:
        pytest.fail("llama-server or the test model is missing: run `make engines`")
    return model


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [{"name": "mock-chat", "deployments": [{"provider": "mock", "model": "m"}]}],
    }
    env = {
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        "SWITCHBOARD_ENGINE_HEALTH_INTERVAL_S": "0.25",
        "SWITCHBOARD_ENGINE_BACKOFF_S": "0.2",
        "SWITCHBOARD_NODE_NAME": "e2e-node",
    }
    with running_stack(config, tmp_path_factory.mktemp("engines"), env) as running:
        yield running


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=stack.edge_url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{stack.edge_url}/v1", api_key="none", max_retries=0, timeout=60
    ) as sdk:
        yield sdk


def until(what: str, check: Callable[[], T | None], wait_s: float = WAIT_S) -> T:
    """Poll check() every 50 ms until it returns something, failing after wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.05)


def engine(admin: httpx.Client, name: str) -> dict[str, Any]:
    reply = admin.get(f"/v1/admin/engines/{name}")
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()["engine"]
    return found


def in_state(admin: httpx.Client, name: str, state: str) -> dict[str, Any] | None:
    current = engine(admin, name)
    return current if current["state"] == f"ENGINE_STATE_{state}" else None


def chat(client: openai.OpenAI, model: str) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name one colour."}],
        max_tokens=12,
        temperature=0,
    )


def chat_or_none(client: openai.OpenAI, model: str) -> Any:
    try:
        return chat(client, model)
    except openai.APIStatusError:
        return None


def not_running(client: openai.OpenAI, model: str) -> bool:
    try:
        chat(client, model)
    except openai.APIStatusError as exc:
        body = exc.body
        return (
            exc.status_code == 503
            and isinstance(body, dict)
            and body.get("code") == "model_not_running"
        )
    return False


def llama_servers(model_path: Path) -> list[int]:
    """Live llama-server processes serving model_path."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        serving = argv[0].endswith(b"llama-server") and str(model_path).encode() in argv
        if serving and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.timeout(300)
def test_a_real_llama_cpp_engine_through_its_lifecycle(
    stack: Stack, admin: httpx.Client, client: openai.OpenAI
) -> None:
    model_path = _model()
    created = admin.post(
        "/v1/admin/engines",
        json={
            "name": "smol",
            "config": {
                "framework": "ENGINE_FRAMEWORK_LLAMA_CPP",
                "model_path": str(model_path),
                "context_size": 2048,
                "threads": 2,
            },
        },
    )
    assert created.status_code == 200, created.text
    assert created.json()["engine"]["state"] == "ENGINE_STATE_CREATED"
    # Once the router has the new model (the registry pushes it within moments):
    # known, and refused as not running rather than unknown.
    until("503 model_not_running", lambda: not_running(client, "smol"))

    # 2. start: starting -> running; then the first token, timed from the start request.
    t0 = time.monotonic()
    started = admin.post("/v1/admin/engines/smol:start", json={})
    assert started.status_code == 200, started.text
    task_id = started.json()["task"]["id"]
    # While it starts, a call is refused at once (503 model_not_running), never left hanging.
    state_before = engine(admin, "smol")["state"]
    asked = time.monotonic()
    refused = not_running(client, "smol")
    assert time.monotonic() - asked < 10.0  # not held until the engine is up
    if state_before == "ENGINE_STATE_STARTING" and engine(admin, "smol")["state"] == state_before:
        assert refused
    seen: set[str] = set()

    def watched() -> dict[str, Any] | None:
        current = engine(admin, "smol")
        seen.add(current["state"])
        return current if current["state"] == "ENGINE_STATE_RUNNING" else None

    running = until("running", watched)
    assert "ENGINE_STATE_STARTING" in seen
    task = admin.get(f"/v1/admin/engine-tasks/{task_id}").json()["task"]
    assert task["state"] == "TASK_STATE_SUCCEEDED"

    def first_token() -> float | None:
        try:
            stream = client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
        except openai.APIStatusError:
            return None  # the router has not seen the deployment yet
        first: float | None = None
        with stream:  # read to the end, so the call completes (and is counted) in full
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.monotonic() - t0
        return first

    ttft = until("a first token", first_token)
    begun, ended = (
        dt.datetime.fromisoformat(task[k].replace("Z", "+00:00"))
        for k in ("create_time", "end_time")
    )
    print(
        f"\nstart-to-first-token: {ttft:.2f} s (llama-server, SmolLM2-135M Q4_1, CPU); "
        f"of which start to running (healthy, registered): {(ended - begun).total_seconds():.2f} s"
    )
    (stack.home / "engine-start-to-first-token.txt").write_text(f"{ttft:.3f}\n")

    # 3. real tokens, non-stream and stream, with usage.
    answer = chat(client, "smol")
    assert answer.choices[0].message.content
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    assert answer.usage.prompt_tokens > 0
    pieces: list[str] = []
    usage = None
    with client.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
    assert "".join(pieces).strip()
    assert usage is not None
    assert usage.completion_tokens > 0
    today = dt.datetime.now(dt.UTC).date().isoformat()

    summaries: list[Any] = []

    def counted() -> dict[str, Any] | None:
        summary = httpx.get(
            f"{stack.edge_url}/v1/usage/summary", params={"start": today, "end": today}
        ).json()
        summaries.append(summary)
        smol: dict[str, Any] | None = (summary.get("by_model") or {}).get("smol")
        return smol if smol and int(smol["requests"]) >= 3 else None

    try:
        assert int(until("usage counted", counted, wait_s=30)["tokens"]) > 0
    except AssertionError:
        raise AssertionError(f"usage not counted: {summaries[-1:]}") from None

    # 4. logs, parsed.
    logs = admin.get("/v1/admin/engines/smol/logs", params={"lines": 400})
    assert logs.status_code == 200, logs.text
    lines = [item["line"] for item in logs.json()]
    assert any("listening" in line["message"] for line in lines), lines[-20:]
    assert {line["level"] for line in lines} >= {"LOG_LEVEL_INFO"}
    stamp = dt.datetime.fromisoformat(lines[-1]["time"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 300

    # 5. kill -9 the engine: the crash shows, it comes back, calls resume.
    os.kill(int(running["pid"]), signal.SIGKILL)
    crashed = until("the crash shows", lambda: engine(admin, "smol")["last_crash"] or None)
    assert "signal 9" in crashed
    back = until(
        "back",
        lambda: (e := in_state(admin, "smol", "RUNNING")) and e["pid"] != running["pid"] and e,
    )
    assert back["pid"] != running["pid"]
    assert back["restart_count"] == 1
    until("calls resume", lambda: chat_or_none(client, "smol"))

    # 6. kill -9 the engine service: the engine is adopted, not orphaned or doubled.
    stack.restart("engine", kill=True)
    adopted = until("adopted", lambda: in_state(admin, "smol", "RUNNING"))
    assert adopted["pid"] == back["pid"]
    assert llama_servers(model_path) == [back["pid"]]
    until("calls after adoption", lambda: chat_or_none(client, "smol"))

    # 7. stop: calls get 503.
    stopped = admin.post("/v1/admin/engines/smol:stop", json={})
    assert stopped.status_code == 200, stopped.text
    until("stopped", lambda: in_state(admin, "smol", "STOPPED"))
    assert llama_servers(model_path) == []
    until("503 model_not_running", lambda: not_running(client, "smol"))

    # 8. delete.
    deleted = admin.delete("/v1/admin/engines/smol", params={"delete_model": "true"})
    assert deleted.status_code == 200, deleted.text
    assert admin.get("/v1/admin/engines/smol").status_code == 404
    assert admin.get("/v1/admin/models/smol").status_code == 404


def test_an_engine_deleted_while_the_service_was_down_is_killed_when_it_returns(
    stack: Stack, admin: httpx.Client
) -> None:
    model_path = _model()
    # Servers this test did not start (the test before it, failed, may leave its own).
    others = set(llama_servers(model_path))

    def ours() -> set[int]:
        return set(llama_servers(model_path)) - others

    config = {"framework": "ENGINE_FRAMEWORK_LLAMA_CPP", "model_path": str(model_path)}
    created = admin.post("/v1/admin/engines", json={"name": "smol-gone", "config": config})
    assert created.status_code == 200, created.text
    assert admin.post("/v1/admin/engines/smol-gone:start", json={}).status_code == 200
    running = until("running", lambda: in_state(admin, "smol-gone", "RUNNING"))
    pid = int(running["pid"])
    os.kill(stack.pids()["engine"], signal.SIGKILL)
    # While the engine service is down, the model loses its engine in the registry.
    cleared = admin.patch("/v1/admin/models/smol-gone?update_mask=engine", json={})
    assert cleared.status_code == 200, cleared.text
    assert ours() == {pid}  # still running, unsupervised
    stack.restart("engine")
    until("killed", lambda: ours() == set())
    assert admin.get("/v1/admin/engines/smol-gone").status_code == 404
    model = admin.get("/v1/admin/models/smol-gone").json()["model"]
    assert model["deployments"] == []
