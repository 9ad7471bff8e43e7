"""Leaderboard: mean ± std over seeds, blanks instead of partial aggregates, committed tables are fresh."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from mtbench.leaderboard import build, collect, render_csv, render_markdown, rows
from mtbench.results import store

REPO = Path(__file__).resolve().parent.parent


def _payload(
    method: str,
    seed: int,
    miou: float,
    abs_err: float,
    *,
    synthetic: bool = True,
    sparsity: float = 0.0,
    created: str = "2026-01-01T00:00:00+00:00",
    drop_metric: bool = False,
) -> dict:
    tasks = {
        "semseg": {"seen": True, "metrics": {"mIoU": {"value": miou, "higher_is_better": True}}},
        "depth": {"seen": False, "metrics": {"absErr": {"value": abs_err, "higher_is_better": False}}},
    }
    if drop_metric:
        del tasks["depth"]
    return {
        "schema_version": 1,
        "run_id": f"{method}-{seed}",
        "created": created,
        "seed": seed,
        "method": {"name": method, "config": {}},
        "dataset": {
            "name": "nyuv2-synth" if synthetic else "nyuv2",
            "synthetic": synthetic,
            "identity": {"fingerprint": "abc" if synthetic else "real"},
        },
        "protocol": {"budget": "quick", "seen": ["semseg"], "unseen": ["depth"]},
        "tasks": tasks,
        "sparsity": {
            "group_sparsity": sparsity,
            "layers": [{"name": "stem.0", "groups": 4, "zero_groups": round(4 * sparsity)}],
        },
        "inference": {
            "params": {"dense": 1000, "compact": round(1000 * (1 - sparsity))},
            "flops": {"dense": 2e9, "compact": 2e9 * (1 - sparsity)},
        },
    }


def _store(tmp_path: Path, payloads: list[dict]) -> Path:
    for payload in payloads:
        store(payload, tmp_path)
    return tmp_path


def test_means_stds_delta_m_and_blanks(tmp_path):
    results = _store(
        tmp_path / "r",
        [
            _payload("stl", 0, 0.40, 1.0),
            _payload("stl", 1, 0.50, 1.0),
            _payload("ew", 0, 0.44, 0.9, sparsity=0.0),
            _payload("ew", 1, 0.45, 0.8),
            _payload("meta-sparsity", 0, 0.40, 1.1, sparsity=0.5),
            _payload("meta-sparsity", 2, 0.30, 1.0, sparsity=0.7),
            _payload("partial", 0, 0.20, 1.0, drop_metric=True),
        ],
    )
    (group,) = collect(results)
    table = {row.method: row for row in rows(group)}
    ew = table["ew"]
    assert ew.seeds == [0, 1]
    assert ew.metrics[("semseg", "mIoU")].mean == pytest.approx(0.445)
    assert ew.metrics[("semseg", "mIoU")].std == pytest.approx(0.0070710678)
    # Δm seen per seed: (0.44 − 0.40)/0.40 = +10 %, (0.45 − 0.50)/0.50 = −10 % -> mean 0
    assert ew.delta_seen.mean == pytest.approx(0.0)
    # Δm held out (absErr ↓): −(0.9 − 1)/1 = +10 %, −(0.8 − 1)/1 = +20 %
    assert ew.delta_unseen.mean == pytest.approx(15.0)
    # meta-sparsity has seed 2, for which no stl exists: Δm blank, not averaged over seed 0 alone
    assert table["meta-sparsity"].delta_seen.mean is None and table["meta-sparsity"].delta_seen.text() == ""
    assert table["meta-sparsity"].sparsity.mean == pytest.approx(60.0)
    assert table["meta-sparsity"].params.mean == pytest.approx((500 + 300) / 2)
    assert table["meta-sparsity"].gflops.mean == pytest.approx((1.0 + 0.6) / 2)
    assert table["meta-sparsity"].layers == [("stem.0", pytest.approx((50 + 75) / 2))]
    # a method missing a metric gets no rank and a blank cell for it
    assert table["partial"].rank is None and table["partial"].metrics[("depth", "absErr")].mean is None
    assert table["ew"].rank is not None
    # stl mIoU mean 0.45 ties ew's 0.445? no: stl 0.45 > ew 0.445, so on mIoU stl ranks above ew
    assert table["stl"].metrics[("semseg", "mIoU")].mean == pytest.approx(0.45)


def test_synthetic_and_real_never_share_a_table(tmp_path):
    results = _store(tmp_path / "r", [_payload("ew", 0, 0.4, 1.0), _payload("ew", 0, 0.4, 1.0, synthetic=False)])
    groups = collect(results)
    assert len(groups) == 2 and {g.synthetic for g in groups} == {True, False}
    written = build(results, tmp_path / "board")
    markdown = [p.read_text() for p in written if p.suffix == ".md" and p.name != "README.md"]
    assert sum("SYNTHETIC" in text for text in markdown) == 1


def test_metrics_outside_delta_m_are_marked_and_left_out(tmp_path):
    payloads = [_payload("stl", 0, 0.40, 1.0), _payload("ew", 0, 0.44, 0.9)]
    for payload, f1 in zip(payloads, (0.0, 0.5)):  # stl's F1 of 0 must not void Δm
        payload["tasks"]["depth"]["metrics"]["f1"] = {"value": f1, "higher_is_better": True, "in_delta_m": False}
    (group,) = collect(_store(tmp_path / "r", payloads))
    table = {row.method: row for row in rows(group)}
    assert table["ew"].delta_unseen.mean == pytest.approx(10.0)  # absErr only
    assert table["ew"].metrics[("depth", "f1")].mean == pytest.approx(0.5)
    markdown = render_markdown(group)
    assert "depth f1 ↑†" in markdown and "depth absErr ↓ " in markdown and "† Shown and ranked" in markdown


def test_csv_has_blank_for_missing_aggregates(tmp_path):
    results = _store(tmp_path / "r", [_payload("ew", 0, 0.4, 1.0)])  # no stl at all
    (group,) = collect(results)
    record = next(csv.DictReader(io.StringIO(render_csv(group))))
    assert record["delta_m_seen"] == "" and record["semseg/mIoU"] == "0.4" and record["seeds"] == "1"


def test_committed_leaderboard_matches_a_fresh_build(tmp_path):
    board = REPO / "leaderboard"
    fresh = tmp_path / "fresh"
    build(board / "results", fresh)
    committed = sorted(p.name for p in board.iterdir() if p.is_file())
    assert committed == sorted(p.name for p in fresh.iterdir() if p.is_file())
    for name in committed:
        assert (board / name).read_text() == (fresh / name).read_text(), (
            f"leaderboard/{name} is stale: run `mtbench leaderboard build`"
        )


def _render(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after Debian's headless chromium ran its scripts (skips without chromium)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-ready="yes"' in done.stdout, done.stderr[-2000:]  # the sorting script ran
    return done.stdout


def test_html_renders_in_headless_chromium(tmp_path):
    results = _store(tmp_path / "r", [_payload("stl", 0, 0.4, 1.0), _payload("ew", 0, 0.44, 0.9, sparsity=0.3)])
    page = next(p for p in build(results, tmp_path / "board") if p.suffix == ".html")
    dom = _render(page, tmp_path / "profile")
    assert dom.count("<tr>") >= 3 and 'class="point"' in dom and "<svg" in dom
    assert 'class="layer"' in dom  # the per-layer sparsity pictures


def test_committed_pages_render_in_headless_chromium(tmp_path):
    pages = sorted((REPO / "leaderboard").glob("*.html"))
    if not pages:
        pytest.skip("no leaderboard page is committed yet")
    for page in pages:
        dom = _render(page, tmp_path / "profile")
        methods = len(list(csv.DictReader(io.StringIO(page.with_suffix(".csv").read_text()))))
        assert dom.count("<tr>") == methods + 1, page.name  # header + one row per method
        assert dom.count('class="point"') >= 1 and 'class="layer"' in dom, page.name


def test_plot_labels_never_overlap():
    from mtbench.leaderboard import _spread

    placed = _spread([30.0, 30.0, 31.0, 100.0, 5.0], gap=12.0)
    assert placed[4] == 5.0 and placed[0] == 30.0 and placed[3] == 100.0  # nothing moves without need
    ordered = sorted(placed)
    assert all(b - a >= 12.0 for a, b in zip(ordered, ordered[1:]))
