"""Both engines, serving one store: the API tests run against each (`served` fixtures).

- `local_engine_server`: `cvserve serve` (a LocalEngine in one process);
- `ray_engine_server`: `cvserve serve --ray ADDRESS --ray-layout split` on a real two-node
  local Ray cluster (`ray.cluster_utils.Cluster`): an ingress, two model replicas and two
  job-worker replicas (the colocated layout has its own test in test_engines_alike.py).
Both take the same settings: the same API keys, jobs and files in PostgreSQL (a database
each), a model budget of `BUDGET` models per model process, and `PRELOAD` pinned.

The store holds the official clients' models (tests/support/official_clients.py), `rect/1` (a
detector that finds painted rectangles) and two synthetic SAM models. The Ray cluster and
its server live for the whole session; `conftest.py` runs the tests that use them last, so
the rest of the suite never shares the two cores with an idle cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.live_server import serve_subprocess, stop
from tests.support.official_clients import API_KEY as CLIENTS_KEY
from tests.support.official_clients import (
    Server,
    acquire_server,
    build_client_store,
    release_server,
    write_test_images,
)
from tests.support.postgres_server import PostgresServer
from tests.support.synthetic import rect_finder_model, ultralytics_meta
from tests.support.synthetic_sam import MODEL_ID as SAM_ID
from tests.support.synthetic_sam import write_sam_model

KEY = "ray-test-key"
BUDGET = 3  # models per model process (the server, or each Ray model replica)
PRELOAD = "cls/1"
RAY_MODEL_REPLICAS = 2
RAY_STREAM_WORKERS = 2
STREAM_MODEL = "two/1"
STREAM_LEASE_S = 3  # how soon a lost stream worker's streams move (the Ray server's)
ON_RAY = "on-ray"  # the id of a test's Ray variant (conftest.py orders those last)


@dataclass(frozen=True)
class Served:
    engine: str  # "local" or "ray"
    url: str
    store: Path
    database_url: str
    model_processes: int  # processes that hold models: 1, or the Ray model replicas
    images: dict[str, Path]  # the official clients' test image, PNG and JPEG


@pytest.fixture(scope="session")
def engine_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    build_client_store(root / "models", root / "build")
    from cvserve.models.importers import import_model
    from cvserve.models.store import ModelStore

    store = ModelStore(root / "models")
    meta = ultralytics_meta("detect", ["rect"])
    import_model(rect_finder_model(root / "rect.onnx", metadata=meta), "rect/1", store)
    write_sam_model(root / "models", SAM_ID, encoder_work=2)
    write_sam_model(root / "models", "slowsam/1", encoder_work=2, decoder_work=400)
    write_stream_inputs(root, store)
    store.close()
    return root / "models"


def write_stream_inputs(root: Path, store: object) -> None:
    """Streams on both engines: `two/1` (finds a red and a green square) and clips of
    them crossing, in the servers' stream dir (tests/test_streams_engines.py)."""
    from cvserve.models.importers import import_model
    from tests.support.streams_support import crossing_frames, two_colour_finder, write_clip

    two = two_colour_finder(root / "two.onnx", ("red", "green"))
    import_model(two, STREAM_MODEL, store)  # type: ignore[arg-type]
    videos = root / "videos"
    videos.mkdir()
    write_clip(videos / "crossing.mp4", crossing_frames(40))
    write_clip(videos / "long.mp4", crossing_frames(300, 320, 240))


def engine_env(store: Path, name: str, database_url: str) -> dict[str, str]:
    return {
        "CVSERVE_API_KEYS": f"{KEY},{CLIENTS_KEY}",
        "CVSERVE_DATABASE_URL": database_url,
        "CVSERVE_JOB_LEASE_S": "3",
        "CVSERVE_DATA_DIR": str(store.parent / f"{name}-data"),
        "CVSERVE_MAX_LOADED_MODELS": str(BUDGET),
        "CVSERVE_PRELOAD": PRELOAD,
        "CVSERVE_WORKERS": "1",
        "CVSERVE_STREAM_DIRS": str(store.parent / "videos"),
        "CVSERVE_STREAM_LEASE_S": str(STREAM_LEASE_S),
        "CVSERVE_RAY_STREAM_WORKERS": str(RAY_STREAM_WORKERS),
    }


@pytest.fixture(scope="session")
def local_engine_server(engine_store: Path, postgres: PostgresServer) -> Iterator[Served]:
    database_url = postgres.new_database()
    env = engine_env(engine_store, "local", database_url)
    proc, url = serve_subprocess(engine_store, env=env)
    images = write_test_images(engine_store.parent)
    try:
        yield Served("local", url, engine_store, database_url, 1, images)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[object]:
    """Two Ray nodes on this machine, 2 logical CPUs each."""
    ray = pytest.importorskip(
        "ray", reason="Ray Serve is not installed: pip install 'cvserve[ray]'"
    )
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="cvserve-tests", log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="session")
def ray_engine_server(
    ray_cluster: object, engine_store: Path, postgres: PostgresServer
) -> Iterator[Served]:
    database_url = postgres.new_database()
    env = {**engine_env(engine_store, "ray", database_url), "CVSERVE_RAY_JOB_REPLICAS": "2"}
    address = ray_cluster.address  # type: ignore[attr-defined]
    replicas = str(RAY_MODEL_REPLICAS)
    # Model replicas behind an ingress (test_ray_serve kills one); the colocated layout has
    # its own test, and CVSERVE_TEST_RAY_LAYOUT=colocated runs these on it instead.
    layout = ("--ray-layout", os.environ.get("CVSERVE_TEST_RAY_LAYOUT", "split"))
    proc, url = serve_subprocess(
        engine_store, "--ray", address, *layout, "--replicas", replicas, env=env, timeout=180.0
    )
    images = write_test_images(engine_store.parent)
    try:
        yield Served("ray", url, engine_store, database_url, RAY_MODEL_REPLICAS, images)
    finally:
        stop(proc)


ENGINES = [pytest.param("local", id="local"), pytest.param("ray", id=ON_RAY)]


def served_by(request: pytest.FixtureRequest, engine: str) -> Served:
    """The session's server for `engine` ("local" or "ray")."""
    name = "ray_engine_server" if engine == "ray" else "local_engine_server"
    served: Served = request.getfixturevalue(name)
    return served


@pytest.fixture(scope="session")
def local_clients_server() -> Iterator[Server]:
    """The official clients' own `cvserve serve` (tests/support/official_clients.py)."""
    server = acquire_server()
    try:
        yield server
    finally:
        release_server()


def clients_server(request: pytest.FixtureRequest, engine: str) -> Server:
    """The server the official clients' tests talk to, on `engine`: on Ray, the session's
    Ray server, whose store holds the same models and which takes the clients' key."""
    if engine == "local":
        local: Server = request.getfixturevalue("local_clients_server")
        return local
    served = served_by(request, "ray")
    port = int(served.url.rsplit(":", 1)[1])
    return Server(served.url, port, CLIENTS_KEY, served.store.parent, served.images, None)
