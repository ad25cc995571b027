"""The documented Serve config file is valid for Ray Serve and names the deployments that
`cvserve.ray:app` builds; the builder takes any Settings field as an argument."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray", reason="Ray Serve is not installed: pip install 'cvserve[ray]'")

from ray.serve import Application  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from cvserve.ray import app  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "cvserve-serve.yaml"


def bound(application: Any, index: int) -> Any:
    """The `index`-th constructor argument the ingress was bound with."""
    return application._bound_deployment._replica_config.init_args[index]


def deployment_names(application: Any) -> set[str]:
    names, todo = set(), [application]
    while todo:
        node = todo.pop()
        deployment = node._bound_deployment
        names.add(deployment.name)
        todo.extend(a for a in deployment._replica_config.init_args if isinstance(a, Application))
    return names


def test_config_file_is_a_valid_serve_config_for_the_builder(tmp_path: Path) -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    assert application.import_path == "cvserve.ray:app"
    args = dict(application.args)
    args.update(models_dir=str(tmp_path / "models"), data_dir=str(tmp_path / "data"))
    built = app(args)
    names = deployment_names(built)
    assert names == {"ingress", "models", "directory", "jobs", "streams"}
    assert {d.name for d in application.deployments} <= names


def test_builder_sizes_the_model_replicas_from_settings(tmp_path: Path) -> None:
    split = {"data_dir": str(tmp_path), "ray_layout": "split"}
    built = app({**split, "ray_replica_cpus": "3", "ray_max_replicas": "5"})
    models = bound(built, 1)._bound_deployment
    assert models.ray_actor_options["num_cpus"] == 3
    assert models._deployment_config.autoscaling_config.max_replicas == 5
    assert bound(built, 0)["ray_replica_cpus"] == 3  # the replicas' lanes follow it
    fixed = app({**split, "ray_model_replicas": "2"})
    assert bound(fixed, 1)._bound_deployment.num_replicas == 2
    assert bound(fixed, 1)._bound_deployment._deployment_config.autoscaling_config is None
    none = app({**split, "ray_job_replicas": "0", "ray_stream_workers": "0"})
    assert bound(none, 3) is None  # (settings, models, directory, jobs, streams)
    assert bound(none, 4) is None


def test_the_default_layout_is_colocated_replicas_sized_from_settings(tmp_path: Path) -> None:
    built = app({"data_dir": str(tmp_path), "ray_replica_cpus": "2", "ray_model_replicas": "3"})
    assert deployment_names(built) == {"cvserve", "directory", "jobs", "streams"}
    replicas = built._bound_deployment
    assert replicas.ray_actor_options["num_cpus"] == 2 and replicas.num_replicas == 3
    assert bound(built, 0)["ray_layout"] == "colocated"


def test_a_replica_runs_one_single_threaded_lane_per_cpu_of_its_share(tmp_path: Path) -> None:
    from cvserve.ray.replicas import replica_settings, replica_store
    from cvserve.settings import Settings

    settings = replica_settings(Settings(data_dir=tmp_path, ray_replica_cpus=2))
    assert (settings.lanes(), settings.threads_per_lane(), settings.wide_threads()) == (2, 1, 0)
    options = replica_store(settings).options  # the auto layout within the share
    assert (options.lanes, options.threads_per_lane, options.wide_threads) == (2, 1, 2)
    half = replica_settings(Settings(data_dir=tmp_path, ray_replica_cpus=0.5))
    assert (half.lanes(), half.threads_per_lane()) == (1, 1)
    assert replica_store(half).options.wide_threads == 0


def test_a_private_instance_serves_through_haproxy_on_its_own_ports_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvserve.ray import launch

    names = [
        "RAY_SERVE_ENABLE_HA_PROXY",
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
    ]
    for name in [*names, "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", "RAY_SERVE_HAPROXY_SOCKET_PATH",
                 "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH", "RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
                 "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
                 "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]:  # fmt: skip
        monkeypatch.setenv(name, "")  # restored (unset) after the test
        monkeypatch.delenv(name)
    # Turned off: Serve's own proxy, and nothing else is set.
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    assert launch.haproxy_ingress(str(tmp_path)) is False
    assert not any(name in os.environ for name in names[1:])
    # A Ray without HAProxy (before 2.60, or not Linux): Serve's own proxy.
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY")
    shipped = launch.haproxy_shipped
    monkeypatch.setattr(launch, "haproxy_shipped", lambda: False)
    assert launch.haproxy_ingress(str(tmp_path)) is False
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert not any(name in os.environ for name in names[1:])
    # The default where Ray ships it (this test environment's Ray does): HAProxy, with
    # this instance's own free ports and files (every name above is restored afterwards).
    monkeypatch.setattr(launch, "haproxy_shipped", shipped)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY")
    assert launch.haproxy_shipped()
    assert launch.haproxy_ingress(str(tmp_path)) is True
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ports = {int(os.environ[name]) for name in names[1:4]}
    assert len(ports) == 3 and all(port > 0 for port in ports)
    assert os.environ["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(str(tmp_path))
