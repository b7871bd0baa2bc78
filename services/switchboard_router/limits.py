"""Rate limits: requests and tokens per minute, per key and per model.

A sliding window log per scope (a key's or a model's RPM or TPM): an entry per
admitted request, weighted by its cost (1 for RPM; for TPM the estimated prompt
plus max_tokens, settled to the actual tokens afterwards). With REDIS_URL the
log is a Redis sorted set and admission is one atomic Lua script, so every
router replica shares the limit; without it the log lives in this process.

A Redis that errors or hangs never hangs a request: every call has a short
timeout, and SWITCHBOARD_LIMITS_ON_REDIS_ERROR decides (open: admit, the
default; closed: refuse with 503). Either way a metric counts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import log_fields
from switchboard_common.settings import Settings

log = logging.getLogger(__name__)

WINDOW_S = 60.0
REDIS_TIMEOUT_S = 0.25
LIMITED = Counter("switchboard_rate_limited_total", "Requests refused by a rate limit.", ["scope"])
REDIS_ERRORS = Counter(
    "switchboard_rate_limit_redis_errors_total", "Rate-limit checks that Redis did not answer."
)


@dataclass(frozen=True)
class Reservation:
    scope: str
    entry: str
    cost: int
    at_ms: int


# With no max_tokens, TPM reserves this much output until the answer settles it.
DEFAULT_OUTPUT_RESERVATION = 1024


def estimate_tokens(params: Any) -> int:
    """Prompt (about four bytes a token) plus the most output the request allows."""
    prompt = params.ByteSize() // 4 + 1
    limit = 0
    for name in ("max_completion_tokens", "max_tokens"):
        if hasattr(params, name) and params.HasField(name):
            limit = getattr(params, name)
            break
    if not limit and hasattr(params, "max_tokens"):
        limit = DEFAULT_OUTPUT_RESERVATION
    n = params.n if hasattr(params, "n") and params.HasField("n") else 1
    return int(prompt + limit * max(n, 1))


class Limiter(Protocol):
    async def acquire(self, scope: str, limit: int, cost: int) -> Reservation: ...

    async def settle(self, reservation: Reservation, actual: int) -> None: ...

    async def close(self) -> None: ...


def _refuse(scope: str, retry_after_s: float) -> SwitchboardError:
    LIMITED.labels(scope.split(":", 1)[0]).inc()
    kind, _, who = scope.partition(":")
    return SwitchboardError(
        R.ERROR_REASON_RATE_LIMITED,
        f"Rate limit reached for {who} ({kind.upper()}); retry after {retry_after_s:.1f}s.",
        retry_after_s=max(retry_after_s, 0.001),
    )


def workers_refusal(settings: Settings) -> str | None:
    """Why this router cannot run as SWITCHBOARD_WORKERS processes, if it cannot.
    Without REDIS_URL each process keeps its own window, so N workers would admit
    N times a limit. Keys and models (and their limits) come from the registry
    and change while the router runs, so a limit-free config at start proves
    nothing: workers need the shared store whatever the config says now.
    (Breakers and budgets' in-flight holds are per process, as they are per
    replica; spend itself comes from the usage service, shared.)"""
    if settings.redis_url:
        return None
    return (
        "SWITCHBOARD_WORKERS > 1 needs REDIS_URL for the router: without it rate limits "
        "are counted per process, and N workers would admit N times each limit. "
        "Set REDIS_URL, or run one worker"
    )


class LocalLimiter:
    """Per-process limits, for a single router (no REDIS_URL)."""

    def __init__(self) -> None:
        self._logs: dict[str, deque[list[float]]] = {}

    async def acquire(self, scope: str, limit: int, cost: int) -> Reservation:
        now = time.monotonic()
        entries = self._logs.setdefault(scope, deque())
        while entries and entries[0][0] <= now - WINDOW_S:
            entries.popleft()
        used = sum(e[1] for e in entries)
        # A single request larger than the whole limit is admitted when the window
        # is empty: it would otherwise never pass (at most one over-limit request).
        if entries and used + cost > limit:
            raise _refuse(scope, entries[0][0] + WINDOW_S - now)
        entry = [now, float(cost)]
        entries.append(entry)
        return Reservation(scope, str(id(entry)), cost, int(now * 1000))

    async def settle(self, reservation: Reservation, actual: int) -> None:
        for entry in self._logs.get(reservation.scope, ()):
            if str(id(entry)) == reservation.entry:
                entry[1] = float(actual)
                return

    async def close(self) -> None:
        return None


# KEYS[1]: the scope's sorted set of admissions, members "<entry>:<cost>" scored
# by admission time (ms); KEYS[2]: the running total of their costs, so a check
# costs O(expired + log n), not a sum over the whole window. ARGV: now_ms,
# window_ms, limit, cost, entry.
_ACQUIRE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window)
if #expired > 0 then
  local freed = 0
  for i = 1, #expired do
    freed = freed + tonumber(string.match(expired[i], ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('DECRBY', KEYS[2], freed)
end
local count = redis.call('ZCARD', KEYS[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if count == 0 then
  used = 0
  redis.call('SET', KEYS[2], 0)
end
if count > 0 and used + cost > limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. cost)
redis.call('INCRBY', KEYS[2], cost)
redis.call('PEXPIRE', KEYS[1], window)
redis.call('PEXPIRE', KEYS[2], window)
return {1, 0}
"""

# KEYS as for _ACQUIRE. ARGV: entry, old cost, new cost, admitted at (ms).
_SETTLE = """
if redis.call('ZREM', KEYS[1], ARGV[1] .. ':' .. ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1] .. ':' .. ARGV[3])
  redis.call('INCRBY', KEYS[2], tonumber(ARGV[3]) - tonumber(ARGV[2]))
end
return 1
"""


def _keys(scope: str) -> list[str]:
    # The braces are a Redis Cluster hash tag: a scope's two keys share a slot.
    return [f"switchboard:limit:{{{scope}}}", f"switchboard:limit:{{{scope}}}:total"]


class RedisLimiter:
    """Limits shared by every router replica through one Redis."""

    def __init__(self, url: str, fail_open: bool) -> None:
        import redis.asyncio as redis

        self._redis = redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)
        self.fail_open = fail_open
        # Operations in flight, so that close() lets them finish before it
        # closes the pool, and starts none after it: a handler cancelled by
        # the server's stop can still run its cleanup, and with it a settle,
        # after the closers ran; its connection would never be closed.
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._closed = False

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._closed:
            raise ConnectionError("rate-limit store closed")
        call = asyncio.ensure_future(script(keys=keys, args=args))
        self._in_flight.add(call)
        call.add_done_callback(self._done)
        async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
            # shield: a caller that times out or is cancelled stops waiting, but
            # the command itself ends on its own socket timeout, and close()
            # waits for it.
            return await asyncio.shield(call)

    def _done(self, call: asyncio.Future[Any]) -> None:
        self._in_flight.discard(call)
        if not call.cancelled():
            # Retrieved here, since a caller that stopped waiting never will.
            call.exception()

    async def acquire(self, scope: str, limit: int, cost: int) -> Reservation:
        now_ms = int(time.time() * 1000)
        entry = uuid.uuid4().hex
        try:
            allowed, retry_ms = await self._call(
                self._acquire, _keys(scope), [now_ms, int(WINDOW_S * 1000), limit, cost, entry]
            )
        except Exception as exc:
            REDIS_ERRORS.inc()
            log.warning(
                "rate-limit store unavailable",
                extra=log_fields(error=type(exc).__name__, fail_open=self.fail_open),
            )
            if self.fail_open:
                return Reservation(scope, "", cost, now_ms)
            raise SwitchboardError(
                R.ERROR_REASON_SERVICE_UNAVAILABLE,
                "rate limits cannot be checked right now; refusing (fail-closed)",
            ) from None
        if not allowed:
            raise _refuse(scope, int(retry_ms) / 1000)
        return Reservation(scope, entry, cost, now_ms)

    async def settle(self, reservation: Reservation, actual: int) -> None:
        if not reservation.entry or actual == reservation.cost:
            return
        try:
            await self._call(
                self._settle,
                _keys(reservation.scope),
                [reservation.entry, reservation.cost, actual, reservation.at_ms],
            )
        except Exception:
            REDIS_ERRORS.inc()

    async def close(self) -> None:
        self._closed = True
        if self._in_flight:
            # Each ends within its socket timeouts; cancel what still does not.
            _, late = await asyncio.wait(self._in_flight, timeout=REDIS_TIMEOUT_S * 4)
            for call in late:
                call.cancel()
            if late:
                await asyncio.wait(late)
        await self._redis.aclose(close_connection_pool=True)
