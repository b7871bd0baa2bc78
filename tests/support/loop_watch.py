"""A test's event loop that does not close names what holds it.

When a test ends, its event loop cancels every task left and waits for them.
A task that never ends (it swallowed its cancellation, or waits on something
that cannot complete) hangs that wait until pytest-timeout fires, and the
timeout's thread dump shows only the selector. This prints each pending task
with its stack once a close has taken CLOSE_WARN_S, so the report names the
task (issue 22: such a hang was seen once in ~30 runs, in a teardown)."""

from __future__ import annotations

import asyncio
import asyncio.runners
import sys
import threading
from typing import Any

CLOSE_WARN_S = 15.0


def _dump(loop: asyncio.AbstractEventLoop) -> None:
    print(
        f"\n=== event loop still closing after {CLOSE_WARN_S:g}s; pending tasks ===",
        file=sys.stderr,
    )
    for task in list(asyncio.all_tasks(loop)):
        print(repr(task), file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def install() -> None:
    original = asyncio.runners.Runner.close

    def close(self: asyncio.runners.Runner) -> None:
        loop: Any = getattr(self, "_loop", None)
        timer = threading.Timer(CLOSE_WARN_S, _dump, (loop,)) if loop is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            original(self)
        finally:
            if timer is not None:
                timer.cancel()

    asyncio.runners.Runner.close = close  # type: ignore[method-assign]
