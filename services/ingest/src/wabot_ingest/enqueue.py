"""XADDs of concurrent requests coalesced into one pipelined round trip.

Every request that wants to enqueue during one event-loop iteration joins the
same Redis pipeline, sent on the next iteration. Each request still gets its
own result, and still answers 2xx only after its own XADD succeeded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from wabot_shared.queue import StreamQueue

_Item = tuple[int, Mapping[str, str], asyncio.Future[str]]


class Coalescer:
    """Batches ``add`` calls made in the same loop iteration."""

    def __init__(self, queue: StreamQueue, max_batch: int = 512) -> None:
        self.queue = queue
        self.max_batch = max_batch
        self._pending: list[_Item] = []
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def add(self, partition: int, fields: Mapping[str, str]) -> str:
        """XADD ``fields`` to ``partition``; the entry id, or the command's error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        self._pending.append((partition, fields, future))
        if len(self._pending) >= self.max_batch:
            self._flush_now()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_now)
        return await future

    def _flush_now(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Item]) -> None:
        try:
            results = await self.queue.add_many([(p, f) for p, f, _ in batch])
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
