"""Compact export: physically remove the channels that structured sparsity made unused.

``compact(model)`` turns a `MultiTaskNet` (in eval semantics: BatchNorm uses its running statistics)
into a `CompactNet` built from plain ``nn.Conv2d``/``nn.BatchNorm2d`` (``fold_bn=False``, default) or
``nn.Conv2d`` with the BatchNorm folded into weight and bias (``fold_bn=True``; fewer kernels, faster
inference, parameter count no longer comparable one to one). Outputs of every head are the same up to
float32 rounding. ``save_compact``/``load_compact`` store it as safetensors + a JSON architecture
config (no pickle anywhere); ``count_params``, ``count_flops`` and ``latency`` measure any of the two.

How channels are removed (the analysis works on the channel dependency graph of our backbones: the
``SmallResNet`` and the dilated ResNet-50 — a chain of conv+BN(+ReLU) units, max-pools and residual
blocks (``BasicBlock``, torchvision ``Bottleneck``) — and the ``DenseHead``/``ImageHead``/``ASPPHead``):

1. **Constants, forward.** Every channel of every tensor is either varying or a known constant. A
   conv output is constant when its filter is zero on every varying input (e.g. a whole zero filter
   ``W[o]``, or γ = 0): it is then ``BN(bias)`` (after ReLU where there is one). Constant inputs with
   a non-zero value only keep the output constant through an unpadded (1×1) conv: zero padding
   makes a padded conv of a constant vary near the borders. Max-pool keeps constants; a residual
   add of two constants is a constant.
2. **Liveness, backward.** Starting from the heads (a head's first convs read every feature channel
   with a non-zero input group), a conv reads input ``c`` when ``W[kept outputs, c]`` is non-zero,
   except when ``c`` is a constant it can *fold*: any constant into an unpadded conv (added to the
   conv bias / subtracted from the next BN's running mean, exact), and the constant 0 into any conv
   (contributes nothing, even at padded borders). A non-zero constant into a padded 3×3 conv
   **cannot** be folded exactly at the borders, so that channel is kept (its producer keeps its
   all-zero filter and BN). A produced channel is kept when at least one consumer reads it; a
   consumer that ignores a kept channel gets a zero weight column for it (no gather).
3. **Residual blocks.** The block output channel set ``Y`` is what the next block's ``conv1`` and
   projection (or identity), or every head's first conv, read. Branch (``conv2``/``conv3``) and
   projection compute only the varying channels of ``Y`` they contribute to; a constant branch or
   shortcut channel is folded into the *other* side's BN shift, or (identity shortcut) into an
   explicit per-channel ``add_bias`` buffer. The identity shortcut reads ``X[c]`` only for varying
   ``c`` in ``Y``, so the block input ``X`` keeps (``conv1`` reads) ∪ (shortcut reads). When
   branch, shortcut and output keep the same channels the add is a plain add; otherwise the cheapest
   exact option is used: ``index_copy`` of the branch into the output positions and ``index_add`` of
   the (``index_select``-gathered, for identity) shortcut — only the kept union is materialised.
4. **Heads** are not sparsified: their structure and hidden widths stay, only their first convs
   (DenseHead/ImageHead 3×3; the five ASPP branch convs, the pooling branch's 1×1 included) lose
   the input columns of removed feature channels. Image channels the stem never reads are dropped
   by an ``input_index`` gather.

Channels that cannot be removed: a non-zero constant read by a padded conv (border effect, see 2);
any channel read by a non-zero group of some consumer (even if other consumers ignore it); and the
heads' own channels (not sparsified). Only BatchNorm networks can be compacted (GroupNorm mixes
channels, so removing one changes the others).
"""

from __future__ import annotations

import json
import statistics
import struct
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtbench.models import ASPPHead, BasicBlock, DenseHead, ImageHead, SmallResNet, global_pool

FORMAT = "mtbench-compact"
FORMAT_VERSION = 2  # 2: image heads pool by max (1: by mean)

# --------------------------------------------------------------------------------------------------
# Analysis: an explicit graph of the source network (units, blocks, heads) with channel masks.
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Conv:
    """conv + BN (+ ReLU) of the source model, with the masks the analysis finds for it."""

    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    relu: bool
    const_in: Tensor | None = None  # float64 per input channel, NaN = varying
    const_out: Tensor | None = None  # value after BN (+ReLU) per output channel, NaN = varying
    keep_out: Tensor | None = None  # outputs the compact conv computes
    reads: Tensor | None = None  # inputs whose weight column stays (non-zero)
    fold: Tensor | None = None  # constant inputs folded into the bias / running mean
    extra: Tensor | None = None  # constant added after BN (a residual add's other, constant side)

    def __post_init__(self) -> None:
        conv = self.conv
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"compact export supports plain zero-padded convs, got {conv}")
        if (
            len({*conv.kernel_size}) != 1
            or len({*conv.stride}) != 1
            or len({*conv.padding}) != 1
            or len({*conv.dilation}) != 1
        ):
            raise ValueError(f"compact export supports square convs only, got {conv}")
        if self.bn is not None and not isinstance(self.bn, nn.BatchNorm2d):
            raise ValueError(f"compact export needs BatchNorm (GroupNorm mixes channels), got {self.bn}")
        self.weight = conv.weight.detach().cpu()
        self.nonzero = self.weight.flatten(2).ne(0).any(2)  # (out, in): W[o, c] ≠ 0
        self.padded = conv.padding[0] != 0
        self.extra = torch.zeros(conv.out_channels, dtype=torch.float64)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def affine(self) -> tuple[Tensor, Tensor]:
        """Per-output ``scale``, ``shift`` with ``BN(conv(x)) = scale·(W∗x) + shift`` (eval mode)."""
        n = self.out_channels
        bias = self.conv.bias.detach().cpu().double() if self.conv.bias is not None else torch.zeros(n).double()
        if self.bn is None:
            return torch.ones(n, dtype=torch.float64), bias
        bn = self.bn
        gamma = bn.weight.detach().cpu().double() if bn.weight is not None else torch.ones(n).double()
        beta = bn.bias.detach().cpu().double() if bn.bias is not None else torch.zeros(n).double()
        scale = gamma / torch.sqrt(bn.running_var.detach().cpu().double() + bn.eps)
        return scale, beta + scale * (bias - bn.running_mean.detach().cpu().double())

    def propagate(self, const_in: Tensor) -> Tensor:
        """Forward constant propagation; returns the constants of the outputs."""
        self.const_in = const_in
        varying_in = const_in.isnan()
        value = const_in.nan_to_num(0.0)
        varying = (self.nonzero & varying_in).any(1)
        pre = torch.zeros(self.out_channels, dtype=torch.float64)
        if self.padded:  # a non-zero constant through zero padding varies near the borders
            varying |= (self.nonzero & (value != 0)).any(1)
        elif (value != 0).any():
            pre = self.constant_sum(value)
        scale, shift = self.affine()
        out = scale * pre + shift
        if self.relu:
            out = out.clamp_min(0.0)
        self.const_out = torch.where(varying, torch.full_like(out, float("nan")), out)
        return self.const_out

    def constant_sum(self, value: Tensor, rows: Tensor | None = None) -> Tensor:
        """``Σ_c value_c · Σ_xy W[o, c]`` (float64): constant inputs through an unpadded conv."""
        columns = value.nonzero().flatten()
        weight = self.weight if rows is None else self.weight.index_select(0, rows)
        return (weight.index_select(1, columns).double().sum((2, 3)) * value[columns]).sum(1)

    def backward(self, keep_out: Tensor) -> Tensor:
        """Liveness: given the outputs to compute, which inputs this conv reads."""
        assert self.const_in is not None
        self.keep_out = keep_out
        used = self.nonzero[keep_out].any(0)
        constant = ~self.const_in.isnan()
        foldable = constant & ((self.const_in == 0) | (not self.padded))
        self.fold = used & foldable
        self.reads = used & ~foldable
        return self.reads


@dataclass(eq=False)
class _Pool:
    pool: nn.MaxPool2d


@dataclass(eq=False)
class _Block:
    """Residual block: ``relu(branch(x) + shortcut(x))``; ``shortcut`` None is the identity."""

    branch: list[_Conv]
    shortcut: _Conv | None
    stride: int
    const_in: Tensor | None = None
    keep_in: Tensor | None = None
    keep_out: Tensor | None = None
    shortcut_reads: Tensor | None = None  # identity: input channels passed through
    add_const: Tensor | None = None  # constants left for the explicit add bias

    def propagate(self, const_in: Tensor) -> Tensor:
        self.const_in = const_in
        branch = const_in
        for node in self.branch:
            branch = node.propagate(branch)
        shortcut = self.shortcut.propagate(const_in) if self.shortcut is not None else const_in
        return (branch + shortcut).clamp_min(0.0)  # NaN (varying) wins

    def backward(self, keep_out: Tensor) -> Tensor:
        self.keep_out = keep_out
        branch_const = self.branch[-1].const_out
        need = keep_out & branch_const.isnan()
        for node in reversed(self.branch):
            need = node.backward(need)
        reads = need
        if self.shortcut is not None:
            shortcut_const = self.shortcut.const_out
            reads = reads | self.shortcut.backward(keep_out & shortcut_const.isnan())
        else:
            shortcut_const = self.const_in
            self.shortcut_reads = keep_out & shortcut_const.isnan()
            reads = reads | self.shortcut_reads
        # constant sides of the add: fold into the other side's BN shift, else into add_bias
        total = torch.where(
            keep_out, branch_const.nan_to_num(0.0) + shortcut_const.nan_to_num(0.0), torch.zeros_like(branch_const)
        )
        last = self.branch[-1]
        into_branch = last.keep_out
        last.extra = torch.where(into_branch, total, torch.zeros_like(total))
        left = torch.where(into_branch, torch.zeros_like(total), total)
        if self.shortcut is not None:
            into_shortcut = self.shortcut.keep_out
            self.shortcut.extra = torch.where(into_shortcut, left, torch.zeros_like(left))
            left = torch.where(into_shortcut, torch.zeros_like(left), left)
        self.add_const = left
        self.keep_in = reads
        return reads


@dataclass(eq=False)
class _Head:
    task: str
    kind: str  # dense | image | aspp
    module: nn.Module
    consumers: list[_Conv] = field(default_factory=list)  # convs that read the backbone features


def _flatten(modules: Iterable[nn.Module]) -> list[nn.Module]:
    flat: list[nn.Module] = []
    for module in modules:
        if type(module) is nn.Sequential:
            flat.extend(_flatten(module))
        else:
            flat.append(module)
    return flat


def _same(conv: nn.Conv2d) -> bool:
    return 2 * conv.padding[0] == conv.dilation[0] * (conv.kernel_size[0] - 1)


def _block(branch: list[_Conv], shortcut: _Conv | None) -> _Block:
    convs = branch + ([shortcut] if shortcut is not None else [])
    if not all(_same(node.conv) for node in convs):
        raise ValueError("residual blocks must use 'same'-padded convs")
    stride = 1
    for node in branch:
        stride *= node.conv.stride[0]
    return _Block(branch, shortcut, stride)


def _parse_backbone(backbone: nn.Module) -> list[_Conv | _Pool | _Block]:
    """The backbone as a chain of units (SmallResNet, or an nn.Sequential such as the ResNet-50)."""
    from torchvision.models.resnet import Bottleneck

    if isinstance(backbone, SmallResNet):
        modules = [backbone.stem, backbone.stage1, backbone.stage2, backbone.stage3]
    elif isinstance(backbone, nn.Sequential):
        modules = list(backbone)
    else:
        raise TypeError(f"compact export does not know backbone {type(backbone).__name__}")
    flat = _flatten(modules)
    units: list[_Conv | _Pool | _Block] = []
    i = 0
    while i < len(flat):
        module = flat[i]
        if isinstance(module, nn.Conv2d):
            if i + 1 >= len(flat) or not isinstance(flat[i + 1], nn.BatchNorm2d):
                raise ValueError("every backbone conv must be followed by BatchNorm2d")
            relu = i + 2 < len(flat) and isinstance(flat[i + 2], nn.ReLU)
            units.append(_Conv(module, flat[i + 1], relu))
            i += 3 if relu else 2
            continue
        if isinstance(module, nn.MaxPool2d):
            units.append(_Pool(module))
        elif isinstance(module, BasicBlock):
            shortcut = None if module.project is None else _Conv(module.project[0], module.project[1], False)
            units.append(
                _block([_Conv(module.conv1, module.norm1, True), _Conv(module.conv2, module.norm2, False)], shortcut)
            )
        elif isinstance(module, Bottleneck):
            shortcut = None if module.downsample is None else _Conv(module.downsample[0], module.downsample[1], False)
            units.append(
                _block(
                    [
                        _Conv(module.conv1, module.bn1, True),
                        _Conv(module.conv2, module.bn2, True),
                        _Conv(module.conv3, module.bn3, False),
                    ],
                    shortcut,
                )
            )
        elif not isinstance(module, nn.Identity):
            raise TypeError(f"compact export does not know backbone layer {type(module).__name__}")
        i += 1
    return units


def _parse_head(task: str, head: nn.Module) -> _Head:
    if isinstance(head, DenseHead):
        conv, norm, _, _ = head.body
        return _Head(task, "dense", head, [_Conv(conv, norm, True)])
    if isinstance(head, ImageHead):
        return _Head(task, "image", head, [_Conv(head.conv[0], head.conv[1], True)])
    if isinstance(head, ASPPHead):
        aspp = head.body[0]
        consumers = [_Conv(branch[0], branch[1], True) for branch in aspp.convs[:-1]]
        pooling = aspp.convs[-1]
        consumers.append(_Conv(pooling[1], pooling[2], True))  # reads avg-pooled features: same constants
        return _Head(task, "aspp", head, consumers)
    raise TypeError(f"compact export does not know head {type(head).__name__}")


# --------------------------------------------------------------------------------------------------
# The compact network, built from a JSON-able config.
# --------------------------------------------------------------------------------------------------


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
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.conv = ConvBN(cfg["conv"])
        self.out = nn.Conv2d(cfg["hidden"], cfg["out"], 1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return _interpolate(self.out(self.conv(features)), size)


class CompactImageHead(nn.Module):
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


# --------------------------------------------------------------------------------------------------
# compact(): analysis → config → tensors.
# --------------------------------------------------------------------------------------------------


def _positions(subset: Tensor, within: Tensor) -> list[int]:
    """Positions, among the True entries of ``within``, of the True entries of ``subset`` (⊆ within)."""
    assert not (subset & ~within).any()
    return subset[within].nonzero().flatten().tolist()


def _indices(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def _conv_config(node: _Conv, space_in: Tensor, fold_bn: bool) -> dict[str, Any]:
    conv = node.conv
    return {
        "type": "conv",
        "in": int(space_in.sum()),
        "out": int(node.keep_out.sum()),
        "kernel": conv.kernel_size[0],
        "stride": conv.stride[0],
        "padding": conv.padding[0],
        "dilation": conv.dilation[0],
        "bias": fold_bn or conv.bias is not None,
        "bn": node.bn is not None and not fold_bn,
        "eps": node.bn.eps if node.bn is not None else 0.0,
        "relu": node.relu,
        "channels": _indices(node.keep_out),
    }


def _conv_tensors(node: _Conv, space_in: Tensor, fold_bn: bool, dtype: torch.dtype) -> dict[str, Tensor]:
    """Weights of the compact conv (+BN): kept rows/columns, unread columns zeroed, constants folded."""
    keep = node.keep_out
    if not keep.any():
        return {}
    rows, columns = keep.nonzero().flatten(), space_in.nonzero().flatten()
    weight = node.weight.index_select(0, rows).index_select(1, columns)  # a copy
    unread = ~node.reads[space_in]
    if unread.any():
        weight[:, unread] = 0.0
    folded = torch.where(node.fold, node.const_in, torch.zeros_like(node.const_in))
    delta = node.constant_sum(folded, rows)  # constant inputs' contribution (unpadded convs)
    extra = node.extra[keep]
    if fold_bn:
        scale, shift = node.affine()
        return {
            "conv.weight": (weight * scale[keep].to(weight.dtype).view(-1, 1, 1, 1)).to(dtype),
            "conv.bias": (shift[keep] + scale[keep] * delta + extra).to(dtype),
        }
    out = {"conv.weight": weight.to(dtype)}
    n = int(keep.sum())
    if node.conv.bias is not None:
        out["conv.bias"] = (node.conv.bias.detach().cpu().double()[keep] + delta).to(dtype)
        delta = torch.zeros_like(delta)
    if node.bn is None:
        if delta.any() or extra.any():
            raise ValueError("cannot fold a constant into a conv without bias or BatchNorm")
        return out
    bn = node.bn
    gamma = bn.weight.detach().cpu().double()[keep] if bn.weight is not None else torch.ones(n).double()
    beta = bn.bias.detach().cpu().double()[keep] if bn.bias is not None else torch.zeros(n).double()
    out.update(
        {
            "bn.weight": gamma.to(dtype),
            "bn.bias": (beta + extra).to(dtype),
            "bn.running_mean": (bn.running_mean.detach().cpu().double()[keep] - delta).to(dtype),
            "bn.running_var": bn.running_var.detach().cpu()[keep].to(dtype),
            "bn.num_batches_tracked": bn.num_batches_tracked.detach().cpu().clone(),
        }
    )
    return out


def _plain(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu: bool) -> _Conv:
    """A conv copied as is (inside a head): every channel kept, nothing folded."""
    node = _Conv(conv, bn, relu)
    node.propagate(torch.full((conv.in_channels,), float("nan"), dtype=torch.float64))
    node.backward(torch.ones(conv.out_channels, dtype=torch.bool))
    node.reads = torch.ones(conv.in_channels, dtype=torch.bool)
    return node


def _put(state: dict[str, Tensor], prefix: str, tensors: dict[str, Tensor]) -> None:
    for name, tensor in tensors.items():
        state[f"{prefix}.{name}"] = tensor


def _copy(module: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    return {name: t.detach().cpu().to(dtype) for name, t in module.state_dict().items()}


def _head_parts(head: _Head, space: Tensor, fold_bn: bool, dtype: torch.dtype) -> tuple[dict, dict[str, Tensor]]:
    """Config and tensors of a compact head (its first convs read the kept feature channels)."""
    state: dict[str, Tensor] = {}
    module = head.module
    if head.kind in ("dense", "image"):
        first = head.consumers[0]
        cfg = {"kind": head.kind, "conv": _conv_config(first, space, fold_bn), "hidden": first.out_channels}
        _put(state, "conv", _conv_tensors(first, space, fold_bn, dtype))
        if head.kind == "dense":
            last = module.body[3]
            cfg["out"] = last.out_channels
            _put(state, "out", _copy(last, dtype))
        else:
            cfg["out"] = module.mlp[2].out_features
            _put(state, "mlp", _copy(module.mlp, dtype))
        return cfg, state
    aspp, conv, bn, _, last = module.body
    project = _plain(aspp.project[0], aspp.project[1], True)
    tail = _plain(conv, bn, True)
    branches = head.consumers[:-1]
    cfg = {
        "kind": "aspp",
        "channels": tail.out_channels,
        "out": last.out_channels,
        "branches": [_conv_config(node, space, fold_bn) for node in branches],
        "pool": _conv_config(head.consumers[-1], space, fold_bn),
        "project": _conv_config(project, project.reads, fold_bn),
        "conv": _conv_config(tail, tail.reads, fold_bn),
    }
    for i, node in enumerate(branches):
        _put(state, f"branches.{i}", _conv_tensors(node, space, fold_bn, dtype))
    _put(state, "pool", _conv_tensors(head.consumers[-1], space, fold_bn, dtype))
    _put(state, "project", _conv_tensors(project, project.reads, fold_bn, dtype))
    _put(state, "conv", _conv_tensors(tail, tail.reads, fold_bn, dtype))
    _put(state, "out", _copy(last, dtype))
    return cfg, state


def _jsonable(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


@torch.no_grad()
def compact(model: nn.Module, fold_bn: bool = False) -> CompactNet:
    """Rebuild ``model`` (a `MultiTaskNet`, BatchNorm in eval semantics) without its removable channels.

    ``fold_bn=True`` folds every BatchNorm into the preceding conv (weight·γ/σ, bias β − μγ/σ).
    The result is in eval mode, on the model's device.
    """
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    units = _parse_backbone(model.backbone)
    heads = [_parse_head(task, head) for task, head in model.heads.items()]
    first = next((u for u in units if isinstance(u, (_Conv, _Block))), None)
    if not isinstance(first, _Conv):
        raise ValueError("the backbone must start with a conv")
    # 1. constants, forward
    const = torch.full((first.conv.in_channels,), float("nan"), dtype=torch.float64)
    for unit in units:
        if not isinstance(unit, _Pool):
            const = unit.propagate(const)
    # 2. liveness, backward (from the heads)
    keep = torch.zeros(const.numel(), dtype=torch.bool)
    for head in heads:
        for node in head.consumers:
            node.propagate(const)
            keep |= node.backward(torch.ones(node.out_channels, dtype=torch.bool))
    feature_keep = keep
    keeps_out: list[Tensor] = []
    for unit in reversed(units):
        keeps_out.append(keep)
        if isinstance(unit, (_Conv, _Block)):
            keep = unit.backward(keep)
    keeps_out.reverse()
    image_keep = keep
    # 3. config + tensors
    state: dict[str, Tensor] = {}
    backbone_cfg: list[dict[str, Any]] = []
    space = image_keep
    for i, (unit, keep_out) in enumerate(zip(units, keeps_out, strict=True)):
        prefix = f"backbone.{i}"
        if isinstance(unit, _Pool):
            pool = unit.pool
            pair = lambda v: v if isinstance(v, int) else v[0]  # noqa: E731
            backbone_cfg.append(
                {
                    "type": "maxpool",
                    "kernel": pair(pool.kernel_size),
                    "stride": pair(pool.stride),
                    "padding": pair(pool.padding),
                    "dilation": pair(pool.dilation),
                    "ceil_mode": pool.ceil_mode,
                    "channels": _indices(keep_out),
                }
            )
        elif isinstance(unit, _Conv):
            backbone_cfg.append(_conv_config(unit, space, fold_bn))
            _put(state, prefix, _conv_tensors(unit, space, fold_bn, dtype))
        else:
            backbone_cfg.append(_block_config(unit, space, fold_bn, dtype, prefix, state))
        space = keep_out
    head_cfg: dict[str, Any] = {}
    for head in heads:
        head_cfg[head.task], head_state = _head_parts(head, feature_keep, fold_bn, dtype)
        _put(state, f"heads.{head.task}", head_state)
    in_channels = first.conv.in_channels
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "fold_bn": fold_bn,
        "dtype": str(dtype).replace("torch.", ""),
        "input_channels": in_channels,
        "input_index": None if bool(image_keep.all()) else _indices(image_keep),
        "feature_channels": int(feature_keep.sum()),
        "feature_index": _indices(feature_keep),
        "backbone": backbone_cfg,
        "heads": head_cfg,
        "source": {"arch": _jsonable(getattr(model, "arch", None)), "heads": {head.task: head.kind for head in heads}},
    }
    net = CompactNet(config)
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def _block_config(
    block: _Block, space: Tensor, fold_bn: bool, dtype: torch.dtype, prefix: str, state: dict[str, Tensor]
) -> dict[str, Any]:
    keep_out = block.keep_out
    last = block.branch[-1]
    cfg: dict[str, Any] = {
        "type": "block",
        "in": int(space.sum()),
        "out": int(keep_out.sum()),
        "stride": block.stride,
        "channels": _indices(keep_out),
        "branch": [],
    }
    if last.keep_out.any():
        branch_space = space
        for j, node in enumerate(block.branch):
            cfg["branch"].append(_conv_config(node, branch_space, fold_bn))
            _put(state, f"{prefix}.branch.{j}", _conv_tensors(node, branch_space, fold_bn, dtype))
            branch_space = node.keep_out
    full = lambda subset, within: None if torch.equal(subset, within) else _positions(subset, within)  # noqa: E731
    cfg["branch_index"] = full(last.keep_out, keep_out) if cfg["branch"] else None
    cfg["shortcut"], cfg["shortcut_gather"], cfg["shortcut_index"] = None, None, None
    if block.shortcut is not None and block.shortcut.keep_out.any():
        cfg["shortcut"] = _conv_config(block.shortcut, space, fold_bn)
        _put(state, f"{prefix}.shortcut", _conv_tensors(block.shortcut, space, fold_bn, dtype))
        cfg["shortcut_index"] = full(block.shortcut.keep_out, keep_out)
    elif block.shortcut is None and block.shortcut_reads.any():
        cfg["shortcut"] = "identity"
        cfg["shortcut_gather"] = full(block.shortcut_reads, space)
        cfg["shortcut_index"] = full(block.shortcut_reads, keep_out)
    add_bias = block.add_const[keep_out]
    cfg["add_bias"] = bool(add_bias.any())
    if cfg["add_bias"]:
        state[f"{prefix}.add_bias"] = add_bias.to(dtype)
    return cfg


# --------------------------------------------------------------------------------------------------
# Save / load: safetensors (the package when installed, else the same format written here) + JSON.
# --------------------------------------------------------------------------------------------------

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FROM_NAME = {name: dtype for dtype, name in _DTYPES.items()}


def write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write the safetensors format: u64 header length, JSON header, raw little-endian tensor bytes."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        pass
    else:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata)
        return
    if sys.byteorder != "little":
        raise RuntimeError("safetensors fallback writer needs a little-endian host")
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        for data in blobs:
            handle.write(data)


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Read a safetensors file into CPU tensors (no pickle)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        pass
    else:
        return load_file(str(path))
    if sys.byteorder != "little":
        raise RuntimeError("safetensors fallback reader needs a little-endian host")
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _FROM_NAME[info["dtype"]]
        begin, end = info["data_offsets"]
        if end > begin:
            tensor = torch.frombuffer(bytearray(data[base + begin : base + end]), dtype=dtype)
        else:
            tensor = torch.empty(0, dtype=dtype)
        tensors[name] = tensor.reshape(info["shape"])
    return tensors


def _json_path(path: Path) -> Path:
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(f"{path}: the weights file must not end in .json (the config goes there)")
    return path.with_suffix(".json")


def _dump(value: Any, indent: str = "") -> str:
    """Indented JSON, but lists of numbers on one line (the channel index lists stay short)."""
    if isinstance(value, dict) and value:
        inner = indent + " "
        items = ",\n".join(f"{inner}{json.dumps(k)}: {_dump(v, inner)}" for k, v in value.items())
        return "{\n" + items + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + _dump(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value)


def save_compact(net: CompactNet, path: Path) -> None:
    """Write ``path`` (safetensors: every parameter and BN buffer) and ``path.with_suffix('.json')``.

    The JSON is ``net.config``: ``backbone`` (one entry per unit: ``conv`` with its in/out channel
    counts, kernel/stride/padding/dilation, bias/bn/relu flags and the kept original output channel
    ``channels``; ``maxpool``; ``block`` with its ``branch`` convs, ``shortcut`` (a conv,
    ``"identity"`` or null), the ``branch_index``/``shortcut_gather``/``shortcut_index`` lists and the
    ``add_bias`` flag), ``heads`` (task → kind ``dense``/``image``/``aspp`` and its convs),
    ``input_index``/``feature_index`` and ``source`` (the ArchSpec and head kinds).
    """
    config_path = _json_path(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(
        Path(path),
        {k: v.detach().cpu() for k, v in net.state_dict().items()},
        {"format": FORMAT, "version": str(FORMAT_VERSION)},
    )
    config_path.write_text(_dump(net.config) + "\n")


def load_compact(path: Path) -> CompactNet:
    """Rebuild a `CompactNet` from ``path`` + its ``.json`` (no pickle); eval mode, on the CPU."""
    config = json.loads(_json_path(path).read_text())
    net = CompactNet(config)
    net.load_state_dict(read_safetensors(Path(path)), strict=True)
    return net.eval()


# --------------------------------------------------------------------------------------------------
# Measurements.
# --------------------------------------------------------------------------------------------------


def count_params(module: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics not counted)."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, images: Tensor, tasks: Sequence[str]) -> int:
    """FLOPs of one eval-mode forward, by ``torch.utils.flop_counter.FlopCounterMode`` (convs, linears)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(images, tasks)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def latency(module: nn.Module, images: Tensor, tasks: Sequence[str], repeats: int = 10, warmup: int = 3) -> float:
    """Seconds per eval-mode forward: median of ``repeats`` timed runs after ``warmup`` untimed ones."""
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    was_training = module.training
    module.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                module(images, tasks)
            sync()
            for _ in range(max(1, repeats)):
                start = time.perf_counter()
                module(images, tasks)
                sync()
                times.append(time.perf_counter() - start)
    finally:
        module.train(was_training)
    return statistics.median(times)


__all__ = [
    "CompactNet",
    "compact",
    "count_flops",
    "count_params",
    "latency",
    "load_compact",
    "read_safetensors",
    "save_compact",
    "write_safetensors",
]
