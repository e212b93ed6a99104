"""The worker threads that run MLX work: long-lived, reused, never ended."""

from __future__ import annotations

import threading
from typing import Callable

_park_lock = threading.Lock()
_parked: list = []  # queues of idle worker threads


def run_in_worker_thread(fn: Callable[[], None], name: str) -> threading.Event:
    """Run `fn` on a long-lived daemon thread; returns an Event set when `fn` returns.

    MLX keeps per-thread state whose teardown aborts the process ("terminate called
    without an active exception") when a thread that ran MLX work exits just before the
    process does. So worker threads never exit: after a job they park, and the next
    engine reuses them."""
    import queue

    done = threading.Event()

    def job():
        try:
            fn()
        finally:
            done.set()

    with _park_lock:
        q = _parked.pop() if _parked else None
    if q is None:
        q = queue.Queue()

        def loop():
            while True:
                q.get()()
                threading.current_thread().name = "humanizer-parked"
                with _park_lock:
                    _parked.append(q)

        threading.Thread(target=loop, name=name, daemon=True).start()
    q.put(job)
    return done
