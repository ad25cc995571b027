"""Which models stay loaded: a budget of models and/or resident bytes, kept by unloading the
least recently used idle model before a load would pass it.

- Idle: no request admitted for it (the engine's `Admission` counts, queued and running)
  and no in-process user holding it (`hold`, the job workers). A model with work in flight
  is never unloaded, and neither is a pinned one (`--preload`).
- When no loaded model can make room, a load waits (bounded, within its request's
  deadline) for one to go idle, then answers 503 with Retry-After: the budget is a bound
  the operator set to keep the process clear of the OOM killer, so it is never passed for
  traffic. Pinned models load even past it: the operator asked for them by name.
- A model's bytes are the process's resident growth across its load (`ModelStore.stats`);
  before its first load, its files' size times its sessions stands in.
- With a budget, loads run one at a time (measurements don't overlap, and two loads can't
  both take the last free place); they run on the engine's loader threads, so requests to
  loaded models never wait for them, nor for an unload.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from cvserve.engine.admission import Admission
from cvserve.errors import Overloaded
from cvserve.models.base import Model
from cvserve.models.store import ModelStore

log = logging.getLogger("cvserve.engine")

EvictListener = Callable[[str], None]


@dataclass(frozen=True)
class Budget:
    max_models: int = 0  # 0: any number
    max_bytes: int = 0  # 0: any size

    @property
    def bounded(self) -> bool:
        return self.max_models > 0 or self.max_bytes > 0


def plan_evictions(
    loaded: Sequence[tuple[str, int]],
    budget: Budget,
    need_bytes: int,
    busy: Callable[[str], bool],
) -> list[str] | None:
    """The models to unload, least recently used first, so that one more model of
    `need_bytes` fits: `loaded` is (model_id, bytes) from least to most recently used;
    `busy(m)` is true for a model that must stay (in flight or pinned). None: it can't fit."""
    count = len(loaded)
    total = sum(b for _, b in loaded)

    def fits() -> bool:
        if budget.max_models > 0 and count + 1 > budget.max_models:
            return False
        return not (budget.max_bytes > 0 and total + need_bytes > budget.max_bytes and count)

    victims: list[str] = []
    for model_id, size in loaded:
        if fits():
            break
        if busy(model_id):
            continue
        victims.append(model_id)
        count -= 1
        total -= size
    return victims if fits() else None


class Residency:
    """The engine's loaded models under a budget (see the module's docstring)."""

    def __init__(self, store: ModelStore, admission: Admission, budget: Budget) -> None:
        self.store = store
        self.admission = admission
        self.budget = budget
        self.evictions: dict[str, int] = {}
        self.evict_listeners: list[EvictListener] = []
        self._recent: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._pinned: set[str] = set()
        self._holds: dict[str, int] = {}
        self._lock = threading.Lock()  # the bookkeeping above
        self._idle = threading.Condition(self._lock)  # notified when a request finishes
        self._loading = threading.Lock()  # one budgeted load (evictions + load) at a time
        if budget.bounded:  # only a load waiting for room listens
            admission.listeners.append(self._finished)

    # -- bookkeeping ---------------------------------------------------------------------
    def touch(self, model_id: str) -> None:
        """The model was just used: it becomes the most recently used."""
        with self._lock:
            self._recent[model_id] = None
            self._recent.move_to_end(model_id)

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(self._pinned)

    def busy(self, model_id: str) -> bool:
        """In flight (admitted, held) or pinned: not to be unloaded now (reads of dicts
        other threads write: a request admitted just after this says no still finds its
        model object working, which lives as long as it is referenced)."""
        return (
            model_id in self._pinned
            or self.admission.in_flight.get(model_id, 0) > 0
            or self._holds.get(model_id, 0) > 0
        )

    @contextlib.contextmanager
    def hold(self, model_id: str) -> Iterator[None]:
        """Keeps the model loaded while an in-process caller (a job worker) uses it."""
        with self._lock:
            self._holds[model_id] = self._holds.get(model_id, 0) + 1
        try:
            yield
        finally:
            with self._idle:
                self._holds[model_id] -= 1
                self._idle.notify_all()

    def _finished(self, model_id: str, outcome: str, queued_s: float, run_s: float) -> None:
        with self._idle:
            self._idle.notify_all()

    def resident(self) -> dict[str, int]:
        """Loaded model -> its estimated resident bytes."""
        stats = self.store.stats
        return {m: stats[m].resident_bytes if m in stats else 0 for m in self.store.loaded_ids()}

    def _by_recency(self, sizes: Mapping[str, int]) -> list[tuple[str, int]]:
        """Loaded models, least recently used first (ones never touched count as oldest)."""
        with self._lock:
            order = {m: i for i, m in enumerate(self._recent)}
        return sorted(sizes.items(), key=lambda item: order.get(item[0], -1))

    def _estimate(self, model_id: str) -> int:
        stats = self.store.stats.get(model_id)
        if stats is not None:
            return stats.resident_bytes
        options = self.store.options
        sessions = options.lanes + (1 if options.wide_threads > options.threads_per_lane else 0)
        return self.store.file_bytes(model_id) * sessions

    # -- loading -------------------------------------------------------------------------
    def load(self, model_id: str, *, pin: bool = False, wait_s: float = 0.0) -> Model:
        """The model, loaded within the budget (blocking: call it on a loader thread).
        Waits up to `wait_s` for a loaded model to go idle; then 503."""
        if pin:
            with self._lock:
                self._pinned.add(model_id)
        model = self.store.loaded(model_id)
        if model is None and self.budget.bounded:
            with self._loading:
                model = self.store.loaded(model_id)
                if model is None:
                    self._make_room(model_id, pin=pin, wait_s=wait_s)
                    model = self.store.get(model_id)
                    self._shrink(keep=model_id)  # its measured size may pass the estimate
        elif model is None:
            model = self.store.get(model_id)
        self.touch(model_id)
        return model

    def _make_room(self, model_id: str, *, pin: bool, wait_s: float) -> None:
        need = self._estimate(model_id)
        deadline = time.monotonic() + wait_s
        while True:
            loaded = self._by_recency(self.resident())
            plan = plan_evictions(loaded, self.budget, need, self.busy)
            if plan is not None:
                break
            if pin:  # an operator's pin loads past the budget (after what can go, went)
                plan = [m for m, _ in loaded if not self.busy(m)]
                log.warning("pinned model %s is loaded past the model budget", model_id)
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise Overloaded(
                    f"model {model_id} cannot be loaded now: the loaded models fill the "
                    f"model budget and all of them are in use or pinned; retry shortly"
                )
            with self._idle:
                self._idle.wait(min(left, 0.25))
        for victim in plan:
            self._evict(victim, reason=f"to load {model_id}")

    def _over(self, sizes: Mapping[str, int]) -> bool:
        if self.budget.max_models > 0 and len(sizes) > self.budget.max_models:
            return True
        return self.budget.max_bytes > 0 and sum(sizes.values()) > self.budget.max_bytes

    def _shrink(self, keep: str) -> None:
        """After a load: unload idle models (oldest first) until the budget holds again."""
        while self._over(sizes := self.resident()):
            others = self._by_recency({m: b for m, b in sizes.items() if m != keep})
            idle = [m for m, _ in others if not self.busy(m)]
            if not idle:
                return  # all in use: the next load makes room, or waits
            self._evict(idle[0], reason=f"after loading {keep}")

    def unload(self, model_id: str) -> bool:
        """Unload on request (`/model/remove`): unpinned and forgotten, in use or not (its
        running requests keep the sessions they hold until they finish)."""
        with self._lock:
            self._pinned.discard(model_id)
            self._recent.pop(model_id, None)
        return self.store.unload(model_id)

    def _evict(self, model_id: str, *, reason: str) -> None:
        if not self.store.unload(model_id):
            return
        with self._lock:
            self._recent.pop(model_id, None)
            self.evictions[model_id] = self.evictions.get(model_id, 0) + 1
        log.info("unloaded model %s (least recently used, idle) %s", model_id, reason)
        for listener in list(self.evict_listeners):
            with contextlib.suppress(Exception):  # metrics must never fail a load
                listener(model_id)
