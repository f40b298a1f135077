"""torchvision-style ResNets as `ResidualModel`s: the one module that knows their layout.

Recognised by structure, not by class, so torchvision's own ``resnet18`` ... ``resnet152`` (and any
module laid out the same way) work: a stem ``conv1, bn1, relu, maxpool``; stages ``layer1 ..
layerK``, each a sequence of residual blocks (BasicBlock or Bottleneck); ``avgpool`` and ``fc``. The
model's own modules are used, never copied, so training the wrapper trains the original.

Depth k is the output of the k-th residual block over all stages. Stages change the width (64 to 512
channels in a ResNet-18) and the resolution, so the one shared head reads every depth as: global
average pool, then the channels zero-padded to the last stage's width, then ``fc``. At depth N that is
exactly the original model's head; shallower depths share ``fc``'s first columns (LPA training
learns to use them). A module without one of these parts is refused, naming the part.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.models.protocol import ResidualModel

STEM = ("conv1", "bn1", "relu", "maxpool")


class _Stem(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (getattr(net, name) for name in STEM)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, C, H', W')
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


class PaddedPoolHead(nn.Module):
    """Global average pool, channels zero-padded to ``fc``'s input width, ``fc``."""

    def __init__(self, avgpool: nn.Module, fc: nn.Linear) -> None:
        super().__init__()
        self.avgpool, self.fc = avgpool, fc

    def forward(self, h: Tensor) -> Tensor:  # (B, C_k, H, W) -> (B, classes)
        x = self.avgpool(h).flatten(1)
        missing = self.fc.in_features - x.shape[1]
        return self.fc(F.pad(x, (0, missing)) if missing > 0 else x)


def _require(net: nn.Module, name: str) -> nn.Module:
    module = getattr(net, name, None)
    if not isinstance(module, nn.Module):
        raise UsageError(f"{type(net).__name__} is not a torchvision-style ResNet: it has no module {name!r} "
                         f"(looked for {', '.join(STEM)}, layer1.., avgpool, fc)")
    return module


def from_resnet(net: nn.Module) -> ResidualModel:
    """A torchvision-style ResNet as embed (the stem), blocks (every residual block of every stage) and
    the shared padded pool + fc head."""
    for name in STEM:
        _require(net, name)
    fc = _require(net, "fc")
    if not isinstance(fc, nn.Linear):
        raise UsageError(f"{type(net).__name__}.fc is a {type(fc).__name__}, not a Linear layer")
    stages = []
    while isinstance(getattr(net, f"layer{len(stages) + 1}", None), nn.Module):
        stages.append(getattr(net, f"layer{len(stages) + 1}"))
    if not stages:
        _require(net, "layer1")
    blocks = [block for stage in stages for block in (stage if isinstance(stage, nn.Sequential) else [stage])]
    for block in blocks:
        if not hasattr(block, "conv1") or not hasattr(block, "conv2"):
            raise UsageError(f"{type(block).__name__} in {type(net).__name__} is not a residual block (no conv1/conv2)")
    head = PaddedPoolHead(_require(net, "avgpool"), fc)
    return ResidualModel(_Stem(net), blocks, head, head_applies="global-avg-pool, channels zero-padded to the last stage's, fc")
