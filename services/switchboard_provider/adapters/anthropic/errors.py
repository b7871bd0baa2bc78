"""Anthropic failures as SwitchboardErrors.

Anthropic names each failure in its error body's `error.type`, also inside a
stream (an `error` event after a 200), so the type decides and the HTTP
status is the fallback. `overloaded_error` (HTTP 529) is Anthropic being
busy, not this deployment being broken: 503, retried and failed over, and
not counted against the deployment's breaker.
"""

from __future__ import annotations

import anthropic

from switchboard_common.errors import R, Reason, SwitchboardError
from switchboard_common.logs import redact

_BY_TYPE: dict[str, Reason] = {
    "overloaded_error": R.ERROR_REASON_SERVICE_UNAVAILABLE,
    "rate_limit_error": R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
    "authentication_error": R.ERROR_REASON_UPSTREAM_AUTH,
    "permission_error": R.ERROR_REASON_UPSTREAM_AUTH,
    "billing_error": R.ERROR_REASON_UPSTREAM_AUTH,
    "invalid_request_error": R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
    "not_found_error": R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
    "request_too_large": R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
    "timeout_error": R.ERROR_REASON_UPSTREAM_TIMEOUT,
    "api_error": R.ERROR_REASON_UPSTREAM_ERROR,
}
_BY_STATUS: dict[int, Reason] = {
    401: R.ERROR_REASON_UPSTREAM_AUTH,
    402: R.ERROR_REASON_UPSTREAM_AUTH,
    403: R.ERROR_REASON_UPSTREAM_AUTH,
    429: R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
    504: R.ERROR_REASON_UPSTREAM_TIMEOUT,
    529: R.ERROR_REASON_SERVICE_UNAVAILABLE,
}


def _reason(exc: anthropic.APIStatusError) -> Reason:
    by_type = _BY_TYPE.get(exc.type or "")
    if by_type is not None:
        return by_type
    status = exc.status_code
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 400 <= status < 500:
        return R.ERROR_REASON_UPSTREAM_INVALID_REQUEST
    return R.ERROR_REASON_UPSTREAM_ERROR


def retry_after_s(exc: anthropic.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def map_error(exc: anthropic.AnthropicError, provider: str, secret: str | None) -> SwitchboardError:
    def safe(text: object) -> str:
        clean = redact(str(text or ""))
        return clean.replace(secret, "[redacted]") if secret else clean

    if isinstance(exc, anthropic.APITimeoutError):
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_TIMEOUT, f"provider {provider!r} did not answer in time"
        )
    if isinstance(exc, anthropic.APIConnectionError):
        # Raised both for a refused connection and for one broken mid-stream.
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR,
            f"lost the connection to provider {provider!r}: {safe(exc.message)}",
        )
    if not isinstance(exc, anthropic.APIStatusError):
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR,
            f"provider {provider!r} sent a response we could not read",
        )
    reason = _reason(exc)
    kind = exc.type or f"HTTP {exc.status_code}"
    if reason == R.ERROR_REASON_UPSTREAM_AUTH:
        # The upstream's words may quote part of our key: use our own.
        return SwitchboardError(reason, f"provider {provider!r} rejected its credentials ({kind})")
    if reason == R.ERROR_REASON_UPSTREAM_RATE_LIMITED:
        return SwitchboardError(
            reason,
            f"provider {provider!r} is rate limiting: {safe(exc.api_message)}",
            retry_after_s=retry_after_s(exc),
        )
    if reason == R.ERROR_REASON_UPSTREAM_INVALID_REQUEST:
        return SwitchboardError(
            reason, f"provider {provider!r} rejected the request: {safe(exc.api_message)}"
        )
    if reason == R.ERROR_REASON_SERVICE_UNAVAILABLE:
        return SwitchboardError(
            reason,
            f"provider {provider!r} is overloaded: {safe(exc.api_message)}",
            retry_after_s=retry_after_s(exc),
        )
    return SwitchboardError(reason, f"provider {provider!r} failed ({kind})")
