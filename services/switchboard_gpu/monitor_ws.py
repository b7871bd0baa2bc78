"""Seed 004's WebSocket monitor, /ws/monitor: GpuService.WatchMonitor as a
WebSocket, served by the gpu service beside its gRPC server (the edge routes
the upgrade here; see the README's "Moving from the inference service").

- Admission: the handshake is admitted under WatchMonitor's declared access
  (switchboard_common.policy, the same AccessPolicy and the same method the
  gRPC interceptor checks), with `Authorization: Bearer <key or token>`,
  `X-API-Key`, or, since browsers cannot set headers on a WebSocket, a
  `token` query parameter. A refusal is the HTTP answer to the handshake (401
  or 403), in seed 004's error body.
- Protocol: the client sends {"action": "subscribe", "events": [...]} (of
  model_status, gpu_metrics, system_alerts); it gets {"type": "subscribed"},
  the current state of what it subscribed to, then each change, as the
  document's {"type", "data"} messages. {"action": "unsubscribe"} stops them;
  {"action": "ping"} answers {"type": "pong"} (for clients that cannot see
  protocol pings).
- Heartbeats: a protocol ping every SWITCHBOARD_GPU_MONITOR_PING_S (20 s); a
  client that does not answer within as long is closed (1011).
- A bad message closes the socket with a clear code and reason: 1003 for a
  binary frame, 1007 for text that is not a JSON object, 4400 for an unknown
  action or event.
- A socket admitted with a login token is closed (1008) when the token
  expires: it would no longer be admitted, so it is not served either.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import ssl
import time
import weakref
from collections.abc import Callable, Sequence
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from google.protobuf import json_format
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from switchboard.gpu.v1 import gpu_pb2
from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields
from switchboard_common.policy import A, AccessPolicy, method_access
from switchboard_common.tls import TlsFiles
from switchboard_gpu.monitor_feed import EVENTS, MonitorServicer

log = logging.getLogger(__name__)
PATH = "/ws/monitor"
_SERVICE = gpu_pb2.DESCRIPTOR.services_by_name["GpuService"]
# The RPC whose declared access (ADMIN, in gpu.proto) admits each connection.
METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['WatchMonitor'].name}"
CLOSE_BINARY, CLOSE_NOT_JSON, CLOSE_BAD_MESSAGE = 1003, 1007, 4400
CLOSE_EXPIRED = 1008  # policy violation
# The document's own fields: kept even when empty; other empty strings are dropped.
_DOCUMENT_FIELDS = frozenset(
    {"model_id", "status", "health", "timestamp", "alert_id", "severity", "message"}
)
_UNAUTHENTICATED = {R.ERROR_REASON_MISSING_API_KEY, R.ERROR_REASON_INVALID_API_KEY}


def message(event: gpu_pb2.WatchMonitorResponse) -> str:
    """The document's {"type", "data"} JSON of one event."""
    data = json_format.MessageToDict(
        getattr(event, event.WhichOneof("data") or "system_alert"),
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    data = {k: v for k, v in data.items() if v != "" or k in _DOCUMENT_FIELDS}
    return json.dumps({"type": event.type, "data": data}, ensure_ascii=False)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refusal(connection: ServerConnection, err: SwitchboardError) -> Response:
    unauthenticated = err.reason in _UNAUTHENTICATED
    status = HTTPStatus.UNAUTHORIZED if unauthenticated else HTTPStatus.FORBIDDEN
    body = {
        "error": {
            "code": "AUTHENTICATION_FAILED" if unauthenticated else "AUTHORIZATION_FAILED",
            "message": err.message,
            "details": {},
        },
        "timestamp": _now(),
        "path": PATH,
    }
    response = connection.respond(status, json.dumps(body, ensure_ascii=False))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


def credentials(request: Request) -> list[tuple[str, str]]:
    """The request's credentials as gRPC metadata, for AccessPolicy.admit."""
    metadata = [
        (name.lower(), value)
        for name, value in request.headers.raw_items()
        if name.lower() in ("authorization", "x-api-key")
    ]
    token = parse_qs(urlsplit(request.path).query).get("token")
    if token and not metadata:
        metadata.append(("authorization", f"Bearer {token[0]}"))
    return metadata


class BadMessage(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse(frame: str | bytes) -> tuple[str, list[str]]:
    """(action, events) of one client message, or BadMessage."""
    if isinstance(frame, bytes):
        raise BadMessage(CLOSE_BINARY, "binary messages are not supported; send JSON text")
    try:
        body = json.loads(frame)
    except ValueError:
        raise BadMessage(CLOSE_NOT_JSON, "messages must be JSON objects") from None
    if not isinstance(body, dict):
        raise BadMessage(CLOSE_NOT_JSON, "messages must be JSON objects")
    action = body.get("action")
    if action not in ("subscribe", "unsubscribe", "ping"):
        raise BadMessage(CLOSE_BAD_MESSAGE, "action must be subscribe, unsubscribe or ping")
    events = body.get("events", list(EVENTS) if action == "subscribe" else [])
    if not isinstance(events, list) or not all(e in EVENTS for e in events):
        raise BadMessage(CLOSE_BAD_MESSAGE, f"events must be a list of {', '.join(EVENTS)}")
    return action, list(dict.fromkeys(events))


class MonitorSocket:
    def __init__(
        self,
        feed: MonitorServicer,
        active: Callable[[], Sequence[gpu_pb2.GpuAlert]],
        admin_key: str | None,
        ping_interval_s: float = 20.0,
    ) -> None:
        self._feed = feed
        # How often an idle client is pinged (SWITCHBOARD_GPU_MONITOR_PING_S).
        self._ping_interval_s = ping_interval_s
        self._active = active
        # Only ADMIN and PUBLIC methods are decided without the client key table
        # (which the gpu service does not follow): refuse to serve under any other.
        if method_access(METHOD) not in (A.ACCESS_ADMIN, A.ACCESS_PUBLIC):
            raise RuntimeError(f"{METHOD} must be ADMIN or PUBLIC for the monitor socket")
        self._policy = AccessPolicy(admin_key)
        self._server: Server | None = None
        # Per connection admitted with a login token: when the token expires.
        self._expiries: weakref.WeakKeyDictionary[ServerConnection, int] = (
            weakref.WeakKeyDictionary()
        )

    async def start(self, address: str, tls: TlsFiles | None) -> None:
        host, _, port = address.rpartition(":")
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
            context.load_cert_chain(str(tls.cert), str(tls.key))
            context.verify_mode = ssl.CERT_REQUIRED
        interval = self._ping_interval_s
        self._server = await serve(
            self._session,
            host,
            int(port),
            process_request=self._admit,
            ssl=context,
            ping_interval=interval,
            ping_timeout=interval,
            logger=log,
        )
        log.info("monitor websocket", extra=log_fields(address=address, path=PATH))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()  # 1001 going away to every client
            await self._server.wait_closed()

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"Not found; the monitor is {PATH}\n")
        presented = credentials(request)
        try:
            self._policy.admit(METHOD, presented)
        except SwitchboardError as err:
            return _refusal(connection, err)
        expiry = self._policy.expiry(presented)
        if expiry is not None:
            self._expiries[connection] = expiry
        return None

    async def _session(self, ws: ServerConnection) -> None:
        relay: asyncio.Task[None] | None = None
        expiry = self._expiries.pop(ws, None)
        expires = asyncio.create_task(_close_at(ws, expiry)) if expiry is not None else None
        try:
            async for frame in ws:
                action, events = parse(frame)
                if action == "ping":
                    await ws.send(json.dumps({"type": "pong", "data": {"timestamp": _now()}}))
                    continue
                if relay is not None:
                    relay.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await relay
                    relay = None
                if action == "unsubscribe":
                    await ws.send(json.dumps({"type": "unsubscribed", "data": {}}))
                    continue
                await ws.send(json.dumps({"type": "subscribed", "data": {"events": events}}))
                relay = asyncio.create_task(self._relay(ws, events))
        except BadMessage as bad:
            await ws.close(bad.code, bad.reason)
        except ConnectionClosed:
            pass
        finally:
            for task in (relay, expires):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _relay(self, ws: ServerConnection, events: list[str]) -> None:
        try:
            async for event in self._feed.watch(events, self._active()):
                await ws.send(message(event))
        except ConnectionClosed:
            return
        # The feed ended (the service drains, or this client fell behind).
        await ws.close(1001, "the monitor feed ended; reconnect")


async def _close_at(ws: ServerConnection, expiry: int) -> None:
    await asyncio.sleep(max(0.0, expiry - time.time()))
    await ws.close(CLOSE_EXPIRED, "the login token expired; reconnect with a new one")
