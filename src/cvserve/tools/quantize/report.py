"""What a quantization reports, and the agreement floor it is installed (or refused) by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cvserve.errors import BadRequest
from cvserve.models.ids import parse_model_id
from cvserve.models.store import ModelStore

# The least agreement with the float model, on the photos, an int8 model is installed with
# (each measure where the task has it; below any: refused unless forced). Detection and
# keypoints: F1 of boxes matched one-to-one (same class, IoU >= 0.5) at confidence 0.25;
# classification: the share of photos with the same top-1 class; semantic segmentation:
# the IoU of the foreground (every class but 0) at the default threshold, mean over the
# photos, and the share of pixels given the same class; SAM: the mask IoU of a box prompt
# over the photo's middle; composite: each instance's mask IoU on the (same) boxes.
AGREEMENT_FLOORS: dict[str, float] = {
    "box_f1_iou50": 0.9,
    "top1_agreement": 0.9,
    "fg_iou_mean": 0.9,
    "pixel_agreement": 0.9,
    "box_mask_iou_mean": 0.9,
    "instance_mask_iou_mean": 0.9,
}


class QuantizeRefused(BadRequest):
    """The int8 model cannot be made or is not installed (calibration, loading, agreement)."""


@dataclass
class QuantizeReport:
    source_id: str
    model_id: str
    method: str
    photos: int
    float_ms: float  # median single-thread run of the ONNX graph on one photo's tensor
    int8_ms: float
    float_mb: float
    int8_mb: float
    agreement: dict[str, float] = field(default_factory=dict)
    below_floor: list[str] = field(default_factory=list)  # non-empty: installed by force

    @property
    def speedup(self) -> float:
        return self.float_ms / self.int8_ms if self.int8_ms > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "speedup": self.speedup}


def int8_id(model_id: str) -> str:
    dataset, version = parse_model_id(model_id)
    return f"{dataset}/{version}-int8"


def free_int8_id(store: ModelStore, model_id: str, replace: bool) -> str:
    """The int8 variant's id, refused (400) when it exists and `replace` was not asked."""
    out_id = int8_id(model_id)
    if store.exists(out_id) and not replace:
        raise BadRequest(f"{out_id} already exists (use --replace)")
    return out_id


def below_floor(agreement: dict[str, float]) -> list[str]:
    """The measures under their AGREEMENT_FLOORS, as `name value < floor`; a task with none
    of them measured (nothing to compare on the photos) is one entry too."""
    gated = [k for k in AGREEMENT_FLOORS if k in agreement]
    if not gated:
        return ["no agreement measured on these photos"]
    return [
        f"{k} {agreement[k]:.3f} < {AGREEMENT_FLOORS[k]}"
        for k in gated
        if not agreement[k] >= AGREEMENT_FLOORS[k]  # NaN is below
    ]


def describe_agreement(agreement: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in agreement.items()) or "n/a"


def gate(report: QuantizeReport, force: bool) -> None:
    """Refuse (QuantizeRefused) an int8 model that agrees too little, unless forced."""
    report.below_floor = below_floor(report.agreement)
    if report.below_floor and not force:
        raise QuantizeRefused(
            f"{report.model_id} not installed: it agrees too little with {report.source_id} "
            f"on {report.photos} photos ({'; '.join(report.below_floor)}; measured: "
            f"{describe_agreement(report.agreement)}; x{report.speedup:.2f} per run); "
            "--force installs it anyway"
        )


def forced_note(report: QuantizeReport) -> str:
    return f"; installed by --force below the agreement floor ({', '.join(report.below_floor)})"
