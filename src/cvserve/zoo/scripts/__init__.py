"""Conversion scripts. Not imported by the server: each runs as a file in a converter venv
(see cvserve.zoo.tooling), where TensorFlow or torch is installed."""
