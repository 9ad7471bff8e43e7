"""Compact export: physically remove the channels that structured sparsity made unused.

``compact(model)`` turns a `MultiTaskNet` (in eval semantics: BatchNorm uses its running statistics)
into a `CompactNet` built from plain ``nn.Conv2d``/``nn.BatchNorm2d`` (``fold_bn=False``, default) or
``nn.Conv2d`` with the BatchNorm folded into weight and bias (``fold_bn=True``). Outputs of every
head are the same up to float32 rounding. ``save_compact``/``load_compact`` store it as safetensors +
a JSON architecture config (no pickle anywhere); ``count_params``, ``count_flops`` and ``latency``
measure either network.

Modules: `analysis` (which channels can go, what is folded), `network` (the compact modules),
`build` (``compact``: analysis → config + tensors), `io` (the exported files), `measure` (also the
interleaved timing of several candidates), `paths` (inference paths of the folded network: eager, channels-last,
``torch.jit.freeze``, ``torch.compile``, ONNX Runtime, each checked against the dense network).
"""

from mtbench.export.build import compact
from mtbench.export.io import load_compact, save_compact
from mtbench.export.measure import count_flops, count_params, latency
from mtbench.export.network import FORMAT, FORMAT_VERSION, CompactNet

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CompactNet",
    "compact",
    "count_flops",
    "count_params",
    "latency",
    "load_compact",
    "save_compact",
]
