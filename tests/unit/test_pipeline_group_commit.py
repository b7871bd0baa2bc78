"""Group commit across callers (switchboard_common.pipeline.group_commit, the
outbox's appends): a lone caller is written at once; what callers hand in while
a commit is in flight shares the next commit, each caller answered with its own
results; a failure fails only its commit's callers; a caller that leaves
meanwhile strands nobody."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from switchboard_common.pipeline.group_commit import GroupCommit
from switchboard_common.pipeline.outbox import Outbox
from tests.conftest import eventually

pytestmark = pytest.mark.asyncio
WAIT_S = 5.0


class Store:
    """A commit function that records each commit's items, and can be held
    inside a commit (the first caller's) until released."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail: set[str] = set()

    def commit(self, items: list[str]) -> list[str]:
        self.entered.set()
        assert self.release.wait(WAIT_S)
        self.commits.append(list(items))
        if self.fail & set(items):
            raise OSError("disk I/O error")
        return [f"{item}!" for item in items]


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    executor = concurrent.futures.ThreadPoolExecutor(1)
    yield executor
    executor.shutdown(wait=True)


async def _held(store: Store, group: GroupCommit[str, str]) -> asyncio.Task[list[str]]:
    """A first caller, held inside its commit."""
    store.release.clear()
    first = asyncio.ensure_future(group.submit(["a"]))
    await asyncio.to_thread(store.entered.wait, WAIT_S)
    return first


async def _behind(
    store: Store, group: GroupCommit[str, str], *callers: list[str]
) -> tuple[asyncio.Task[list[str]], list[asyncio.Task[list[str]]]]:
    """A first caller held inside its commit, and `callers` queued behind it."""
    first = await _held(store, group)
    rest = [asyncio.ensure_future(group.submit(items)) for items in callers]
    await asyncio.sleep(0)  # every caller queued (no commit is due to start yet)
    return first, rest


def _tracked(
    pool: concurrent.futures.Executor,
) -> tuple[Store, list[list[str]], GroupCommit[str, str]]:
    """A group over a Store, and the list its `unwritten` items land in."""
    store = Store()
    unwritten: list[list[str]] = []
    return store, unwritten, GroupCommit(pool, store.commit, 10, unwritten.append)


async def test_a_lone_caller_is_committed_at_once(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(pool, store.commit, max_items=10)
    assert await group.submit(["a", "b"]) == ["a!", "b!"]
    assert await group.submit(["c"]) == ["c!"]
    assert store.commits == [["a", "b"], ["c"]]


async def test_callers_queued_behind_a_commit_share_the_next(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(pool, store.commit, max_items=10)
    first, rest = await _behind(store, group, ["b"], ["c", "d"], ["e"])
    store.release.set()
    assert await first == ["a!"]
    assert [await r for r in rest] == [["b!"], ["c!", "d!"], ["e!"]]
    assert store.commits == [["a"], ["b", "c", "d", "e"]]


async def test_a_commit_takes_at_most_max_items(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(pool, store.commit, max_items=3)
    first, rest = await _behind(store, group, ["b", "c"], ["d", "e"], ["f", "g", "h", "i"])
    store.release.set()
    await first
    assert [await r for r in rest] == [["b!", "c!"], ["d!", "e!"], ["f!", "g!", "h!", "i!"]]
    # One caller's items are never split, even past the cap.
    assert store.commits == [["a"], ["b", "c"], ["d", "e"], ["f", "g", "h", "i"]]


async def test_a_failed_commit_fails_its_callers_only(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    store = Store()
    store.fail = {"c"}
    group: GroupCommit[str, str] = GroupCommit(pool, store.commit, max_items=2)
    first, (*failing, later) = await _behind(store, group, ["b"], ["c"], ["d"])
    store.release.set()
    assert await first == ["a!"]
    for caller in failing:
        with pytest.raises(OSError, match="disk I/O error"):
            await caller
    assert await later == ["d!"]
    assert store.commits == [["a"], ["b", "c"], ["d"]]


async def test_a_caller_that_leaves_strands_nobody(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    store = Store()
    group: GroupCommit[str, str] = GroupCommit(pool, store.commit, max_items=10)
    first, (leaving, staying) = await _behind(store, group, ["b"], ["c"])
    leaving.cancel()
    first.cancel()
    store.release.set()
    assert await staying == ["c!"]
    # What the callers that left handed in was written all the same.
    assert store.commits == [["a"], ["b", "c"]]
    assert leaving.cancelled()
    assert first.cancelled()


async def test_callers_queued_when_the_pool_shuts_down_get_its_error() -> None:
    """Queued callers get the error, and their items (and a later lone caller's)
    are handed back unwritten."""
    executor = concurrent.futures.ThreadPoolExecutor(1)
    store, unwritten, group = _tracked(executor)
    first, (queued,) = await _behind(store, group, ["b"])
    executor.shutdown(wait=False)
    store.release.set()
    assert await first == ["a!"]
    with pytest.raises(RuntimeError, match="shutdown"):
        await queued
    with pytest.raises(RuntimeError, match="shutdown"):
        await group.submit(["c"])
    assert unwritten == [["b"], ["c"]]
    executor.shutdown(wait=True)


async def test_concurrent_outbox_appends_share_transactions(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite", "group", "t.v1", max_bytes=1 << 20)
    await box.open()
    try:
        commits = []
        write = box._write

        def counted(items: list[tuple[tuple[str, bytes, bytes], str]]) -> list[bool]:
            commits.append(len(items))
            return write(items)

        box._group._commit = counted
        # 50 callers at once, one id repeated across two of them.
        ids = [f"e{i}" for i in range(49)] + ["e7"]
        results = await asyncio.gather(*(box.append([(i, i.encode(), b"p")]) for i in ids))
        assert [r[0] for r in results].count(False) == 1
        assert sum(commits) == 50
        assert len(commits) < 50
        stored = await eventually(box.records)
        assert sorted(r.event_id for r in stored) == sorted(set(ids))
        assert box.pending == 49
    finally:
        await box.close()


async def test_a_failed_commit_whose_callers_all_left_is_logged(
    pool: concurrent.futures.ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store()
    store.fail = {"b"}
    group: GroupCommit[str, str] = GroupCommit(pool, store.commit, max_items=10)
    first, (leaving,) = await _behind(store, group, ["b"])
    leaving.cancel()
    store.release.set()
    assert await first == ["a!"]
    # Queued behind the failing commit: answered only after its failure was handled.
    assert await group.submit(["c"]) == ["c!"]
    assert "a group commit failed, its callers gone" in caplog.text
    assert store.commits == [["a"], ["b"], ["c"]]


async def test_a_lone_caller_cancelled_before_its_write_started_is_unwritten(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    store, unwritten, group = _tracked(pool)
    # The pool's one thread is busy with other work (the outbox's other calls share it).
    gate = threading.Event()
    busy = pool.submit(gate.wait, WAIT_S)
    lone = asyncio.ensure_future(group.submit(["a"]))
    await asyncio.sleep(0)  # its write is queued on the pool
    lone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lone
    gate.set()
    busy.result(WAIT_S)
    assert unwritten == [["a"]]
    assert await group.submit(["b"]) == ["b!"]
    assert store.commits == [["b"]]


async def test_a_caller_cancelled_once_its_write_started_is_written_not_unwritten(
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    store, unwritten, group = _tracked(pool)
    first, (queued,) = await _behind(store, group, ["b"])
    first.cancel()
    queued.cancel()
    store.release.set()

    async def both_written() -> bool:
        return len(store.commits) == 2

    await eventually(both_written)
    assert store.commits == [["a"], ["b"]]
    assert unwritten == []


async def test_a_commit_cancelled_on_the_pool_is_unwritten() -> None:
    """A shutdown that cancels what is queued on the pool: the commit started
    for the queued callers never runs, and their items are handed back."""
    executor = concurrent.futures.ThreadPoolExecutor(1)
    store, unwritten, group = _tracked(executor)
    first, (queued,) = await _behind(store, group, ["b"])
    gate = threading.Event()
    executor.submit(gate.wait, WAIT_S)  # queued on the pool behind the first commit
    store.release.set()
    assert await first == ["a!"]  # its end started the commit of ["b"], behind the gate
    executor.shutdown(wait=False, cancel_futures=True)
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert unwritten == [["b"]]
    assert store.commits == [["a"]]
    executor.shutdown(wait=True)
