"""The compact network: plain conv/BN modules with the removed channels physically gone.

Everything is built from a JSON-able config (see `mtbench.export.io.save_compact`), so a saved
network is rebuilt without pickle.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.models import global_pool

FORMAT = "mtbench-compact"
FORMAT_VERSION = 2  # 2: image heads pool by max (1: by mean)


def _conv_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class ConvBN(nn.Module):
    """``relu?(bn?(conv(x)))`` from a config (zero input or output channels allowed)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.relu = bool(cfg["relu"])
        self.conv: nn.Conv2d | None = None
        self.bn: nn.BatchNorm2d | None = None
        if cfg["out"] > 0:
            with warnings.catch_warnings():  # zero input channels: "initializing zero-element tensors"
                warnings.simplefilter("ignore")
                self.conv = nn.Conv2d(
                    cfg["in"],
                    cfg["out"],
                    cfg["kernel"],
                    cfg["stride"],
                    cfg["padding"],
                    cfg["dilation"],
                    bias=cfg["bias"],
                )
            if cfg["bn"]:
                self.bn = nn.BatchNorm2d(cfg["out"], eps=cfg["eps"])

    def forward(self, x: Tensor) -> Tensor:
        c = self.cfg
        if self.conv is None or c["in"] == 0:  # empty output, or no input: torch's conv2d mishandles both
            h, w = (_conv_size(s, c["kernel"], c["stride"], c["padding"], c["dilation"]) for s in x.shape[-2:])
            y = x.new_zeros(x.shape[0], c["out"], h, w)
            if self.conv is None:
                return y
            if self.conv.bias is not None:
                y = y + self.conv.bias.view(1, -1, 1, 1)
        else:
            y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        return F.relu(y) if self.relu else y


class MaxPool(nn.Module):
    """``max_pool2d`` from a config (zero channels allowed)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, x: Tensor) -> Tensor:
        c = self.cfg
        if x.shape[1] == 0:  # max_pool2d rejects empty channel dims
            return F.max_pool2d(
                x.new_zeros(x.shape[0], 1, *x.shape[-2:]),
                c["kernel"],
                c["stride"],
                c["padding"],
                c["dilation"],
                c["ceil_mode"],
            )[:, :0]
        return F.max_pool2d(x, c["kernel"], c["stride"], c["padding"], c["dilation"], c["ceil_mode"])


class _Indexed(nn.Module):
    """Module whose index buffers come from its config (registered after the weights are allocated)."""

    index_names: tuple[str, ...] = ()

    def attach_indices(self) -> None:
        for name in self.index_names:
            values = self.cfg[name]
            tensor = None if values is None else torch.tensor(values, dtype=torch.long)
            self.register_buffer(name, tensor, persistent=False)


class CompactBlock(_Indexed):
    """``relu(scatter(branch(x)) + scatter(shortcut(x)) + add_bias)`` on the kept output channels.

    ``branch_index``/``shortcut_index``: positions of the branch/shortcut channels among the block's
    output channels (None: all, in order: a plain add). ``shortcut_gather``: for an identity
    shortcut, the positions of the passed-through channels among the input channels (None: all).
    """

    index_names = ("branch_index", "shortcut_gather", "shortcut_index")

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.out = cfg["out"]
        self.stride = cfg["stride"]
        self.branch = nn.ModuleList(ConvBN(c) for c in cfg["branch"])
        shortcut = cfg["shortcut"]
        self.identity = shortcut == "identity"
        self.shortcut = ConvBN(shortcut) if isinstance(shortcut, dict) else None
        if cfg["add_bias"]:
            self.register_buffer("add_bias", torch.zeros(self.out))
        else:
            self.add_bias = None

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        shape = (n, self.out, (h - 1) // self.stride + 1, (w - 1) // self.stride + 1)
        out: Tensor | None = None
        if len(self.branch):
            y = x
            for conv in self.branch:
                y = conv(y)
            out = y if self.branch_index is None else x.new_zeros(shape).index_copy(1, self.branch_index, y)
        s: Tensor | None = None
        if self.shortcut is not None:
            s = self.shortcut(x)
        elif self.identity:
            s = x if self.shortcut_gather is None else x.index_select(1, self.shortcut_gather)
        if s is not None:
            if self.shortcut_index is None:
                out = s if out is None else out + s
            else:
                out = (x.new_zeros(shape) if out is None else out).index_add(1, self.shortcut_index, s)
        if out is None:
            out = x.new_zeros(shape)
        if self.add_bias is not None:
            out = out + self.add_bias.view(1, -1, 1, 1)
        return F.relu(out)


def _interpolate(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class CompactDenseHead(nn.Module):
    """Dense head: 3×3 conv+BN+ReLU → 1×1 conv, upsampled to the image size."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.conv = ConvBN(cfg["conv"])
        self.out = nn.Conv2d(cfg["hidden"], cfg["out"], 1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return _interpolate(self.out(self.conv(features)), size)


class CompactImageHead(nn.Module):
    """Image-level head: 3×3 conv+BN+ReLU → global pool → MLP."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.conv = ConvBN(cfg["conv"])
        hidden = cfg["hidden"]
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, cfg["out"]))

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return self.mlp(global_pool(self.conv(features)))


class CompactASPPHead(nn.Module):
    """DeepLabV3 head: ASPP branches (1×1, three dilated 3×3, image pooling) → project → 3×3 → 1×1."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(ConvBN(c) for c in cfg["branches"])
        self.pool = ConvBN(cfg["pool"])
        self.project = ConvBN(cfg["project"])
        self.conv = ConvBN(cfg["conv"])
        self.out = nn.Conv2d(cfg["channels"], cfg["out"], 1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        parts = [branch(features) for branch in self.branches]
        parts.append(_interpolate(self.pool(F.adaptive_avg_pool2d(features, 1)), features.shape[-2:]))
        y = self.project(torch.cat(parts, dim=1))  # (the source's Dropout is the identity in eval)
        return _interpolate(self.out(self.conv(y)), size)


_HEADS = {"dense": CompactDenseHead, "image": CompactImageHead, "aspp": CompactASPPHead}


class CompactNet(nn.Module):
    """The compacted multi-task network; ``forward(images, tasks) -> {task: output}``.

    ``CompactNet(config)`` only allocates (uninitialised) tensors; build one with `compact` or
    `load_compact`. ``config`` is the JSON-able architecture (see `save_compact`).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} v{FORMAT_VERSION} config")
        self.config = config
        with torch.device("meta"):
            units: list[nn.Module] = []
            for cfg in config["backbone"]:
                kind = cfg["type"]
                units.append(
                    ConvBN(cfg) if kind == "conv" else MaxPool(cfg) if kind == "maxpool" else CompactBlock(cfg)
                )
            self.backbone = nn.Sequential(*units)
            self.heads = nn.ModuleDict({task: _HEADS[cfg["kind"]](cfg) for task, cfg in config["heads"].items()})
        self.to_empty(device="cpu")
        for module in self.modules():
            if isinstance(module, _Indexed):
                module.attach_indices()
        index = config["input_index"]
        self.register_buffer(
            "input_index", None if index is None else torch.tensor(index, dtype=torch.long), persistent=False
        )

    def forward(self, images: Tensor, tasks: Sequence[str]) -> dict[str, Tensor]:
        x = images if self.input_index is None else images.index_select(1, self.input_index)
        features = self.backbone(x)
        size = (images.shape[-2], images.shape[-1])
        return {task: self.heads[task](features, size) for task in tasks}
