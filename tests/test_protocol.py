"""The evaluation protocol (`mtbench.protocol`): BatchNorm recalibration, the validation split, trivial
predictors and dead layers, each against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_nyu_context

from mtbench import catalog
from mtbench.errors import ConfigError
from mtbench.metrics import evaluator_for
from mtbench.protocol import (
    carve_validation,
    evaluate,
    recalibrate_batchnorm,
    recalibration_indices,
    trivial_output,
)
from mtbench.sparsity import sparsity_stats


def _net(ctx):
    model = ctx.new_model()
    model.eval()
    return model


def _stem_inputs(model, ctx, batches, batch_size):
    """The inputs the first BatchNorm sees on the recalibration batches, captured in train mode by a hook."""
    norm = model.backbone.stem[1]
    seen = []
    handle = norm.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    model.train()
    with torch.no_grad():
        for indices in recalibration_indices(ctx.seed, len(ctx.train), batch_size, batches):
            model(ctx.train.batch(indices, [], ctx.device)["image"], ctx.task_names)
    handle.remove()
    return norm, seen


def test_recalibration_replaces_stale_statistics_with_the_average_of_the_batches():
    ctx = random_nyu_context(count=24)
    model = _net(ctx)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # stale on purpose: far from what the network computes
            module.running_mean.fill_(3.0)
            module.running_var.fill_(50.0)
    batch = ctx.train.batch(range(8), [], ctx.device)["image"]
    with torch.no_grad():
        stale = model(batch, ["depth"])["depth"]
    # the independent computation: per batch, the channel mean and unbiased variance of the BN input; averaged
    norm, inputs = _stem_inputs(_net(ctx), ctx, batches=3, batch_size=4)
    expected_mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    expected_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)

    report = recalibrate_batchnorm(model, ctx.task_names, ctx.train, ctx, batches=3, batch_size=4)
    stem = model.backbone.stem[1]
    torch.testing.assert_close(stem.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stem.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert stem.momentum == norm.momentum == 0.1  # restored
    assert not model.training
    with torch.no_grad():
        fresh = model(batch, ["depth"])["depth"]
    assert not torch.allclose(stale, fresh, atol=1e-3)
    assert report.batches == 3 and report.worst is not None and report.worst[1] < 1  # variance was 50× too large


def test_recalibration_changes_nothing_where_statistics_are_already_exact():
    ctx = random_nyu_context(count=24)
    model = _net(ctx)
    recalibrate_batchnorm(model, ctx.task_names, ctx.train, ctx, batches=3, batch_size=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = ctx.train.batch(range(8), [], ctx.device)["image"]
    with torch.no_grad():
        before = model(batch, ctx.task_names)
    report = recalibrate_batchnorm(model, ctx.task_names, ctx.train, ctx, batches=3, batch_size=4)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, state[key], rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        after = model(batch, ctx.task_names)
    for task in ctx.task_names:
        torch.testing.assert_close(after[task], before[task], rtol=1e-5, atol=1e-6)
    assert all(abs(ratio - 1) < 1e-5 for ratio in report.variance_ratio.values())


def test_zero_batches_is_the_ablation_and_touches_nothing():
    ctx = random_nyu_context(count=12)
    model = _net(ctx)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = recalibrate_batchnorm(model, ctx.task_names, ctx.train, ctx, batches=0, batch_size=4)
    assert report.batches == 0 and report.worst is None
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_validation_is_fixed_disjoint_and_independent_of_the_training_cap():
    train, val = carve_validation(100, 20)
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)
    assert sorted(train + val) == list(range(100))
    assert carve_validation(100, 20) == (train, val)  # no seed, no method: the same for every run
    capped, same_val = carve_validation(100, 20, max_train=10)
    assert same_val == val and capped == train[:10]
    assert carve_validation(100, 0) == (list(range(100)), [])
    with pytest.raises(ConfigError, match="validation samples"):
        carve_validation(10, 10)


def test_trivial_predictors_by_hand():
    depth = catalog.task("nyuv2", "depth")
    targets = torch.tensor([[[[1.0, 0.0], [2.0, 4.0]]], [[[3.0, 0.0], [0.0, 2.0]]]])  # (2, 1, 2, 2), 0 = invalid
    out = trivial_output(depth, iter([targets[:1], targets[1:]]))
    # per pixel over valid values: (1+3)/2, never valid -> mean of all valid (1+2+4+3+2)/5, 2, (4+2)/2
    torch.testing.assert_close(out, torch.tensor([[[2.0, 2.4], [2.0, 3.0]]]))
    evaluator = evaluator_for(depth)
    evaluator.update(out.expand(2, *out.shape), targets)
    errors = [abs(1 - 2), abs(2 - 2), abs(4 - 3), abs(3 - 2), abs(2 - 3)]
    assert evaluator.compute()["absErr"] == pytest.approx(np.mean(errors))

    semseg = catalog.task("nyuv2", "semseg")
    labels = torch.tensor([[[1, -1]], [[1, 2]], [[0, 2]]])  # (3, 1, 2)
    out = trivial_output(semseg, iter([labels]))
    assert out.shape == (semseg.out_channels, 1, 2)
    assert out.argmax(0).tolist() == [[1, 2]]

    smiling = catalog.task("celebamask", "smiling")
    assert trivial_output(smiling, iter([torch.tensor([1.0, 0.0, 1.0])])).item() > 0
    assert trivial_output(smiling, iter([torch.tensor([0.0, 0.0, 1.0])])).item() < 0


def test_trivial_predictor_scores_through_the_evaluator_as_a_network_would():
    ctx = random_nyu_context(count=12)
    depth = ctx.by_name["depth"]
    out = trivial_output(depth, iter([ctx.train.tensors["depth"]]))
    mean = ctx.train.tensors["depth"].mean(0)
    torch.testing.assert_close(out, mean)  # every pixel valid: the per-pixel mean

    class Constant(torch.nn.Module):
        def forward(self, images, tasks):
            return {"depth": out.expand(len(images), *out.shape)}

    metrics = evaluate(Constant(), depth, ctx.train, ctx)
    expected = (ctx.train.tensors["depth"] - mean).abs().mean().item()
    assert metrics["absErr"] == pytest.approx(expected, rel=1e-5)


def test_dead_layers_and_branches_are_named():
    ctx = random_nyu_context(count=4)
    model = ctx.new_model()
    with torch.no_grad():
        model.backbone.stage3[0].conv2.weight.zero_()
        model.backbone.stage2[0].conv1.weight[:, :3].zero_()  # partly zero: not dead
    stats = sparsity_stats(model)
    assert stats.dead_layers == ["stage3.0.conv2"]
    assert stats.dead_branches == ["stage3.0"]
    assert stats.to_dict()["dead_layers"] == ["stage3.0.conv2"]


@pytest.mark.parametrize("task_name", ["semseg", "depth", "normal", "edge"])
def test_merged_evaluators_equal_one_evaluator_over_every_batch(task_name):
    from mtbench.protocol import merged

    task = catalog.task("nyuv2", task_name)
    generator = torch.Generator().manual_seed(1)
    shape = (6, task.out_channels, 8, 8)
    preds = torch.randn(shape, generator=generator)
    if task.kind.name == "segmentation":
        targets = torch.randint(-1, task.out_channels, (6, 8, 8), generator=generator)
    elif task.kind.name == "normals":
        targets = torch.nn.functional.normalize(torch.randn(6, 3, 8, 8, generator=generator), dim=1)
    elif task.kind.name == "edges":
        targets = (torch.rand(6, 1, 8, 8, generator=generator) > 0.8).float()
    else:
        targets = torch.rand(6, 1, 8, 8, generator=generator) * (torch.rand(6, 1, 8, 8, generator=generator) > 0.2)
    whole = evaluator_for(task)
    whole.update(preds, targets)
    parts = []
    for first in (0, 2, 5):
        part = evaluator_for(task)
        part.update(preds[first : first + (2 if first < 5 else 1)], targets[first : first + (2 if first < 5 else 1)])
        parts.append(part)
    parts.append(evaluator_for(task))
    parts[-1].update(preds[4:5], targets[4:5])
    assert merged(task, parts).compute() == pytest.approx(whole.compute(), rel=1e-9, nan_ok=True)


def test_binary_merge_and_bootstrap_interval_over_test_images():
    from mtbench.protocol import bootstrap_interval, merged

    task = catalog.task("celebamask", "smiling")
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.random(400) < 0.5).float()
    logits = torch.where(torch.from_numpy(rng.random(400) < 0.8), labels * 2 - 1, 1 - labels * 2)  # 80 % right
    blocks = []
    for first in range(0, 400, 10):
        block = evaluator_for(task)
        block.update(logits[first : first + 10], labels[first : first + 10])
        blocks.append(block)
    accuracy = merged(task, blocks).compute()["acc"]
    low, high = bootstrap_interval(task, blocks, seed=0)["acc"]
    assert low < accuracy < high
    # the binomial standard error sqrt(p(1-p)/n) = 0.02 at n = 400: a 95 % interval about 4 of them wide
    assert 0.05 < high - low < 0.11
    assert bootstrap_interval(task, blocks, seed=0)["acc"] == (low, high)  # reproducible


def test_compute_matched_meta_sparsity_runs_ew_s_training_flops():
    from torch.utils.flop_counter import FlopCounterMode

    from mtbench.methods import methods
    from mtbench.training import ew_step_flops, train

    ctx = random_nyu_context(count=16, steps=12, log_every=1)
    info = methods().get("meta-sparsity")
    method = info.method(info.config(match_ew_flops=True))
    method.setup(ctx)
    before = {k: v.clone() for k, v in method.model.state_dict().items()}
    rng = torch.get_rng_state()
    steps = method.train_steps(ctx)
    assert torch.equal(torch.get_rng_state(), rng)  # the probe leaves the random state alone
    for key, value in method.model.state_dict().items():
        assert torch.equal(value, before[key])  # ... and the method's own network
    per_step, ew = method.matched[1], method.matched[2]
    assert steps == round(12 * ew / per_step) and steps < 12  # a meta-iteration costs more than an ew step
    with FlopCounterMode(display=False) as counter:  # the unit, counted independently: ew's own step
        info_ew = methods().get("ew")
        ew_method = info_ew.method(info_ew.config())
        ew_method.setup(ctx)
        ew_method.step(ctx, 0)
    assert counter.get_total_flops() == pytest.approx(ew_step_flops(ctx), rel=0.02)
    fresh = info.method(info.config(match_ew_flops=True))
    outcome = train(fresh, ctx)
    assert outcome.steps == steps and outcome.history[-1]["step"] == steps - 1


def test_a_single_block_has_the_value_itself_as_its_interval():
    from mtbench.protocol import bootstrap_interval

    task = catalog.task("celebamask", "smiling")
    block = evaluator_for(task)
    block.update(torch.tensor([1.0, -1.0, 1.0]), torch.tensor([1.0, 0.0, 0.0]))
    accuracy = block.compute()["acc"]
    assert bootstrap_interval(task, [block], seed=0)["acc"] == (accuracy, accuracy)
