"""End to end: every route the edge serves answers as its RPC's declared access
policy says, for no key, a wrong key, a client key and the admin key.

The routes come from the protos (the google.api.http rules in the descriptor
set the edge transcodes with), so a new route is walked as soon as it exists,
and one without a policy fails here. Internal RPCs have no route, and the edge
refuses their gRPC paths. Usage reads show a client key its own traffic only."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from switchboard_stack.harness import Stack, running_stack
from tests.support.routes import A, Route, access, methods, routes

pytestmark = pytest.mark.e2e

ADMIN_KEY = "policy-e2e-admin-0123456789"
CLIENT_KEYS = {"team-a": "sk-policy-team-a-0123456789", "team-b": "sk-policy-team-b-0123456789"}
WRONG_KEY = "sk-policy-not-a-key-0123456789"
# Stands in for every path variable: names nothing that exists.
PROBE = "policy-probe"
REFUSED = {401, 403}
USAGE_WAIT_S = 60.0


def _internal_rpcs() -> list[str]:
    return ["/" + rpc for rpc, method in methods() if access(method) == A.ACCESS_INTERNAL]


ROUTES = routes()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = {
        "providers": [{"name": "mock", "kind": "mock"}],
        "models": [
            {"name": "mock-chat", "deployments": [{"provider": "mock", "model": "mock-echo"}]},
        ],
        "keys": [
            {"name": name, "key_env": f"POLICY_{name.upper().replace('-', '_')}_KEY"}
            for name in CLIENT_KEYS
        ],
    }
    env = {
        "SWITCHBOARD_ADMIN_KEY": ADMIN_KEY,
        **{f"POLICY_{n.upper().replace('-', '_')}_KEY": k for n, k in CLIENT_KEYS.items()},
    }
    with running_stack(config, tmp_path_factory.mktemp("policy"), env) as running:
        yield running


@pytest.fixture(scope="module")
def edge(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.edge_url, timeout=15) as client:
        yield client


def _call(edge: httpx.Client, route: Route, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    body = b"{}" if route.has_body else None
    if body is not None:
        headers["content-type"] = "application/json"
    request = edge.build_request(route.verb, route.path(PROBE), headers=headers, content=body)
    # A stream (a watch) answers with its status first: read that, then hang up.
    response = edge.send(request, stream=route.streams)
    if route.streams:
        response.close()
    else:
        response.read()
    return response


# The seed APIs' own error shapes (their own tests check them in full); every
# other route answers in OpenAI's.
SEED_SERVICES = (
    "QwenChatService",
    "MultiLlmService",
    "VisionChatService",
    "InferenceManagerService",
    "BishengService",
)


def _seed_refusal(body: dict[str, object]) -> str:
    """The message of a seed API's error body, whichever its shape."""
    error = body.get("error")
    # 002: {"error": {code, message, details, request_id}}; 004 the same less request_id.
    if isinstance(error, dict):
        return str(error["message"])
    if "detail" in body:  # 003: {"detail": …}
        return str(body["detail"])
    if "status_message" in body:  # Bisheng: {status_code, status_message, data}
        return str(body["status_message"])
    return str(body["message"])  # 001: {code, message, data}


def _assert_refused(response: httpx.Response, statuses: set[int], route: Route, who: str) -> None:
    assert response.status_code in statuses, f"{route} as {who}: {response.status_code}"
    if route.streams:
        return
    service = route.rpc.split("/")[0].rsplit(".", 1)[-1]
    if service in SEED_SERVICES:
        assert _seed_refusal(response.json()), f"{route}: {response.text}"
        return
    if service == "AnthropicMessagesService":
        body = response.json()
        assert body["type"] == "error", f"{route}: {response.text}"
        assert set(body["error"]) == {"type", "message"}, f"{route}: {response.text}"
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}, f"{route}: {error}"


# Public routes whose URL is its own credential (a signed, expiring link): the
# policy admits every caller, key or none, and the handler refuses the probe,
# which is not signed, in its surface's shape (403), whoever sends it.
SIGNED = {"switchboard.router.v1.BishengService/GetBishengTtsAudio"}


def _assert_admitted(response: httpx.Response, route: Route, who: str) -> None:
    detail = "" if route.streams else response.text[:300]
    assert response.status_code not in REFUSED, f"{route} as {who}: {detail}"


def test_the_walk_covers_every_surface() -> None:
    """The descriptor set holds the routes of every service the edge transcodes."""
    services = {r.rpc.split("/")[0] for r in ROUTES}
    assert {
        "switchboard.router.v1.RouterService",
        "switchboard.registry.v1.RegistryService",
        "switchboard.usage.v1.UsageService",
        "switchboard.gpu.v1.GpuService",
    } <= services
    assert len(ROUTES) > 35


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_route_answers_as_its_policy_declares(edge: httpx.Client, route: Route) -> None:
    if route.access == A.ACCESS_UNSPECIFIED:
        pytest.fail(f"{route} ({route.rpc}) declares no access policy")
    assert route.access != A.ACCESS_INTERNAL, f"{route}: an INTERNAL RPC must have no edge route"
    anonymous = _call(edge, route, None)
    wrong = _call(edge, route, WRONG_KEY)
    client = _call(edge, route, CLIENT_KEYS["team-a"])
    admin = _call(edge, route, ADMIN_KEY)
    if route.rpc in SIGNED:
        assert route.access == A.ACCESS_PUBLIC, f"{route}: a signed link is public"
        for who, response in [
            ("nobody", anonymous),
            ("a wrong key", wrong),
            ("client", client),
            ("the admin key", admin),
        ]:
            assert response.status_code == 403, f"{route} as {who}: {response.status_code}"
            assert "signature" in _seed_refusal(response.json()), f"{route}: {response.text}"
        return
    if route.access == A.ACCESS_PUBLIC:
        for who, response in [("nobody", anonymous), ("a wrong key", wrong), ("client", client)]:
            _assert_admitted(response, route, who)
    elif route.access == A.ACCESS_CLIENT:
        _assert_refused(anonymous, {401}, route, "nobody")
        _assert_refused(wrong, {401}, route, "a wrong key")
        _assert_admitted(client, route, "a client key")
    elif route.access == A.ACCESS_ADMIN:
        _assert_refused(anonymous, {401}, route, "nobody")
        _assert_refused(wrong, {401}, route, "a wrong key")
        _assert_refused(client, REFUSED, route, "a client key")
    else:
        pytest.fail(f"{route}: unknown access {route.access}")
    _assert_admitted(admin, route, "the admin key")


@pytest.mark.parametrize("path", _internal_rpcs())
def test_internal_rpcs_are_not_routed(edge: httpx.Client, path: str) -> None:
    for headers in ({}, {"authorization": f"Bearer {ADMIN_KEY}"}):
        reply = edge.post(
            path, content=b"{}", headers={**headers, "content-type": "application/json"}
        )
        assert reply.status_code == 404, f"{path}: {reply.status_code} {reply.text[:200]}"
        assert reply.json()["error"]["code"] == "unknown_url"


def _usage(edge: httpx.Client, path: str, key: str, **params: str) -> dict[str, Any]:
    reply = edge.get(path, params=params, headers={"authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_a_client_key_sees_its_own_usage_and_the_admin_all(edge: httpx.Client) -> None:
    calls = {"team-a": 2, "team-b": 1}
    for name, count in calls.items():
        for _ in range(count):
            reply = edge.post(
                "/v1/chat/completions",
                json={"model": "mock-chat", "messages": [{"role": "user", "content": name}]},
                headers={"authorization": f"Bearer {CLIENT_KEYS[name]}"},
            )
            assert reply.status_code == 200, reply.text
    today = dt.datetime.now(dt.UTC).date().isoformat()
    summary = "/v1/usage/summary"
    # Usage reaches ClickHouse through Kafka within seconds: poll, bounded.
    deadline = time.monotonic() + USAGE_WAIT_S
    while _usage(edge, summary, ADMIN_KEY, start=today)["total_requests"] < sum(calls.values()):
        assert time.monotonic() < deadline, "usage did not reach ClickHouse in time"
        time.sleep(0.2)
    assert _usage(edge, summary, ADMIN_KEY, start=today)["total_requests"] == 3
    for name, count in calls.items():
        key = CLIENT_KEYS[name]
        own = _usage(edge, summary, key, start=today)
        assert own["total_requests"] == count
        assert own["by_model"]["mock-chat"]["requests"] == count
        performance = _usage(edge, "/v1/usage/performance", key, window="1h")
        assert performance["total_requests"] == count
        series = _usage(edge, "/v1/usage/timeseries", key, window="1h", interval="1m")
        assert sum(p["requests"] for p in series["points"]) == count
    assert edge.get(summary).status_code == 401


def _ws_handshake(stack: Stack, query: str = "", key: str | None = None) -> int:
    """The status of a WebSocket handshake on /ws/monitor (101 when admitted)."""
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    try:
        with ws_connect(
            stack.edge_url.replace("http://", "ws://") + "/ws/monitor" + query,
            additional_headers=headers,
            open_timeout=15,
        ):
            return 101
    except InvalidStatus as refused:
        response = refused.response
    # Refused at the handshake, in seed 004's error body.
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body)["error"]["message"]
    return response.status_code


def test_the_websocket_monitor_admits_as_watch_monitor_declares(stack: Stack) -> None:
    """/ws/monitor is served by the gpu service's WebSocket server, not the
    transcoder, so the walk above proves only its plain-GET twin: its
    handshake is admitted under the same declared access (ADMIN), with the key
    in a header or, for browsers, in the token query parameter."""
    (route,) = [r for r in ROUTES if r.template == "/ws/monitor"]
    assert route.access == A.ACCESS_ADMIN
    assert _ws_handshake(stack) == 401
    assert _ws_handshake(stack, key=WRONG_KEY) == 401
    assert _ws_handshake(stack, key=CLIENT_KEYS["team-a"]) in REFUSED
    assert _ws_handshake(stack, query=f"?token={CLIENT_KEYS['team-a']}") in REFUSED
    assert _ws_handshake(stack, query=f"?token={WRONG_KEY}") == 401
    assert _ws_handshake(stack, key=ADMIN_KEY) == 101
    assert _ws_handshake(stack, query=f"?token={ADMIN_KEY}") == 101
