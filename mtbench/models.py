"""Hard-parameter-sharing multi-task networks: one shared backbone, one head per task.

Presets (``smoke``, ``quick``, ``paper``) pick the backbone:

* ``smoke`` / ``quick``: a small residual backbone of the same structure as the paper's (a deep
  3×3 stem, residual stages, the last stage dilated instead of strided), so that a run fits in
  minutes on two CPU cores.
* ``paper``: dilated ResNet-50 (ResNet-D stem of three 3×3 convs; layer3/layer4 dilated 2/4, output
  stride 8), one DeepLabV3 ASPP head (rates 12/24/36) per dense task and a conv + pool + MLP head per
  image-level task, trained from scratch.

All presets use BatchNorm (GroupNorm is available through ``ArchSpec(norm="group")``). BatchNorm is
per-channel, so a pruned channel can be removed exactly at export time (issue: compact export).

BatchNorm under MAML — our policy: every training forward (inner and outer loop, ordinary training,
fine-tuning) runs in training mode and normalises with the batch's own statistics. learn2learn's
``clone()`` shares the running-statistics buffers with the meta-model, so they track every forward;
they are only used in evaluation, after the meta-test fine-tuning has re-estimated them on the
task's own training data (momentum 0.1 over the fine-tuning steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.specs import TaskSpec

Norm = Literal["group", "batch"]


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(min(8, channels), channels)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection (1×1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dilation: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride, dilation)
        self.norm1 = norm_layer(norm, out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1, dilation)
        self.norm2 = norm_layer(norm, out_channels)
        self.project: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.project = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm_layer(norm, out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        shortcut = x if self.project is None else self.project(x)
        return F.relu(out + shortcut)


class SmallResNet(nn.Module):
    """Deep-stem residual backbone; output stride 4 (stem stride 2, stage 2 stride 2, stage 3 dilated)."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: int = 1, norm: Norm = "group") -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.stem = nn.Sequential(
            conv3x3(3, w0 // 2, stride=2),
            norm_layer(norm, w0 // 2),
            nn.ReLU(inplace=True),
            conv3x3(w0 // 2, w0 // 2),
            norm_layer(norm, w0 // 2),
            nn.ReLU(inplace=True),
            conv3x3(w0 // 2, w0),
            norm_layer(norm, w0),
            nn.ReLU(inplace=True),
        )
        self.stage1 = nn.Sequential(*[BasicBlock(w0, w0, 1, 1, norm) for _ in range(blocks)])
        self.stage2 = nn.Sequential(
            BasicBlock(w0, w1, 2, 1, norm), *[BasicBlock(w1, w1, 1, 1, norm) for _ in range(blocks - 1)]
        )
        self.stage3 = nn.Sequential(
            BasicBlock(w1, w2, 1, 2, norm), *[BasicBlock(w2, w2, 1, 2, norm) for _ in range(blocks - 1)]
        )
        self.out_channels = w2

    def forward(self, x: Tensor) -> Tensor:
        return self.stage3(self.stage2(self.stage1(self.stem(x))))


def dilated_resnet50() -> tuple[nn.Module, int]:
    """torchvision ResNet-50 with a ResNet-D deep stem and layer3/layer4 dilated 2/4 (output stride 8)."""
    from torchvision.models import resnet50

    net = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    stem = nn.Sequential(
        conv3x3(3, 32, stride=2),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        conv3x3(32, 32),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        conv3x3(32, 64),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        net.maxpool,
    )
    return nn.Sequential(stem, net.layer1, net.layer2, net.layer3, net.layer4), 2048


class DenseHead(nn.Module):
    """Per-pixel head: 3×3 conv + norm + ReLU + 1×1 conv, upsampled to the input size."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_channels
        self.body = nn.Sequential(
            conv3x3(in_channels, hidden),
            norm_layer(norm, hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1),
        )

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.body(features), size=size, mode="bilinear", align_corners=False)


class ASPPHead(nn.Module):
    """DeepLabV3 head (torchvision's ASPP, rates 12/24/36) for the paper preset."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead

        self.body = DeepLabHead(in_channels, out_channels, atrous_rates=(12, 24, 36))

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.body(features), size=size, mode="bilinear", align_corners=False)


def global_pool(features: Tensor) -> Tensor:
    """Global max pooling (B, C, H, W) -> (B, C), the image heads' pooling.

    Max, not average: image-level attributes are mostly local evidence (glasses, a smile, a hat), and
    after norm + ReLU the spatial mean of a channel is nearly the same for every image, so an
    average-pooled head of the small presets stayed at the majority class for such attributes.
    """
    return features.amax(dim=(2, 3))


class ImageHead(nn.Module):
    """Image-level head: 3×3 conv + norm + ReLU, global max pool, two-layer MLP."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_channels
        self.conv = nn.Sequential(conv3x3(in_channels, hidden), norm_layer(norm, hidden), nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels))

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return self.mlp(global_pool(self.conv(features)))


@dataclass(frozen=True)
class ArchSpec:
    """What network a preset builds."""

    backbone: Literal["small", "resnet50"]
    widths: tuple[int, int, int] = (16, 32, 64)
    blocks: int = 1
    norm: Norm = "group"
    head_hidden: int | None = None


class MultiTaskNet(nn.Module):
    """Shared backbone + ``heads[task]``; ``forward(x, tasks)`` returns ``{task: raw output}``."""

    def __init__(self, arch: ArchSpec, tasks: Sequence[TaskSpec]) -> None:
        super().__init__()
        self.arch = arch
        if arch.backbone == "resnet50":
            self.backbone, self.feature_channels = dilated_resnet50()
        else:
            self.backbone = SmallResNet(arch.widths, arch.blocks, arch.norm)
            self.feature_channels = self.backbone.out_channels
        self.heads = nn.ModuleDict()
        for task in tasks:
            self.add_head(task)

    def make_head(self, task: TaskSpec) -> nn.Module:
        """A fresh head of the shape ``task.kind.head`` names, ``task.out_channels`` wide (ASPP: dense on ResNet-50)."""
        if task.kind.head == "image":
            return ImageHead(
                self.feature_channels,
                task.out_channels,
                self.arch.norm,
                self.arch.head_hidden or min(self.feature_channels, 256),
            )
        if self.arch.backbone == "resnet50":
            return ASPPHead(self.feature_channels, task.out_channels)
        return DenseHead(self.feature_channels, task.out_channels, self.arch.norm, self.arch.head_hidden)

    def add_head(self, task: TaskSpec) -> None:
        """Attach a freshly initialised head for ``task`` (replacing any existing one)."""
        self.heads[task.name] = self.make_head(task)

    def forward(self, images: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        features = self.backbone(images)
        size = (images.shape[-2], images.shape[-1])
        return {task: self.heads[task](features, size) for task in tasks}


def init_seeded(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``module`` deterministically from ``seed`` (independent of global RNG use so far)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    for sub in module.modules():
        if hasattr(sub, "reset_parameters") and sub is not module:
            sub.reset_parameters()
    torch.random.set_rng_state(generator_state)
    return module
