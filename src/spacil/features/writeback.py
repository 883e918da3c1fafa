"""Cache writes on a background thread, so the encoder's next batch does not wait for the memmap.

Extraction alternates a GPU forward (the host mostly waits) and a write of the batch into memory-mapped
arrays (the GPU idles). One writer thread overlaps the two; a bound on the writes in flight keeps host
memory flat, and the first failed write is raised on the main thread (at the next submit or at close).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class BackgroundWriter:
    """Runs submitted writes in order on one thread, at most ``max_pending`` of them queued."""

    def __init__(self, max_pending: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spacil-cache-writer")
        self._pending: deque[Future] = deque()
        self._max_pending = max(1, max_pending)

    def submit(self, fn: Callable, *args) -> None:
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()  # raises the write's exception here
        self._pending.append(self._pool.submit(fn, *args))

    def close(self) -> None:
        """Wait for every write; raise the first failure."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # already failing: drain without masking the original error
            self._pending.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
