"""The end state every fault test must reach: every accepted message is
exactly one row, nothing is pending, and dead letters exist only for poison."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from tests.support.load import EvolutionLoad
from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack


@dataclass
class Tally:
    """The figures every fault test records."""

    sent: int
    accepted: int
    rows: int
    distinct_rows: int
    pending: int
    lag: int
    dead_letters: int
    missing: list[str]  # accepted, but no row
    duplicated: list[str]  # more than one row for one message id
    unknown: list[str]  # a row for a message id nobody sent

    def line(self) -> str:
        return (
            f"sent={self.sent} accepted={self.accepted} rows={self.rows} "
            f"distinct_rows={self.distinct_rows} pending={self.pending} lag={self.lag} "
            f"dead_letters={self.dead_letters} missing={len(self.missing)} "
            f"duplicated={len(self.duplicated)} unknown={len(self.unknown)}"
        )


class Oracle:
    """Every accepted message is exactly one row, nothing is pending at the end,
    dead letters only for poison."""

    def __init__(self, stack: Stack, record: Callable[[str, object], None]) -> None:
        self.stack = stack
        self.queue = stack.queue
        self.record = record

    def row_counts(self) -> Counter[str]:
        with psycopg.connect(self.stack.dsn, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT message_id, count(*) FROM healthcare.whatsapp_messages GROUP BY message_id"
            ).fetchall()
        return Counter({str(m): int(n) for m, n in rows})

    def tally(
        self, *loads: EvolutionLoad, extra_sent: set[str] | frozenset[str] = frozenset()
    ) -> Tally:
        sent: set[str] = set(extra_sent)
        accepted: set[str] = set()
        for load in loads:
            sent |= load.sent_ids
            accepted |= load.accepted_ids
        counts = self.row_counts()
        group = self.queue.group()
        return Tally(
            sent=len(sent),
            accepted=len(accepted),
            rows=sum(counts.values()),
            distinct_rows=len(counts),
            pending=int(group["pending"]),
            lag=int(group.get("lag") or 0),
            dead_letters=len(self.queue.dead_letters()),
            missing=sorted(accepted - set(counts)),
            duplicated=sorted(m for m, n in counts.items() if n > 1),
            unknown=sorted(set(counts) - sent),
        )

    def check(
        self,
        *loads: EvolutionLoad,
        poison: set[str] | frozenset[str] = frozenset(),
        extra_sent: set[str] | frozenset[str] = frozenset(),
        timeout: float = 30.0,
    ) -> Tally:
        """Wait for the pipeline to settle, then assert the oracle.

        ``poison``: the ``message_id`` fields of the entries that must be (and
        are the only ones) dead-lettered; ``extra_sent``: message ids sent
        outside the loads (probes), which may or may not have a row.
        """
        last: list[Tally] = []

        def settled() -> bool:
            t = self.tally(*loads, extra_sent=extra_sent)
            last[:] = [t]
            return not t.missing and t.pending == 0 and t.lag == 0 and t.dead_letters >= len(poison)

        try:
            wait_for(settled, timeout=timeout, what="every accepted message stored, none pending")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {last[0].line() if last else '?'}") from None
        t = self.tally(*loads, extra_sent=extra_sent)
        self.record("oracle", t.line())
        print(f"\nORACLE {self.stack.stream}: {t.line()}")
        assert t.accepted > 0, f"the load got nothing accepted: {t.line()}"
        assert not t.missing, f"accepted but never stored: {t.missing[:5]} ({t.line()})"
        assert not t.duplicated, f"stored more than once: {t.duplicated[:5]} ({t.line()})"
        assert t.rows == t.distinct_rows
        assert not t.unknown, f"rows nobody sent: {t.unknown[:5]}"
        assert t.pending == 0, t.line()
        assert t.lag == 0, t.line()
        dead_ids = [f.get("message_id", "") for _, f in self.queue.dead_letters()]
        assert sorted(dead_ids) == sorted(poison), f"dead letters {dead_ids}, poison {poison}"
        return t
