"""Per-chat queues: a chat's entries in stream order, one round at a time.

Entries read from the stream are queued by chat. A chat is *ready* when it has
entries, no round of it is running, and it is not waiting out the backoff of a
failed entry. A failing entry stays at the head of its chat, so the chat's
later messages wait behind it (order), while every other chat keeps flowing
(isolation). Pure bookkeeping, no I/O: the consumer decides what to run.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wabot_shared.queue import StreamEntry


@dataclass(slots=True, eq=False)
class Work:
    """One entry held by this worker, with what is known of its attempts."""

    entry: StreamEntry
    chat: str
    # The decoded payload (or None for an entry that cannot be read).
    decoded: Any
    read_at: float = field(default_factory=time.monotonic)
    failures: int = 0
    first_failed_at: float | None = None
    last_failed_at: float | None = None
    backoff: float = 0.0


@dataclass(slots=True, eq=False)
class ChatQueue:
    """The entries of one chat waiting in this worker, oldest first."""

    key: str
    partition: int
    items: deque[Work] = field(default_factory=deque)
    # Entries at the head handed to the running round (0 when idle).
    taken: int = 0
    retry_at: float = 0.0

    @property
    def busy(self) -> bool:
        return self.taken > 0


@dataclass(frozen=True, slots=True)
class RoundResult:
    """How many head entries are done, and when to retry the next one."""

    completed: int
    retry_at: float | None = None


class Scheduler:
    """Tracks every chat with entries in this worker."""

    def __init__(self) -> None:
        self.chats: dict[str, ChatQueue] = {}
        # Ready chats in the order they became ready (dict keeps insertion order).
        self._ready: dict[str, None] = {}
        self._parked: list[tuple[float, int, str]] = []
        self._seq = 0
        self.size = 0

    def add(self, work: Work) -> None:
        """Queue ``work`` behind its chat's earlier entries."""
        chat = self.chats.get(work.chat)
        if chat is None:
            chat = self.chats[work.chat] = ChatQueue(work.chat, work.entry.partition)
        chat.items.append(work)
        self.size += 1
        if not chat.busy and chat.retry_at <= 0:
            self._ready[chat.key] = None

    def wake(self, now: float) -> None:
        """Make chats whose backoff has passed ready again."""
        while self._parked and self._parked[0][0] <= now:
            _, _, key = heapq.heappop(self._parked)
            chat = self.chats.get(key)
            if chat is not None and not chat.busy and chat.retry_at and chat.retry_at <= now:
                chat.retry_at = 0.0
                if chat.items:
                    self._ready[key] = None

    def next_wake(self) -> float | None:
        """When the earliest parked chat becomes ready (monotonic), if any."""
        return self._parked[0][0] if self._parked else None

    @property
    def has_ready(self) -> bool:
        return bool(self._ready)

    def take(self, limit: int) -> tuple[ChatQueue, list[Work]] | None:
        """The next ready chat and up to ``limit`` of its head entries (in order)."""
        while self._ready:
            key = next(iter(self._ready))
            del self._ready[key]
            chat = self.chats.get(key)
            if chat is None or chat.busy or not chat.items:
                continue
            count = min(limit, len(chat.items))
            chat.taken = count
            return chat, [chat.items[i] for i in range(count)]
        return None

    def finish(self, chat: ChatQueue, completed: int, retry_at: float | None = None) -> None:
        """End a round: drop the ``completed`` head entries; with ``retry_at``,
        the next head failed and the chat waits until then."""
        for _ in range(completed):
            chat.items.popleft()
        self.size -= completed
        chat.taken = 0
        if retry_at is not None and chat.items:
            chat.retry_at = retry_at
            self._seq += 1
            heapq.heappush(self._parked, (retry_at, self._seq, chat.key))
        elif chat.items:
            chat.retry_at = 0.0
            self._ready[chat.key] = None
        else:
            del self.chats[chat.key]

    def busy_in(self, partition: int) -> int:
        """Chats of ``partition`` with a round running."""
        return sum(1 for c in self.chats.values() if c.partition == partition and c.busy)

    def drop_partition(self, partition: int) -> int:
        """Forget the idle chats of ``partition`` (another worker will claim
        their entries); returns how many entries were dropped."""
        dropped = 0
        for key in [k for k, c in self.chats.items() if c.partition == partition and not c.busy]:
            chat = self.chats.pop(key)
            dropped += len(chat.items)
            self._ready.pop(key, None)
        self.size -= dropped
        return dropped

    def running(self) -> int:
        return sum(1 for c in self.chats.values() if c.busy)

    def works(self) -> Iterator[Work]:
        for chat in self.chats.values():
            yield from chat.items

    def oldest_failing(self, now: float) -> float:
        """Seconds the longest-failing entry has been failing (0 if none)."""
        ages = [
            now - chat.items[0].first_failed_at
            for chat in self.chats.values()
            if chat.items and chat.items[0].first_failed_at is not None
        ]
        return max(ages, default=0.0)
