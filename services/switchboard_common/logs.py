"""Structured JSON logs, one object per line, with the current request id.

Secrets must never reach a log line: callers log names (key name, provider
name, env var name), never values, and `redact` strips anything that looks
like a bearer token from free text that came from outside.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_TOKENISH = re.compile(r"(?i)(bearer\s+|api[_-]?key[=:]\s*|\bsk-)[A-Za-z0-9._\-]{6,}")


def redact(text: str) -> str:
    return _TOKENISH.sub(lambda m: m.group(1) + "[redacted]", text)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, worker: int | None = None) -> None:
        super().__init__()
        self.service = service
        # Which of the service's SWITCHBOARD_WORKERS processes wrote the line.
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            **({} if self.worker is None else {"worker": self.worker}),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


# The level this process was started with: what a cleared registry log_level returns to.
_started_level = "INFO"
# The registry's log_level last applied ("": none).
_followed_level = ""


def setup_logging(service: str, level: str = "INFO", worker: int | None = None) -> None:
    global _started_level
    _started_level = level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_clients(level)


# The SDKs' HTTP clients log a line per request at INFO (and headers at DEBUG).
# The SDKs now ship httpx as httpx2 (and httpcore as httpcore2); aiohttp and
# google_genai are the provider's other upstream transports.
NOISY = (
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "openai",
    "anthropic",
    "grpc",
    "hpack",
    "aiohttp",
    "google_genai",
)


def quiet_clients(level: str) -> None:
    """Warnings and errors only from the clients' own loggers, whatever `level`:
    a line per upstream request cost the router ~20 µs of CPU and a line of its
    log (bench/README.md), and their DEBUG lines carry request headers."""
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


def follow_log_level(level: str) -> None:
    """The registry's log_level (seed 004's config), live; cleared, the level
    this process was started with. Only a change of the registry's value
    touches the root logger, so a process whose registry never set one keeps
    whatever level it runs at."""
    global _followed_level
    if level == _followed_level:
        return
    _followed_level = level
    logging.getLogger().setLevel(level or _started_level)


def log_fields(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call whose fields land as top-level JSON keys."""
    return {"fields": fields}
