"""torchvision's MobileNetV2 state dict -> ONNX. Runs in the torch tooling venv.

torchvision itself cannot be imported beside the CPU torch build, so the architecture is
written out here; module names match torchvision's so the state dict loads strictly.

usage: python export_mobilenet_v2.py WEIGHTS.pth OUTPUT.onnx
"""

from __future__ import annotations

import sys

import torch
from torch import nn

# (expand ratio, channels, repeats, first stride): torchvision's inverted_residual_setting.
SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
           [6, 160, 3, 2], [6, 320, 1, 1]]  # fmt: skip


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hidden, kernel=1))
        layers += [
            conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in SETTING:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu(cin, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def main(weights: str, output: str) -> None:
    model = MobileNetV2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    dummy = torch.zeros(1, 3, 224, 224)
    # The TorchScript exporter: no onnxscript needed, and the graph stays plain.
    torch.onnx.export(
        model,
        (dummy,),
        output,
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
