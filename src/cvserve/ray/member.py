"""A LocalEngine's membership in the directory (cvserve.ray.directory): it reports what the
engine holds and its load and eviction events, and applies the unload and clear orders
that reach every replica."""

from __future__ import annotations

import asyncio
import logging
import uuid

from ray.serve.handle import DeploymentHandle

from cvserve.engine import LocalEngine
from cvserve.ray.directory import POLL_S, Event, Order

log = logging.getLogger("cvserve.ray")


class DirectoryMember:
    """Also the engine's listener: a load or an eviction is reported at once."""

    def __init__(self, engine: LocalEngine, directory: DeploymentHandle) -> None:
        self.engine = engine
        self.directory = directory
        self.name = uuid.uuid4().hex
        self.pending: list[Event] = []
        self.applied = 0  # the directory's last order applied here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._orders: asyncio.Task[None] | None = None
        self._reporting = asyncio.Lock()
        engine.subscribe(self)

    # -- the engine's events ---------------------------------------------------------------
    def inference(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        """Counted where the call was admitted."""

    def loaded(self, model_id: str, seconds: float) -> None:
        self.pending.append(("loaded", model_id, seconds))
        self.report_soon()

    def evicted(self, model_id: str) -> None:
        self.pending.append(("evicted", model_id))
        self.report_soon()

    # -- the directory ---------------------------------------------------------------------
    def follow(self) -> None:
        """Start following the directory (on the replica's event loop, from its first call)."""
        if self._orders is None:
            self._loop = asyncio.get_running_loop()
            self._orders = self._loop.create_task(self._follow_orders())

    async def _follow_orders(self) -> None:
        while True:
            try:
                await self.report()
                orders: list[tuple[int, Order]] = await self.directory.next_orders.remote(
                    self.name, self.applied, POLL_S
                )
                for seq, order in orders:
                    self._apply(order)
                    self.applied = seq
            except asyncio.CancelledError:
                raise
            except Exception:  # the directory restarts: report again shortly
                log.debug("the directory did not answer", exc_info=True)
                await asyncio.sleep(1.0)

    def _apply(self, order: Order) -> None:
        if order[0] == "unload":
            self.engine.unload_now(order[1])
        elif order[0] == "clear":
            for model_id in self.engine.store.loaded_ids():
                self.engine.unload_now(model_id)

    async def report(self) -> None:
        """Tell the directory what this engine holds (and its new events)."""
        async with self._reporting:
            events, self.pending = self.pending, []
            loaded = await self.engine.loaded()
            await self.directory.report.remote(self.name, loaded, events, self.applied)

    def report_soon(self) -> None:
        """From any thread (loads and evictions happen on the loader threads)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: loop.create_task(self.report()))

    def stop(self) -> None:
        loop, task = self._loop, self._orders
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
