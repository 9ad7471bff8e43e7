"""Every method option is range-checked before training, from the range declared on its config field, and
NaN or infinities are refused wherever a float is read; seeds are checked against what every generator takes."""

from __future__ import annotations

import dataclasses

import pytest

from mtbench.errors import ConfigError
from mtbench.methods import methods
from mtbench.options import Bounds, bounded, check_config
from mtbench.overrides import build_config
from mtbench.preflight import check_seed


@pytest.mark.parametrize(
    ("method", "option", "value", "allowed"),
    [
        ("fixed-lambda", "lam", "nan", "0 < lam"),
        ("fixed-lambda", "lam", "inf", "0 < lam"),
        ("fixed-lambda", "lam", "-0.1", "0 < lam"),
        ("fixed-lambda", "lam", "0", "0 < lam"),
        ("meta-sparsity", "lam_init", "-1", "0 < lam_init"),
        ("meta-sparsity", "inner_lr", "0", "0 < inner_lr"),
        ("meta-sparsity", "inner_steps", "0", "1 ≤ inner_steps"),
        ("meta-sparsity", "meta_val_fraction", "1", "0 < meta_val_fraction < 1"),
        ("meta-dense", "lam_init", "-0.5", "0 ≤ lam_init"),
        ("prune", "sparsity", "1.0", "0 ≤ sparsity < 1"),
        ("prune", "prune_at", "-0.1", "0 ≤ prune_at ≤ 1"),
        ("famo", "logit_lr", "-inf", "0 < logit_lr"),
        ("dwa", "temperature", "0", "0 < temperature"),
        ("cagrad", "c", "-1", "0 ≤ c"),
        ("uw", "init_log_var", "nan", "init_log_var a finite number"),
    ],
)
def test_out_of_range_and_non_finite_options_are_refused_with_the_range(method, option, value, allowed):
    info = methods().get(method)
    with pytest.raises(ConfigError) as caught:
        build_config(info.config, {option: value})
    assert allowed in caught.value.details()["expected"]
    assert option in str(caught.value)


def test_in_range_options_pass_and_defaults_are_inside_their_ranges():
    assert build_config(methods().get("fixed-lambda").config, {"lam": "0.02"}).lam == 0.02
    assert build_config(methods().get("prune").config, {"sparsity": "0"}).sparsity == 0.0
    for name in methods().names():
        check_config(methods().get(name).config())  # every built-in default lies in its own range


def test_a_plugin_config_gets_the_same_checks():
    @dataclasses.dataclass
    class PluginConfig:
        strength: float = bounded(0.5, above=0, at_most=1)
        untyped: float = 1.0

    with pytest.raises(ConfigError, match="outside its range"):
        build_config(PluginConfig, {"strength": "2"})
    with pytest.raises(ConfigError, match="not a finite number"):
        build_config(PluginConfig, {"untyped": "nan"})
    with pytest.raises(ConfigError):
        check_config(PluginConfig(strength=0.0))  # built in Python, not from --set: checked all the same
    with pytest.raises(ValueError, match="outside its own range"):
        bounded(-1.0, above=0)


def test_bounds_text_and_membership():
    assert Bounds(above=0, below=1).text("x") == "0 < x < 1"
    assert Bounds(at_least=1).text("k") == "1 ≤ k"
    assert Bounds(at_least=0, at_most=1).contains(1.0) and not Bounds(above=0).contains(0.0)


@pytest.mark.parametrize("seed", [-1, 2**32, 99999999999999999999, 1.5, True])
def test_seeds_outside_what_every_generator_takes_are_refused(seed):
    with pytest.raises(ConfigError, match="out of range") as caught:
        check_seed(seed)
    assert "2^32" in caught.value.details()["expected"]


def test_valid_seeds_pass():
    for seed in (0, 4, 2**32 - 1):
        check_seed(seed)


def test_threads_are_set_checked_and_a_difference_from_the_published_count_is_said():
    import torch

    from mtbench import environment
    from mtbench.environment import apply_threads

    environment._THREADS_NOTICED.clear()
    before = torch.get_num_threads()
    said: list[str] = []
    try:
        assert apply_threads(1, said.append) == 1 and torch.get_num_threads() == 1 and said == []
        assert apply_threads(2, said.append) == 2
        assert len(said) == 1 and "uses 2 CPU threads" in said[0] and "--threads 1 reproduces them exactly" in said[0]
        with pytest.raises(ConfigError, match="positive integer"):
            apply_threads(0)
    finally:
        torch.set_num_threads(before)


def test_the_budget_help_names_every_budget():
    from mtbench.presets import BUDGETS, budget_help

    assert all(f"{name} ({b.summary})" in budget_help() for name, b in BUDGETS.items())
