"""Shared fixtures for every test."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect garbage as each test ends, so that a resource it left unclosed
    (a socket, a Redis connection, a subprocess) warns, and with warnings as
    errors fails, in the test that leaked it rather than wherever the
    collector happens to run next. Autouse fixtures are set up first and torn
    down last: this runs after the test's event loop has closed."""
    yield
    gc.collect()
