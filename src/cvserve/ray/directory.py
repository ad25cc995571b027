"""The model replicas' directory: one small Serve deployment that knows what every model
replica holds and passes the ingress's unload and clear orders to all of them.

Serve routes each call to one replica, so "what is loaded", "unload everywhere" and the
replicas' load and eviction events need a place that hears from every replica:
- each replica reports its loaded models (and new events) after every change, and at
  least every `POLL_S` while it waits for orders (`next_orders`, a long poll): a replica
  silent for `STALE_S` is gone (killed, or scaled down) and no longer counts;
- an order gets a sequence number; a replica reports the last one it applied, and the
  ingress waits (bounded) until every live replica has applied its order;
- events (loads, evictions) are kept in a bounded log the ingress reads with a long poll.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cvserve.engine.contract import LoadedModel

POLL_S = 5.0  # how long a replica's wait for orders lasts before it reports again
STALE_S = 2 * POLL_S + 1  # a replica silent this long is gone
EVENT_LOG = 10_000  # events kept for a reader that fell behind

# ("loaded", model_id, seconds) or ("evicted", model_id)
Event = tuple[Any, ...]
# ("unload", model_id) or ("clear",)
Order = tuple[str, ...]


@dataclass
class _Replica:
    models: list[LoadedModel] = field(default_factory=list)
    applied: int = 0  # the last order it applied
    seen: float = 0.0  # monotonic time it was last heard from
    waiting: int = 0  # its long polls in progress


class Directory:
    def __init__(self) -> None:
        self._replicas: dict[str, _Replica] = {}
        self._orders: list[tuple[int, Order]] = []
        self._events: deque[tuple[int, Event]] = deque(maxlen=EVENT_LOG)
        self._event_seq = 0
        self._changed = asyncio.Condition()

    # -- the replicas' side ----------------------------------------------------------------
    async def report(
        self, replica: str, models: list[LoadedModel], events: list[Event], applied: int
    ) -> None:
        state = self._replicas.setdefault(replica, _Replica())
        state.models, state.applied, state.seen = models, applied, time.monotonic()
        for event in events:
            self._event_seq += 1
            self._events.append((self._event_seq, event))
        async with self._changed:
            self._changed.notify_all()

    async def next_orders(self, replica: str, after: int, wait_s: float) -> list[tuple[int, Order]]:
        """The orders after `after`; waits up to `wait_s` for one."""
        state = self._replicas.setdefault(replica, _Replica())
        state.seen = time.monotonic()
        state.waiting += 1
        try:
            async with self._changed:
                await _wait_for(self._changed, lambda: self._orders_after(after), wait_s)
        finally:  # `seen` stays the poll's start: a replica killed mid-poll goes stale
            state.waiting -= 1
        return self._orders_after(after)

    # -- the ingress's side ----------------------------------------------------------------
    async def order(self, order: Order, wait_s: float) -> bool:
        """Give an order to every replica; whether all live ones applied it within wait_s."""
        seq = (self._orders[-1][0] if self._orders else 0) + 1
        self._orders.append((seq, order))
        del self._orders[:-1000]  # a replica that missed that many reloads from scratch anyway
        async with self._changed:
            self._changed.notify_all()
            return await _wait_for(
                self._changed,
                lambda: all(r.applied >= seq for r in self._live().values()),
                wait_s,
            )

    async def loaded(self) -> list[LoadedModel]:
        """Every live replica's models, one entry per model (bytes summed, pinned if any
        replica pinned it, the latest load time)."""
        merged: dict[str, LoadedModel] = {}
        for state in self._live().values():
            for m in state.models:
                seen = merged.get(m.model_id)
                if seen is None:
                    merged[m.model_id] = m
                else:
                    merged[m.model_id] = LoadedModel(
                        m.model_id,
                        seen.resident_bytes + m.resident_bytes,
                        max(seen.load_seconds, m.load_seconds),
                        seen.pinned or m.pinned,
                        seen.replicas + m.replicas,
                    )
        return [merged[k] for k in sorted(merged)]

    async def next_events(self, after: int, wait_s: float) -> tuple[int, list[Event]]:
        """(the newest event's number, the events after `after`); waits up to wait_s."""
        async with self._changed:
            await _wait_for(self._changed, lambda: self._event_seq > after, wait_s)
        return self._event_seq, [e for seq, e in self._events if seq > after]

    def _orders_after(self, after: int) -> list[tuple[int, Order]]:
        return [(seq, order) for seq, order in self._orders if seq > after]

    def _live(self) -> dict[str, _Replica]:
        now = time.monotonic()
        return {name: state for name, state in self._replicas.items() if now - state.seen < STALE_S}


async def _wait_for(cond: asyncio.Condition, predicate: Any, wait_s: float) -> bool:
    """cond.wait_for(predicate) for at most wait_s; whether it came true (cond held)."""
    try:
        await asyncio.wait_for(cond.wait_for(predicate), timeout=max(0.0, wait_s))
    except asyncio.TimeoutError:
        return bool(predicate())
    return True
