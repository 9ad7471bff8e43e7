"""Task kinds: a new kind is one registered `TaskKind`; losses, evaluators and heads follow from it."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from mtbench import catalog
from mtbench.errors import ConfigError, DuplicateNameError
from mtbench.losses import task_loss, weighted_bce_loss
from mtbench.metrics import EdgeEvaluator, Evaluator, evaluator_for
from mtbench.models import ArchSpec, DenseHead, MultiTaskNet
from mtbench.specs import Deferred, MetricSpec, TaskKind, TaskSpec


def foreground_evaluator(task: TaskSpec) -> Evaluator:
    """F-measure of the foreground mask at exact pixel positions."""
    return EdgeEvaluator(tolerance_px=0)


#: the toy kind: everything a new kind needs, in one object
FOREGROUND = TaskKind(
    name="foreground",
    head="dense",
    loss=weighted_bce_loss,
    evaluator=foreground_evaluator,
    metrics=(MetricSpec("odsF", True, "best-threshold F-measure of the foreground mask"),),
    out_channels=1,
)


@pytest.fixture
def foreground() -> Iterator[TaskKind]:
    catalog.load_builtins()
    catalog.register_kind(FOREGROUND, source="tests")
    yield FOREGROUND
    catalog.KINDS.unregister(FOREGROUND.name)


def test_a_new_kind_is_one_registered_object(foreground: TaskKind):
    assert catalog.kind("foreground") is foreground
    spec = TaskSpec(name="fg", family="toy", title="foreground mask", target="fg", kind=foreground)
    assert (spec.head, spec.out_channels, spec.loss, spec.directions) == ("dense", 1, "weighted_bce", {"odsF": True})

    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 20)
    target = (torch.rand(2, 1, 16, 20) > 0.7).float()
    model = MultiTaskNet(ArchSpec("small", widths=(8, 8, 8)), [spec])
    assert isinstance(model.heads["fg"], DenseHead)
    pred = model(images, ["fg"])["fg"]
    assert pred.shape == (2, 1, 16, 20)

    loss = task_loss(spec, pred, target)
    assert loss.requires_grad and torch.equal(loss, weighted_bce_loss(pred, target))

    evaluator = evaluator_for(spec)
    assert isinstance(evaluator, EdgeEvaluator) and evaluator.tolerance_px == 0
    evaluator.update(pred.detach(), target)
    scores = evaluator.compute()
    assert list(scores) == [m.name for m in spec.metrics] and 0 <= scores["odsF"] <= 1


def test_a_kind_name_registers_once(foreground: TaskKind):
    with pytest.raises(DuplicateNameError, match="task kind 'foreground' is registered twice"):
        catalog.register_kind(foreground, source="again")
    with pytest.raises(DuplicateNameError):
        catalog.register_kind(catalog.kind("depth"))


def test_head_channels_come_from_the_kind_or_the_task():
    segmentation, depth = catalog.kind("segmentation"), catalog.kind("depth")
    assert TaskSpec("s", "toy", "s", "s", segmentation, classes=7).out_channels == 7
    with pytest.raises(ConfigError, match="nowhere"):
        TaskSpec("s", "toy", "s", "s", segmentation)
    with pytest.raises(ConfigError, match="twice"):
        TaskSpec("d", "toy", "d", "d", depth, classes=2)


def test_builtin_kinds_keep_their_losses_heads_and_channels():
    expected = {
        "nyuv2/semseg": ("segmentation", "dense", 13, "cross_entropy"),
        "nyuv2/depth": ("depth", "dense", 1, "l1"),
        "nyuv2/normal": ("normals", "dense", 3, "cosine"),
        "nyuv2/edge": ("edges", "dense", 1, "weighted_bce"),
        "celebamask/faceseg3": ("segmentation", "dense", 3, "cross_entropy"),
        "celebamask/smiling": ("binary", "image", 1, "bce"),
    }
    for key, described in expected.items():
        spec = catalog.tasks().get(key)
        assert (spec.kind.name, spec.head, spec.out_channels, spec.loss) == described
        assert catalog.kind(spec.kind.name) is spec.kind


def test_deferred_functions_pickle_and_keep_their_names():
    spec = catalog.task("nyuv2", "semseg")
    assert isinstance(spec.kind.loss, Deferred) and spec.kind.loss.__name__ == "cross_entropy_loss"
    assert pickle.loads(pickle.dumps(spec)) == spec  # checkpoints pickle methods that hold task specs


def test_loading_the_catalog_does_not_import_torch():
    code = "import sys; from mtbench import catalog; catalog.tasks(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
