"""How a service's garbage collector runs once it serves.

A service allocates a large, long-lived heap while it starts (grpc, the SDKs,
pydantic models, the registry snapshot) and then, per call, many short-lived
objects. With CPython's default thresholds (700 allocations a young
collection) the young collections run hundreds of times a second under load,
and every full collection walks the whole start-up heap again: milliseconds
that land on whichever call is in flight, the tail the frontier is measured by.
So once a service serves, what it built to start is moved out of the
collector's sight (`gc.freeze`), and a young collection waits for `gen0`
allocations. Cycles are still collected; they are rarer in our per-call code
than short-lived acyclic objects, which reference counting frees at once. The
price: a start-up object that later becomes part of a garbage cycle stays
(reference counting still frees the acyclic ones, the usual case)."""

from __future__ import annotations

import gc

# SWITCHBOARD_GC_GEN0's default; 0 keeps the interpreter's own collector settings.
DEFAULT_GEN0 = 20_000


def settle(gen0: int) -> None:
    """Freeze the start-up heap and raise the young generation's threshold
    (nothing when gen0 is 0)."""
    if gen0 <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)
