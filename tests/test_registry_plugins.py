"""The generic registry and method plugins (built-ins, entry points, explicit --plugins paths)."""

from __future__ import annotations

import sys
import textwrap

import pytest

from mtbench import methods as methods_module
from mtbench.errors import DuplicateNameError, PluginError, UnknownNameError
from mtbench.registry import Registry

PLUGIN = textwrap.dedent("""
    from dataclasses import dataclass
    from mtbench.methods import MethodInfo

    @dataclass
    class Config:
        lr: float = 0.1

    class Method:
        pass

    METHOD = MethodInfo(name="{name}", summary="a test plugin", method=Method, config=Config,
                        paper="Nobody et al. 2026")
""")


def test_registry_refuses_duplicates_and_suggests_close_matches():
    registry: Registry[int] = Registry("widget")
    registry.register("meta-sparsity", 1)
    registry.register("meta-dense", 2, source="file x.py")
    with pytest.raises(DuplicateNameError, match="registered twice"):
        registry.register("meta-dense", 3)
    with pytest.raises(UnknownNameError) as info:
        registry.get("meta-sparse")
    assert "did you mean 'meta-sparsity'" in str(info.value)
    with pytest.raises(UnknownNameError, match="mtbench ls widgets"):
        registry.get("zzz")
    assert registry.names("dense") == ["meta-dense"] and registry.names("meta-*") == ["meta-sparsity", "meta-dense"]
    assert registry.source("meta-dense") == "file x.py"
    assert isinstance(registry.unknown("x"), KeyError)  # lookups keep dict-like semantics


def test_plugin_file_is_loaded_only_when_named(fresh_methods, tmp_path, monkeypatch, cli):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(PLUGIN.format(name="my-method"))
    monkeypatch.chdir(tmp_path)  # a plugin in the working directory is NOT picked up implicitly
    assert "my-method" not in methods_module.methods()
    code, text = cli("ls", "methods", "--plugins", plugin)
    assert code == 0, text
    assert "my-method" in text and "Nobody et al. 2026" in text and "my_method.py" in text
    assert methods_module.METHODS.source("my-method").startswith(f"file {plugin} (sha256 ")


def test_plugin_folder_duplicate_and_broken_plugins(fresh_methods, tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "a.py").write_text(PLUGIN.format(name="alpha"))
    (folder / "b.py").write_text(PLUGIN.format(name="beta"))
    (folder / "_private.py").write_text("raise RuntimeError('never imported')")
    assert methods_module.load_plugin_path(folder) == ["alpha", "beta"]
    (tmp_path / "dup.py").write_text(PLUGIN.format(name="alpha"))
    with pytest.raises(DuplicateNameError, match="alpha"):
        methods_module.load_plugin_path(tmp_path / "dup.py")
    (tmp_path / "broken.py").write_text("import does_not_exist_anywhere\n")
    with pytest.raises(PluginError, match="failed to import"):
        methods_module.load_plugin_path(tmp_path / "broken.py")
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(PluginError, match="defines no method"):
        methods_module.load_plugin_path(tmp_path / "empty.py")
    with pytest.raises(PluginError, match="does not exist"):
        methods_module.load_plugin_path(tmp_path / "absent.py")


def test_entry_point_plugins_are_discovered(fresh_methods, tmp_path, monkeypatch):
    """A package advertising `mtbench.methods` (a dist-info on sys.path) is registered with its name."""
    (tmp_path / "thirdparty_method.py").write_text(PLUGIN.format(name="third-party"))
    dist = tmp_path / "thirdparty_mtbench-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-mtbench\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mtbench.methods]\nthird-party = thirdparty_method:METHOD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = methods_module.methods()
    assert "third-party" in registry
    assert registry.source("third-party") == "entry point third-party (thirdparty-mtbench)"
    sys.modules.pop("thirdparty_method", None)


def test_methodinfo_requires_a_dataclass_config():
    with pytest.raises(PluginError, match="dataclass"):
        methods_module.MethodInfo(name="x", summary="", method=object, config=dict)


def test_loading_the_same_plugin_twice_is_a_no_op(fresh_methods, tmp_path):
    plugin = tmp_path / "twice.py"
    plugin.write_text(PLUGIN.format(name="twice"))
    assert methods_module.load_plugin_path(plugin) == ["twice"]
    assert methods_module.load_plugin_path(plugin) == ["twice"]
