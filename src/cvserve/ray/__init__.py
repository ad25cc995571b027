"""cvserve on Ray Serve: the same doors in an ingress replica, models in multiplexed model
replicas that call the engine, job workers in replicas of their own.

`pip install 'cvserve[ray]'`; then `cvserve serve --ray local|auto|ADDRESS`, or for Ray
users `serve run cvserve.ray:app models_dir=/shared/models` and `serve deploy
cvserve-serve.yaml`. Single-machine cvserve never imports this package.
"""

from cvserve.ray.app import app, build_app

__all__ = ["app", "build_app"]
