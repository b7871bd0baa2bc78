"""A loop whose close waits on a task that ignores its cancel prints that task."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.support import loop_watch


def test_a_slow_close_names_the_task_holding_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(loop_watch, "CLOSE_WARN_S", 0.05)
    release = threading.Event()

    async def stubborn() -> None:
        # Swallows its cancel, then waits for something that comes late.
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)

    left: list[asyncio.Task[None]] = []

    async def main() -> None:
        left.append(asyncio.create_task(stubborn(), name="stubborn-task"))
        await asyncio.sleep(0)

    threading.Timer(0.5, release.set).start()
    with asyncio.Runner() as runner:  # closed (and watched) on exit
        runner.run(main())
    assert "stubborn-task" in capsys.readouterr().err
