"""Which transport failures are a connection the server closed under a request
(sent again when the connection was a pooled one), as the SDKs' aiohttp
transport raises them: an httpx2 error caused by aiohttp's."""

from __future__ import annotations

import aiohttp
import httpx2
import pytest
from aiohttp.client_reqrep import ConnectionKey

from switchboard_provider.adapters.pooled_connections import closed_before_answer

_KEY = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)


def _raised(outer: type[Exception], cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise outer("mapped") from exc
    except Exception as mapped:
        return mapped


@pytest.mark.parametrize(
    ("cause", "closed"),
    [
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientConnectionResetError("Connection reset by peer"), True),
        (aiohttp.ClientOSError(32, "Broken pipe"), True),
        # Nothing was sent: the router's to retry, never sent twice here.
        (aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(111, "refused")), False),
        # Timeouts spent the call's time: not sent again.
        (aiohttp.ConnectionTimeoutError("connect timed out"), False),
        (aiohttp.SocketTimeoutError("read timed out"), False),
        (ValueError("not a connection"), False),
    ],
)
def test_what_counts_as_closed_under_a_request(cause: BaseException, closed: bool) -> None:
    # The openai SDK's transport maps every one of these connection errors to ConnectTimeout.
    assert closed_before_answer(_raised(httpx2.ConnectTimeout, cause)) is closed
