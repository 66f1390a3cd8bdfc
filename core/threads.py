"""Thread pools kept per process.

A pool made before a fork is useless in the child (its threads do not survive
the fork), and Celery's prefork pool forks after the app is loaded: each
process makes its own pool on first use, and a child forgets the parent's.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def process_pool(name: str, *, workers: int) -> ThreadPoolExecutor:
    """This process's pool called `name` (its threads are named after it), made on first use."""
    pool = _pools.get(name)
    if pool is not None:
        return pool
    with _lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        return pool


def _forget_after_fork() -> None:
    global _lock
    _pools.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
