"""Metric vocabularies shared by several task specs (the formulas live in mtbench's engine)."""

from mtbench.specs import MetricSpec

SEGMENTATION = (
    MetricSpec("mIoU", True, "mean intersection over union, from a confusion matrix over the split"),
    MetricSpec("pixAcc", True, "pixel accuracy over labelled pixels"),
)
DEPTH = (
    MetricSpec("absErr", False, "mean absolute error over valid pixels (metres)"),
    MetricSpec("relErr", False, "mean |pred - gt| / gt over valid pixels"),
)
NORMALS = (
    MetricSpec("mean", False, "mean angular error over valid pixels (degrees)"),
    MetricSpec("median", False, "median angular error (degrees)"),
    MetricSpec("within11.25", True, "fraction of valid pixels within 11.25°"),
    MetricSpec("within22.5", True, "fraction of valid pixels within 22.5°"),
    MetricSpec("within30", True, "fraction of valid pixels within 30°"),
)
EDGES = (
    MetricSpec(
        "odsF",
        True,
        "ODS F-measure: best threshold over the split, small pixel tolerance "
        "(an approximation of the MATLAB BSDS benchmark, without thinning)",
    ),
)
BINARY = (
    MetricSpec("acc", True, "accuracy"),
    MetricSpec(
        "f1",
        True,
        "F1 score of the positive class (not in Δm: a reference that predicts one class has F1 = 0)",
        in_delta_m=False,
    ),
    MetricSpec("balancedAcc", True, "balanced accuracy (mean recall of both classes)"),
)
