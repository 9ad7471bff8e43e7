"""Open registries: readers, task kinds and tasks register themselves (built-ins, entry points, --plugins files);
the data layer asks a target's kind how to store and draw it; budgets say their summary and device."""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap

import numpy as np
import pytest

from mtbench import catalog
from mtbench import methods as methods_module
from mtbench.data import layouts as layouts_module
from mtbench.data.cache import CACHE_META, ArrowCacheReader, prepare
from mtbench.data.checksums import META_CHECK, meta_check
from mtbench.data.contact import contact_sheet
from mtbench.data.layouts import detect_layout, layouts, open_reader
from mtbench.data.nyuv2 import MtanReader
from mtbench.data.reader import LAYOUTS, Reader, register_layout
from mtbench.errors import ConfigError, DuplicateNameError, PluginError
from mtbench.presets import BUDGETS, Budget, budget_help
from mtbench.registry import Registry, registered_from, unregister_source
from mtbench.specs import Deferred, MetricSpec, TaskKind, TaskSpec

#: a plugin file defining a reader for nyuv2, a task kind and a task of that kind (no method)
TOY_PLUGIN = textwrap.dedent('''
    import numpy as np

    from mtbench.catalog import register_kind, register_task
    from mtbench.data.reader import Reader, register_layout
    from mtbench.specs import Deferred, MetricSpec, TaskKind, TaskSpec

    MASK = register_kind(
        TaskKind(
            name="{kind}",
            head="dense",
            loss=Deferred("mtbench.losses:weighted_bce_loss"),
            evaluator=Deferred("mtbench.metrics:EdgeEvaluator.for_task"),
            metrics=(MetricSpec("odsF", True, "best-threshold F-measure"),),
            out_channels=1,
            cache_dtype="uint8",
            preview="gray",
            trivial=Deferred("mtbench.protocol:trivial_edges"),
        )
    )
    register_task(TaskSpec(name="toy-floor", family="nyuv2", title="floor mask", target="floor", kind=MASK))


    @register_layout
    class ToyReader(Reader):
        layout = "{layout}"
        family = "nyuv2"
        title = "toy NYU-v2 layout"
        target_sources = {{"floor": "floor", "depth": "depth"}}
        target_kinds = {{"floor": "{kind}", "depth": "depth"}}

        @classmethod
        def detect(cls, root):
            return (root / "toy.txt").is_file()

        @classmethod
        def describe(cls):
            return "toy.txt (samples are made up)"

        def splits(self):
            return ("train",)

        def sample_ids(self, split):
            self.check_split(split)
            return ["0", "1", "2"]

        def _read_image(self, split, index):
            return np.full((3, 4, 5), index / 10, dtype=np.float32)

        def _read_target(self, split, index, target):
            if target == "floor":
                return (np.arange(20).reshape(1, 4, 5) % 2 == index % 2).astype(np.float32)
            return np.full((1, 4, 5), 1.0 + index, dtype=np.float32)

        def files(self):
            return [self.root / "toy.txt"]
''')


@pytest.fixture
def toy_plugin(tmp_path):
    """The toy plugin written to a file outside the repository; everything it registers is removed after."""
    plugin = tmp_path / "toy_plugin.py"
    plugin.write_text(TOY_PLUGIN.format(kind="toy-mask", layout="nyuv2-toy"))
    folder = tmp_path / "toy-data"
    folder.mkdir()
    (folder / "toy.txt").write_text("toy\n")
    yield plugin, folder
    for source in {LAYOUTS.source(n) for n in LAYOUTS.names("nyuv2-toy")}:
        unregister_source(source)


def test_a_plugin_file_registers_a_reader_a_kind_and_a_task(toy_plugin, tmp_path):
    plugin, folder = toy_plugin
    assert methods_module.load_plugin_path(plugin) == []  # no method in it
    source = LAYOUTS.source("nyuv2-toy")
    assert source.startswith(f"file {plugin} (sha256 ")
    assert registered_from(source) == {"task kind": ["toy-mask"], "task": ["nyuv2/toy-floor"], "layout": ["nyuv2-toy"]}

    reader_cls = detect_layout("nyuv2", folder)  # found by layout detection, after the built-in layouts
    assert reader_cls.layout == "nyuv2-toy" and reader_cls is layouts().get("nyuv2-toy")
    task = catalog.task("nyuv2", "toy-floor")
    assert task.kind is catalog.kind("toy-mask") and catalog.KINDS.source("toy-mask") == source

    reader = open_reader("nyuv2", folder)
    assert reader.kind_of("floor") is task.kind
    cached = ArrowCacheReader(prepare(reader, cache_root=tmp_path / "cache").path)
    assert cached.stored["floor"] == "uint8" and cached.stored["depth"] == "float32"  # as the kinds say
    assert cached.target_kinds == {"floor": "toy-mask", "depth": "depth"}
    for index in range(3):
        got, want = cached.read("train", index, ("floor", "depth")), reader.read("train", index, ("floor", "depth"))
        assert all(np.array_equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    assert contact_sheet(reader, tmp_path / "toy.png", n=2).stat().st_size > 0

    assert methods_module.load_plugin_path(plugin) == []  # loading it again is a no-op, not a duplicate
    assert registered_from(source)["layout"] == ["nyuv2-toy"]


def test_ls_lists_what_a_plugin_file_registers(toy_plugin, cli):
    plugin, _ = toy_plugin
    code, text = cli("ls", "layouts", "--plugins", plugin)
    assert code == 0, text
    assert "nyuv2-toy" in text and "toy_plugin.py" in text and "nyuv2-mtan" in text
    code, text = cli("ls", "kinds")
    assert code == 0 and "toy-mask" in text and "segmentation" in text


def test_a_duplicate_in_a_plugin_is_refused_and_nothing_of_it_stays(tmp_path):
    plugin = tmp_path / "dup_layout.py"
    plugin.write_text(TOY_PLUGIN.format(kind="toy-dup-kind", layout="nyuv2-mtan"))  # the MTAN layout's name
    with pytest.raises(DuplicateNameError, match="layout 'nyuv2-mtan' is registered twice"):
        methods_module.load_plugin_path(plugin)
    assert "toy-dup-kind" not in catalog.KINDS and "nyuv2/toy-floor" not in catalog.TASKS
    assert layouts().get("nyuv2-mtan") is MtanReader and layouts().source("nyuv2-mtan") == "builtin"

    kind_twice = tmp_path / "dup_kind.py"
    kind_twice.write_text(TOY_PLUGIN.format(kind="depth", layout="nyuv2-toy-2"))
    with pytest.raises(DuplicateNameError, match="task kind 'depth' is registered twice"):
        methods_module.load_plugin_path(kind_twice)
    assert "nyuv2-toy-2" not in LAYOUTS

    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(PluginError, match="defines no method, reader, task kind, task or data set"):
        methods_module.load_plugin_path(empty)


def test_entry_points_register_readers_and_tasks(tmp_path, monkeypatch):
    """Packages advertising ``mtbench.layouts`` and ``mtbench.tasks`` (a dist-info on sys.path) are registered."""
    (tmp_path / "toy_layouts_pkg.py").write_text(
        TOY_PLUGIN.format(kind="toy-ep-kind", layout="nyuv2-toy-ep").replace("toy-floor", "toy-ep-floor")
    )
    (tmp_path / "toy_tasks_pkg.py").write_text(
        textwrap.dedent("""
            from mtbench.specs import Deferred, MetricSpec, TaskKind, TaskSpec

            SCORE = TaskKind(name="toy-score", head="image", loss=Deferred("mtbench.losses:bce_loss"),
                             evaluator=Deferred("mtbench.metrics:BinaryEvaluator.for_task"),
                             metrics=(MetricSpec("acc", True),), out_channels=1, preview="flag")
            SPECS = [TaskSpec(name="toy-score", family="celebamask", title="toy score", target="attr:Male",
                              kind=SCORE), SCORE]
        """)
    )
    dist = tmp_path / "toy_mtbench-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-mtbench\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[mtbench.layouts]\ntoy-readers = toy_layouts_pkg\n\n[mtbench.tasks]\ntoy-tasks = toy_tasks_pkg:SPECS\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(catalog, "_loaded", False)
    monkeypatch.setattr(layouts_module, "_loaded", False)
    readers, tasks = "entry point toy-readers (toy-mtbench)", "entry point toy-tasks (toy-mtbench)"
    try:
        catalog.load_builtins()
        assert registered_from(readers) == {
            "task kind": ["toy-ep-kind"], "task": ["nyuv2/toy-ep-floor"], "layout": ["nyuv2-toy-ep"]
        }
        assert registered_from(tasks) == {"task kind": ["toy-score"], "task": ["celebamask/toy-score"]}
        assert catalog.task("celebamask", "toy-score").kind is catalog.kind("toy-score")
        assert catalog.tasks().source("nyuv2/depth") == "builtin"
    finally:
        unregister_source(readers)
        unregister_source(tasks)
        for module in ("toy_layouts_pkg", "toy_tasks_pkg"):
            sys.modules.pop(module, None)


def _reader_class(**attributes: object) -> type[Reader]:
    """A concrete reader class (not registered) with ``attributes`` set."""
    methods = {
        "detect": classmethod(lambda cls, root: False),
        "describe": classmethod(lambda cls: ""),
        "splits": lambda self: ("train",),
        "sample_ids": lambda self, split: [],
        "_read_image": lambda self, split, index: None,
        "_read_target": lambda self, split, index, target: None,
        "files": lambda self: [],
    }
    return type("Unregistered", (Reader,), {**methods, **attributes})


def test_a_reader_must_name_the_kind_of_every_target():
    bare = dict(layout="toy-x", family="nyuv2", title="toy")
    with pytest.raises(PluginError, match="declares no kind for 'floor'"):
        register_layout(
            _reader_class(**bare, target_sources={"floor": "f", "depth": "d"}, target_kinds={"depth": "depth"})
        )
    with pytest.raises(PluginError, match="cannot be registered as a layout") as info:
        register_layout(_reader_class(family="nyuv2", title="toy", target_sources={}))
    assert "no layout" in str(info.value)
    with pytest.raises(PluginError, match="not a reader class"):
        register_layout(dict)  # type: ignore[arg-type]
    assert "toy-x" not in LAYOUTS


def test_a_task_needs_a_registered_kind_and_a_kind_a_fitting_preview():
    unregistered = dataclasses.replace(catalog.kind("edges"), name="toy-unregistered")
    with pytest.raises(PluginError, match="names the task kind 'toy-unregistered', which is not registered"):
        catalog.register_task(TaskSpec(name="toy", family="nyuv2", title="toy", target="edge", kind=unregistered))
    assert "nyuv2/toy" not in catalog.TASKS
    with pytest.raises(ConfigError, match="preview 'labels' does not fit a image head"):
        TaskKind(name="x", head="image", loss=Deferred("mtbench.losses:bce_loss"),
                 evaluator=Deferred("mtbench.metrics:BinaryEvaluator.for_task"), metrics=(MetricSpec("acc", True),),
                 out_channels=1, preview="labels")


def test_built_in_targets_keep_their_kinds_and_cache_types():
    for layout in ("nyuv2-mtan", "nyuv2-nyudmt", "nyuv2-parquet", "celebamask-official", "celebamask-parquet"):
        reader = layouts().get(layout)
        assert set(reader.target_kinds) >= set(reader.target_sources), layout
    expected = {"semantic13": "segmentation", "depth": "depth", "normal": "normals", "edge": "edges"}
    assert {t: MtanReader.target_kinds[t] for t in MtanReader.target_sources} == expected
    # the type a cache stores each non-label target in, as format 2 always stored it
    cached = {name: catalog.kind(name).cache_dtype or catalog.kind(name).dtype for name in ("depth", "normals")}
    assert cached == {"depth": "float32", "normals": "float32"}
    assert (catalog.kind("edges").cache_dtype, catalog.kind("binary").cache_dtype) == ("uint8", "int8")


def test_a_cache_without_recorded_kinds_takes_them_from_its_source_layout(nyu_mtan, tmp_path):
    """Caches written before kinds and label ranges were recorded still say them (and draw the same sheet)."""
    path = prepare(MtanReader(nyu_mtan), cache_root=tmp_path).path
    meta = json.loads((path / CACHE_META).read_text())
    assert meta["kinds"] == {t: MtanReader.target_kinds[t] for t in MtanReader.target_sources}
    assert meta["label_values"] == {"semantic13": [-1, 12]}
    del meta["kinds"], meta["label_values"]
    meta[META_CHECK] = meta_check(meta)
    (path / CACHE_META).write_text(json.dumps(meta))
    old = ArrowCacheReader(path)
    assert old.target_kinds == MtanReader.target_kinds and old.label_values == MtanReader.label_values
    assert old.kind_of("edge") is catalog.kind("edges")
    assert contact_sheet(old, tmp_path / "old.png", n=1).stat().st_size > 0


def test_every_budget_says_its_summary_and_device():
    assert {name: b.device for name, b in BUDGETS.items()} == {
        "smoke": "cpu", "quick": "cpu", "paper": "gpu", "plateau": "cpu", "scarce": "cpu", "scarce-long": "cpu"
    }
    for name, b in BUDGETS.items():
        assert b.name == name and b.summary and "\n" not in b.summary
        assert f"{name} ({b.summary})" in budget_help()
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        dataclasses.replace(BUDGETS["smoke"], device="tpu")
    assert isinstance(BUDGETS["plateau"], Budget)


@pytest.mark.parametrize("command", [("run", "--help"), ("bench", "train", "--help")])
def test_every_budget_help_names_every_budget(cli, command):
    code, text = cli(*command)
    assert code == 0, text
    assert all(name in text for name in BUDGETS), text


def test_cli_help_lists_come_from_the_registries(cli):
    code, text = cli("data", "show", "--help")
    assert code == 0, text
    flat = " ".join(text.split())
    assert all(name in flat for name in layouts().names()), flat
    assert all(name in flat for name in catalog.datasets().names()), flat


def test_a_kind_declares_how_the_contact_sheet_draws_it(tmp_path, toy_plugin):
    """A kind's own preview function is used for its targets (the toy kind replaced by one that draws red)."""
    plugin, folder = toy_plugin
    methods_module.load_plugin_path(plugin)
    drawn: list[tuple[int, ...]] = []

    def red(value: np.ndarray, classes: int | None) -> tuple[np.ndarray, dict]:
        drawn.append(value.shape)
        return np.stack([value[0], 0 * value[0], 0 * value[0]], axis=-1), {}

    source = catalog.KINDS.source("toy-mask")
    kind = catalog.KINDS.get("toy-mask")
    catalog.KINDS.unregister("toy-mask")
    catalog.KINDS.register("toy-mask", dataclasses.replace(kind, preview=red), source=source)
    contact_sheet(open_reader("nyuv2", folder), tmp_path / "red.png", n=2)
    assert drawn == [(1, 4, 5), (1, 4, 5)]



def test_a_budgets_summary_and_device_are_not_part_of_the_protocol():
    """Describing a budget (or the device a sweep reserves for it) changes neither what is trained nor measured,
    so results keep their protocol signature and stored results stay comparable."""
    from mtbench.result import Protocol

    settings = Protocol.of(BUDGETS["paper"], [], []).settings
    assert "summary" not in settings and "device" not in settings


def test_a_plugin_file_loaded_again_into_a_fresh_method_registry_registers_again(tmp_path, monkeypatch):
    """What a file registered counts as loaded only while the registries in use hold it."""
    plugin = tmp_path / "again.py"
    plugin.write_text(
        "from dataclasses import dataclass\nfrom mtbench.methods import MethodInfo\n\n@dataclass\nclass Config:\n"
        "    lr: float = 0.1\n\nMETHOD = MethodInfo(name='again', summary='x', method=object, config=Config)\n"
    )
    first, second = Registry("method"), Registry("method")
    monkeypatch.setattr(methods_module, "_loaded_builtins", False)
    monkeypatch.setattr(methods_module, "METHODS", first)
    assert methods_module.load_plugin_path(plugin) == ["again"]
    monkeypatch.setattr(methods_module, "_loaded_builtins", False)
    monkeypatch.setattr(methods_module, "METHODS", second)
    assert methods_module.load_plugin_path(plugin) == ["again"] and "again" in second and "again" in first
