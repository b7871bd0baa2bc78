"""Rate limits: requests and tokens per minute, per key and per model.

A sliding window log per scope (a key's or a model's RPM or TPM): an entry per
admitted request, weighted by its cost (1 for RPM; for TPM the estimated prompt
plus max_tokens, settled to the actual tokens afterwards). With REDIS_URL the
log is a Redis sorted set and admission is one atomic Lua script per scope, so
every router replica shares the limit; without it the log lives in this process.
A phase's scopes go to Redis in one pipelined round trip: the first attempt's
(the key's and model's limits with its deployment's), a later attempt's (its
deployment's), the settling afterwards.

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
from collections.abc import Sequence
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


@dataclass(frozen=True)
class Scope:
    """One limit to check: its name ("rpm:key k"), its limit, and this request's cost."""

    name: str
    limit: int
    cost: int


class Limiter(Protocol):
    async def acquire(self, scopes: Sequence[Scope]) -> list[Reservation]:
        """Reserve every scope, or none: the first refusal is raised after
        what the others took is given back."""
        ...

    async def settle(self, settled: Sequence[tuple[Reservation, int]]) -> None:
        """Replace each reservation's cost with what was used (0: give it back)."""
        ...

    async def close(self) -> None: ...


class LimitReached(SwitchboardError):
    """A scope's refusal (429), naming the scope: a caller that reserved several
    phases' scopes in one round trip tells by it whose limit was reached."""

    def __init__(self, scope: str, retry_after_s: float) -> None:
        kind, _, who = scope.partition(":")
        super().__init__(
            R.ERROR_REASON_RATE_LIMITED,
            f"Rate limit reached for {who} ({kind.upper()}); retry after {retry_after_s:.1f}s.",
            retry_after_s=max(retry_after_s, 0.001),
        )
        self.scope = scope


def _refuse(scope: str, retry_after_s: float) -> LimitReached:
    LIMITED.labels(scope.split(":", 1)[0]).inc()
    return LimitReached(scope, retry_after_s)


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

    async def acquire(self, scopes: Sequence[Scope]) -> list[Reservation]:
        taken: list[Reservation] = []
        try:
            for scope in scopes:
                taken.append(self._acquire(scope.name, scope.limit, scope.cost))
        except SwitchboardError:
            await self.settle([(reservation, 0) for reservation in taken])
            raise
        return taken

    def _acquire(self, scope: str, limit: int, cost: int) -> Reservation:
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

    async def settle(self, settled: Sequence[tuple[Reservation, int]]) -> None:
        for reservation, actual in settled:
            for entry in self._logs.get(reservation.scope, ()):
                if str(id(entry)) == reservation.entry:
                    entry[1] = float(actual)
                    break

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
        from redis.exceptions import NoScriptError

        self._no_script = NoScriptError

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

    async def _pipelined(self, calls: Sequence[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run (script, keys, args) calls in one round trip; each result, or
        the exception that call raised."""
        if self._closed:
            raise ConnectionError("rate-limit store closed")

        async def run() -> list[Any]:
            results = await self._evalsha(calls)
            missing = [i for i, r in enumerate(results) if isinstance(r, self._no_script)]
            if missing:
                # A Redis that restarted or flushed its scripts: load them, and
                # run the calls it refused (it ran none of them) once more.
                for script in {calls[i][0] for i in missing}:
                    script.sha = await self._redis.script_load(script.script)
                again = await self._evalsha([calls[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
            return results

        call = asyncio.ensure_future(run())
        self._in_flight.add(call)
        call.add_done_callback(self._done)
        async with asyncio.timeout(REDIS_TIMEOUT_S * 2):
            # shield: a caller that times out or is cancelled stops waiting, but
            # the command itself ends on its own socket timeout, and close()
            # waits for it.
            return await asyncio.shield(call)

    async def _evalsha(self, calls: Sequence[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """EVALSHA each call in one pipeline. Not the Script objects' own
        pipelining: that asks SCRIPT EXISTS first, a second round trip each time."""
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    def _done(self, call: asyncio.Future[Any]) -> None:
        self._in_flight.discard(call)
        if not call.cancelled():
            # Retrieved here, since a caller that stopped waiting never will.
            call.exception()

    def _unavailable(self, exc: BaseException) -> SwitchboardError | None:
        """A store that did not answer: None to admit (fail-open), else the refusal."""
        REDIS_ERRORS.inc()
        log.warning(
            "rate-limit store unavailable",
            extra=log_fields(error=type(exc).__name__, fail_open=self.fail_open),
        )
        if self.fail_open:
            return None
        return SwitchboardError(
            R.ERROR_REASON_SERVICE_UNAVAILABLE,
            "rate limits cannot be checked right now; refusing (fail-closed)",
        )

    async def acquire(self, scopes: Sequence[Scope]) -> list[Reservation]:
        if not scopes:
            return []
        now_ms = int(time.time() * 1000)
        entries = [uuid.uuid4().hex for _ in scopes]
        window_ms = int(WINDOW_S * 1000)
        try:
            results = await self._pipelined(
                [
                    (self._acquire, _keys(s.name), [now_ms, window_ms, s.limit, s.cost, entry])
                    for s, entry in zip(scopes, entries, strict=True)
                ]
            )
        except Exception as exc:
            results = [exc] * len(scopes)
        taken: list[Reservation] = []
        refusal: SwitchboardError | None = None
        for scope, entry, result in zip(scopes, entries, results, strict=True):
            if isinstance(result, BaseException):
                # Unanswered: admitted without an entry (fail-open), or refused.
                failed = self._unavailable(result)
                if failed is None:
                    taken.append(Reservation(scope.name, "", scope.cost, now_ms))
                refusal = refusal or failed
                continue
            allowed, retry_ms = result
            if allowed:
                taken.append(Reservation(scope.name, entry, scope.cost, now_ms))
            else:
                refusal = refusal or _refuse(scope.name, int(retry_ms) / 1000)
        if refusal is not None:
            await self.settle([(reservation, 0) for reservation in taken])
            raise refusal
        return taken

    async def settle(self, settled: Sequence[tuple[Reservation, int]]) -> None:
        calls = [
            (self._settle, _keys(r.scope), [r.entry, r.cost, actual, r.at_ms])
            for r, actual in settled
            if r.entry and actual != r.cost
        ]
        if not calls:
            return
        try:
            results = await self._pipelined(calls)
        except Exception:
            REDIS_ERRORS.inc()
            return
        for result in results:
            if isinstance(result, BaseException):
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
