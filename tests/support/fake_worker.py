"""A stand-in worker for the supervisor's tests (python -m tests.support.fake_worker):
it does what a service's worker does around serve(): dies with its supervisor,
reports ready, and exits on SIGTERM. FAKE_WORKER_FAIL=<code> makes it exit with
that code before it is ready (a start that fails)."""

from __future__ import annotations

import os
import signal
import sys
import threading

from switchboard_common import workers


def main() -> int:
    workers.die_with_parent()
    failing = os.environ.get("FAKE_WORKER_FAIL")
    if failing:
        return int(failing)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    workers.report_ready()
    stop.wait(120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
