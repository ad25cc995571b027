"""tf2onnx's command line, made to work on today's stack. Runs in the tf tooling venv.

- tf2onnx 1.17 still calls `np.product`, which numpy 2 removed: alias it.
- TF.js graph models list fused ops without the attributes TensorFlow's importer now
  insists on (`TArgs` on _FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul,
  `index_type` and `Tk` on TopKV2): add them to a copy of model.json, beside the original
  so the weight shards still resolve.

usage: python tf_to_onnx.py [tf2onnx.convert arguments...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FUSED = ("_FusedConv2D", "FusedDepthwiseConv2dNative", "_FusedMatMul")


def patch_tfjs(model_json: Path) -> Path:
    data = json.loads(model_json.read_text())
    for node in data["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] in FUSED and "TArgs" not in attr:
            count = int(attr.get("num_args", {}).get("i", len(node["input"]) - 2))
            attr["TArgs"] = {"list": {"type": [attr["T"]["type"]] * count}}
        elif node["op"] == "TopKV2":
            attr.setdefault("index_type", {"type": "DT_INT32"})
            attr.setdefault("Tk", {"type": "DT_INT32"})
    out = model_json.with_name(model_json.stem + ".patched.json")
    out.write_text(json.dumps(data))
    return out


def main(argv: list[str]) -> None:
    if not hasattr(np, "product"):
        np.product = np.prod
    if "--tfjs" in argv:
        i = argv.index("--tfjs") + 1
        argv[i] = str(patch_tfjs(Path(argv[i])))
    from tf2onnx import convert

    sys.argv = ["tf2onnx.convert", *argv]
    convert.main()


if __name__ == "__main__":
    main(sys.argv[1:])
