"""The `gemini` kind's error mapping: what the SDK raises, as our errors, with
no key quoted back."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import httpx2
import pydantic
from google.genai import errors as genai_errors

from switchboard_common.errors import R, SwitchboardError
from switchboard_common.logs import redact

_GOOGLE_KEY = re.compile(r"AIza[0-9A-Za-z_\-]{20,}")

# What the SDK raises for a failed exchange; anything else is our own bug.
UPSTREAM_FAILURES = (
    genai_errors.APIError,
    genai_errors.UnknownApiResponseError,
    aiohttp.ClientError,
    httpx2.TransportError,
    TimeoutError,
    OSError,
    pydantic.ValidationError,
)


def _error_details(exc: genai_errors.APIError) -> list[dict[str, Any]]:
    body = exc.details if isinstance(exc.details, dict) else {}
    error = body.get("error", body)
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details or () if isinstance(d, dict)]


def retry_after_s(exc: genai_errors.APIError) -> float | None:
    """Retry-After when the response carries one, else Google's RetryInfo."""
    headers = getattr(exc.response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        value = next(
            (
                str(d.get("retryDelay", "")).removesuffix("s")
                for d in _error_details(exc)
                if str(d.get("@type", "")).endswith("google.rpc.RetryInfo")
            ),
            None,
        )
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _bad_key(exc: genai_errors.APIError) -> bool:
    # Gemini answers an invalid key with 400 INVALID_ARGUMENT, not 401.
    return any(d.get("reason") == "API_KEY_INVALID" for d in _error_details(exc))


def map_error(exc: BaseException, provider: str, secret: str | None = None) -> SwitchboardError:
    def safe(text: object) -> str:
        clean = _GOOGLE_KEY.sub("[redacted]", redact(str(text or "")))
        return clean.replace(secret, "[redacted]") if secret else clean

    if isinstance(exc, genai_errors.APIError):
        code = exc.code or 0
        if code in (401, 403) or _bad_key(exc):
            # The upstream's words may quote part of our key: use our own.
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_AUTH,
                f"provider {provider!r} rejected its credentials (HTTP {code})",
            )
        if code == 429:
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_RATE_LIMITED,
                f"provider {provider!r} is rate limiting: {safe(exc.message)}",
                retry_after_s=retry_after_s(exc),
            )
        if 400 <= code < 500:
            return SwitchboardError(
                R.ERROR_REASON_UPSTREAM_INVALID_REQUEST,
                f"provider {provider!r} rejected the request: {safe(exc.message)}",
            )
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR, f"provider {provider!r} returned HTTP {code}"
        )
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_TIMEOUT, f"provider {provider!r} did not answer in time"
        )
    if isinstance(exc, aiohttp.ClientError | httpx2.TransportError | OSError):
        # Raised both for a refused connection and for one broken mid-stream.
        return SwitchboardError(
            R.ERROR_REASON_UPSTREAM_ERROR,
            f"lost the connection to provider {provider!r}: {safe(exc) or type(exc).__name__}",
        )
    return SwitchboardError(
        R.ERROR_REASON_UPSTREAM_ERROR, f"provider {provider!r} sent a response we could not read"
    )
