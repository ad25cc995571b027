"""cvserve: a self-hosted computer-vision inference server speaking the hosted inference API."""

__version__ = "0.1.0"
