"""The model budget's logic: least recently used idle models go first; in-flight, held and
pinned ones never; a load that cannot make room waits, then answers 503."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cvserve.engine.admission import Admission
from cvserve.engine.residency import Budget, Residency, plan_evictions
from cvserve.errors import Overloaded
from cvserve.models.store import ModelStore
from tests.conftest import make_store
from tests.support.budget_support import add_weighty_classifier

MB = 2**20


def test_plan_takes_the_least_recently_used_idle_models() -> None:
    loaded = [("a/1", 10), ("b/1", 20), ("c/1", 30)]  # least recently used first
    idle = lambda m: False  # noqa: E731
    assert plan_evictions(loaded, Budget(max_models=3), 5, idle) == ["a/1"]
    assert plan_evictions(loaded, Budget(max_models=4), 5, idle) == []
    assert plan_evictions(loaded, Budget(max_models=2), 5, idle) == ["a/1", "b/1"]
    # Bytes: 60 + 25 must fit in 60 -> the two oldest go (a alone leaves 50 + 25).
    assert plan_evictions(loaded, Budget(max_bytes=60), 25, idle) == ["a/1", "b/1"]
    # Both bounds at once: the stricter decides.
    assert plan_evictions(loaded, Budget(max_models=3, max_bytes=100), 60, idle) == ["a/1", "b/1"]
    assert plan_evictions(loaded, Budget(max_models=2, max_bytes=100), 5, idle) == ["a/1", "b/1"]
    assert plan_evictions([], Budget(max_models=0), 5, idle) == []


def test_plan_skips_busy_models_and_says_when_nothing_fits() -> None:
    loaded = [("a/1", 10), ("b/1", 20), ("c/1", 30)]
    assert plan_evictions(loaded, Budget(max_models=3), 5, lambda m: m == "a/1") == ["b/1"]
    assert plan_evictions(loaded, Budget(max_models=3), 5, lambda m: True) is None
    # A model bigger than the whole budget still loads alone once the others went.
    assert plan_evictions(loaded, Budget(max_bytes=50), 500, lambda m: False) == [
        "a/1", "b/1", "c/1",
    ]  # fmt: skip
    assert plan_evictions([], Budget(max_bytes=50), 500, lambda m: False) == []


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = make_store(tmp_path)
    for i in range(5):
        add_weighty_classifier(store.root, f"m{i}/1", mb=1, seed=i)
    return store


def test_lru_eviction_keeps_pinned_and_in_flight_models(store: ModelStore) -> None:
    gate = Admission(limit=8)
    residency = Residency(store, gate, Budget(max_models=3))
    evicted: list[str] = []
    residency.evict_listeners.append(evicted.append)
    residency.load("m0/1", pin=True)
    residency.load("m1/1")
    residency.load("m2/1")
    residency.touch("m1/1")  # now m2 is the least recently used idle one
    residency.load("m3/1")
    assert evicted == ["m2/1"]
    assert sorted(store.loaded_ids()) == ["m0/1", "m1/1", "m3/1"]
    gate.enter("m1/1")  # a request in flight on m1: m3 goes instead, though newer
    residency.load("m4/1")
    assert evicted == ["m2/1", "m3/1"]
    gate.leave("m1/1")
    assert store.loaded("m0/1") is not None  # pinned: never a victim
    assert store.stats["m0/1"].loads == 1
    assert residency.evictions == {"m2/1": 1, "m3/1": 1}


def test_a_load_waits_for_a_busy_model_then_503(store: ModelStore) -> None:
    gate = Admission(limit=8)
    residency = Residency(store, gate, Budget(max_models=1))
    residency.load("m0/1")
    gate.enter("m0/1")
    began = time.monotonic()
    with pytest.raises(Overloaded, match="model budget"):
        residency.load("m1/1", wait_s=0.3)
    assert 0.3 <= time.monotonic() - began < 2.0
    assert store.loaded("m1/1") is None and store.loaded("m0/1") is not None

    def finish() -> None:  # the request ends (the engine's done callback: leave, notify)
        time.sleep(0.2)
        gate.leave("m0/1", ran=True)
        gate.notify("m0/1", "ok", 0.0, 0.2)

    threading.Thread(target=finish).start()
    residency.load("m1/1", wait_s=5.0)  # woken when m0 goes idle
    assert store.loaded_ids() == ["m1/1"]


def test_held_models_stay_and_pins_load_past_the_budget(store: ModelStore) -> None:
    residency = Residency(store, Admission(limit=8), Budget(max_models=1))
    residency.load("m0/1")
    with residency.hold("m0/1"), pytest.raises(Overloaded):
        residency.load("m1/1", wait_s=0.0)
    residency.load("m1/1", pin=True)  # m0 is idle again: it makes room
    residency.load("m2/1", pin=True)  # the operator's pins: past the budget, with a warning
    assert sorted(store.loaded_ids()) == ["m1/1", "m2/1"]
    with pytest.raises(Overloaded):
        residency.load("m3/1", wait_s=0.0)


def test_memory_budget_uses_measured_sizes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for i in range(4):
        add_weighty_classifier(store.root, f"w{i}/1", mb=8, seed=i)
    residency = Residency(store, Admission(limit=8), Budget(max_bytes=20 * MB))
    for i in range(4):
        residency.load(f"w{i}/1")
        sizes = residency.resident()
        assert sum(sizes.values()) <= 20 * MB, sizes
    # Each measured near its 8 MiB of weights (the process's growth across the load).
    measured = [store.stats[f"w{i}/1"].resident_bytes for i in range(4)]
    assert all(6 * MB <= b <= 16 * MB for b in measured), measured
    assert len(store.loaded_ids()) == 2
    assert sum(residency.evictions.values()) == 2


def test_unbounded_by_default(store: ModelStore) -> None:
    residency = Residency(store, Admission(limit=8), Budget())
    for i in range(5):
        residency.load(f"m{i}/1")
    assert len(store.loaded_ids()) == 5 and residency.evictions == {}
    assert all(store.stats[f"m{i}/1"].seconds > 0 for i in range(5))


def test_settings_and_environment_names() -> None:
    from cvserve.settings import Settings

    assert (Settings().max_loaded_models, Settings().model_memory_mb, Settings().preload) == (
        0, 0, (),
    )  # fmt: skip
    env = {
        "CVSERVE_MAX_LOADED_MODELS": "3",
        "CVSERVE_MODEL_MEMORY_MB": "512",
        "CVSERVE_PRELOAD": "a/1, b/2",
    }
    s = Settings.from_env(env)
    assert (s.max_loaded_models, s.model_memory_mb, s.preload) == (3, 512, ("a/1", "b/2"))
    with pytest.raises(ValueError):
        Settings(max_loaded_models=-1)
