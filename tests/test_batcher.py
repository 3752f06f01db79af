"""server.pipeline.batcher: batches form under concurrency, results go to the right caller, nobody hangs."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.pipeline.batcher import Batcher, BatcherClosed, BatcherFull, BatchSizeMismatch


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_concurrent_callers_share_a_batch_and_get_their_own_result() -> None:
    seen: list[list[int]] = []
    threads: set[str] = set()

    def square(items: list[int]) -> list[int]:
        seen.append(list(items))
        threads.add(threading.current_thread().name)
        return [i * i for i in items]

    async def main() -> list[int]:
        batcher: Batcher[int, int] = Batcher(square, max_batch_size=8, max_wait_ms=50)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        finally:
            await batcher.stop()

    assert run(main()) == [i * i for i in range(20)]
    assert max(len(b) for b in seen) == 8  # capped at max_batch_size
    assert len(seen) <= 4  # 20 items in batches of up to 8
    assert threads and threading.main_thread().name not in threads  # the model ran off the event loop


def test_a_batch_waits_up_to_max_wait_for_company_then_runs_alone() -> None:
    seen: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(list(items))
        return items

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(fn, max_batch_size=64, max_wait_ms=1000)
        batcher.start()
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)  # well inside the 1 s window: joins the forming batch
        assert await asyncio.gather(first, batcher.submit(2)) == [1, 2]
        # Nobody joins this one: it runs alone once the window closes (run()'s 20 s timeout catches a hang).
        assert await batcher.submit(3) == 3
        await batcher.stop()

    run(main())
    assert seen == [[1, 2], [3]]


@pytest.mark.parametrize("coming", [False, True])
def test_no_waiting_when_nothing_else_is_coming(coming: bool) -> None:
    """``more_coming() is False`` runs the batch at once; True keeps it open for the next item."""
    seen: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(list(items))
        return items

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(
            fn, max_batch_size=2, max_wait_ms=5000, more_coming=lambda: coming
        )
        batcher.start()
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)
        assert await asyncio.gather(first, batcher.submit(2)) == [1, 2]
        await batcher.stop()

    run(main())
    assert seen == ([[1, 2]] if coming else [[1], [2]])


def test_failure_reaches_every_caller_of_the_batch_and_the_next_batch_works() -> None:
    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom")
        return items

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(flaky, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)
        assert await batcher.submit(7) == 7
        await batcher.stop()

    run(main())


def test_wrong_result_length_is_an_error_not_a_hang() -> None:
    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(lambda xs: xs[:-1], max_batch_size=4, max_wait_ms=20)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(2)), return_exceptions=True)
        assert all(isinstance(r, BatchSizeMismatch) for r in results)
        await batcher.stop()

    run(main())


def test_cancelled_caller_is_skipped() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def fn(items: list[int]) -> list[int]:
        seen.append(list(items))
        gate.wait(5)
        return items

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(fn, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(1))  # occupies the worker
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        second.cancel()  # gives up while queued
        gate.set()
        assert await first == 1
        assert await batcher.submit(3) == 3
        await batcher.stop()

    run(main())
    assert [2] not in seen


def test_queue_limit_and_shutdown() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(slow, max_batch_size=1, max_wait_ms=0, max_queue=1)
        batcher.start()
        busy = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)  # item 1 is running, the queue is empty
        queued = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherFull):
            await batcher.submit(3)
        gate.set()
        await batcher.stop(timeout=5)  # drains: queued work finishes
        assert await busy == 1 and await queued == 2
        with pytest.raises(BatcherClosed):
            await batcher.submit(4)

    run(main())


def test_stop_fails_what_cannot_finish() -> None:
    gate = threading.Event()

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(
            lambda xs: (gate.wait(5), xs)[1], max_batch_size=1, max_wait_ms=0
        )
        batcher.start()
        stuck = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)
        await batcher.stop(timeout=0.1)
        with pytest.raises(BatcherClosed):
            await stuck
        gate.set()

    run(main())


def test_stop_fails_an_item_of_a_batch_still_gathering() -> None:
    """The loop has taken the item from the queue and waits for company when the stop's grace runs
    out: the item must still get an answer (it used to be dropped, and its caller waited forever)."""

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(
            lambda xs: xs, max_batch_size=8, max_wait_ms=1000, more_coming=lambda: True
        )
        batcher.start()
        gathering = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)  # well inside the 1 s window: the batch is still forming
        await batcher.stop(timeout=0.05)
        with pytest.raises(BatcherClosed):
            await asyncio.wait_for(gathering, 2)

    run(main())


def test_callers_that_gave_up_do_not_fill_the_queue() -> None:
    """Clients that hung up while queued (REST: unless_client_leaves cancels their wait) still count
    against max_queue and in ``pending`` (emotion_queue_depth) until the loop reaches them."""
    gate = threading.Event()

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(
            lambda xs: (gate.wait(5), xs)[1], max_batch_size=1, max_wait_ms=0, max_queue=4
        )
        batcher.start()
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)  # the model is busy with item 0
        gone = [asyncio.create_task(batcher.submit(i)) for i in range(1, 5)]
        await asyncio.sleep(0.01)
        for task in gone:
            task.cancel()  # their clients disconnected
        await asyncio.gather(*gone, return_exceptions=True)
        try:
            pending = batcher.pending
            live = asyncio.create_task(batcher.submit(5))
            await asyncio.sleep(0.01)
            assert not live.done() or live.exception() is None, repr(live.exception())
            assert pending == 0, f"pending counts {pending} abandoned items"
        finally:
            gate.set()
            await running
            await batcher.stop()

    asyncio.run(asyncio.wait_for(main(), 20))
