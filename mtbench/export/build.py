"""``compact(model)``: the analysed model turned into a `CompactNet` config and its tensors."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtbench.export.analysis import BlockNode, ConvNode, HeadNode, PoolNode, analyse, plain_node
from mtbench.export.network import FORMAT, FORMAT_VERSION, CompactNet


def _positions(subset: Tensor, within: Tensor) -> list[int]:
    """Positions, among the True entries of ``within``, of the True entries of ``subset`` (⊆ within)."""
    assert not (subset & ~within).any()
    return subset[within].nonzero().flatten().tolist()


def _indices(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def _conv_config(node: ConvNode, space_in: Tensor, fold_bn: bool) -> dict[str, Any]:
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


def _conv_tensors(node: ConvNode, space_in: Tensor, fold_bn: bool, dtype: torch.dtype) -> dict[str, Tensor]:
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


def _put(state: dict[str, Tensor], prefix: str, tensors: dict[str, Tensor]) -> None:
    for name, tensor in tensors.items():
        state[f"{prefix}.{name}"] = tensor


def _copy(module: nn.Module, dtype: torch.dtype) -> dict[str, Tensor]:
    return {name: t.detach().cpu().to(dtype) for name, t in module.state_dict().items()}


def _pool_config(pool: nn.MaxPool2d, keep_out: Tensor) -> dict[str, Any]:
    def single(value: int | tuple[int, ...]) -> int:
        return value if isinstance(value, int) else value[0]

    return {
        "type": "maxpool",
        "kernel": single(pool.kernel_size),
        "stride": single(pool.stride),
        "padding": single(pool.padding),
        "dilation": single(pool.dilation),
        "ceil_mode": pool.ceil_mode,
        "channels": _indices(keep_out),
    }


def _block_config(
    block: BlockNode, space: Tensor, fold_bn: bool, dtype: torch.dtype, prefix: str, state: dict[str, Tensor]
) -> dict[str, Any]:
    """Config of a compact residual block; its tensors go into ``state`` under ``prefix``."""
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

    def full(subset: Tensor, within: Tensor) -> list[int] | None:
        return None if torch.equal(subset, within) else _positions(subset, within)

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


def _head_parts(
    head: HeadNode, space: Tensor, fold_bn: bool, dtype: torch.dtype
) -> tuple[dict[str, Any], dict[str, Tensor]]:
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
    project = plain_node(aspp.project[0], aspp.project[1], True)
    tail = plain_node(conv, bn, True)
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

    Outputs of every head are the same up to float32 rounding (see `mtbench.export.analysis` for
    which channels go and why).

    Args:
        model: the source network (BatchNorm only: GroupNorm mixes channels).
        fold_bn: fold every BatchNorm into the preceding conv (weight·γ/σ, bias β − μγ/σ): fewer
            kernels, faster inference, parameter count no longer comparable one to one.

    Returns:
        The compact network, in eval mode, on the model's device.
    """
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    analysis = analyse(model)
    state: dict[str, Tensor] = {}
    backbone_cfg: list[dict[str, Any]] = []
    space = analysis.image_keep
    for i, (unit, keep_out) in enumerate(zip(analysis.units, analysis.keeps_out, strict=True)):
        prefix = f"backbone.{i}"
        if isinstance(unit, PoolNode):
            backbone_cfg.append(_pool_config(unit.pool, keep_out))
        elif isinstance(unit, ConvNode):
            backbone_cfg.append(_conv_config(unit, space, fold_bn))
            _put(state, prefix, _conv_tensors(unit, space, fold_bn, dtype))
        else:
            backbone_cfg.append(_block_config(unit, space, fold_bn, dtype, prefix, state))
        space = keep_out
    head_cfg: dict[str, Any] = {}
    for head in analysis.heads:
        head_cfg[head.task], head_state = _head_parts(head, analysis.feature_keep, fold_bn, dtype)
        _put(state, f"heads.{head.task}", head_state)
    image_keep, feature_keep = analysis.image_keep, analysis.feature_keep
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "fold_bn": fold_bn,
        "dtype": str(dtype).replace("torch.", ""),
        "input_channels": image_keep.numel(),
        "input_index": None if bool(image_keep.all()) else _indices(image_keep),
        "feature_channels": int(feature_keep.sum()),
        "feature_index": _indices(feature_keep),
        "backbone": backbone_cfg,
        "heads": head_cfg,
        "source": {
            "arch": _jsonable(getattr(model, "arch", None)),
            "heads": {head.task: head.kind for head in analysis.heads},
        },
    }
    net = CompactNet(config)
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()
