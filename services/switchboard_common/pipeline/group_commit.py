"""Group commit across callers: what callers hand in while a commit is in
flight is written together in the next one.

A transaction's fixed cost (its fsync, above all) is paid once per commit, not
once per caller: with the router's workers and replicas each holding its own
usage stream, every stream's records used to be a transaction of their own,
one after another on the outbox's one thread. Now a commit takes everything
queued by then, from every caller, and answers each caller with its own
items' results. A lone caller is written at once, as before.

No task drives it. A caller that finds no commit in flight writes its own
items and awaits that write directly; when it is done (or cancelled), it starts
a commit of whatever was queued meanwhile. Such a commit's completion (a
callback on the event loop) answers its callers and starts the next, so a
caller cancelled while it waits strands nobody. A cancelled caller's items are
written all the same once their commit has begun (as on the executor before);
a lone caller cancelled before its write started has nothing written, and was
never answered.

One commit runs at a time only because `pool` has one thread: a lone caller
cancelled mid-write lets the next commit be submitted, which that thread runs
after it.

Items that will never reach `commit` (a lone caller cancelled before its write
started, or items queued when the pool shut down) are handed to `unwritten`, so
that an owner counting what is being written stops counting them; every other
item reaches `commit`, whether its caller stayed or not.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
Item = TypeVar("Item")
Result = TypeVar("Result")


async def write_alone(
    pool: Executor,
    commit: Callable[[list[Item]], Result],
    items: list[Item],
    unwritten: Callable[[list[Item]], None],
) -> Result:
    """`commit(items)` on `pool`, awaited; `unwritten(items)` when it will never
    run (the pool is shut down, or the caller was cancelled before it started).
    Once started it runs to its end, whether the caller stays or not."""
    try:
        job = pool.submit(commit, items)
    except RuntimeError:  # the pool is shut down
        unwritten(items)
        raise
    try:
        return await asyncio.wrap_future(job)
    except asyncio.CancelledError:
        if job.cancel():  # still queued on the pool: now it never runs
            unwritten(items)
        raise


@dataclass(frozen=True)
class _Waiting(Generic[Item, Result]):
    items: list[Item]
    done: asyncio.Future[list[Result]]


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        pool: Executor,
        commit: Callable[[list[Item]], Sequence[Result]],
        max_items: int,
        unwritten: Callable[[list[Item]], None] = lambda items: None,
    ) -> None:
        """`commit` writes items in one transaction (on `pool`) and returns one
        result per item, in order; a commit takes at most `max_items` items
        unless one caller's items alone are more. `unwritten` gets the items
        that will never be committed."""
        self._pool = pool
        self._commit = commit
        self._max_items = max_items
        self._unwritten = unwritten
        self._queued: collections.deque[_Waiting[Item, Result]] = collections.deque()
        self._busy = False

    async def submit(self, items: Sequence[Item]) -> list[Result]:
        """Write `items` in the next commit; their results, in order."""
        if not self._busy:
            # Alone: written at once and awaited directly, as without grouping
            # (a hand-off through the callback would cost a lone caller a loop turn).
            self._busy = True
            try:
                return list(
                    await write_alone(self._pool, self._commit, list(items), self._unwritten)
                )
            finally:
                self._busy = False
                if self._queued:
                    self._start()
        waiting: _Waiting[Item, Result] = _Waiting(
            list(items), asyncio.get_running_loop().create_future()
        )
        self._queued.append(waiting)
        return await waiting.done

    def _start(self) -> None:
        batch = [self._queued.popleft()]
        count = len(batch[0].items)
        while self._queued and count + len(self._queued[0].items) <= self._max_items:
            batch.append(self._queued.popleft())
            count += len(batch[-1].items)
        items = [item for waiting in batch for item in waiting.items]
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, self._commit, items)
        except RuntimeError as exc:
            # The pool is shut down (its owner closed): nothing queued can be written.
            for waiting in (*batch, *self._queued):
                self._unwritten(waiting.items)
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            self._queued.clear()
            return
        self._busy = True
        future.add_done_callback(functools.partial(self._finished, batch))

    def _finished(
        self, batch: list[_Waiting[Item, Result]], future: asyncio.Future[Sequence[Result]]
    ) -> None:
        self._busy = False
        if future.cancelled():
            # Cancelled on the pool before it ran (a shutdown that cancels
            # what is queued): never written.
            for waiting in batch:
                self._unwritten(waiting.items)
                waiting.done.cancel()
        elif (error := future.exception()) is not None:
            told = [w for w in batch if not w.done.done()]
            for waiting in told:
                waiting.done.set_exception(error)
            if not told:
                # Every caller left: the failure would otherwise go unseen.
                log.error("a group commit failed, its callers gone", exc_info=error)
        else:
            results = future.result()
            start = 0
            for waiting in batch:
                end = start + len(waiting.items)
                # A caller that was cancelled meanwhile has no one to answer.
                if not waiting.done.done():
                    waiting.done.set_result(list(results[start:end]))
                start = end
        if self._queued:
            self._start()
