"""The built-in task kinds: head, loss, evaluator and metrics shared by every task of a kind, and what their
targets are (dtype, cache storage, ignore value, drawing, trivial predictor).

A new kind is one more `register_kind` call (here or in a plugin); its tasks name it with ``kind=``, and readers
name it for their targets (`Reader.target_kinds`). The loss and metric formulas live in mtbench's engine
(`mtbench.losses`, `mtbench.metrics`, `mtbench.protocol`), named here with `Deferred` so that loading the catalog
does not import torch.
"""

from mtbench.catalog import register_kind
from mtbench.specs import Deferred, MetricSpec, TaskKind

SEGMENTATION = register_kind(
    TaskKind(
        name="segmentation",
        head="dense",
        loss=Deferred("mtbench.losses:cross_entropy_loss"),
        evaluator=Deferred("mtbench.metrics:SegmentationEvaluator.for_task"),
        metrics=(
            MetricSpec("mIoU", True, "mean intersection over union, from a confusion matrix over the split"),
            MetricSpec("pixAcc", True, "pixel accuracy over labelled pixels"),
        ),
        dtype="int64",
        ignore=-1,
        preview="labels",
        trivial=Deferred("mtbench.protocol:trivial_segmentation"),
    )
)
DEPTH = register_kind(
    TaskKind(
        name="depth",
        head="dense",
        loss=Deferred("mtbench.losses:l1_loss"),
        evaluator=Deferred("mtbench.metrics:DepthEvaluator.for_task"),
        metrics=(
            MetricSpec("absErr", False, "mean absolute error over valid pixels (metres)"),
            MetricSpec("relErr", False, "mean |pred - gt| / gt over valid pixels"),
        ),
        out_channels=1,
        ignore=0.0,
        preview="heat",
        trivial=Deferred("mtbench.protocol:trivial_depth"),
    )
)
NORMALS = register_kind(
    TaskKind(
        name="normals",
        head="dense",
        loss=Deferred("mtbench.losses:cosine_loss"),
        evaluator=Deferred("mtbench.metrics:NormalsEvaluator.for_task"),
        metrics=(
            MetricSpec("mean", False, "mean angular error over valid pixels (degrees)"),
            MetricSpec("median", False, "median angular error (degrees)"),
            MetricSpec("within11.25", True, "fraction of valid pixels within 11.25°"),
            MetricSpec("within22.5", True, "fraction of valid pixels within 22.5°"),
            MetricSpec("within30", True, "fraction of valid pixels within 30°"),
        ),
        out_channels=3,
        ignore=0.0,
        preview="vector",
        trivial=Deferred("mtbench.protocol:trivial_normals"),
    )
)
EDGES = register_kind(
    TaskKind(
        name="edges",
        head="dense",
        loss=Deferred("mtbench.losses:weighted_bce_loss"),
        evaluator=Deferred("mtbench.metrics:EdgeEvaluator.for_task"),
        metrics=(
            MetricSpec(
                "odsF",
                True,
                "ODS F-measure: best threshold over the split, small pixel tolerance "
                "(an approximation of the MATLAB BSDS benchmark, without thinning)",
            ),
        ),
        out_channels=1,
        cache_dtype="uint8",
        preview="gray",
        trivial=Deferred("mtbench.protocol:trivial_edges"),
    )
)
BINARY = register_kind(
    TaskKind(
        name="binary",
        head="image",
        loss=Deferred("mtbench.losses:bce_loss"),
        evaluator=Deferred("mtbench.metrics:BinaryEvaluator.for_task"),
        metrics=(
            MetricSpec("acc", True, "accuracy"),
            MetricSpec(
                "f1",
                True,
                "F1 score of the positive class (not in Δm: a reference that predicts one class has F1 = 0)",
                in_delta_m=False,
            ),
            MetricSpec("balancedAcc", True, "balanced accuracy (mean recall of both classes)"),
        ),
        out_channels=1,
        cache_dtype="int8",
        preview="flag",
        trivial=Deferred("mtbench.protocol:trivial_binary"),
    )
)
