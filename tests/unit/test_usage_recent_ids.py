"""The usage sink's memory of the event ids it stored lately (recent_ids.py):
what it covers, what it holds, and that trimming it keeps its invariant (every
stored id above the cutoff is held)."""

from __future__ import annotations

import os

from switchboard_common.ids import uuid7
from switchboard_usage.recent_ids import RecentIds, id_floor, window_floor


def _uuid7_at(unix_ms: int) -> str:
    """A UUIDv7 made at unix_ms (the router's ids, at a chosen time)."""
    value = (unix_ms << 80) | (0x7 << 76) | int.from_bytes(os.urandom(8), "big") >> 2
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def test_the_floor_of_a_millisecond_sorts_between_its_ids_and_earlier_ones() -> None:
    ms = 1_767_000_000_123
    floor = id_floor(ms)
    for _ in range(200):
        assert _uuid7_at(ms) > floor
        assert _uuid7_at(ms + 1) > floor
        assert _uuid7_at(ms - 1) < floor
    # uuid7() itself: made now, above a floor a second ago, below one a second ahead.
    now = uuid7()
    assert window_floor() < now
    assert id_floor(int(now.replace("-", "")[:12], 16) + 1000) > now


def test_nothing_is_covered_until_loaded_and_after_forgetting() -> None:
    recent = RecentIds()
    event_id = uuid7()
    assert not recent.loaded
    assert not recent.covers(event_id)
    recent.add([event_id])  # not loaded: nothing to keep it with
    assert event_id not in recent

    recent.load([], window_floor(), recent.generation)
    assert recent.covers(event_id)
    assert event_id not in recent
    recent.add([event_id])
    assert event_id in recent

    recent.forget()
    assert not recent.loaded
    assert not recent.covers(event_id)
    assert event_id not in recent


def test_ids_at_or_below_the_cutoff_are_not_covered_nor_kept() -> None:
    now_ms = 1_767_000_000_000
    recent = RecentIds()
    old, new = _uuid7_at(now_ms - 700_000), _uuid7_at(now_ms)
    recent.load([old, new], window_floor(now_ms), recent.generation)
    assert not recent.covers(old)
    assert old not in recent
    assert recent.covers(new)
    assert new in recent
    recent.add([_uuid7_at(now_ms - 900_000)])
    assert len(recent) == 1


def test_past_its_limit_it_keeps_the_newest_half_and_raises_its_cutoff() -> None:
    recent = RecentIds(limit=10)
    start = 1_767_000_000_000
    recent.load([], id_floor(start), recent.generation)
    ids = [_uuid7_at(start + n) for n in range(11)]
    recent.add(ids[::-1])  # in any order: it sorts by id
    assert len(recent) == 5
    # The six oldest went, and the cutoff is the newest of them: an id not
    # held is either below the cutoff (looked up) or was never stored.
    assert recent.cutoff == ids[5]
    assert all(not recent.covers(i) for i in ids[:6])
    assert all(recent.covers(i) and i in recent for i in ids[6:])
    assert recent.covers(_uuid7_at(start + 100))


def test_a_load_past_its_limit_is_trimmed_the_same() -> None:
    recent = RecentIds(limit=4)
    start = 1_767_000_000_000
    ids = [_uuid7_at(start + n) for n in range(6)]
    recent.load(ids, id_floor(start), recent.generation)
    assert recent.cutoff == ids[3]
    assert [i for i in ids if i in recent] == ids[4:]


def test_a_load_begun_before_a_forget_is_thrown_away() -> None:
    recent = RecentIds()
    begun = recent.generation
    recent.forget()  # a rebalance while the load's query ran
    assert not recent.load([uuid7()], window_floor(), begun)
    assert not recent.loaded
    assert recent.load([], window_floor(), recent.generation)


def test_after_a_forget_it_waits_out_the_grace_before_loading() -> None:
    now = [100.0]
    recent = RecentIds(grace_s=30.0, clock=lambda: now[0])
    assert recent.may_load()  # never forgotten: load at once
    recent.forget()
    now[0] += 29.9
    assert not recent.may_load()
    now[0] += 0.1
    assert recent.may_load()
