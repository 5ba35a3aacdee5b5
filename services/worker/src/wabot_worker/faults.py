"""Test-only fault injection: kill or hang the worker at one precise point.

The reliability tests use it to crash a real worker exactly where a crash is
hardest to survive. Settings refuse a fault point unless ``APP_ENV`` is
``test`` or ``development``, and the points are passed in as an object rather
than read from settings deep inside the pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Literal

log = logging.getLogger("wabot.worker.faults")

FaultPoint = Literal[
    "crash_after_read",  # entries read (and pending), nothing stored
    "crash_before_ack",  # rows committed, entries not acknowledged
    "hang_processing",  # a handler that never returns
    "reader_crash",  # a bug in the reading loop itself
]


class Faults:
    """The one configured fault point, or none."""

    def __init__(self, point: FaultPoint | None = None) -> None:
        self.point = point

    def crash_at(self, point: FaultPoint) -> None:
        """SIGKILL this process if ``point`` is the configured one."""
        if self.point == point:
            log.warning("fault injection: SIGKILL at %s", point)
            os.kill(os.getpid(), signal.SIGKILL)

    def raise_at(self, point: FaultPoint) -> None:
        """Raise an unexpected error if ``point`` is the configured one."""
        if self.point == point:
            raise RuntimeError(f"fault injection: {point}")

    async def hang_at(self, point: FaultPoint) -> None:
        """Never return if ``point`` is the configured one."""
        if self.point == point:
            log.warning("fault injection: hanging at %s", point)
            await asyncio.Event().wait()


NO_FAULTS = Faults()
