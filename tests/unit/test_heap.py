"""heap.settle, run once a service serves: the start-up heap leaves the
collector's sight and young collections wait for SWITCHBOARD_GC_GEN0
allocations; 0 leaves the interpreter's collector as it was. Each test runs
in a child interpreter, so the suite's own collector is untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from switchboard_common.env import SettingsError
from switchboard_common.heap import DEFAULT_GEN0
from switchboard_common.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import gc, json, sys
from switchboard_common import heap
before = gc.get_threshold()
keep = [[i] for i in range(1000)]  # tracked objects that outlive start-up
heap.settle(int(sys.argv[1]))
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def _settle(gen0: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "services"), str(REPO / "gen")])}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(gen0)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_settle_freezes_the_start_up_heap_and_raises_gen0() -> None:
    result = _settle(20_000)
    assert result["after"] == [20_000, *result["before"][1:]]
    assert result["frozen"] >= 1000


def test_zero_leaves_the_collector_alone() -> None:
    result = _settle(0)
    assert result["after"] == result["before"]
    assert result["frozen"] == 0


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_GC_GEN0", raising=False)
    assert Settings.from_env().gc_gen0 == DEFAULT_GEN0
    monkeypatch.setenv("SWITCHBOARD_GC_GEN0", "0")
    assert Settings.from_env().gc_gen0 == 0
    for bad in ("many", "-1"):
        monkeypatch.setenv("SWITCHBOARD_GC_GEN0", bad)
        with pytest.raises(SettingsError, match="SWITCHBOARD_GC_GEN0"):
            Settings.from_env()
