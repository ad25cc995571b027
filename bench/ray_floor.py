"""The floor of the Ray path: a bare Ray Serve application of cvserve's shape, and nothing else.

    python bench/ray_floor.py --port PORT [--cpus N] [--hops 1|2]

Two hops (the split layout's shape): Serve's HTTP proxy -> an ingress deployment that reads
the request body and base64-decodes it -> a model deployment, over a handle, that receives
the bytes and answers a small dict. One hop (the colocated layout's shape): the proxy -> one
deployment, holding the cores, that reads, decodes and answers the small dict itself.
No model runs: what this costs per request is what Ray Serve itself costs for an image,
so `ray_bench.py` can tell Ray's own CPU per image from cvserve's on the same path.
Runs its own private Ray instance until SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import tempfile
import threading

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from cvserve.ray.launch import haproxy_ingress


class Model:
    async def __call__(self, data: bytes) -> dict[str, object]:
        return {"bytes": len(data), "predictions": []}


class Alone:
    """The one-hop shape: the replica that parses the request is the one that would infer."""

    async def __call__(self, request: Request) -> JSONResponse:
        data = base64.b64decode(await request.body())
        return JSONResponse({"bytes": len(data), "predictions": []})


class Ingress:
    def __init__(self, model: serve.handle.DeploymentHandle) -> None:
        self.model = model

    async def __call__(self, request: Request) -> JSONResponse:
        data = base64.b64decode(await request.body())
        return JSONResponse(await self.model.remote(data))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    p.add_argument("--hops", type=int, choices=(1, 2), default=2)
    args = p.parse_args()
    os.environ.setdefault("RAY_worker_niceness", "0")  # as cvserve --ray local
    temp_dir = tempfile.mkdtemp(prefix="cvray-floor-", dir="/tmp")
    haproxy_ingress(temp_dir)  # the ingress cvserve --ray local would pick here
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        log_to_driver=False,
        configure_logging=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    if args.hops == 1:
        alone = serve.deployment(name="model", ray_actor_options={"num_cpus": args.cpus})(Alone)
        serve.run(alone.bind(), name="floor", route_prefix="/")
    else:
        model = serve.deployment(name="model", ray_actor_options={"num_cpus": args.cpus})(Model)
        ingress = serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0})(Ingress)
        serve.run(ingress.bind(model.bind()), name="floor", route_prefix="/")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
