"""The shared polling helper: it returns what came true, and on timeout it
fails within its bound, saying what it last saw."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import eventually


def test_returns_the_first_truthy_value() -> None:
    values = iter([0, None, "", 7, 8])
    assert eventually(lambda: next(values), interval=0.001) == 7


def test_an_assertion_counts_as_not_yet() -> None:
    calls: list[int] = []

    def check() -> int:
        calls.append(1)
        assert len(calls) >= 3, "not three yet"
        return len(calls)

    assert eventually(check, interval=0.001) == 3


def test_timeout_names_the_last_value() -> None:
    started = time.monotonic()
    expected = r"queue empty: not true within 0\.2s; last value: \[\]"
    with pytest.raises(AssertionError, match=expected):
        eventually(list, timeout=0.2, interval=0.01, what="queue empty")
    assert time.monotonic() - started < 1.0


def test_timeout_chains_the_last_assertion() -> None:
    def check() -> bool:
        raise AssertionError("still 2 of 3")

    with pytest.raises(AssertionError, match="still 2 of 3") as info:
        eventually(check, timeout=0.05, interval=0.01)
    assert isinstance(info.value.__cause__, AssertionError)


@pytest.mark.asyncio
async def test_async_checks_are_awaited() -> None:
    seen: list[int] = []

    async def check() -> int | None:
        seen.append(1)
        return len(seen) if len(seen) == 4 else None

    assert await eventually(check, interval=0.001) == 4


@pytest.mark.asyncio
async def test_a_hung_async_check_is_bounded() -> None:
    async def check() -> bool:
        await asyncio.get_running_loop().create_future()
        return True

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"hung: not true within 0\.1s; last value: None"):
        await eventually(check, timeout=0.1, what="hung")
    assert time.monotonic() - started < 1.0
