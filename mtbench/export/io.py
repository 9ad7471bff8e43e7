"""Exported files: the weights as safetensors, the architecture as JSON beside them (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save

from mtbench.data.io import atomic_write_bytes
from mtbench.export.network import FORMAT, FORMAT_VERSION, CompactNet


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

    Each file is written to a temporary file beside it, then renamed over it (missing folders are
    created). The safetensors metadata holds ``format`` and ``version``. The JSON is ``net.config``:
    ``backbone`` (one entry per unit: ``conv`` with its in/out channel counts,
    kernel/stride/padding/dilation, bias/bn/relu flags and the kept original output channels
    ``channels``; ``maxpool``; ``block`` with its ``branch`` convs, ``shortcut`` (a conv,
    ``"identity"`` or null), the ``branch_index``/``shortcut_gather``/``shortcut_index`` lists and the
    ``add_bias`` flag), ``heads`` (task → kind ``dense``/``image``/``aspp`` and its convs),
    ``input_index``/``feature_index`` and ``source`` (the ArchSpec and head kinds).
    """
    path = Path(path)
    config_path = _json_path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in net.state_dict().items()}
    atomic_write_bytes(path, save(tensors, {"format": FORMAT, "version": str(FORMAT_VERSION)}))
    atomic_write_bytes(config_path, (_dump(net.config) + "\n").encode())


def load_compact(path: Path) -> CompactNet:
    """Rebuild a `CompactNet` from ``path`` + its ``.json`` (no pickle); eval mode, on the CPU."""
    config = json.loads(_json_path(path).read_text())
    net = CompactNet(config)
    net.load_state_dict(load_file(Path(path)), strict=True)
    return net.eval()
