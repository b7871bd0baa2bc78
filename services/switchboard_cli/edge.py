"""The CLI's one transport: HTTP/JSON through the Envoy edge.

Why HTTP and not the gRPC stubs in gen/: the edge is the one address a remote
operator can reach (in k8s the services' gRPC ports are behind default-deny
NetworkPolicies), it carries the same admin-key check, JSON shapes and OpenAI-style
errors as the curl examples in the README, and it needs nothing generated on the
operator's machine. Chat goes through the same edge with the official openai SDK.
Only up/down/status, which manage local processes, do not use it."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any

import httpx

from switchboard_cli import errors
from switchboard_cli.exit_codes import CliError, ExitCode
from switchboard_cli.jsonstream import JsonArrayDecoder
from switchboard_cli.target import Target

JSON = dict[str, Any]
PAGE_SIZE = 200
# A listing that never ends is a server bug; stop instead of looping forever.
MAX_PAGES = 1000
USER_AGENT = "switchboard-cli"


class Edge:
    def __init__(self, target: Target, client: httpx.Client | None = None) -> None:
        self.target = target
        self._client = client or httpx.Client(
            base_url=target.edge_url,
            timeout=target.timeout(),
            headers={"user-agent": USER_AGENT},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Edge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, realm: errors.Realm) -> dict[str, str]:
        if realm == "admin":
            if not self.target.admin_key:
                raise errors.admin_key_missing()
            return {"authorization": f"Bearer {self.target.admin_key}"}
        if realm == "client" and self.target.api_key:
            return {"authorization": f"Bearer {self.target.api_key}"}
        return {}

    def call(
        self,
        method: str,
        path: str,
        *,
        realm: errors.Realm = "admin",
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str | int] | None = None,
        hints: Mapping[int, str] | None = None,
    ) -> JSON:
        """One request; the decoded JSON object, or a CliError that says what to do."""
        headers = self._headers(realm)
        try:
            reply = self._client.request(method, path, json=body, params=params, headers=headers)
        except httpx.TimeoutException:
            raise errors.timed_out(self.target.edge_url, self.target.timeout()) from None
        except httpx.TransportError as exc:
            raise errors.unreachable(self.target.edge_url, _why(exc)) from None
        return _decode(reply, realm, hints)

    def list_all(
        self,
        path: str,
        field: str,
        params: Mapping[str, str | int] | None = None,
    ) -> list[JSON]:
        """Every item of an admin listing, following next_page_token."""
        items: list[JSON] = []
        token = ""
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            query: dict[str, str | int] = {**(params or {}), "page_size": PAGE_SIZE}
            if token:
                query["page_token"] = token
            page = self.call("GET", path, params=query)
            items.extend(page.get(field) or [])
            token = str(page.get("next_page_token") or "")
            if not token:
                return items
            if token in seen:
                break
            seen.add(token)
        raise CliError(
            ExitCode.FAILED,
            f"the listing of {path} does not end (page token {token!r} repeats)",
            "this is a server bug; " + errors.STATUS_HINT,
        )

    def stream_array(
        self,
        path: str,
        *,
        realm: errors.Realm = "admin",
        params: Mapping[str, str | int] | None = None,
        read_timeout_s: float = 30.0,
    ) -> Generator[JSON, None, None]:
        """The messages of a server-streaming RPC as they arrive: Envoy's transcoder
        writes them as one JSON array, `[{...}` then `,{...}` per message."""
        headers = self._headers(realm)
        timeout = httpx.Timeout(self.target.timeout(), read=read_timeout_s)
        decoder = JsonArrayDecoder()
        try:
            with self._client.stream(
                "GET", path, params=params, headers=headers, timeout=timeout
            ) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    _decode(reply, realm, None)
                for text in reply.iter_text():
                    for item in decoder.feed(text):
                        if isinstance(item, dict):
                            yield item
                if not decoder.done:
                    raise CliError(
                        ExitCode.FAILED,
                        "the stream broke off in the middle",
                        errors.STATUS_HINT,
                    )
        except httpx.TimeoutException:
            raise CliError(
                ExitCode.FAILED,
                f"nothing arrived from {self.target.edge_url}{path} for {read_timeout_s:g} s",
                errors.STATUS_HINT,
            ) from None
        except httpx.TransportError as exc:
            raise errors.unreachable(self.target.edge_url, _why(exc)) from None
        except ValueError as exc:
            raise CliError(
                ExitCode.FAILED, f"the edge sent something that is not a JSON array: {exc}"
            ) from None


def _why(exc: httpx.TransportError) -> str:
    text = str(exc).strip()
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in text.lower() or not text else text
    return text or type(exc).__name__


def _decode(reply: httpx.Response, realm: errors.Realm, hints: Mapping[int, str] | None) -> JSON:
    if reply.status_code >= 400:
        raise errors.http_error(
            reply.status_code,
            reply.text,
            realm=realm,
            hints=hints,
            retry_after=reply.headers.get("retry-after"),
        )
    try:
        data = reply.json()
    except ValueError:
        raise CliError(
            ExitCode.FAILED,
            f"the edge answered {reply.status_code} with something that is not JSON: "
            f"{reply.text[:200]!r}",
            "is --edge-url / SWITCHBOARD_EDGE_URL a Switchboard edge?",
        ) from None
    if not isinstance(data, dict):
        raise CliError(ExitCode.FAILED, f"expected a JSON object, got {type(data).__name__}")
    return data
