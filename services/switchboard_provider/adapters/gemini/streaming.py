"""The `gemini` kind's stream reading, shared by chat and speech: a stream
read by a task of its own, with a bound on the upstream's silence."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from google.genai import types


async def read_ahead(
    stream: AsyncIterator[types.GenerateContentResponse], silence_s: float
) -> AsyncGenerator[types.GenerateContentResponse, None]:
    """`stream`, read by a task of its own, failing with TimeoutError when the
    upstream is silent for `silence_s`.

    Why a task: stopping early then cancels it inside the SDK's read, so the
    SDK's generators unwind and release the HTTP response at once. Closing
    them from outside instead (aclose) stops at the outer ones; the inner
    ones (its HttpResponse and segment iterator refer to each other) wait
    for the cyclic garbage collector, and the connection stays open until then.
    """
    queue: asyncio.Queue[types.GenerateContentResponse | Exception | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for response in stream:
                queue.put_nowait(response)
        except Exception as exc:
            queue.put_nowait(exc)
        else:
            queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            async with asyncio.timeout(silence_s):
                item = await queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        # wait(), not await: the pump's CancelledError is expected, ours is not.
        await asyncio.wait({task})


def ms(seconds: float) -> int:
    """HttpOptions.timeout is in milliseconds."""
    return max(1, int(seconds * 1000))
