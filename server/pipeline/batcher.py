"""Dynamic batching across concurrent callers (the Ray Serve ``@serve.batch`` pattern).

Callers ``await submit(item)``; a single loop gathers queued items until
``max_batch_size`` or ``max_wait_ms`` after the first one, runs the batch function
on a worker thread (so the event loop never blocks on the model), checks that it
returned one result per item, and resolves each caller's future. If the batch
fails, every future of that batch gets the exception: nobody hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """Submitted after (or pending during) shutdown."""


class BatcherFull(RuntimeError):
    """More items are waiting than ``max_queue``: shed load instead of queueing forever."""


class BatchSizeMismatch(RuntimeError):
    """The batch function returned a different number of results than it was given items."""


class Batcher(Generic[T, R]):
    """Owns one batch function and the single worker thread it runs on."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
        more_coming: Callable[[], bool] | None = None,
        name: str = "batcher",
    ) -> None:
        """``more_coming()`` says whether items may arrive soon (e.g. requests still decoding);
        when it returns False the batch runs at once instead of waiting out ``max_wait_ms``."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._more_coming = more_coming
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._inflight: list[asyncio.Future[R]] = []
        #: Items the loop has taken from the queue for the batch it is still gathering.
        self._forming: list[tuple[T, asyncio.Future[R]]] = []
        #: Queued items whose callers still wait: one whose caller gave up (a REST client that hung
        #: up) leaves this set at once, though its entry stays in the queue until the loop skips it.
        self._waiting: set[asyncio.Future[R]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher-loop")

    @property
    def pending(self) -> int:
        """Queued items whose callers still wait for them (the queue-depth metric)."""
        return len(self._waiting)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its own result (or the batch's exception)."""
        if self._closed:
            raise BatcherClosed("server is shutting down")
        if self._queue.qsize() >= self.max_queue:
            self._drop_abandoned()  # callers that gave up must not crowd out live ones
        if self._queue.qsize() >= self.max_queue:
            raise BatcherFull(f"{self._queue.qsize()} items already waiting")
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._idle.clear()
        self._waiting.add(fut)
        fut.add_done_callback(self._waiting.discard)
        self._queue.put_nowait((item, fut))
        return await fut

    def _drop_abandoned(self) -> None:
        """Takes the entries of callers that gave up out of the queue (and their images out of memory)."""
        kept = []
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if not entry[1].done():
                kept.append(entry)
        for entry in kept:
            self._queue.put_nowait(entry)

    async def _get(self) -> tuple[T, asyncio.Future[R]]:
        entry = await self._queue.get()
        self._waiting.discard(entry[1])
        return entry

    def _get_nowait(self) -> tuple[T, asyncio.Future[R]]:
        entry = self._queue.get_nowait()
        self._waiting.discard(entry[1])
        return entry

    async def _collect(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch = self._forming = [await self._get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            if self._more_coming is not None and not self._more_coming():
                break  # nobody else is on the way: waiting would only add latency
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._forming = []
            live = [(item, fut) for item, fut in batch if not fut.done()]  # callers that gave up are skipped
            if not live:
                self._mark_idle()
                continue
            items = [item for item, _ in live]
            self._inflight = [fut for _, fut in live]
            try:
                results = await loop.run_in_executor(self._executor, self._fn, items)
                if len(results) != len(items):
                    raise BatchSizeMismatch(
                        f"batch function returned {len(results)} results for {len(items)} items"
                    )
            except Exception as exc:
                log.exception("batch of %d failed", len(items))
                for fut in self._inflight:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for fut, result in zip(self._inflight, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
            finally:
                self._inflight = []
            if self._on_batch is not None:
                self._on_batch(len(items))
            self._mark_idle()

    def _mark_idle(self) -> None:
        if self._queue.empty():
            self._idle.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Refuse new items, let queued ones finish (up to ``timeout``), then fail the rest."""
        self._closed = True
        leftovers: list[asyncio.Future[R]] = []
        if self._task is not None:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("batcher: %d items unfinished after %.1fs; failing them", self.pending, timeout)
            # The loop clears _inflight when cancelled; a batch still gathering has left the queue.
            leftovers = list(self._inflight) + [fut for _, fut in self._forming]
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            leftovers.append(self._queue.get_nowait()[1])
        for fut in leftovers:
            if not fut.done():
                fut.set_exception(BatcherClosed("server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)
