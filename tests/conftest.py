"""Shared, generic fixtures: a model store in a temporary folder and a TestClient app.

- `make_store(tmp_path)` builds an empty ModelStore under tmp_path (also a fixture, `store`).
- `add_model(store, model_id, path, config=None)` imports an .onnx / folder into it.
- `make_client(store, **settings)` (fixture) gives a started TestClient over that store;
  keyword arguments override Settings fields (api_keys, max_body_bytes, ...).
- With CI=true a skip of a headline feature's test is a failure (tests/support/strict_skips.py).
- The tests on the Ray engine run last (tests/support/engines.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cvserve.engine import LocalEngine
from cvserve.models.base import ModelInfo
from cvserve.models.importers import import_model
from cvserve.models.runtime import RuntimeOptions
from cvserve.models.store import ModelStore
from cvserve.settings import Settings
from tests.support.engines import (  # noqa: F401 - fixtures for every module
    ON_RAY,
    engine_store,
    local_clients_server,
    local_engine_server,
    ray_cluster,
    ray_engine_server,
)
from tests.support.postgres_server import pg_url, postgres  # noqa: F401 - fixtures for every module
from tests.support.strict_skips import (  # noqa: F401 - hooks, found by name in this conftest
    pytest_make_collect_report,
    pytest_runtest_makereport,
)


def make_store(tmp_path: Path) -> ModelStore:
    """An empty model store under tmp_path/models (one ORT thread per session)."""
    return ModelStore(tmp_path / "models", RuntimeOptions(lanes=1, threads_per_lane=1))


def add_model(
    store: ModelStore, model_id: str, path: Path, config: Path | None = None
) -> ModelInfo:
    """Import a model (an .onnx file, a folder, or ONNX + config) into the store."""
    return import_model(path, model_id, store, config=config)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return make_store(tmp_path)


def build_client(store: ModelStore, **overrides: Any) -> TestClient:
    """A TestClient (not yet started) for an app serving `store` with the given settings."""
    from cvserve.http.app import build_state, create_app

    fields: dict[str, Any] = {
        "data_dir": store.root.parent,
        "models_dir": store.root,
        "auto_pull": False,
        "workers": 1,
        "intra_op_threads": 1,
    }
    fields.update(overrides)
    settings = Settings(**fields)
    state = build_state(settings, engine=LocalEngine(settings, store))
    return TestClient(create_app(settings, state), raise_server_exceptions=False)


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Factory: make_client(store, **settings_overrides) -> started TestClient."""
    started: list[TestClient] = []

    def factory(store: ModelStore, **overrides: Any) -> TestClient:
        client = build_client(store, **overrides)
        client.__enter__()
        started.append(client)
        return client

    yield factory
    for client in reversed(started):
        client.__exit__(None, None, None)


def hosted(
    client: TestClient, model_id: str, image: bytes, expect: int = 200, **params: Any
) -> Any:
    """POST an encoded image to /{dataset}/{version} as the official package does (base64,
    form-urlencoded) and return the JSON body, asserting the status."""
    import base64

    query = {k: str(v) for k, v in params.items()}
    r = client.post(
        f"/{model_id}",
        params=query,
        content=base64.b64encode(image),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == expect, r.text
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r


@pytest.fixture(scope="module")
def packages():  # noqa: ANN201 - PackageCache, imported lazily
    """The registry package cache the zoo tests share (photos and weights come from it)."""
    from cvserve.zoo.packages import PackageCache
    from tests.support.zoo_cache import cache_root

    return PackageCache(cache_root() / "packages")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that use the session's Ray cluster run last, in their order: the cluster
    starts once, and the rest of the suite never shares the cores with it."""

    def on_ray(item: pytest.Item) -> bool:
        return ON_RAY in item.nodeid or "ray_engine_server" in getattr(item, "fixturenames", ())

    items.sort(key=on_ray)  # stable: each group keeps its order
