"""Channel analysis: which channels of which conv a compact network can drop, and what to fold.

The analysis works on the channel dependency graph of our backbones: the ``SmallResNet`` and the
dilated ResNet-50 — a chain of conv+BN(+ReLU) units, max-pools and residual blocks (``BasicBlock``,
torchvision ``Bottleneck``) — and the ``DenseHead``/``ImageHead``/``ASPPHead``:

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

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mtbench.models import ASPPHead, BasicBlock, DenseHead, ImageHead, SmallResNet


@dataclass(eq=False)
class ConvNode:
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


def plain_node(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, relu: bool) -> ConvNode:
    """A conv copied as is (inside a head): every channel kept, nothing folded."""
    node = ConvNode(conv, bn, relu)
    node.propagate(torch.full((conv.in_channels,), float("nan"), dtype=torch.float64))
    node.backward(torch.ones(conv.out_channels, dtype=torch.bool))
    node.reads = torch.ones(conv.in_channels, dtype=torch.bool)
    return node


@dataclass(eq=False)
class PoolNode:
    """A max-pool of the backbone (keeps every channel and its constant)."""

    pool: nn.MaxPool2d


@dataclass(eq=False)
class BlockNode:
    """Residual block: ``relu(branch(x) + shortcut(x))``; ``shortcut`` None is the identity."""

    branch: list[ConvNode]
    shortcut: ConvNode | None
    stride: int
    const_in: Tensor | None = None
    keep_in: Tensor | None = None
    keep_out: Tensor | None = None
    shortcut_reads: Tensor | None = None  # identity: input channels passed through
    add_const: Tensor | None = None  # constants left for the explicit add bias

    def propagate(self, const_in: Tensor) -> Tensor:
        """Forward constant propagation through branch, shortcut and the add."""
        self.const_in = const_in
        branch = const_in
        for node in self.branch:
            branch = node.propagate(branch)
        shortcut = self.shortcut.propagate(const_in) if self.shortcut is not None else const_in
        return (branch + shortcut).clamp_min(0.0)  # NaN (varying) wins

    def backward(self, keep_out: Tensor) -> Tensor:
        """Liveness through the block; places the add's constants (other side's BN shift, or add_bias)."""
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


Unit = ConvNode | PoolNode | BlockNode


@dataclass(eq=False)
class HeadNode:
    """A task head and the convs of it that read the backbone features."""

    task: str
    kind: str  # dense | image | aspp
    module: nn.Module
    consumers: list[ConvNode] = field(default_factory=list)


@dataclass(eq=False)
class Analysis:
    """The analysed graph of a model, ready to be turned into a compact config.

    Attributes:
        units: the backbone units, in order.
        keeps_out: per unit, the output channels the compact network keeps.
        heads: the task heads.
        image_keep: the image channels the stem reads.
        feature_keep: the feature channels some head reads.
    """

    units: list[Unit]
    keeps_out: list[Tensor]
    heads: list[HeadNode]
    image_keep: Tensor
    feature_keep: Tensor


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


def _block(branch: list[ConvNode], shortcut: ConvNode | None) -> BlockNode:
    convs = branch + ([shortcut] if shortcut is not None else [])
    if not all(_same(node.conv) for node in convs):
        raise ValueError("residual blocks must use 'same'-padded convs")
    stride = 1
    for node in branch:
        stride *= node.conv.stride[0]
    return BlockNode(branch, shortcut, stride)


def parse_backbone(backbone: nn.Module) -> list[Unit]:
    """The backbone as a chain of units (SmallResNet, or an nn.Sequential such as the ResNet-50)."""
    from torchvision.models.resnet import Bottleneck

    if isinstance(backbone, SmallResNet):
        modules = [backbone.stem, backbone.stage1, backbone.stage2, backbone.stage3]
    elif isinstance(backbone, nn.Sequential):
        modules = list(backbone)
    else:
        raise TypeError(f"compact export does not know backbone {type(backbone).__name__}")
    flat = _flatten(modules)
    units: list[Unit] = []
    i = 0
    while i < len(flat):
        module = flat[i]
        if isinstance(module, nn.Conv2d):
            if i + 1 >= len(flat) or not isinstance(flat[i + 1], nn.BatchNorm2d):
                raise ValueError("every backbone conv must be followed by BatchNorm2d")
            relu = i + 2 < len(flat) and isinstance(flat[i + 2], nn.ReLU)
            units.append(ConvNode(module, flat[i + 1], relu))
            i += 3 if relu else 2
            continue
        if isinstance(module, nn.MaxPool2d):
            units.append(PoolNode(module))
        elif isinstance(module, BasicBlock):
            shortcut = None if module.project is None else ConvNode(module.project[0], module.project[1], False)
            units.append(
                _block(
                    [ConvNode(module.conv1, module.norm1, True), ConvNode(module.conv2, module.norm2, False)], shortcut
                )
            )
        elif isinstance(module, Bottleneck):
            shortcut = (
                None if module.downsample is None else ConvNode(module.downsample[0], module.downsample[1], False)
            )
            units.append(
                _block(
                    [
                        ConvNode(module.conv1, module.bn1, True),
                        ConvNode(module.conv2, module.bn2, True),
                        ConvNode(module.conv3, module.bn3, False),
                    ],
                    shortcut,
                )
            )
        elif not isinstance(module, nn.Identity):
            raise TypeError(f"compact export does not know backbone layer {type(module).__name__}")
        i += 1
    return units


def parse_head(task: str, head: nn.Module) -> HeadNode:
    """The head of ``task`` with the convs that read the backbone features."""
    if isinstance(head, DenseHead):
        conv, norm, _, _ = head.body
        return HeadNode(task, "dense", head, [ConvNode(conv, norm, True)])
    if isinstance(head, ImageHead):
        return HeadNode(task, "image", head, [ConvNode(head.conv[0], head.conv[1], True)])
    if isinstance(head, ASPPHead):
        aspp = head.body[0]
        consumers = [ConvNode(branch[0], branch[1], True) for branch in aspp.convs[:-1]]
        pooling = aspp.convs[-1]
        consumers.append(ConvNode(pooling[1], pooling[2], True))  # reads avg-pooled features: same constants
        return HeadNode(task, "aspp", head, consumers)
    raise TypeError(f"compact export does not know head {type(head).__name__}")


def analyse(model: nn.Module) -> Analysis:
    """Parse ``model`` (a `MultiTaskNet`), propagate constants forward and liveness back from the heads."""
    units = parse_backbone(model.backbone)
    heads = [parse_head(task, head) for task, head in model.heads.items()]
    first = next((u for u in units if isinstance(u, (ConvNode, BlockNode))), None)
    if not isinstance(first, ConvNode):
        raise ValueError("the backbone must start with a conv")
    const = torch.full((first.conv.in_channels,), float("nan"), dtype=torch.float64)
    for unit in units:
        if not isinstance(unit, PoolNode):
            const = unit.propagate(const)
    keep = torch.zeros(const.numel(), dtype=torch.bool)
    for head in heads:
        for node in head.consumers:
            node.propagate(const)
            keep |= node.backward(torch.ones(node.out_channels, dtype=torch.bool))
    feature_keep = keep
    keeps_out: list[Tensor] = []
    for unit in reversed(units):
        keeps_out.append(keep)
        if isinstance(unit, (ConvNode, BlockNode)):
            keep = unit.backward(keep)
    keeps_out.reverse()
    return Analysis(units, keeps_out, heads, image_keep=keep, feature_keep=feature_keep)
