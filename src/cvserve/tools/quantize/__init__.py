"""`cvserve models quantize ID`: an int8 variant of a stored model, with its measured
speed-up and its agreement with the float model on a set of photos.
One module per job: `calibrate` (the photos), `graph` (which nodes stay float, ONNX Runtime's
quantizer), `proof` (it loads, its speed), `agreement` (against the float model), `report`
(the floors and the report), `strategies` (single-file, SAM and composite models).

Static quantization (default): ONNX Runtime's QDQ format, int8 weights per channel, uint8
activations calibrated on the photos through the model's own preprocessing; on CPUs with
VNNI this runs convolutions as int8. The detection head's last layers (box distribution,
class scores, mask coefficients, keypoints: everything after the last 3x3 convolutions of
each branch) stay float, since their outputs are read as numbers, not features; in other
graphs, the last convolution before each output and every node after the last ones (the
decoding, an NMS Loop's inputs and what follows it: see `_head_nodes`). Dynamic
quantization (`--method dynamic`) needs no photos but seldom speeds up convolutions.

SAM models (family `sam`): only the image encoder is quantized (dynamic by default: int8
MatMul/Gemm weights, activations quantized per run; the prompt decoder stays float), and the
agreement is the mask IoU against the float model for a point and a box prompt on each photo.
A composite (`coco-segment/1`) gets `coco-segment/1-int8`, whose segmenter is the int8 SAM
(quantized first if missing); its detector is the float one, so the boxes are the same and
the agreement is the IoU of each instance's mask. The float models stay the default: the
int8 ones are opt-in by their ids.

Calibration photos go through the model family's own preprocessing (`model.preprocess`,
the tensor `predict` runs: MoveNet's and RetinaFace's at each photo's own size).

Nothing is installed unless it is proved first: the int8 file is loaded and run once on a
photo's tensor in a process of its own (`prove_loads`: a graph ONNX Runtime cannot load
may abort the whole process, as a server loading it would), then its predictions are
compared with the float model's on the photos, in the task's terms (`compare`), and it is
refused when they agree less than `AGREEMENT_FLOORS` (`force=True`, `--force`: installed
anyway, and its manifest says so). Graphs whose subgraphs (Loop/If/Scan: a TensorFlow SSD's
NMS) read a tensor ONNX Runtime's QDQ propagation would rewrite keep the nodes around that
tensor float (`_subgraph_fed_nodes`), which ORT 1.32 otherwise aborts on while loading.

The result lands beside the original as `DATASET/VERSION-int8`; the float model is kept.
Needs the `onnx` package (`pip install 'cvserve[quantize]'`).
"""

from cvserve.tools.quantize.agreement import box_agreement, composite_agreement
from cvserve.tools.quantize.calibrate import DEFAULT_PHOTOS, default_photos, photos_from
from cvserve.tools.quantize.report import (
    AGREEMENT_FLOORS,
    QuantizeRefused,
    QuantizeReport,
    below_floor,
    describe_agreement,
    int8_id,
)
from cvserve.tools.quantize.strategies import quantize_model, runtime_for_quantize

__all__ = [
    "AGREEMENT_FLOORS",
    "DEFAULT_PHOTOS",
    "QuantizeRefused",
    "QuantizeReport",
    "below_floor",
    "box_agreement",
    "composite_agreement",
    "default_photos",
    "describe_agreement",
    "int8_id",
    "photos_from",
    "quantize_model",
    "runtime_for_quantize",
]
