"""Losses and metric accumulators, each against a hand-worked or independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix

from mtbench import catalog
from mtbench.errors import ConfigError, UnknownNameError
from mtbench.losses import (
    EDGE_POS_WEIGHT,
    bce_loss,
    cosine_loss,
    cross_entropy_loss,
    l1_loss,
    task_loss,
    weighted_bce_loss,
)
from mtbench.metrics import (
    BinaryEvaluator,
    DepthEvaluator,
    EdgeEvaluator,
    NormalsEvaluator,
    SegmentationEvaluator,
    evaluator_for,
)
from mtbench.specs import TaskSpec


def one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, C, H, W) logits whose argmax is the label (-1 becomes class 0)."""
    return F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2).float() * 5


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------------------- segmentation


def test_segmentation_hand_worked_three_classes_with_ignore_and_absent_class():
    gt = torch.tensor([[[0, 0, 1], [1, 2, -1]]])
    pred = torch.tensor([[[0, 1, 1], [1, 1, 0]]])  # the last pixel is ignored whatever is predicted there
    # 5 labelled pixels, 3 correct: pixAcc = 3/5.
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 2, FN 0 -> 2/4 = 1/2; class 2: TP 0, FN 1 -> 0.
    # class 3 is absent from both prediction and ground truth: left out, so mIoU = (1/2 + 1/2 + 0) / 3 = 1/3
    # (it would be 1/4 if it were counted).
    ev = SegmentationEvaluator(num_classes=4)
    ev.update(one_hot_logits(pred, 4), gt)
    result = ev.compute()
    assert result["pixAcc"] == pytest.approx(3 / 5)
    assert result["mIoU"] == pytest.approx(1 / 3)


def test_segmentation_hand_worked_two_classes():
    gt = torch.tensor([[[0, 1], [1, -1]]])
    pred = torch.tensor([[[1, 1], [0, 0]]])
    # 3 labelled pixels, 1 correct: pixAcc = 1/3.
    # class 0: TP 0, FP 1, FN 1 -> 0; class 1: TP 1, FP 1, FN 1 -> 1/3; mIoU = (0 + 1/3) / 2 = 1/6.
    ev = SegmentationEvaluator(num_classes=2)
    ev.update(pred, gt)  # integer labels are accepted as well as logits
    result = ev.compute()
    assert result["pixAcc"] == pytest.approx(1 / 3)
    assert result["mIoU"] == pytest.approx(1 / 6)


def test_segmentation_random_against_sklearn_confusion_matrix():
    torch.manual_seed(0)
    c = 6
    logits = torch.randn(3, c, 17, 19)
    gt = torch.randint(-1, c - 1, (3, 17, 19))  # class c-1 never in gt, but may be predicted
    ev = SegmentationEvaluator(c)
    ev.update(logits, gt)
    keep = (gt != -1).numpy().ravel()
    m = confusion_matrix(gt.numpy().ravel()[keep], logits.argmax(1).numpy().ravel()[keep], labels=list(range(c)))
    tp = np.diag(m).astype(float)
    union = m.sum(0) + m.sum(1) - tp
    assert np.array_equal(ev.confusion.numpy(), m)
    assert ev.compute()["mIoU"] == pytest.approx(np.mean(tp[union > 0] / union[union > 0]))
    assert ev.compute()["pixAcc"] == pytest.approx(tp.sum() / m.sum())


def test_segmentation_two_batches_equal_one_big_batch_and_reset():
    torch.manual_seed(1)
    logits, gt = torch.randn(4, 5, 8, 8), torch.randint(-1, 5, (4, 8, 8))
    whole, parts = SegmentationEvaluator(5), SegmentationEvaluator(5)
    whole.update(logits, gt)
    parts.update(logits[:1], gt[:1])
    parts.update(logits[1:], gt[1:])
    assert parts.compute() == whole.compute()
    parts.reset()
    assert math.isnan(parts.compute()["mIoU"])


def test_segmentation_rejects_labels_out_of_range():
    ev = SegmentationEvaluator(3)
    with pytest.raises(ConfigError):
        ev.update(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 3]]]))


# ---------------------------------------------------------------------------------------------- depth


def test_depth_hand_worked_with_invalid_pixels_pixel_weighted():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gt = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])
    # valid: 3 pixels with errors 1, 2, 0 -> absErr = 3/3 = 1; relErr = (1/2 + 2/1 + 0/4) / 3 = 5/6
    ev = DepthEvaluator()
    ev.update(pred, gt)
    assert ev.compute() == pytest.approx({"absErr": 1.0, "relErr": 5 / 6})
    # a second batch with one valid pixel (error 4, rel 4/2): weighted by pixels, not by batch
    ev.update(torch.tensor([[[[6.0, 9.0]]]]), torch.tensor([[[[2.0, 0.0]]]]))
    assert ev.compute() == pytest.approx({"absErr": (3 + 4) / 4, "relErr": (2.5 + 2) / 4})


# -------------------------------------------------------------------------------------------- normals


def normals_batch(vectors: list[tuple[float, float, float]]) -> torch.Tensor:
    """A (1, 3, 1, N) map from a list of vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_normals_hand_worked_angles():
    pred = normals_batch([(1, 0, 0), (5, 5, 0), (2, 0, 0), (-1, 0, 0), (0, 0, 7)])
    gt = normals_batch([(0, 1, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0)])  # the last pixel is invalid
    # angles: 90°, 45° (unnormalised pred), 0°, 180°; mean = 315/4 = 78.75; median = (45 + 90) / 2 = 67.5
    # within 11.25, 22.5 and 30 degrees: only the 0° pixel -> 1/4 each
    ev = NormalsEvaluator()
    ev.update(pred, gt)
    result = ev.compute()
    assert result["mean"] == pytest.approx(78.75, abs=1e-6)
    assert result["median"] == pytest.approx(67.5, abs=0.01)
    assert result["within11.25"] == result["within22.5"] == result["within30"] == pytest.approx(0.25)


def test_normals_against_numpy_on_random_data():
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(2, 3, 30, 41))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    pred = gt + rng.normal(scale=0.4, size=gt.shape)  # unnormalised, errors of a few tens of degrees
    gt[0, :, :5] = 0  # invalid rows
    ev = NormalsEvaluator()
    ev.update(torch.tensor(pred[:1], dtype=torch.float32), torch.tensor(gt[:1], dtype=torch.float32))
    ev.update(torch.tensor(pred[1:], dtype=torch.float32), torch.tensor(gt[1:], dtype=torch.float32))
    p = np.moveaxis(pred, 1, -1).reshape(-1, 3).astype(np.float32).astype(np.float64)
    g = np.moveaxis(gt, 1, -1).reshape(-1, 3).astype(np.float32).astype(np.float64)
    valid = np.abs(g).sum(1) > 0
    p, g = p[valid], g[valid]
    cos = np.sum(p / np.linalg.norm(p, axis=1, keepdims=True) * g, axis=1)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert ev.count == valid.sum() == 2 * 30 * 41 - 5 * 41
    result = ev.compute()
    assert result["mean"] == pytest.approx(angles.mean(), abs=1e-9)
    assert abs(result["median"] - np.median(angles)) <= 0.01
    for name, thr in (("within11.25", 11.25), ("within22.5", 22.5), ("within30", 30.0)):
        assert result[name] == pytest.approx(np.mean(angles < thr), abs=1e-12)
    assert 0 < result["within11.25"] < result["within30"] < 1


def test_normals_median_even_count_with_distant_middle_values():
    # two pixels, 10° and 90°: numpy's median is 50°, not either sample
    gt = normals_batch([(1, 0, 0), (1, 0, 0)])
    a = math.radians(10)
    pred = normals_batch([(math.cos(a), math.sin(a), 0), (0, 1, 0)])
    ev = NormalsEvaluator()
    ev.update(pred, gt)
    assert ev.compute()["median"] == pytest.approx(50.0, abs=0.01)


# ---------------------------------------------------------------------------------------------- edges


def naive_edge_f(prob: torch.Tensor, gt: torch.Tensor, r: int) -> torch.Tensor:
    """F(t) by the definition, in plain Python loops: greedy one-to-one matching, nearest offsets first."""
    gt = gt[:, 0] > 0.5
    offsets = sorted(
        ((dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)),
        key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]),
    )
    batch, height, width = gt.shape
    out = []
    for k in range(1, 100):
        pred = (prob[:, 0] >= torch.tensor(k / 100, dtype=prob.dtype)).tolist()
        truth = gt.tolist()
        used_p = [[[False] * width for _ in range(height)] for _ in range(batch)]
        used_g = [[[False] * width for _ in range(height)] for _ in range(batch)]
        matched = 0
        for dy, dx in offsets:
            for b in range(batch):
                for y in range(height):
                    for x in range(width):
                        gy, gx = y + dy, x + dx
                        if (
                            pred[b][y][x]
                            and not used_p[b][y][x]
                            and 0 <= gy < height
                            and 0 <= gx < width
                            and truth[b][gy][gx]
                            and not used_g[b][gy][gx]
                        ):
                            used_p[b][y][x] = used_g[b][gy][gx] = True
                            matched += 1
        n_pred, n_gt = sum(sum(row) for img in pred for row in img), int(gt.sum())
        p = matched / n_pred if n_pred else 0.0
        rec = matched / n_gt if n_gt else 0.0
        out.append(2 * p * rec / (p + rec) if p + rec > 0 else 0.0)
    return torch.tensor(out, dtype=torch.float64)


def test_edges_perfect_prediction():
    torch.manual_seed(3)
    gt = (torch.rand(2, 1, 20, 24) > 0.85).float()
    for tol in (None, 0, 2):
        ev = EdgeEvaluator(tolerance_px=tol)
        ev.update(gt * 20 - 10, gt)
        assert ev.compute()["odsF"] == pytest.approx(1.0)


def test_edges_shift_by_one_pixel():
    gt = torch.zeros(1, 1, 12, 12)
    gt[..., 5] = 1
    pred = torch.full_like(gt, -10.0)
    pred[..., 6] = 10.0
    ones, zeros = EdgeEvaluator(tolerance_px=1), EdgeEvaluator(tolerance_px=0)
    ones.update(pred, gt)
    zeros.update(pred, gt)
    assert ones.compute()["odsF"] == pytest.approx(1.0)
    assert zeros.compute()["odsF"] < 1.0
    assert zeros.compute()["odsF"] == 0.0


def test_edges_empty_prediction_scores_zero():
    gt = torch.zeros(1, 1, 8, 8)
    gt[..., 3, :] = 1
    ev = EdgeEvaluator()
    ev.update(torch.full_like(gt, -30.0), gt)
    assert ev.compute()["odsF"] == 0.0


def test_edges_hand_worked():
    # one row of 5 pixels: ground truth at 1 and 4; probabilities 0.35, 0.85, 0.65, 0.25, 0
    gt = torch.tensor([0.0, 1, 0, 0, 1]).reshape(1, 1, 1, 5)
    prob = [0.35, 0.85, 0.65, 0.25, 1e-9]
    pred = torch.tensor([logit(p) for p in prob]).reshape(1, 1, 1, 5)
    # tolerance 0:
    #   t <= 0.25:        predicted {0,1,2,3}: P = 1/4, R = 1/2, F = 2(1/8)/(3/4) = 1/3
    #   0.25 < t <= 0.35: predicted {0,1,2}:   P = 1/3, R = 1/2, F = 2(1/6)/(5/6) = 2/5
    #   0.35 < t <= 0.65: predicted {1,2}:     P = 1/2, R = 1/2, F = 1/2
    #   0.65 < t <= 0.85: predicted {1}:       P = 1,   R = 1/2, F = 2/3   <- odsF
    #   t > 0.85:         nothing predicted,   F = 0
    exact = EdgeEvaluator(tolerance_px=0)
    exact.update(pred, gt)
    f = exact.f_measures()
    assert [f[k - 1].item() for k in (10, 30, 50, 70, 90)] == pytest.approx([1 / 3, 2 / 5, 1 / 2, 2 / 3, 0])
    assert exact.compute()["odsF"] == pytest.approx(2 / 3)
    # tolerance 1, one-to-one: each ground-truth pixel justifies one predicted pixel.
    #   t <= 0.25: predicted {0,1,2,3}: 1<->1 (distance 0), 3<->4 (distance 1); 0 and 2 find gt 1
    #              taken: P = 2/4, R = 1, F = 2/3
    #   0.25 < t <= 0.35: {0,1,2}: only 1<->1: P = 1/3, R = 1/2, F = 2/5
    #   0.35 < t <= 0.65: {1,2}: P = 1/2, R = 1/2, F = 1/2;  0.65 < t <= 0.85: {1}: F = 2/3
    near = EdgeEvaluator(tolerance_px=1)
    near.update(pred, gt)
    f = near.f_measures()
    assert [f[k - 1].item() for k in (10, 30, 50, 70, 90)] == pytest.approx([2 / 3, 2 / 5, 1 / 2, 2 / 3, 0])
    assert near.compute()["odsF"] == pytest.approx(2 / 3)


def test_edges_match_the_loop_definition_across_batches():
    torch.manual_seed(4)
    gt = (torch.rand(3, 1, 9, 11) > 0.85).float()
    pred = torch.randn(3, 1, 9, 11) * 2 + gt * 2
    for r in (0, 1, 2, 3):  # 99 thresholds: two words of bits (63 + 36) in the evaluator
        ev = EdgeEvaluator(tolerance_px=r)
        ev.update(pred[:2], gt[:2])
        ev.update(pred[2:], gt[2:])
        # batches summed as counts: equals the loop definition on the concatenated split
        assert torch.allclose(ev.f_measures(), naive_edge_f(torch.sigmoid(pred), gt, r), atol=1e-12)


def test_thick_predictions_are_not_rewarded():
    """A 3-pixel-wide band around a 1-pixel edge: precision 1/3 under one-to-one matching."""
    gt = torch.zeros(1, 1, 10, 10)
    gt[..., 5] = 1
    pred = torch.full_like(gt, -10.0)
    pred[..., 4:7] = 10.0
    ev = EdgeEvaluator(tolerance_px=1)
    ev.update(pred, gt)
    assert ev.compute()["odsF"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))


def test_edges_default_tolerance_bsds_convention():
    assert EdgeEvaluator.default_tolerance(96, 128) == 1  # 0.0075 * 160 = 1.2
    assert EdgeEvaluator.default_tolerance(288, 384) == 4  # 0.0075 * 480 = 3.6
    assert EdgeEvaluator.default_tolerance(10, 10) == 1  # at least one pixel


# --------------------------------------------------------------------------------------------- binary


def test_binary_hand_worked():
    y = torch.tensor([1.0, 1, 1, 0, 0, 0, 0, 0])
    probs = [0.9, 0.6, 0.2, 0.1, 0.7, 0.4, 0.3, 0.5]  # 0.5 counts as positive
    # predicted: 1 1 0 0 1 0 0 1 -> TP 2, FN 1, FP 2, TN 3
    # acc = 5/8; precision 2/4, recall 2/3, F1 = 2(1/2)(2/3)/(1/2 + 2/3) = 4/7
    # balanced accuracy = (TPR 2/3 + TNR 3/5) / 2 = 19/30
    logits = torch.tensor([logit(p) for p in probs])
    ev = BinaryEvaluator()
    ev.update(logits[:3].reshape(3, 1), y[:3])  # (B, 1) and (B,) both accepted
    ev.update(logits[3:], y[3:])
    assert ev.compute() == pytest.approx({"acc": 5 / 8, "f1": 4 / 7, "balancedAcc": 19 / 30})


def test_binary_no_positive_predicted_f1_is_zero():
    ev = BinaryEvaluator()
    ev.update(torch.tensor([-3.0, -2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0]))
    assert ev.compute() == pytest.approx({"acc": 2 / 3, "f1": 0.0, "balancedAcc": 0.5})


# --------------------------------------------------------------------------------------------- losses


def test_cross_entropy_against_torch_on_labelled_subset():
    torch.manual_seed(5)
    logits, gt = torch.randn(2, 4, 6, 7), torch.randint(-1, 4, (2, 6, 7))
    keep = gt != -1
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], gt[keep])
    assert cross_entropy_loss(logits, gt).item() == pytest.approx(expected.item(), rel=1e-6)


def test_masked_losses_are_graph_connected_zero_without_valid_pixels():
    for loss, pred, target in (
        (cross_entropy_loss, torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), -1)),
        (l1_loss, torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)),
        (cosine_loss, torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)),
    ):
        pred.requires_grad_(True)
        value = loss(pred, target)
        assert value.item() == 0.0 and value.requires_grad
        (grad,) = torch.autograd.grad(value, pred)
        assert torch.equal(grad, torch.zeros_like(pred))


def test_l1_hand_worked_with_invalid_pixels():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gt = torch.tensor([[[[2.0, 0.0], [1.0, 4.0]]]])
    assert l1_loss(pred, gt).item() == pytest.approx((1 + 2 + 0) / 3)  # the 0 target is skipped


def test_cosine_hand_worked_with_invalid_pixels():
    pred = normals_batch([(2, 0, 0), (0, 3, 0), (-1, 0, 0), (4, 4, 4)])
    gt = normals_batch([(1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0)])
    # 1 - cos: 0, 1, 2 over the three valid pixels -> mean 1
    assert cosine_loss(pred, gt).item() == pytest.approx(1.0, abs=1e-6)


def test_weighted_bce_against_manual_formula():
    torch.manual_seed(6)
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64) * 3
    y = (torch.rand(2, 1, 5, 6) > 0.7).double()
    s = torch.sigmoid(x)
    manual = -(EDGE_POS_WEIGHT * y * torch.log(s) + (1 - EDGE_POS_WEIGHT) * (1 - y) * torch.log(1 - s)).mean()
    assert weighted_bce_loss(x, y).item() == pytest.approx(manual.item(), rel=1e-10)


def test_bce_against_manual_formula():
    x, y = torch.tensor([[0.3], [-1.2], [2.0]], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0])
    s = torch.sigmoid(x.reshape(-1))
    manual = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)).mean()
    assert bce_loss(x, y).item() == pytest.approx(manual.item(), rel=1e-10)
    assert bce_loss(x.reshape(-1), y).item() == pytest.approx(manual.item(), rel=1e-10)


def test_gradcheck_and_gradgradcheck_in_float64():
    torch.manual_seed(7)
    normals = F.normalize(torch.randn(1, 3, 3, 4, dtype=torch.float64), dim=1)
    normals[..., 0, 0] = 0  # an invalid pixel
    edges = (torch.rand(1, 1, 3, 4) > 0.5).double()
    labels = torch.randint(-1, 3, (1, 3, 4))
    cases = (
        (cosine_loss, (1, 3, 3, 4), normals),
        (weighted_bce_loss, (1, 1, 3, 4), edges),
        (cross_entropy_loss, (1, 3, 3, 4), labels),
    )
    for loss, shape, target in cases:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda p: loss(p, target), (x,))
        assert torch.autograd.gradgradcheck(lambda p: loss(p, target), (x,))


def random_batch(spec: TaskSpec, b: int = 2, h: int = 6, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A raw-head-shaped prediction and a canonical target for ``spec``."""
    if spec.head == "image":
        return torch.randn(b, spec.out_channels), torch.randint(0, 2, (b,)).float()
    pred = torch.randn(b, spec.out_channels, h, w)
    if spec.loss == "cross_entropy":
        return pred, torch.randint(-1, spec.out_channels, (b, h, w))
    if spec.loss == "cosine":
        target = F.normalize(torch.randn(b, 3, h, w), dim=1)
        target[:, :, 0] = 0
        return pred, target
    if spec.loss == "l1":
        return pred, torch.rand(b, 1, h, w) * (torch.rand(b, 1, h, w) > 0.2)
    return pred, (torch.rand(b, 1, h, w) > 0.8).float()


@pytest.mark.parametrize("key", [key for key, _ in catalog.tasks().items()])
def test_every_registered_task_has_loss_and_evaluator(key: str):
    spec = catalog.tasks().get(key)
    torch.manual_seed(8)
    pred, target = random_batch(spec)
    ev = evaluator_for(spec)
    ev.update(pred, target)
    result = ev.compute()
    assert list(result) == [m.name for m in spec.metrics]
    assert all(math.isfinite(v) for v in result.values())
    value = task_loss(spec, pred.requires_grad_(True), target)
    assert value.dim() == 0 and torch.isfinite(value) and value.requires_grad


@pytest.mark.parametrize("loss", ["cross_entropy", "l1", "cosine", "weighted_bce", "bce"])
def test_second_order_gradients(loss: str):
    spec = next(s for _, s in catalog.tasks().items() if s.loss == loss)
    torch.manual_seed(9)
    _, target = random_batch(spec)
    if spec.head == "image":
        model = torch.nn.Linear(4, spec.out_channels)
        x = torch.randn(target.shape[0], 4)
    else:
        model = torch.nn.Conv2d(2, spec.out_channels, 3, padding=1)
        x = torch.randn(target.shape[0], 2, *target.shape[-2:])
    params = list(model.parameters())
    value = task_loss(spec, model(x), target)
    grads = torch.autograd.grad(value, params, create_graph=True)
    grad_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    second = torch.autograd.grad(grad_norm, params, allow_unused=True)
    assert all(s is None or torch.isfinite(s).all() for s in second)
    if loss != "l1":  # L1 of a linear model has zero curvature; the others must carry a real graph
        assert any(s is not None and s.abs().sum() > 0 for s in second)


def test_unknown_kind_and_bad_shapes_raise():
    spec = catalog.tasks().get("nyuv2/depth")
    with pytest.raises(UnknownNameError, match="unknown task kind 'psnr'"):
        catalog.kind("psnr")
    with pytest.raises(ConfigError, match="shape"):
        task_loss(spec, torch.zeros(2, 1, 2, 2), torch.ones(2, 2, 2))  # would broadcast silently


def test_compute_before_update_is_nan():
    for ev in (SegmentationEvaluator(3), DepthEvaluator(), NormalsEvaluator(), EdgeEvaluator(), BinaryEvaluator()):
        result = ev.compute()
        assert result and all(math.isnan(v) for v in result.values())


def test_bit_counts_against_counting_each_bit():
    from mtbench.metrics import _bit_counts

    generator = torch.Generator().manual_seed(5)
    high = torch.randint(0, 2**62, (3, 7, 5), generator=generator)
    words = high * 2 + torch.randint(0, 2, (3, 7, 5), generator=generator)  # bits 0..62
    for bits in (1, 8, 9, 36, 63):
        expected = [sum((int(w) >> b) & 1 for w in words.flatten()) for b in range(bits)]
        assert _bit_counts(words, bits).tolist() == expected
