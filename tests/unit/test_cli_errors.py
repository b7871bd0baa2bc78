"""Errors the CLI meets become a message, a hint that says what to do, and a
meaningful exit code: HTTP answers (401/403/404/409/429/5xx), an unreachable edge,
timeouts, and the openai SDK's exceptions for chat."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import httpx2
import openai
import pytest

from switchboard_cli import errors
from switchboard_cli.commands.chat import sdk_error
from switchboard_cli.edge import Edge
from switchboard_cli.exit_codes import CliError, ExitCode
from switchboard_cli.target import Target

EDGE = "http://127.0.0.1:8080"


def body(message: str, code: str, param: str | None = None, kind: str = "x") -> str:
    return json.dumps({"error": {"message": message, "type": kind, "code": code, "param": param}})


def test_a_missing_admin_key_at_the_edge_says_which_flag() -> None:
    err = errors.http_error(401, body("admin calls need …", "missing_api_key"), realm="admin")
    assert err.code == ExitCode.AUTH
    assert err.hint == "pass --admin-key or set SWITCHBOARD_ADMIN_KEY"


def test_a_wrong_admin_key_says_it_must_match_the_stack() -> None:
    err = errors.http_error(401, body("Invalid admin key.", "invalid_api_key"), realm="admin")
    assert err.code == ExitCode.AUTH
    assert "the key the stack was started with" in (err.hint or "")


def test_an_admin_api_that_is_off_says_how_to_turn_it_on() -> None:
    text = body("the admin API is off: set SWITCHBOARD_ADMIN_KEY to enable it", "permission")
    err = errors.http_error(403, text, realm="admin")
    assert err.code == ExitCode.AUTH
    assert "switchboard down && switchboard up" in (err.hint or "")


def test_client_key_errors_say_how_to_get_a_key() -> None:
    missing = errors.http_error(401, body("no key", "missing_api_key"), realm="client")
    assert "SWITCHBOARD_API_KEY" in (missing.hint or "")
    revoked = errors.http_error(401, body("Invalid API key.", "invalid_api_key"), realm="client")
    assert "unknown or revoked" in (revoked.hint or "")
    forbidden = errors.http_error(403, body("not allowed", "model_not_allowed"), realm="client")
    assert forbidden.code == ExitCode.AUTH
    assert "keys create NAME --model MODEL" in (forbidden.hint or "")


def test_an_offline_model_points_at_models_enable() -> None:
    err = errors.http_error(
        404, body("The model 'x' is offline.", "model_not_found", "model"), realm="client"
    )
    assert err.code == ExitCode.FAILED
    assert err.message == "The model 'x' is offline. (HTTP 404, field model)"
    assert "switchboard models enable NAME" in (err.hint or "")


def test_conflicts_validation_and_rate_limits() -> None:
    conflict = errors.http_error(
        409, body("model 'x' already exists", "already_exists"), realm="admin"
    )
    assert conflict.code == ExitCode.FAILED
    assert "pick another name" in (conflict.hint or "")
    invalid = errors.http_error(400, body("bad", "invalid_request", "model.name"), realm="admin")
    assert "model.name" in invalid.message
    assert "model.name" in (invalid.hint or "")
    limited = errors.http_error(
        429, body("slow down", "rate_limited"), realm="client", retry_after="7"
    )
    assert "after 7 s" in (limited.hint or "")


def test_caller_hints_override_per_status() -> None:
    err = errors.http_error(
        404, body("no model named 'm'", "not_found"), realm="admin", hints={404: "list them"}
    )
    assert (err.code, err.hint) == (ExitCode.FAILED, "list them")


@pytest.mark.parametrize(
    ("status", "code", "needle"),
    [
        (500, "internal", "switchboard status"),
        (503, "no_healthy_deployment", "deployments"),
        (502, "upstream_error", "upstream failed"),
        (503, "no_healthy_upstream", "switchboard status"),
        (501, "not_implemented", "not built yet"),
        (404, "unknown_url", "is --edge-url"),
    ],
)
def test_server_side_failures_say_where_to_look(status: int, code: str, needle: str) -> None:
    err = errors.http_error(status, body("boom", code), realm="admin")
    assert err.code == ExitCode.FAILED
    assert needle in (err.hint or "")


def test_bodies_that_are_not_openai_errors_still_give_a_message() -> None:
    assert errors.error_fields("upstream connect error") == {"message": "upstream connect error"}
    assert errors.error_fields(b"") == {}
    assert errors.error_fields({"message": "inner"}) == {"message": "inner"}
    assert errors.error_fields({"error": "flat"}) == {"message": "flat"}
    assert errors.error_fields([1, 2]) == {}
    err = errors.http_error(502, "", realm="public")
    assert err.message == "the edge answered HTTP 502 (HTTP 502)"


# -- the HTTP client against a scripted edge -----------------------------------------


def edge(handler: Callable[[httpx.Request], httpx.Response], admin_key: str | None = "adm") -> Edge:
    target = Target(edge_url=EDGE, admin_key=admin_key)
    return Edge(target, httpx.Client(base_url=EDGE, transport=httpx.MockTransport(handler)))


def test_admin_calls_send_the_admin_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"model": {"name": "m"}})

    assert edge(handler).call("GET", "/v1/admin/models/m") == {"model": {"name": "m"}}
    assert seen[0].headers["authorization"] == "Bearer adm"


def test_admin_calls_without_a_key_fail_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with pytest.raises(CliError) as raised:
        edge(handler, admin_key=None).call("GET", "/v1/admin/models")
    assert raised.value.code == ExitCode.AUTH
    assert raised.value.message == "the admin API needs SWITCHBOARD_ADMIN_KEY"


def test_an_unreachable_edge_says_to_start_the_stack() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    with pytest.raises(CliError) as raised:
        edge(handler).call("GET", "/v1/admin/models")
    assert raised.value.code == ExitCode.UNREACHABLE
    assert raised.value.message == f"cannot reach the edge at {EDGE}: connection refused"
    assert "run `switchboard up`" in (raised.value.hint or "")


def test_a_timeout_says_how_long_it_waited() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    with pytest.raises(CliError) as raised:
        edge(handler).call("GET", "/v1/admin/models")
    assert raised.value.code == ExitCode.FAILED
    assert "did not answer within 30 s" in raised.value.message


def test_an_answer_that_is_not_json_is_reported() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    with pytest.raises(CliError) as raised:
        edge(handler).call("GET", "/v1/admin/models")
    assert "not JSON" in raised.value.message


def test_http_errors_carry_status_and_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, text=body("slow", "rate_limited"), headers={"retry-after": "3"})

    with pytest.raises(CliError) as raised:
        edge(handler).call("GET", "/v1/admin/models")
    assert "(after 3 s)" in (raised.value.hint or "")


def test_listings_follow_every_page() -> None:
    pages = {"": (["a", "b"], "t1"), "t1": (["c"], "t2"), "t2": (["d"], "")}
    tokens: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("page_token", "")
        tokens.append(token)
        assert request.url.params["tag"] == "x"
        names, following = pages[token]
        return httpx.Response(
            200,
            json={
                "models": [{"name": n} for n in names],
                "next_page_token": following,
                "total_size": 4,
            },
        )

    items = edge(handler).list_all("/v1/admin/models", "models", {"tag": "x"})
    assert [m["name"] for m in items] == ["a", "b", "c", "d"]
    assert tokens == ["", "t1", "t2"]


def test_a_listing_whose_token_repeats_stops() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"keys": [{"name": "k"}], "next_page_token": "same"})

    with pytest.raises(CliError) as raised:
        edge(handler).list_all("/v1/admin/keys", "keys")
    assert "does not end" in raised.value.message


def test_streams_yield_messages_as_they_arrive_and_report_a_broken_end() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=b'[{"metrics_update": {"hostname": "a"}}\n,{"alert": {}}'
        )

    events = edge(handler).stream_array("/v1/admin/gpu/watch")
    assert next(events) == {"metrics_update": {"hostname": "a"}}
    assert next(events) == {"alert": {}}
    with pytest.raises(CliError, match="broke off"):
        next(events)


def test_a_refused_stream_is_an_http_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=body("Invalid admin key.", "invalid_api_key"))

    with pytest.raises(CliError) as raised:
        list(edge(handler).stream_array("/v1/admin/gpu/watch"))
    assert raised.value.code == ExitCode.AUTH


# -- the openai SDK's exceptions (chat) -------------------------------------------


def _sdk_status_error(status: int, text: str) -> openai.APIStatusError:
    """What the SDK raises for a refused call: the status, and the inner error as body."""
    request = httpx2.Request("POST", f"{EDGE}/v1/chat/completions")
    response = httpx2.Response(status, text=text, request=request)
    return openai.APIStatusError(
        f"Error code: {status}", response=response, body=errors.error_fields(text)
    )


def test_chat_without_a_key_on_a_keyed_edge_says_how_to_get_one() -> None:
    err = sdk_error(
        _sdk_status_error(401, body("Invalid API key.", "invalid_api_key")),
        EDGE,
        120,
        had_key=False,
    )
    assert err.code == ExitCode.AUTH
    assert err.message == "the edge needs an API key and none was given (HTTP 401)"
    assert "SWITCHBOARD_API_KEY" in (err.hint or "")


def test_chat_with_a_revoked_key() -> None:
    err = sdk_error(
        _sdk_status_error(401, body("Invalid API key.", "invalid_api_key")), EDGE, 120, had_key=True
    )
    assert err.code == ExitCode.AUTH
    assert "unknown or revoked" in (err.hint or "")


def test_chat_with_an_offline_model() -> None:
    text = body(
        "The model 'm' is offline: an administrator switched it off.", "model_not_found", "model"
    )
    err = sdk_error(_sdk_status_error(404, text), EDGE, 120, had_key=True)
    assert err.code == ExitCode.FAILED
    assert "is offline" in err.message
    assert "models enable" in (err.hint or "")


def test_chat_against_nothing() -> None:
    request = httpx2.Request("POST", f"{EDGE}/v1/chat/completions")
    refused = openai.APIConnectionError(request=request)
    err = sdk_error(refused, EDGE, 120, had_key=False)
    assert err.code == ExitCode.UNREACHABLE
    assert "switchboard up" in (err.hint or "")
    late = sdk_error(openai.APITimeoutError(request=request), EDGE, 120, had_key=False)
    assert "within 120 s" in late.message


def test_an_error_event_inside_a_stream() -> None:
    request = httpx2.Request("POST", f"{EDGE}/v1/chat/completions")
    broke = openai.APIError(
        "upstream reset", request=request, body={"message": "upstream", "code": "upstream_error"}
    )
    err = sdk_error(broke, EDGE, 120, had_key=True)
    assert err.code == ExitCode.FAILED
    assert err.message == "the answer broke off: upstream"
