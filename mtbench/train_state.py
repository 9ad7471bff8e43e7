"""A method's training state as tensors and plain data only, so that a checkpoint loads with
``torch.load(weights_only=True)`` and reading one can never run code.

`state_of` turns a method's attributes into such data: tensors as they are, networks and optimisers as their
``state_dict()``, deques, lists, tuples and dicts element by element, numbers and strings as they are.
`restore_into` writes it back into a method that ``setup(ctx)`` has just built, in place wherever an object
already exists (an optimiser refers to its parameters by identity, so they are copied into, not replaced).
An attribute of any other type is refused when the checkpoint is written, naming it, so a plugin learns at
its first checkpoint (not at a resume) that it must say how: override `Method.training_state` and
`Method.load_training_state`, or list attributes that ``setup`` rebuilds identically in
`Method.rebuilt_by_setup`.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtbench.errors import MtbenchError

PLAIN = (bool, int, float, str, type(None))
KIND = "__kind__"  # the tag of a structured value: module, optimizer, deque, tuple, list, dict


class UnsavableState(MtbenchError):
    """A method attribute that a checkpoint of tensors and plain data cannot hold."""


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    state = optimizer.state_dict()
    groups = []
    for group in state["param_groups"]:
        # a group may hold a callable (ProximalAdam's λ of a learned-λ method): the fresh optimiser has it
        groups.append({key: value for key, value in group.items() if _is_plain_data(value)})
    return {KIND: "optimizer", "state": state["state"], "param_groups": groups}


def _is_plain_data(value: Any) -> bool:
    if isinstance(value, PLAIN) or isinstance(value, Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain_data(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_plain_data(v) for k, v in value.items())
    return False


def state_of(value: Any, where: str) -> Any:
    """``value`` as tensors and plain data (see the module docstring); ``where`` names it in an error."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, nn.Module):
        return {KIND: "module", "state": value.state_dict()}
    if isinstance(value, torch.optim.Optimizer):
        return _optimizer_state(value)
    if isinstance(value, collections.deque):
        items = [state_of(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return {KIND: "deque", "maxlen": value.maxlen, "items": items}
    if isinstance(value, (list, tuple)):
        return {KIND: type(value).__name__, "items": [state_of(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
        return {KIND: "dict", "items": {k: state_of(v, f"{where}[{k!r}]") for k, v in value.items()}}
    raise UnsavableState(
        f"{where} holds a {type(value).__module__}.{type(value).__name__}, which a checkpoint of tensors and plain "
        "data cannot hold",
        expected="tensors, networks, optimisers, numbers, strings, and lists, tuples, deques or dicts of them",
        found=type(value).__name__,
        fix="list the attribute in the method's `rebuilt_by_setup` if setup() rebuilds it identically, or override "
        "`training_state` / `load_training_state` (README, Methods and plugins)",
    )


def restore_into(current: Any, saved: Any) -> Any:
    """``saved`` (from `state_of`) written into ``current`` in place where it can be; returns the value to keep."""
    if isinstance(saved, Tensor):
        if isinstance(current, Tensor) and current.shape == saved.shape and current.dtype == saved.dtype:
            with torch.no_grad():
                current.copy_(saved)
            return current
        return saved
    if not isinstance(saved, dict) or KIND not in saved:
        return saved
    kind = saved[KIND]
    if kind == "module":
        current.load_state_dict(saved["state"])
        return current
    if kind == "optimizer":
        kept = [{k: v for k, v in group.items() if not _is_plain_data(v)} for group in current.param_groups]
        current.load_state_dict({"state": saved["state"], "param_groups": saved["param_groups"]})
        for group, extra in zip(current.param_groups, kept):
            group.update(extra)  # the callables the file does not hold, from the freshly built optimiser
        return current
    if kind == "deque":
        return collections.deque((restore_into(None, item) for item in saved["items"]), maxlen=saved["maxlen"])
    if kind in ("list", "tuple"):
        olds = list(current) if isinstance(current, (list, tuple)) and len(current) == len(saved["items"]) else None
        items = [restore_into(olds[i] if olds else None, item) for i, item in enumerate(saved["items"])]
        if isinstance(current, list) and olds is not None:
            current[:] = items
            return current
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        olds = current if isinstance(current, dict) else {}
        restored = {k: restore_into(olds.get(k), item) for k, item in saved["items"].items()}
        if isinstance(current, dict):
            current.clear()
            current.update(restored)
            return current
        return restored
    raise UnsavableState(f"unknown kind {kind!r} in a saved training state", found=str(kind))


def method_state(method: Any, skip: frozenset[str]) -> dict[str, Any]:
    """Every attribute of ``method`` but ``skip``, as tensors and plain data."""
    name = type(method).__name__
    return {key: state_of(value, f"{name}.{key}") for key, value in vars(method).items() if key not in skip}


def load_method_state(method: Any, state: Mapping[str, Any]) -> None:
    """Write `method_state`'s output back into a freshly set-up ``method``."""
    for key, saved in state.items():
        setattr(method, key, restore_into(getattr(method, key, None), saved))
