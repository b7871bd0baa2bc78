"""HTTP answers and transport failures as CliErrors that say what to do (pure).

The edge answers errors in OpenAI's shape, {"error": {"message", "type", "code",
"param"}}, with the HTTP status; Envoy's own replies (no upstream, unknown route)
use the same shape. The realm says which credentials were involved: the admin key
(`/v1/admin/...`) or a client API key (chat)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from switchboard_cli.exit_codes import CliError, ExitCode

Realm = Literal["admin", "client", "public"]

STATUS_HINT = (
    "`switchboard status` shows which components run; their logs are in $SWITCHBOARD_HOME/logs/"
)


def error_fields(payload: object) -> dict[str, Any]:
    """The inner error object from a body (parsed or raw), or {} when there is none.
    Accepts {"error": {...}}, the inner object itself (the openai SDK's err.body),
    and raw text."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "replace")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            text = str(payload).strip()
            return {"message": text[:500]} if text else {}
    if isinstance(payload, Mapping):
        inner = payload.get("error", payload)
        if isinstance(inner, Mapping):
            return dict(inner)
        if isinstance(inner, str):
            return {"message": inner}
    return {}


def _auth_hint(realm: Realm, code: str, message: str) -> str:
    if realm == "admin":
        if "admin API is off" in message:
            return (
                "the stack was started without SWITCHBOARD_ADMIN_KEY: export it, then "
                "restart the stack (`switchboard down && switchboard up`)"
            )
        if code == "missing_api_key":
            return "pass --admin-key or set SWITCHBOARD_ADMIN_KEY"
        return "SWITCHBOARD_ADMIN_KEY (or --admin-key) must be the key the stack was started with"
    if code == "missing_api_key":
        return client_key_missing_hint()
    if code == "model_not_allowed":
        return (
            "this key's allow-list does not include the model: use another key, or create "
            "one with `switchboard keys create NAME --model MODEL`"
        )
    return (
        "the API key is unknown or revoked: check SWITCHBOARD_API_KEY / --api-key "
        "(`switchboard keys list --all` shows revoked keys)"
    )


def http_error(
    status: int,
    payload: object,
    *,
    realm: Realm,
    hints: Mapping[int, str] | None = None,
    retry_after: str | None = None,
) -> CliError:
    """A CliError for an HTTP error answer. `hints` overrides the hint per status
    (e.g. 404 on `models enable` says how to list models)."""
    fields = error_fields(payload)
    message = str(fields.get("message") or f"the edge answered HTTP {status}")
    code = str(fields.get("code") or "")
    param = fields.get("param")
    text = f"{message} (HTTP {status}" + (f", field {param})" if param else ")")
    if status in (401, 403):
        auth_hint = (hints or {}).get(status) or _auth_hint(realm, code, message)
        return CliError(ExitCode.AUTH, text, auth_hint)
    if hints and status in hints:
        return CliError(ExitCode.FAILED, text, hints[status])
    hint: str | None
    if status == 400:
        hint = "check the arguments" + (f" (the server named {param})" if param else "")
    elif status == 404 and code == "unknown_url":
        hint = (
            "the edge does not know this route: is --edge-url / SWITCHBOARD_EDGE_URL "
            "a Switchboard edge?"
        )
    elif status == 404 and realm == "client":
        hint = (
            "`switchboard models list` shows the models; an offline model answers 404 until "
            "`switchboard models enable NAME`"
        )
    elif status == 404:
        hint = (
            "check the name; `switchboard models list` and `switchboard keys list --all` "
            "show what exists"
        )
    elif status == 409:
        hint = (
            "it exists already, or someone changed it meanwhile: pick another name, "
            "or re-read and retry"
        )
    elif status == 429:
        hint = "rate limited: retry later" + (f" (after {retry_after} s)" if retry_after else "")
    elif status == 501:
        hint = "this part of Switchboard is not built yet"
    elif code == "no_healthy_deployment":
        hint = (
            "no deployment of the model can serve now: check its deployments and their "
            "provider (`switchboard models list`)"
        )
    elif status in (502, 503, 504) and code in (
        "upstream_error",
        "upstream_auth",
        "upstream_timeout",
    ):
        hint = "the model's upstream failed; try again, or check the provider's configuration"
    elif status >= 500:
        hint = "a service behind the edge failed or is down: " + STATUS_HINT
    else:
        hint = None
    return CliError(ExitCode.FAILED, text, hint)


def client_key_missing_hint() -> str:
    return (
        "this edge needs an API key: pass --api-key or set SWITCHBOARD_API_KEY "
        "(an admin creates one with `switchboard keys create NAME`)"
    )


def unreachable(edge_url: str, why: str) -> CliError:
    return CliError(
        ExitCode.UNREACHABLE,
        f"cannot reach the edge at {edge_url}: {why}",
        "is the stack up? run `switchboard up` (or point --edge-url / SWITCHBOARD_EDGE_URL "
        "at a running edge)",
    )


def timed_out(edge_url: str, timeout_s: float) -> CliError:
    return CliError(
        ExitCode.FAILED,
        f"the edge at {edge_url} did not answer within {timeout_s:g} s",
        "raise --timeout, or check the stack: " + STATUS_HINT,
    )


def admin_key_missing() -> CliError:
    return CliError(
        ExitCode.AUTH,
        "the admin API needs SWITCHBOARD_ADMIN_KEY",
        "export SWITCHBOARD_ADMIN_KEY=<the key the stack was started with>, or pass --admin-key",
    )
