"""The inference engine under every door: no HTTP in it.

`EngineAPI` (engine.contract) is what a door may ask; `LocalEngine` answers it in this
process, `cvserve.ray.RayEngine` on Ray Serve's model replicas.
"""

from cvserve.engine.admission import Admission
from cvserve.engine.contract import EngineAPI, EngineListener, LoadedModel, Readiness
from cvserve.engine.core import LocalEngine
from cvserve.engine.deadline import reset_deadline, start_deadline
from cvserve.engine.pipeline import Encoder, Inference
from cvserve.engine.promptable import Prompt, PromptResult

__all__ = [
    "Admission",
    "Encoder",
    "EngineAPI",
    "EngineListener",
    "Inference",
    "LoadedModel",
    "LocalEngine",
    "Prompt",
    "PromptResult",
    "Readiness",
    "reset_deadline",
    "start_deadline",
]
