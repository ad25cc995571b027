"""The Serve application: an ingress (the same FastAPI doors over a RayEngine), model
replicas multiplexed by model id, their directory, and job-worker replicas, all sized from
one Settings object."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from cvserve.http.app import create_app
from cvserve.http.state import AppState, build_state
from cvserve.models.store import ModelStore
from cvserve.ray.colocated import ColocatedReplica
from cvserve.ray.directory import Directory
from cvserve.ray.engine import RayEngine
from cvserve.ray.replicas import JobReplica, ModelReplica, _Held
from cvserve.ray.stream_workers import StreamSupervisor
from cvserve.ray.streams import ray_streams
from cvserve.settings import Settings

APP_NAME = "cvserve"
# cvserve keeps its own access log (request ids, routes, status): Serve's own line per
# request in each replica is redundant work on every image.
SERVE_LOGGING = {"enable_access_log": False}


class Ingress:
    """Serves the same routes, auth, limits, errors and OpenAPI as `cvserve serve`; its
    engine forwards inference and prompts to the model replicas."""

    def __init__(
        self,
        settings: dict[str, Any],
        models: DeploymentHandle,
        directory: DeploymentHandle,
        jobs: DeploymentHandle | None,
        streams: DeploymentHandle | None,
    ) -> None:
        # Job workers run in their own replicas; this one only submits and reads jobs.
        self.settings = Settings(**settings).with_overrides(job_workers=0)
        catalogue = ModelStore(self.settings.store_dir)
        replicas = max(self.settings.ray_model_replicas, self.settings.ray_max_replicas)
        engine = RayEngine(self.settings, catalogue, models, directory, replicas)
        self.state: AppState = build_state(
            self.settings, engine, ray_streams(self.settings, engine)
        )
        # Held so the job replicas and the stream workers' supervisor belong to this app.
        self.jobs, self.streams = jobs, streams

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.settings, self.state)


def _scaling(settings: Settings) -> dict[str, Any]:
    if settings.ray_max_replicas > 0:
        return {
            "autoscaling_config": {
                "min_replicas": max(1, settings.ray_min_replicas),
                "max_replicas": max(settings.ray_max_replicas, settings.ray_min_replicas, 1),
                # A replica's lanes busy plus one waiting each: scale out beyond that.
                "target_ongoing_requests": 2 * max(1, round(settings.ray_replica_cpus)),
            }
        }
    return {"num_replicas": max(1, settings.ray_model_replicas)}


def build_app(settings: Settings) -> Application:
    # Serve's own cache of models per replica is kept within the model budget's count.
    per_replica = max(1, settings.ray_models_per_replica)
    if settings.max_loaded_models > 0:
        per_replica = min(per_replica, settings.max_loaded_models)
    lanes = max(1, round(settings.ray_replica_cpus))

    class Models(ModelReplica):
        @serve.multiplexed(max_num_models_per_replica=per_replica)
        async def hold(self, model_id: str) -> _Held:
            return await self._hold(model_id)

    config = settings.model_dump(mode="json")
    directory = serve.deployment(
        name="directory",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=10_000,  # each model replica keeps a long poll open
        logging_config=SERVE_LOGGING,
    )(Directory).bind()
    models = serve.deployment(
        name="models",
        ray_actor_options={"num_cpus": settings.ray_replica_cpus},
        # Each replica admits its lanes' worth plus a short queue; the rest waits in the
        # caller up to max_queue, then 503 (BackPressureError).
        max_ongoing_requests=2 * lanes + 2,
        max_queued_requests=max(1, settings.max_queue),
        health_check_period_s=2,
        health_check_timeout_s=10,
        graceful_shutdown_timeout_s=5,
        logging_config=SERVE_LOGGING,
        **_scaling(settings),
    )(Models).bind(config, directory)
    jobs = None
    if settings.ray_job_replicas > 0 and settings.job_workers > 0:
        jobs = serve.deployment(
            name="jobs",
            num_replicas=settings.ray_job_replicas,
            # Workers wait on the queue most of the time; their prompts share the node's cores.
            ray_actor_options={"num_cpus": 0},
            health_check_period_s=5,
        )(JobReplica).bind(config)
    streams = None
    if settings.ray_stream_workers > 0:
        streams = serve.deployment(
            name="streams",
            num_replicas=1,
            ray_actor_options={"num_cpus": 0},
            health_check_period_s=2,  # also how soon a restarted worker takes streams up
            logging_config=SERVE_LOGGING,
        )(StreamSupervisor).bind(config)
    if settings.ray_layout == "colocated":
        replicas = serve.deployment(
            name="cvserve",
            ray_actor_options={"num_cpus": settings.ray_replica_cpus},
            max_ongoing_requests=1000,  # the doors bound themselves (admission, 503)
            health_check_period_s=2,
            health_check_timeout_s=10,
            graceful_shutdown_timeout_s=5,
            logging_config=SERVE_LOGGING,
            **_scaling(settings),
        )(serve.ingress()(ColocatedReplica))
        return replicas.bind(config, directory, jobs, streams)
    ingress = serve.deployment(
        name="ingress",
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,  # the doors bound themselves (admission, 503)
        logging_config=SERVE_LOGGING,
    )(serve.ingress()(Ingress))
    return ingress.bind(config, models, directory, jobs, streams)


def app(args: dict[str, str]) -> Application:
    """`serve run cvserve.ray:app models_dir=/shared/models ...`: settings from CVSERVE_*
    variables, then the given arguments (any Settings field)."""
    return build_app(Settings.from_env().with_overrides(**args))
