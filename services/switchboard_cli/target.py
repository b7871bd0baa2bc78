"""Where the CLI talks to, and with which credentials: flags first, then the
environment, then the local defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from switchboard_cli.exit_codes import CliError, ExitCode

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    edge_url: str
    admin_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    # None: the command's own default (DEFAULT_TIMEOUT_S; chat waits longer).
    timeout_s: float | None = None

    def timeout(self, default: float = DEFAULT_TIMEOUT_S) -> float:
        return self.timeout_s if self.timeout_s is not None else default


def default_edge_url(env: Mapping[str, str]) -> str:
    """SWITCHBOARD_EDGE_URL, else the local edge on SWITCHBOARD_EDGE_PORT (8080): the
    same port `switchboard up` starts Envoy on."""
    explicit = env.get("SWITCHBOARD_EDGE_URL")
    if explicit:
        return explicit
    port = env.get("SWITCHBOARD_EDGE_PORT") or "8080"
    return f"http://127.0.0.1:{port}"


def normalise_edge_url(url: str) -> str:
    """http(s)://host:port without a trailing slash or /v1 (people paste the SDK's base_url)."""
    url = url.strip().rstrip("/")
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    if not url.startswith(("http://", "https://")) or not host:
        raise CliError(
            ExitCode.USAGE,
            f"the edge URL {url!r} is not an http(s) URL",
            "use e.g. --edge-url http://127.0.0.1:8080 (or set SWITCHBOARD_EDGE_URL)",
        )
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def resolve(
    env: Mapping[str, str],
    *,
    edge_url: str | None = None,
    admin_key: str | None = None,
    api_key: str | None = None,
    timeout_s: float | None = None,
) -> Target:
    return Target(
        edge_url=normalise_edge_url(edge_url or default_edge_url(env)),
        admin_key=admin_key or env.get("SWITCHBOARD_ADMIN_KEY") or None,
        api_key=api_key or env.get("SWITCHBOARD_API_KEY") or None,
        timeout_s=timeout_s,
    )
