"""The event ids the usage sink stored lately, held in memory, so that a batch
of new records is checked for duplicates without a query.

Asking ClickHouse which of a batch's ids are stored was the dearest part of a
flush: the query opens every recent part of `usage_events`, and the sink
flushes up to ten times a second (bench/README.md, "The dedup query from
memory"). Duplicates reach the sink soon after their first copy (a relay
resends a batch the broker may have taken; a sink replays what it inserted but
did not commit), so the ids stored lately answer nearly every batch.

The invariant: every id stored in ClickHouse that sorts above `cutoff` is in
the set. It holds when the set is loaded (the ids above a cutoff, read back)
and while this sink is the only one storing these ids' partitions, adding what
it inserts. An id at or below the cutoff (an old record, an operator's replay)
is looked up as before. The sink forgets everything whenever that may have
stopped being true: a new consumer, partitions that changed hands, an insert
that failed (it may have stored rows all the same). It then looks every batch
up for GRACE_S before it loads again, so that a write still in flight
elsewhere (the partitions' previous owner, a server finishing an insert whose
answer was lost) has landed by the time the load reads the table; and a load
that a forget overtook is thrown away.

Event ids are UUIDv7 strings, which sort by their creation time, so the cutoff
is a string too: ids made after its millisecond sort above it. An id of
another form is covered or not by where it sorts, and the invariant holds the
same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

# ~100 bytes an id in memory: at most ~10 MB. At 1,000 records a second that
# is 100 s of ids, far more than a relay's resend or a sink's replay takes.
LIMIT = 100_000
# How far back a load reads, by the ids' own time: older duplicates are looked up.
WINDOW_S = 600
# After a forget, every batch is looked up for this long before the next load.
GRACE_S = 30.0


def id_floor(unix_ms: int) -> str:
    """A string that sorts below every UUIDv7 made at or after unix_ms, and
    above every one made before it: the id's time, as its first 12 hex digits
    are written."""
    digits = f"{unix_ms & ((1 << 48) - 1):012x}"
    return f"{digits[:8]}-{digits[8:]}"


def window_floor(now_ms: int | None = None) -> str:
    """The cutoff of a load: WINDOW_S before now."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return id_floor(now_ms - WINDOW_S * 1000)


class RecentIds:
    def __init__(
        self,
        limit: int = LIMIT,
        grace_s: float = GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.grace_s = grace_s
        self._clock = clock
        self._ids: set[str] = set()
        # None: nothing is known, every id is looked up.
        self.cutoff: str | None = None
        # Moved on by every forget: a load begun before it is stale.
        self.generation = 0
        # No load before this time (the clock's): see GRACE_S.
        self._load_after = 0.0

    @property
    def loaded(self) -> bool:
        return self.cutoff is not None

    def may_load(self) -> bool:
        return self._clock() >= self._load_after

    def forget(self) -> None:
        self._ids = set()
        self.cutoff = None
        self.generation += 1
        self._load_after = self._clock() + self.grace_s

    def load(self, stored: Iterable[str], cutoff: str, generation: int) -> bool:
        """stored: every stored id above cutoff, as read by a load begun at
        `generation`. False (nothing kept) if a forget came since."""
        if generation != self.generation:
            return False
        self._ids = {i for i in stored if i > cutoff}
        self.cutoff = cutoff
        self._trim()
        return True

    def covers(self, event_id: str) -> bool:
        """Whether the set alone says if event_id is stored."""
        return self.cutoff is not None and event_id > self.cutoff

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, stored: Iterable[str]) -> None:
        """Ids just stored (by this sink)."""
        if self.cutoff is None:
            return
        cutoff = self.cutoff
        self._ids.update(i for i in stored if i > cutoff)
        self._trim()

    def _trim(self) -> None:
        """Past the limit, keep the newest half and raise the cutoff to the
        newest id dropped (sorting once per limit/2 ids stored, not per batch)."""
        if len(self._ids) <= self.limit:
            return
        ordered = sorted(self._ids)
        dropped = len(ordered) - self.limit // 2
        self.cutoff = ordered[dropped - 1]
        self._ids = set(ordered[dropped:])
