"""A ResNet-style CNN in PyTorch with random weights, exported to ONNX for tests and benchmarks.

Stem (7×7/2 conv, batch norm, ReLU, 3×3/2 max pool), four stages of two basic residual blocks
(3×3 convs, batch norm, identity or 1×1/2 projection shortcuts), global average pool, linear
head: ResNet-18's structure at a width that keeps CPU tests quick. Batch-norm statistics are
random (not identity) so that folding them is actually tested.
"""

from __future__ import annotations

import warnings
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OPSET = 17
SIZE = 64  # input height and width
WIDTHS = (16, 32, 64, 128)
CLASSES = 10


def build_torch(seed: int = 0) -> Any:
    """The module in eval mode with seeded random weights and batch-norm statistics."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def bn(c: int) -> nn.BatchNorm2d:
        layer = nn.BatchNorm2d(c)
        layer.running_mean.uniform_(-0.5, 0.5)
        layer.running_var.uniform_(0.5, 2.0)
        layer.weight.data.uniform_(0.5, 1.5)
        layer.bias.data.uniform_(-0.2, 0.2)
        return layer

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), bn(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), bn(cout)
            self.short: nn.Module = nn.Identity()
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))

        def forward(self, x: Any) -> Any:
            h = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(h)) + self.short(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, WIDTHS[0], 7, 2, 3, bias=False),
                bn(WIDTHS[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            blocks: list[nn.Module] = []
            cin = WIDTHS[0]
            for i, w in enumerate(WIDTHS):
                blocks += [Block(cin, w, 1 if i == 0 else 2), Block(w, w, 1)]
                cin = w
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(cin, CLASSES)

        def forward(self, x: Any) -> Any:
            h = self.blocks(self.stem(x))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

    return Net().eval()


@cache
def export(folder: str | None = None) -> Path:
    """Export once to ``folder`` (default: a cache folder under the build tree); the path."""
    import torch

    out_dir = Path(folder) if folder else ROOT / "build" / "test-models"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"resnet-mini-opset{OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    # The TorchScript-based exporter (dynamo=False) writes the graphs most deployed ONNX files
    # have (Erf GELU, explicit shape arithmetic) and needs no onnxscript; torch warns that it is
    # the legacy path, which is deliberate here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            build_torch(),
            (torch.randn(2, 3, SIZE, SIZE),),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(path)
    return path
