"""The inference engine under every door: no HTTP in it (see core.Engine)."""

from cvserve.engine.admission import Admission
from cvserve.engine.core import Engine
from cvserve.engine.deadline import reset_deadline, start_deadline
from cvserve.engine.pipeline import Rendered
from cvserve.engine.promptable import Prompt, PromptResult

__all__ = [
    "Admission",
    "Engine",
    "Prompt",
    "PromptResult",
    "Rendered",
    "reset_deadline",
    "start_deadline",
]
