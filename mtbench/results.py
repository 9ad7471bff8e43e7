"""The local results store: one JSON per configuration and seed, written atomically.

A run's *configuration key* is a hash of everything that defines it: method and its resolved config,
data set identity (name and fingerprint), protocol (budget, seen and held-out tasks, steps, network)
and seed. Re-running the same configuration replaces its file instead of adding a second one, so
nothing is double-counted; different configurations never share a file, so concurrent runs never
overwrite each other.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtbench.data.io import atomic_write_json


def default_results_dir() -> Path:
    """``$MTBENCH_RESULTS`` or ``./results``."""
    return Path(os.environ.get("MTBENCH_RESULTS", "results"))


def protocol_signature(payload: dict[str, Any]) -> dict[str, Any]:
    """What two runs must share to be compared (and for one to be the other's reference)."""
    identity = payload["dataset"]["identity"]
    signature = {
        "dataset": payload["dataset"]["name"],
        "fingerprint": identity["fingerprint"],
        "synthetic": payload["dataset"]["synthetic"],
        "protocol": payload["protocol"],
    }
    return json.loads(json.dumps(signature, sort_keys=True))  # tuples and lists compare equal after a JSON trip


def config_key(payload: dict[str, Any]) -> str:
    """SHA-256 of the configuration: protocol signature, method, method config and seed."""
    material = {
        "signature": protocol_signature(payload),
        "method": payload["method"]["name"],
        "config": payload["method"]["config"],
        "seed": payload["seed"],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def result_path(results_dir: Path, payload: dict[str, Any]) -> Path:
    key = config_key(payload)
    return (
        results_dir
        / payload["dataset"]["name"]
        / f"{payload['method']['name']}--seed{payload['seed']}--{key[:16]}.json"
    )


def store(payload: dict[str, Any], results_dir: Path) -> tuple[Path, bool]:
    """Write ``payload`` into the store; returns its path and whether it replaced an earlier run of the same key."""
    clean = {k: v for k, v in payload.items() if not k.startswith("_")}
    clean["config_key"] = config_key(clean)
    path = result_path(results_dir, clean)
    replaced = path.is_file()
    atomic_write_json(path, clean)
    return path, replaced


def load_results(results_dir: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every readable result file under ``results_dir`` (unreadable ones are skipped, never deleted)."""
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and payload.get("schema_version") and "method" in payload:
            yield path, payload


def find_reference(results_dir: Path, payload: dict[str, Any], method: str = "stl") -> dict[str, Any] | None:
    """The ``method`` (default stl) result with the same protocol signature and seed, if stored."""
    signature = protocol_signature(payload)
    for _, candidate in load_results(results_dir):
        if (
            candidate["method"]["name"] == method
            and candidate["seed"] == payload["seed"]
            and protocol_signature(candidate) == signature
        ):
            return candidate
    return None
