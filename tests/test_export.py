"""Compact export: channel removal is exact, smaller, and round-trips through safetensors + JSON."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from mtbench import catalog
from mtbench.export import CompactNet, compact, count_flops, count_params, latency, load_compact, save_compact
from mtbench.models import ArchSpec, ASPPHead, DenseHead, ImageHead, MultiTaskNet
from mtbench.presets import budget
from mtbench.sparsity import shared_conv_weights

DENSE = ("semseg", "depth", "normal", "edge")
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _tasks(dense: tuple[str, ...] = DENSE) -> list:
    return [catalog.task("nyuv2", name) for name in dense] + [catalog.task("celebamask", "smiling")]


def _head_input_convs(head: nn.Module) -> list[nn.Conv2d]:
    """The convs of a head that read the backbone features."""
    if isinstance(head, DenseHead):
        return [head.body[0]]
    if isinstance(head, ImageHead):
        return [head.conv[0]]
    assert isinstance(head, ASPPHead)
    convs = head.body[0].convs
    return [branch[0] for branch in convs[:-1]] + [convs[-1][1]]


def _head_output_layer(head: nn.Module) -> nn.Module:
    if isinstance(head, DenseHead):
        return head.body[3]
    if isinstance(head, ImageHead):
        return head.mlp[2]
    return head.body[4]


def _nonzero_column(weight: torch.Tensor, channel: int) -> None:
    if not weight[:, channel].any():
        weight[:, channel] = 0.1 * torch.randn_like(weight[:, channel])


def _bn_constant(bn: nn.BatchNorm2d, channel: int, value: float) -> None:
    """BN(0) = value for a channel whose conv filter is zero."""
    bn.running_mean[channel], bn.running_var[channel], bn.bias[channel] = 0.0, 1.0, value


def _prepare(
    model: MultiTaskNet,
    images: torch.Tensor,
    tasks: list[str],
    seed: int,
    fraction: float = 0.5,
    constants: bool = True,
) -> MultiTaskNet:
    """Zero ~``fraction`` of the input groups (and some head groups), add constant channels, randomise BN."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, weight in shared_conv_weights(model):
            weight[:, torch.rand(weight.shape[1], generator=gen) < fraction] = 0
        if fraction > 0:  # feature channels ignored by every head (removable) / by one head only (kept)
            n = model.feature_channels
            order = torch.randperm(n, generator=gen)
            every, one = order[: n // 4], order[n // 4 : n // 2]
            for i, head in enumerate(model.heads.values()):
                for conv in _head_input_convs(head):
                    conv.weight[:, every] = 0
                    if i == 0:
                        conv.weight[:, one] = 0
        if constants:
            _constant_filters(model)
        # BN: statistics of the (sparse) net on a batch, then perturbed; random affine parameters
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        model(images, tasks)
        for bn in bns:
            bn.momentum = 0.1
            bn.running_var.clamp_(min=0.05).mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.4, generator=gen))
            bn.running_mean.add_(0.1 * torch.randn(bn.running_mean.shape, generator=gen))
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.normal_(0.0, 0.2, generator=gen)
        if constants:
            _constant_bn(model)
        model.eval()
        outputs = model(images, tasks)
        for task, head in model.heads.items():  # outputs of order 1: the tolerance is absolute
            last = _head_output_layer(head)
            scale = outputs[task].std().clamp_min(1e-3) if task in outputs else 1.0
            last.weight.div_(scale)
            last.bias.div_(scale)
    return model


def _constant_filters(model: MultiTaskNet) -> None:
    """Whole zero filters W[o]: their channel is a constant after BN (+ReLU)."""
    bb = model.backbone
    if model.arch.backbone == "small":
        block = bb.stage1[0]
        block.conv1.weight[0:2] = 0  # constant 0 (removable) and 0.7 (read by a 3×3 conv: kept)
        _nonzero_column(block.conv2.weight, 0)
        _nonzero_column(block.conv2.weight, 1)
        block.conv2.weight[2] = 0  # constant branch into an identity add: add_bias
        _nonzero_column(bb.stage2[0].project[0].weight, 2)
        bb.stage2[0].project[0].weight[3] = 0  # constant shortcut: folded into the branch's BN shift
    else:
        stem, layer1, layer2 = bb[0], bb[1], bb[2]
        stem[6].weight[7] = 0  # constant 0.3 read only by 1×1 convs (after max-pool): folded, removed
        _nonzero_column(layer1[0].conv1.weight, 7)
        _nonzero_column(layer1[0].downsample[0].weight, 7)
        layer1[0].conv2.weight[5] = 0  # constant 0.5 into conv3 (1×1): folded, removed
        _nonzero_column(layer1[0].conv3.weight, 5)
        layer2[1].conv3.weight[9] = 0  # constant branch into an identity add: add_bias
        _nonzero_column(layer2[2].conv1.weight, 9)


def _constant_bn(model: MultiTaskNet) -> None:
    bb = model.backbone
    if model.arch.backbone == "small":
        _bn_constant(bb.stage1[0].norm1, 0, -1.0)
        _bn_constant(bb.stage1[0].norm1, 1, 0.7)
        _bn_constant(bb.stage1[0].norm2, 2, 0.4)
        _bn_constant(bb.stage2[0].project[1], 3, -0.3)
    else:
        _bn_constant(bb[0][7], 7, 0.3)
        _bn_constant(bb[1][0].bn2, 5, 0.5)
        _bn_constant(bb[2][1].bn3, 9, 0.6)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
    return max((a[key] - b[key]).abs().max().item() for key in a)


def _run(model: nn.Module, images: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(images, tasks)


CASES = {
    "smoke": (budget("smoke").arch, DENSE, (2, 3, 32, 40)),
    "quick": (budget("quick").arch, DENSE, (2, 3, 40, 48)),
    "paper": (budget("paper").arch, ("semseg", "depth"), (2, 3, 64, 64)),
}


@pytest.fixture(scope="module", params=list(CASES))
def sparse_case(request: pytest.FixtureRequest) -> tuple[str, MultiTaskNet, torch.Tensor, list[str]]:
    arch, dense, shape = CASES[request.param]
    specs = _tasks(dense)
    names = [spec.name for spec in specs]
    torch.manual_seed(0)
    model = MultiTaskNet(arch, specs)
    images = torch.randn(*shape)
    _prepare(model, images, names, seed=1)
    return request.param, model, images, names


@pytest.mark.parametrize("fold_bn", [False, True])
def test_compact_matches_dense_and_is_smaller(sparse_case, fold_bn: bool, tmp_path: Path):
    name, model, images, tasks = sparse_case
    net = compact(model, fold_bn=fold_bn)
    assert isinstance(net, CompactNet) and not net.training
    other = torch.randn_like(images)
    for x in (images, other):
        assert _max_diff(_run(model, x, tasks), _run(net, x, tasks)) <= TOL
    assert _max_diff(_run(model, images, tasks[-1:]), _run(net, images, tasks[-1:])) <= TOL  # one head only
    assert count_params(net) < count_params(model)
    assert count_flops(net, images, tasks) < count_flops(model, images, tasks)
    # removed / kept channels as worked out by hand for the planted constant channels
    units = net.config["backbone"]
    if name == "paper":
        assert 7 not in units[2]["channels"]  # stem constant 0.3, read only by 1×1 convs: folded
        assert 5 not in units[4]["branch"][1]["channels"]  # layer1[0].conv2 constant 0.5 folded into conv3
        assert units[8]["add_bias"]  # layer2[1]: constant conv3 channel 9 into the identity add
        assert 9 in units[8]["channels"] and 9 not in units[8]["branch"][2]["channels"]
    else:
        stage1 = units[3]
        conv1 = stage1["branch"][0]["channels"]
        assert 0 not in conv1 and 1 in conv1  # constant 0 removed; constant 0.7 kept for the 3×3 conv2
        assert stage1["add_bias"] and 2 in stage1["channels"] and 2 not in stage1["branch"][1]["channels"]
        project = units[4]["shortcut"]["channels"]
        assert 3 not in project
    # feature channels: kept iff some head reads them (a quarter ignored by every head: removed;
    # another quarter ignored by the first head only: kept, with zero weight columns in that head)
    read = torch.zeros(model.feature_channels, dtype=torch.bool)
    for head in model.heads.values():
        for conv in _head_input_convs(head):
            read |= conv.weight.detach().flatten(2).ne(0).any(2).any(0)
    assert net.config["feature_index"] == read.nonzero().flatten().tolist()
    assert net.config["feature_channels"] < model.feature_channels
    first = next(iter(model.heads.values()))
    ignored_by_first = ~_head_input_convs(first)[0].weight.detach().flatten(2).ne(0).any(2).any(0)
    assert (ignored_by_first & read).any()
    # save → load
    path = tmp_path / "net.safetensors"
    save_compact(net, path)
    loaded = load_compact(path)
    for x in (images, other):
        assert _max_diff(_run(net, x, tasks), _run(loaded, x, tasks)) == 0.0


@pytest.mark.parametrize("name", ["smoke", "quick"])
def test_no_zero_groups_is_equivalent_and_not_smaller(name: str):
    arch, dense, shape = CASES[name]
    specs = _tasks(dense)
    tasks = [spec.name for spec in specs]
    torch.manual_seed(2)
    model = MultiTaskNet(arch, specs)
    images = torch.randn(*shape)
    _prepare(model, images, tasks, seed=3, fraction=0.0, constants=False)
    net = compact(model)
    assert _max_diff(_run(model, images, tasks), _run(net, images, tasks)) <= TOL
    assert count_params(net) == count_params(model)
    assert count_flops(net, images, tasks) == count_flops(model, images, tasks)
    assert net.config["input_index"] is None
    for unit in net.config["backbone"]:
        if unit["type"] == "block":
            assert unit["branch_index"] is None and unit["shortcut_index"] is None and not unit["add_bias"]
    folded = compact(model, fold_bn=True)  # BN folded: same FLOPs, BN's γ/β replaced by one bias
    assert _max_diff(_run(model, images, tasks), _run(folded, images, tasks)) <= TOL
    assert count_flops(folded, images, tasks) == count_flops(model, images, tasks)


def _chain_model(zero_group: int | None) -> MultiTaskNet:
    """Backbone conv1 (3→4, 3×3) + BN + ReLU + conv2 (4→2, 3×3) + BN + ReLU; one dense head."""
    torch.manual_seed(4)
    spec = catalog.task("nyuv2", "depth")
    model = MultiTaskNet(ArchSpec("small", widths=(8, 8, 16), norm="batch"), [])
    model.backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
    )
    model.heads["depth"] = DenseHead(2, spec.out_channels, "batch", hidden=2)
    with torch.no_grad():
        for bn in (model.backbone[1], model.backbone[4]):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
        if zero_group is not None:
            model.backbone[3].weight[:, zero_group] = 0
    return model.eval()


def test_hand_worked_two_conv_chain():
    dense = _chain_model(zero_group=None)
    # conv1 3·4·9 = 108 + BN 2·4 = 8; conv2 4·2·9 = 72 + BN 2·2 = 4: 192
    assert count_params(dense.backbone) == 192
    model = _chain_model(zero_group=1)
    net = compact(model)
    conv1, conv2 = net.config["backbone"]
    assert conv1["channels"] == [0, 2, 3] and (conv1["in"], conv1["out"]) == (3, 3)
    assert (conv2["in"], conv2["out"]) == (3, 2)
    # conv1 3·3·9 = 81 + BN 6; conv2 3·2·9 = 54 + BN 4: 145
    assert count_params(net.backbone) == 145
    assert count_params(net.heads) == count_params(model.heads)
    assert tuple(net.backbone[1].conv.weight.shape) == (2, 3, 3, 3)
    images = torch.randn(2, 3, 12, 10)
    assert _max_diff(_run(model, images, ["depth"]), _run(net, images, ["depth"])) <= TOL
    folded = compact(model, fold_bn=True)  # conv1 81 + 3 biases, conv2 54 + 2 biases
    assert count_params(folded.backbone) == 140
    assert _max_diff(_run(model, images, ["depth"]), _run(folded, images, ["depth"])) <= TOL


def test_all_groups_zero_still_exact():
    """Degenerate: every backbone group zero, so everything left is constant (empty convs, zero-input convs)."""
    arch, dense, shape = CASES["smoke"]
    specs = _tasks(dense)
    tasks = [spec.name for spec in specs]
    torch.manual_seed(5)
    model = MultiTaskNet(arch, specs)
    images = torch.randn(*shape)
    _prepare(model, images, tasks, seed=6, fraction=1.0, constants=False)
    net = compact(model)
    assert _max_diff(_run(model, images, tasks), _run(net, images, tasks)) <= TOL
    assert net.config["input_index"] == []
    assert count_flops(net, images, tasks) < count_flops(model, images, tasks)


def test_files_are_safetensors_and_json_without_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    arch, dense, shape = CASES["smoke"]
    specs = _tasks(dense)
    tasks = [spec.name for spec in specs]
    torch.manual_seed(7)
    model = MultiTaskNet(arch, specs)
    images = torch.randn(*shape)
    net = compact(_prepare(model, images, tasks, seed=8))
    path = tmp_path / "model.safetensors"
    save_compact(net, path)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    assert set(entries) == set(net.state_dict())
    assert len(raw) == 8 + length + max(v["data_offsets"][1] for v in entries.values())  # header + raw bytes only
    assert b"\x80\x02" not in raw[: 8 + length] and not raw.startswith(b"PK")  # no pickle, no zip
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"format": "mtbench-compact", "version": "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]  # no temp files left
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["format"] == "mtbench-compact" and set(config["heads"]) == set(tasks)
    assert config["heads"]["smiling"]["kind"] == "image" and config["heads"]["semseg"]["kind"] == "dense"

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, no_pickle)
    loaded = load_compact(path)
    assert _max_diff(_run(net, images, tasks), _run(loaded, images, tasks)) == 0.0
    with pytest.raises(ValueError):
        save_compact(net, tmp_path / "model.json")


def test_group_norm_is_rejected():
    model = MultiTaskNet(ArchSpec("small", widths=(8, 8, 16), norm="group"), _tasks(("depth",))).eval()
    with pytest.raises(ValueError, match="BatchNorm"):
        compact(model)


def test_latency_and_flops_are_positive():
    arch, dense, shape = CASES["smoke"]
    model = MultiTaskNet(arch, _tasks(("depth",))).eval()
    images = torch.randn(*shape)
    assert latency(model, images, ["depth", "smiling"], repeats=3, warmup=1) > 0
    assert count_flops(model, images, ["depth"]) < count_flops(model, images, ["depth", "smiling"])
    assert model.training is False
