"""Leaderboard: mean ± 95 % CI over seeds, tie-aware ranks, blanks instead of partial aggregates, committed
tables are fresh."""

from __future__ import annotations

import csv
import functools
import html
import http.server
import io
import math
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from mtbench.leaderboard import (
    ASSETS,
    build,
    collect,
    front_comparisons,
    front_delta_at,
    front_rows,
    interpolate_front,
    matched_points,
    render_csv,
    render_html,
    render_markdown,
    rows,
)
from mtbench.result import RunResult
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
    overrides: dict[str, str] | None = None,
    lam: tuple[float | list[float] | None, float | list[float] | None] = (None, None),
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
        "method": {"name": method, "config": dict(overrides or {})},  # overrides change the resolved config
        "overrides": dict(overrides or {}),
        "lambda": {"start": lam[0], "end": lam[1], "trajectory": []},
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
        store(RunResult.from_json(payload), tmp_path)
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
    # the fixed reference is stl's mean over seeds: mIoU 0.45, absErr 1.0
    # Δm seen per seed: (0.44 − 0.45)/0.45 = −2.22 %, (0.45 − 0.45)/0.45 = 0 -> mean −1.11
    assert ew.delta_seen.by_seed == {0: pytest.approx(-2.2222222), 1: pytest.approx(0.0)}
    # Δm held out (absErr ↓): −(0.9 − 1)/1 = +10 %, −(0.8 − 1)/1 = +20 %
    assert ew.delta_unseen.mean == pytest.approx(15.0)
    # stl's own row has a real spread: −11.1 and +11.1
    assert table["stl"].delta_seen.values == [pytest.approx(-11.111111), pytest.approx(11.111111)]
    assert table["stl"].delta_seen.half_width > 0
    # meta-sparsity's seed 2 has no stl run, but the fixed reference exists: (0.40, 0.30 vs 0.45)
    assert table["meta-sparsity"].delta_seen.mean == pytest.approx((-11.111111 - 33.333333) / 2)
    assert table["meta-sparsity"].sparsity.mean == pytest.approx(60.0)
    assert table["meta-sparsity"].params.mean == pytest.approx((500 + 300) / 2)
    assert table["meta-sparsity"].gflops.mean == pytest.approx((1.0 + 0.6) / 2)
    assert table["meta-sparsity"].flops_pct.mean == pytest.approx(40.0)
    assert table["meta-sparsity"].layers == [("stem.0", pytest.approx((50 + 75) / 2))]
    # a method missing a metric gets a blank cell for it; a single seed has no interval, hence no rank
    assert table["partial"].rank is None and table["partial"].metrics[("depth", "absErr")].mean is None
    # ew against stl, paired: +8.9 and −11.1 -> the interval holds 0: tied; meta-sparsity shares one seed with
    # either, so no pair with it is resolved
    assert {m: table[m].rank_text for m in ("ew", "stl", "meta-sparsity")} == dict.fromkeys(
        ("ew", "stl", "meta-sparsity"), "1="
    )
    assert table["stl"].vs_ew.interval.mean == pytest.approx((-11.111111 + 2.2222222 + 11.111111) / 2)
    assert table["stl"].vs_ew.wins == 1 and table["ew"].vs_ew is None
    assert table["stl"].metrics[("semseg", "mIoU")].mean == pytest.approx(0.45)

    # the per-seed reference (build --reference per-seed): stl of the same seed, as earlier tables
    (paired,) = collect(results, reference="per-seed")
    table = {row.method: row for row in rows(paired)}
    # (0.44 − 0.40)/0.40 = +10 %, (0.45 − 0.50)/0.50 = −10 % -> mean 0
    assert table["ew"].delta_seen.mean == pytest.approx(0.0)
    assert table["stl"].delta_seen.values == [0.0, 0.0]
    # meta-sparsity has seed 2, for which no stl exists: Δm blank, not averaged over seed 0 alone
    assert table["meta-sparsity"].delta_seen.mean is None and table["meta-sparsity"].delta_seen.text() == ""
    assert "stl's run of the same seed" in render_markdown(paired)


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
    assert "depth f1 ↑†" in markdown and "depth absErr ↓ " in markdown and "† Shown, but not in Δm" in markdown


def test_csv_has_blank_for_missing_aggregates(tmp_path):
    results = _store(tmp_path / "r", [_payload("ew", 0, 0.4, 1.0)])  # no stl at all
    (group,) = collect(results)
    record = next(csv.DictReader(io.StringIO(render_csv(group))))
    assert record["delta_m_seen"] == "" and record["semseg/mIoU"] == "0.4" and record["seeds"] == "1"
    assert record["delta_m_seen_n"] == "" and record["delta_m_seen_ci95_low"] == "" and record["rank"] == ""
    # one seed: a mean but no interval and no std (blank, never 0)
    assert record["semseg/mIoU_ci95_low"] == "" and record["semseg/mIoU_ci95_high"] == ""
    assert record["semseg/mIoU_std"] == ""


T_975_2 = 4.302653  # t_{0.975, 2}


def _tie_payloads() -> list[dict]:
    """stl and three 3-seed methods with Δm seen 10/20/30 (a), 0/10/20 (b), −60/−50/−40 (c), one 1-seed (d).

    Δm seen = (mIoU − 0.40) / 0.40 · 100 against stl's 0.40. The 95 % CI half-width of each 3-seed method is
    t_{0.975,2} · 10 / √3 = 24.84: a [−4.84, 44.84], b [−14.84, 34.84] and stl [0, 0] overlap one another,
    the old unpaired rule's tie. Paired by seed, a − b is +10 on every seed (interval [10, 10]): b ranks below
    a; a − stl (10, 20, 30) and b − stl (0, 10, 20) hold 0 in their intervals; c is below all three on every
    seed. So a and stl rank 1=, b 2, c 4; d (one seed) has no interval and no rank.
    """
    payloads = []
    for seed in range(3):
        payloads.append(_payload("stl", seed, 0.40, 1.0))
        payloads.append(_payload("a", seed, 0.44 + 0.04 * seed, 1.0))
        payloads.append(_payload("b", seed, 0.40 + 0.04 * seed, 0.9))
        payloads.append(_payload("c", seed, 0.16 + 0.04 * seed, 1.0))
    payloads.append(_payload("d", 0, 0.60, 1.0))
    return payloads


def _markdown_rows(markdown: str) -> dict[str, dict[str, str]]:
    """The main table of a rendered Markdown page: method -> header -> cell."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header) or cells[0] == "variant":
            break  # the front table, if any, follows
        table[cells[1]] = dict(zip(header, cells))
    return table


def test_table_shows_confidence_intervals_n_and_tied_ranks(tmp_path):
    (group,) = collect(_store(tmp_path / "r", _tie_payloads()))
    half = T_975_2 * 10 / math.sqrt(3)  # 24.8414
    table = {row.method: row for row in rows(group)}
    assert table["a"].delta_seen.mean == pytest.approx(20.0)
    assert table["a"].delta_seen.half_width == pytest.approx(half, abs=1e-5)
    assert [table[m].rank_text for m in ("a", "b", "stl", "c", "d")] == ["1=", "2", "1=", "4", ""]
    assert [row.method for row in rows(group)] == ["a", "stl", "b", "c", "d"]  # by rank, then mean Δm seen

    markdown = render_markdown(group)
    cells = _markdown_rows(markdown)
    assert list(cells["a"])[:3] == ["rank", "method", "n"]
    assert cells["a"]["rank"] == "1=" and cells["b"]["rank"] == "2" and cells["stl"]["rank"] == "1="
    # the paired difference to ew: absent here (no ew); a − b paired is shown through the rank
    assert cells["c"]["rank"] == "4" and cells["d"]["rank"] == ""
    assert cells["a"]["n"] == "3" and cells["d"]["n"] == "1"
    assert cells["a"]["Δm seen % ↑"] == f"20.00 ± {half:.2f}" == "20.00 ± 24.84"
    assert cells["c"]["Δm seen % ↑"] == "-50.00 ± 24.84"
    assert cells["stl"]["Δm seen % ↑"] == "0.00 ± 0.00"  # three identical seeds: a measured zero width
    assert cells["d"]["Δm seen % ↑"] == "50.00"  # one seed: the value alone, no interval (never ± 0)
    # the per-metric columns show the same 95 % CI: mIoU of a is 0.48 ± 4.302653 · 0.04 / √3 = 0.0994
    assert cells["a"]["semseg mIoU ↑"] == "0.4800 ± 0.0994"
    # held-out Δm of b (absErr 0.9 against 1.0 on every seed): +10 with zero spread
    assert cells["b"]["Δm held-out % ↑"] == "10.00 ± 0.00"
    assert "95 % confidence interval" in markdown and "marked = (e.g. 2=)" in markdown
    assert "mean ± std" not in markdown

    records = {r["method"]: r for r in csv.DictReader(io.StringIO(render_csv(group)))}
    a = records["a"]
    assert float(a["delta_m_seen"]) == pytest.approx(20.0)
    assert float(a["delta_m_seen_ci95_low"]) == pytest.approx(20.0 - half, abs=1e-5)
    assert float(a["delta_m_seen_ci95_high"]) == pytest.approx(20.0 + half, abs=1e-5)
    assert a["delta_m_seen_n"] == "3" and a["delta_m_unseen_n"] == "3"
    assert a["rank"] == "1" and a["rank_tied"] == "True"
    assert records["c"]["rank"] == "4" and records["c"]["rank_tied"] == "False"
    assert float(records["c"]["delta_m_seen_ci95_high"]) == pytest.approx(-50.0 + half, abs=1e-5)
    d = records["d"]
    assert d["delta_m_seen"] == "50.0" and d["delta_m_seen_n"] == "1"
    assert d["delta_m_seen_ci95_low"] == "" and d["delta_m_seen_ci95_high"] == "" and d["rank"] == ""
    assert float(a["semseg/mIoU_ci95_high"]) == pytest.approx(0.48 + T_975_2 * 0.04 / math.sqrt(3), abs=1e-6)

    page = render_html(group)
    assert ">1=</td>" in page and ">20.00 ± 24.84</td>" in page and "<th>n</th>" in page


def test_committed_leaderboard_matches_a_fresh_build(tmp_path):
    board = REPO / "leaderboard"
    fresh = tmp_path / "fresh"
    assert (board / "results" / "MANIFEST.json").is_file()  # so the build below checks every published hash
    build(board / "results", fresh)
    committed = sorted(p.name for p in board.iterdir() if p.is_file())
    assert committed == sorted(p.name for p in fresh.iterdir() if p.is_file())
    for name in committed:
        assert (board / name).read_text() == (fresh / name).read_text(), (
            f"leaderboard/{name} is stale: run `mtbench leaderboard build`"
        )


def _render(page: Path | str, profile: Path) -> str:
    """The DOM of ``page`` (a file or a URL) after Debian's headless chromium ran its scripts (skips without
    chromium)."""
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
            page.as_uri() if isinstance(page, Path) else page,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-ready="yes"' in done.stdout, done.stderr[-2000:]  # the shared sorting script loaded and ran
    return done.stdout


@pytest.mark.browser
def test_html_renders_in_headless_chromium(tmp_path):
    results = _store(tmp_path / "r", [_payload("stl", 0, 0.4, 1.0), _payload("ew", 0, 0.44, 0.9, sparsity=0.3)])
    page = next(p for p in build(results, tmp_path / "board") if p.suffix == ".html")
    dom = _render(page, tmp_path / "profile")
    assert dom.count("<tr>") >= 3 and 'class="point"' in dom and "<svg" in dom
    assert 'class="layer"' in dom  # the per-layer sparsity pictures


@pytest.mark.browser
def test_committed_pages_render_in_headless_chromium(tmp_path):
    pages = sorted((REPO / "leaderboard").glob("*.html"))
    if not pages:
        pytest.skip("no leaderboard page is committed yet")
    for page in pages:
        dom = _render(page, tmp_path / "profile")
        records = list(csv.DictReader(io.StringIO(page.with_suffix(".csv").read_text())))
        main_table = dom[dom.index('id="leaderboard"') :]
        main_table = main_table[: main_table.index("</table>")]
        assert main_table.count("<tr>") == len(records) + 1, page.name  # header + one row per variant
        primary = "delta_m_joint" if "delta_m_joint" in records[0] else "delta_m_seen"
        plottable = [r for r in records if r["flops_pct"] != "" and r[primary] != "" and r["group_sparsity_pct"] != ""]
        plot = dom[dom.index('<svg id="plot"') :]
        plot = plot[: plot.index("</svg>")]
        assert plot.count('class="point"') == len(plottable) >= 1, page.name  # one point per plottable variant
        seeds = sum(int(r[f"{primary}_n"]) for r in plottable)
        assert plot.count('class="seed"') == seeds, page.name  # and one dot per seed behind it
        assert 'class="layer"' in dom, page.name


SCRIPT_TAG = re.compile(r"<script\b([^>]*)>(.*?)</script>", re.S)


def _check_page_loads_the_shared_assets(page: Path) -> None:
    text = page.read_text()
    assert text.count('<link rel="stylesheet" href="leaderboard.css">') == 1, page.name
    assert SCRIPT_TAG.findall(text) == [(' src="leaderboard.js"', "")], page.name  # the only script, loaded
    assert "<style" not in text and " style=" not in text, page.name  # no styles of its own
    assert "document.querySelectorAll" not in text, page.name  # no copy of the script


def test_pages_load_the_shared_script_and_stylesheet_written_beside_them(tmp_path):
    results = _store(tmp_path / "r", [_payload("stl", 0, 0.4, 1.0), _payload("ew", 0, 0.44, 0.9, sparsity=0.3)])
    written = build(results, tmp_path / "board")
    board = tmp_path / "board"
    assert [p.name for p in written[: len(ASSETS)]] == ["leaderboard.css", "leaderboard.js"]
    for name in ASSETS:  # one copy each, beside the pages, identical to the package's file
        assert (board / name).read_text() == (REPO / "mtbench" / "assets" / name).read_text()
    pages = sorted(board.glob("*.html"))
    assert pages and all(p.parent == board for p in pages)
    for page in pages:
        _check_page_loads_the_shared_assets(page)


def test_committed_pages_load_the_shared_assets_committed_beside_them():
    board = REPO / "leaderboard"
    pages = sorted(board.glob("*.html"))
    if not pages:
        pytest.skip("no leaderboard page is committed yet")
    for name in ASSETS:
        assert (board / name).is_file(), f"leaderboard/{name} is missing: run `mtbench leaderboard build`"
    for page in pages:
        _check_page_loads_the_shared_assets(page)


# Appended to a copy of a page (beside it, so that it loads the same shared files): sorts by the method column
# (twice), then by Δm seen, and records the orders and two computed styles for the test to read in the DOM.
SORT_PROBE = """<script>
(function () {
  var table = document.getElementById("leaderboard"), heads = table.tHead.rows[0].cells;
  function column(index) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (row) {
      return row.cells[index].dataset.value;
    }).join("\\n");
  }
  var delta = Array.prototype.findIndex.call(heads, function (th) { return th.textContent.indexOf("Δm seen") === 0; });
  var probe = document.createElement("pre");
  probe.id = "probe";
  heads[1].click(); probe.dataset.up = column(1);
  heads[1].click(); probe.dataset.down = column(1);
  heads[delta].click(); probe.dataset.delta = column(delta);
  probe.dataset.collapse = getComputedStyle(table).borderCollapse;
  probe.dataset.cursor = getComputedStyle(heads[0]).cursor;
  document.body.appendChild(probe);
})();
</script>
"""


def _probe(dom: str) -> dict[str, str]:
    tag = re.search(r'<pre id="probe"([^>]*)>', dom)
    assert tag is not None, dom[-2000:]
    return {key: html.unescape(value) for key, value in re.findall(r'data-([a-z]+)="([^"]*)"', tag.group(1))}


@pytest.fixture
def served(tmp_path):
    """``serve(folder)`` -> the http:// URL of ``folder`` served by a local HTTP server (stopped afterwards)."""
    servers = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    def serve(folder: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
def test_pages_sort_and_are_styled_opened_from_the_folder_and_served(tmp_path, served):
    results = _store(
        tmp_path / "r",
        [_payload("stl", seed, 0.40 + 0.01 * seed, 1.0) for seed in (0, 1)]
        + [_payload("ew", seed, 0.44 + 0.02 * seed, 0.9, sparsity=0.3) for seed in (0, 1)]
        + [_payload("mgda", seed, 0.30 + 0.03 * seed, 1.2) for seed in (0, 1)]
        + [_payload("single", 0, 0.41, 1.0)]  # one seed: no rank, but a Δm seen to sort by
        + [_payload("orphan", 5, 0.50, 1.0)],  # no stl run of seed 5: per seed, Δm seen blank, sorted last
    )
    board = tmp_path / "board"
    page = next(p for p in build(results, board, reference="per-seed") if p.suffix == ".html")
    probe_page = board / "sort-probe.html"
    probe_page.write_text(page.read_text().replace("</body>", SORT_PROBE + "</body>"))
    (group,) = collect(results, reference="per-seed")
    methods = [row.method for row in rows(group)]
    deltas = {row.method: row.delta_seen.mean for row in rows(group)}
    for where, target in (("file", probe_page), ("http", served(board) + probe_page.name)):
        found = _probe(_render(target, tmp_path / f"profile-{where}"))
        up, down = found["up"].split("\n"), found["down"].split("\n")
        assert sorted(up) == sorted(methods) and down == up[::-1] and up != down, where
        values = found["delta"].split("\n")
        filled = [float(v) for v in values if v != ""]
        assert filled == sorted(filled) and len(filled) == sum(v is not None for v in deltas.values()), where
        assert values[len(filled) :] == [""] * (len(values) - len(filled)) and len(filled) < len(values), where
        assert found["collapse"] == "collapse" and found["cursor"] == "pointer", where  # leaderboard.css applied


def test_plot_labels_never_overlap():
    from mtbench.leaderboard import _spread

    placed = _spread([30.0, 30.0, 31.0, 100.0, 5.0], gap=12.0)
    assert placed[4] == 5.0 and placed[0] == 30.0 and placed[3] == 100.0  # nothing moves without need
    ordered = sorted(placed)
    assert all(b - a >= 12.0 for a, b in zip(ordered, ordered[1:]))


# --- variants, λ, the fixed-λ front and the plot ----------------------------------------------------------


def test_interpolate_front_by_hand():
    points = [(60.0, -25.0), (20.0, -5.0), (40.0, -9.0)]  # unsorted on purpose
    # 30 % lies halfway between (20, -5) and (40, -9): -7; 50 % halfway between (40, -9) and (60, -25): -17
    assert interpolate_front(points, 30.0) == pytest.approx(-7.0)
    assert interpolate_front(points, 50.0) == pytest.approx(-17.0)
    assert interpolate_front(points, 45.0) == pytest.approx(-13.0)  # a quarter of the way: -9 - 16/4
    assert interpolate_front(points, 40.0) == pytest.approx(-9.0)  # at a node
    assert interpolate_front(points, 20.0) == pytest.approx(-5.0) and interpolate_front(points, 60.0) == -25.0
    assert interpolate_front(points, 10.0) is None and interpolate_front(points, 60.5) is None  # outside
    assert interpolate_front([(20.0, -5.0)], 20.0) is None  # a single point is no front
    assert interpolate_front([], 0.0) is None


def test_variants_with_different_overrides_get_their_own_rows(tmp_path):
    results = _store(
        tmp_path / "r",
        [
            _payload("stl", 0, 0.40, 1.0),
            _payload("stl", 0, 0.80, 2.0, overrides={"width": "2"}),  # a variant of stl is not the reference
            _payload("fixed-lambda", 0, 0.38, 1.1, sparsity=0.2, overrides={"lam": "0.01"}),
            _payload("fixed-lambda", 0, 0.30, 1.3, sparsity=0.6, overrides={"lam": "0.1"}),
            _payload("meta-sparsity", 0, 0.36, 1.2, overrides={"lam_path": "prox", "alpha": "2"}),
        ],
    )
    (group,) = collect(results)
    table = {row.method: row for row in rows(group)}
    assert set(table) == {
        "stl",
        "stl (width=2)",
        "fixed-lambda (lam=0.01)",
        "fixed-lambda (lam=0.1)",
        "meta-sparsity (alpha=2, lam_path=prox)",  # keys sorted
    }
    assert table["fixed-lambda (lam=0.1)"].base == "fixed-lambda"
    # Δm against plain stl (0.40, 1.0): (0.38 - 0.40) / 0.40 = -5 %, (0.30 - 0.40) / 0.40 = -25 %
    assert table["fixed-lambda (lam=0.01)"].delta_seen.mean == pytest.approx(-5.0)
    assert table["fixed-lambda (lam=0.1)"].delta_seen.mean == pytest.approx(-25.0)
    assert table["stl (width=2)"].delta_seen.mean == pytest.approx(100.0)
    records = list(csv.DictReader(io.StringIO(render_csv(group))))
    assert sorted(r["method"] for r in records if r["base_method"] == "fixed-lambda") == [
        "fixed-lambda (lam=0.01)",
        "fixed-lambda (lam=0.1)",
    ]


def _front_payloads() -> list[dict]:
    """stl, a fixed-λ front of two variants (two seeds each), meta-sparsity between them, dense ew and mgda."""
    return [
        _payload("stl", 0, 0.40, 1.0),
        _payload("stl", 1, 0.40, 1.0),
        # λ = 0.01: sparsity 10 % and 30 % (mean 20), Δm seen -2.5 / -7.5 (mean -5), held out -5 / -15 (mean -10)
        _payload("fixed-lambda", 0, 0.39, 1.05, sparsity=0.1, overrides={"lam": "0.01"}, lam=(0.01, 0.01)),
        _payload("fixed-lambda", 1, 0.37, 1.15, sparsity=0.3, overrides={"lam": "0.01"}, lam=(0.01, 0.01)),
        # λ = 0.1: sparsity 60 %, Δm seen -25, held out -30
        _payload("fixed-lambda", 0, 0.30, 1.3, sparsity=0.6, overrides={"lam": "0.1"}, lam=(0.1, 0.1)),
        _payload("fixed-lambda", 1, 0.30, 1.3, sparsity=0.6, overrides={"lam": "0.1"}, lam=(0.1, 0.1)),
        # meta-sparsity: sparsity 50 %, Δm seen -10, held out -20
        _payload("meta-sparsity", 0, 0.36, 1.2, sparsity=0.5, lam=(0.1, 0.004)),
        _payload("meta-sparsity", 1, 0.36, 1.2, sparsity=0.5, lam=(0.1, 0.0044)),
        _payload("ew", 0, 0.44, 0.9),
        _payload("ew", 1, 0.44, 0.9),
        _payload("mgda", 0, 0.42, 0.95),
        _payload("mgda", 1, 0.42, 0.95),
    ]


def test_front_table_difference_matches_hand_computation(tmp_path):
    (group,) = collect(_store(tmp_path / "r", _front_payloads()))
    table = rows(group)
    front = front_rows(table)
    assert [r.method for r in front] == ["fixed-lambda (lam=0.01)", "fixed-lambda (lam=0.1)"]
    # front at 50 %: three quarters of the way from 20 % to 60 %
    #   seen: -5 + 0.75 * (-25 - -5) = -20 -> meta-sparsity -10 is 10 points better
    #   held out: -10 + 0.75 * (-30 - -10) = -25 -> meta-sparsity -20 is 5 points better
    assert front_delta_at(front, 50.0, "seen") == pytest.approx(-20.0)
    assert front_delta_at(front, 50.0, "unseen") == pytest.approx(-25.0)
    comparisons = {c.row.method: c for c in front_comparisons(table)}
    assert set(comparisons) == {"meta-sparsity", "ew", "mgda", "stl"}  # every non-fixed-λ variant with a cost
    # paired, per seed, against the seed's own front at the seed's own cost (group sparsity; FLOPs and params
    # are 100 % − sparsity here, so every axis gives the same differences):
    #   seed 0: front (10 %, -2.5) – (60 %, -25) at 50 %: -2.5 + 40/50 · (-22.5) = -20.5 -> +10.5
    #   seed 1: front (30 %, -7.5) – (60 %, -25) at 50 %: -7.5 + 20/30 · (-17.5) = -19.1667 -> +9.1667
    differences = [10.5, -10.0 + 7.5 + 17.5 * 20 / 30]
    mean = sum(differences) / 2
    half = 12.706205 * abs(differences[0] - differences[1]) / math.sqrt(2) / math.sqrt(2)  # t_{0.975,1} · s / √2
    meta = comparisons["meta-sparsity"]
    for axis in ("flops", "params", "groups"):
        assert meta.on_axis[axis].interval.mean == pytest.approx(mean)
        assert meta.on_axis[axis].interval.half_width == pytest.approx(half, rel=1e-5)
        assert meta.on_axis[axis].wins == 2
    #   held out: seed 0 -5 + 0.8 · (-25) = -25, seed 1 -15 + 2/3 · (-15) = -25; meta-sparsity -20: +5 on both
    assert meta.unseen.interval.mean == pytest.approx(5.0) and meta.unseen.interval.half_width == pytest.approx(0.0)
    assert comparisons["ew"].on_axis["flops"] is None  # 100 % of the dense FLOPs: outside every seed's front
    markdown = render_markdown(group)
    section = markdown[markdown.index("### Against the fixed-λ front") :]
    line = next(line for line in section.splitlines() if line.startswith("| meta-sparsity |"))
    paired = f"+{mean:.2f} ± {half:.2f} (2/2) \\*"
    assert [cell.strip() for cell in line.strip("|").split("|")] == [
        "meta-sparsity",
        "2",
        "50.0 ± 0.0",
        "50.0 ± 0.0",
        "50.0 ± 0.0",
        "-10.00 ± 0.00",
        paired,
        paired,
        paired,
        "-20.00 ± 0.00",
        "+5.00 ± 0.00 (2/2) \\*",
    ]
    ew_line = next(line for line in section.splitlines() if line.startswith("| ew |"))
    assert ew_line.split("|")[7].strip() == "" and ew_line.split("|")[8].strip() == ""
    assert "positive = better than fixed-λ at the same cost" in section.lower()
    assert 'id="front"' in render_html(group)


def test_no_front_table_with_a_single_fixed_lambda_variant(tmp_path):
    payloads = [p for p in _front_payloads() if p["overrides"] != {"lam": "0.1"}]
    (group,) = collect(_store(tmp_path / "r", payloads))
    assert front_comparisons(rows(group)) == []
    assert "fixed-λ front" not in render_markdown(group) and 'id="front"' not in render_html(group)


def test_lambda_column(tmp_path):
    payloads = [
        _payload("meta-sparsity", 0, 0.36, 1.2, sparsity=0.5, lam=(0.1, 0.004)),
        _payload("meta-sparsity", 1, 0.36, 1.2, sparsity=0.5, lam=(0.1, 0.0044)),
        # per-layer λ: geometric means sqrt(0.01 * 0.04) = 0.02 and sqrt(0.001 * 0.004) = 0.002
        _payload("meta-sparsity", 0, 0.36, 1.2, overrides={"per_layer": "true"}, lam=([0.01, 0.04], [0.001, 0.004])),
        _payload("ew", 0, 0.44, 0.9),
        _payload("old", 0, 0.44, 0.9),
    ]
    del payloads[-1]["lambda"], payloads[-1]["overrides"]  # a result file from before these fields existed
    payloads[-1]["sparsity"]["group_sparsity"] = None
    (group,) = collect(_store(tmp_path / "r", payloads))
    table = {row.method: row for row in rows(group)}
    assert table["meta-sparsity"].lam_text == "0.1 → 0.0042"
    assert table["meta-sparsity (per_layer=true)"].lam_text == "0.02 → 0.002"
    assert table["ew"].lam_text == "" and table["old"].lam_text == "" and table["old"].sparsity.mean is None
    markdown = render_markdown(group)
    assert "| λ start → end |" in markdown
    meta_line = next(line for line in markdown.splitlines() if line.startswith("|") and "| meta-sparsity |" in line)
    assert "| 0.1 → 0.0042 |" in meta_line
    records = {r["method"]: r for r in csv.DictReader(io.StringIO(render_csv(group)))}
    assert float(records["meta-sparsity"]["lambda_start"]) == pytest.approx(0.1)
    assert float(records["meta-sparsity"]["lambda_end"]) == pytest.approx(0.0042)
    assert math.isclose(float(records["meta-sparsity (per_layer=true)"]["lambda_end"]), 0.002, rel_tol=1e-6)
    assert records["ew"]["lambda_start"] == "" and records["ew"]["lambda_end"] == ""


def _svg_texts(page: str) -> list[str]:
    svg = page[page.index('<svg id="plot"') :]
    svg = svg[: svg.index("</svg>")]
    return [re.sub(r"<[^>]+>", "", text) for text in re.findall(r"<text[^>]*>(.*?)</text>", svg)]


def test_plot_labels_sparse_methods_and_the_front_but_not_dense_ones(tmp_path):
    (group,) = collect(_store(tmp_path / "r", _front_payloads()))
    page = render_html(group)
    texts = _svg_texts(page)
    assert "meta-sparsity" in texts and "ew" in texts
    assert "λ=0.01" in texts and "λ=0.1" in texts  # the front points carry their λ
    variants = {row.method for row in rows(group)}
    assert {text for text in texts if text in variants} == {"meta-sparsity", "ew"}  # no mgda, no stl
    svg = page[page.index('<svg id="plot"') : page.index("</svg>")]
    assert svg.count('class="point"') == 6  # every variant with a cost and a Δm seen
    assert svg.count('class="point" data-family="dense"') == 3 and svg.count('class="point" data-family="front"') == 2
    assert svg.count('class="seed"') == 12  # every seed of every variant, behind the means
    assert "<title>mgda, seed 1: Δm +5.00 %, FLOPs % 100.0</title>" in svg
    assert "<title>mgda: Δm +5.00 % (seeds +5.0, +5.0)" in svg  # dense points keep a tooltip
    assert 'class="front"' in svg  # the polyline through the front
    assert "compact FLOPs (% of the dense network" in svg  # the default axis is what a user pays
    assert 'id="plot-groups"' in page  # group sparsity: the secondary view
    caption = page[page.index('<figcaption class="dense-methods">') :]
    caption = caption[: caption.index("</figcaption>")]
    # sorted by Δm seen, best first: ew +10, mgda +5, stl 0
    assert caption.index("ew +10.00") < caption.index("mgda +5.00") < caption.index("stl +0.00")


def test_a_table_refuses_results_made_with_different_thread_counts(tmp_path):
    from mtbench.errors import LeaderboardError

    one, two = _payload("stl", 0, 0.4, 1.0), _payload("ew", 0, 0.44, 0.9)
    one["environment"], two["environment"] = {"threads": 1}, {"threads": 2}
    results = _store(tmp_path / "r", [one, two])
    with pytest.raises(LeaderboardError, match="thread"):
        collect(results, strict=True)
    assert len(collect(results)) == 1  # the non-strict display (`mtbench run`'s front) still reads them
    two["environment"] = {"threads": 1}
    assert len(collect(_store(tmp_path / "s", [one, two]), strict=True)) == 1


def test_runs_of_one_config_are_one_row_whatever_default_options_they_spelled(tmp_path):
    """`--set hypergradient=maml` (the default) and no option resolve to the same config: one row, labelled
    by the options every seed shares, with all seeds behind it."""
    plain = _payload("meta-sparsity", 0, 0.4, 1.0)
    plain["method"]["config"] = {"hypergradient": "maml"}
    spelled = _payload("meta-sparsity", 1, 0.5, 1.0, overrides={"hypergradient": "maml"})
    other = _payload("meta-sparsity", 0, 0.3, 1.0, overrides={"hypergradient": "online"})
    (group,) = collect(_store(tmp_path / "r", [plain, spelled, other]))
    assert sorted(group.runs) == ["meta-sparsity", "meta-sparsity (hypergradient=online)"]
    assert sorted(group.runs["meta-sparsity"]) == [0, 1]


def _joint_payload(method: str, seed: int, joint: float, adapted: float, abs_err: float, **options) -> dict:
    """A schema-3 result: joint, validation, trivial and test-interval parts beside the adapted metrics."""
    payload = _payload(method, seed, adapted, abs_err, **options)
    payload["schema_version"] = 3
    payload["protocol"] = {**payload["protocol"], "validation_samples": 250, "bn_recalibration_batches": 40}
    seg = payload["tasks"]["semseg"]
    seg["joint"] = {"mIoU": {"value": joint, "higher_is_better": True}}
    seg["validation"] = {"adapted": {"mIoU": adapted}, "joint": {"mIoU": joint + 0.01 * (method == "fixed-lambda")}}
    seg["trivial"] = {"val": {"mIoU": 0.07}, "test": {"mIoU": 0.07}}
    seg["test_interval"] = {"joint": {"mIoU": [joint - 0.01, joint + 0.02]}, "adapted": {"mIoU": [adapted, adapted]}}
    depth = payload["tasks"]["depth"]
    depth["trivial"] = {"val": {"absErr": 0.66}, "test": {"absErr": 0.66}}
    depth["validation"] = {"adapted": {"absErr": abs_err}}
    payload["evaluation"] = {"bn_recalibration_batches": 40, "splits": {"train": 750, "val": 250, "test": 1000},
                             "validation": "250 fixed samples"}
    flops = 2e12 if method != "meta-sparsity" else 3.2e12
    payload["training_cost"] = {"steps": 600, "counted_steps": 12, "flops_per_step": flops / 600, "flops": flops}
    dead = ["stage3.0.conv2"] if method == "meta-sparsity" and seed == 1 else []
    payload["sparsity"] = {**payload["sparsity"], "dead_layers": dead, "dead_branches": [d[:-6] for d in dead]}
    return payload


def test_schema_3_tables_rank_on_joint_and_show_the_protocol_checks(tmp_path):
    payloads = []
    for seed, (ref, ew_joint) in enumerate([(0.40, 0.44), (0.50, 0.45), (0.45, 0.45)]):
        payloads += [
            _joint_payload("stl", seed, ref, ref, 0.60 + 0.01 * seed),
            _joint_payload("ew", seed, ew_joint, ew_joint + 0.02, 0.62),
            _joint_payload("meta-sparsity", seed, 0.30, 0.35, 0.70, sparsity=0.25 * (seed == 1)),
        ]
    for lam, joint in ((0.01, 0.40), (0.02, 0.38)):
        options = {"overrides": {"lam": str(lam)}}
        payloads += [_joint_payload("fixed-lambda", s, joint, joint, 0.7, **options) for s in range(3)]
    (group,) = collect(_store(tmp_path / "r", payloads))
    assert group.scored_jointly
    table = {row.method: row for row in rows(group)}
    # Δm joint of ew per seed against stl's mean joint mIoU 0.45: −2.22, 0, 0; adapted (+0.02 each) differs
    assert table["ew"].delta_joint.mean == pytest.approx(-2.2222222 / 3)
    assert table["ew"].delta_seen.mean != pytest.approx(0.0)
    assert table["meta-sparsity"].dead == [0, 1, 0]
    assert table["meta-sparsity"].primary is table["meta-sparsity"].delta_joint
    markdown = render_markdown(group)
    assert "Δm joint % ↑" in markdown and "Rank (on Δm joint, paired)" in markdown and "0 1 0" in markdown
    assert "training FLOPs × ew" in markdown and "| 1.60 |" in markdown  # 3.2e12 / 2e12
    # the trivial check: stl's held-out absErr 0.61 ± 0.025 beats the trivial 0.66 by more than its interval
    assert "| depth (held out) | absErr ↓ | 0.6600 |" in markdown and markdown.count("| yes |") == 2
    # the choice on validation: fixed-λ 0.01 (Δm joint on validation higher), its test Δm joint reported
    assert "The validation split chooses fixed-lambda (lam=0.01)" in markdown
    assert "| semseg | mIoU | 0 | 0.4400 | 0.4300 – 0.4600 (± 0.0150) |" in markdown
    header = "| variant | n | FLOPs % | params % | group sparsity % | Δm joint % | − front at matched FLOPs % |"
    assert header in markdown
    assert "| Δm joint − ew (paired) |" in markdown
    assert "delta_m_joint" in render_csv(group).splitlines()[0]
    page = render_html(group)
    assert 'id="trivial"' in page and 'id="sampling"' in page


def test_matched_cost_points_pair_a_family_with_each_seeds_front(tmp_path):
    """prune at 20 % and 60 % group sparsity (Δm −5 and −15 on both seeds) against the front of
    `_front_payloads` at 50 %: prune −5 + 30/40 · (−10) = −12.5; the fronts −20.5 (seed 0) and −19.1667
    (seed 1) -> +8.0 and +6.6667, paired."""
    payloads = _front_payloads()
    for seed in (0, 1):
        payloads.append(_payload("prune", seed, 0.38, 1.0, sparsity=0.2, overrides={"sparsity": "0.2"}))
        payloads.append(_payload("prune", seed, 0.34, 1.0, sparsity=0.6, overrides={"sparsity": "0.6"}))
    (group,) = collect(_store(tmp_path / "r", payloads))
    points = {(m.family, m.axis.name, m.point): m for m in matched_points(rows(group))}
    half = 12.706205 * abs(8.0 - 20 / 3) / 2  # t_{0.975,1} · s / √2 with s = |d0 − d1| / √2
    for axis in ("groups", "flops", "params"):  # FLOPs and params are 100 % − sparsity here
        point = points[("prune (sparsity)", axis, 50)]
        assert point.family_delta.values == [pytest.approx(-12.5)] * 2
        assert point.difference.interval.mean == pytest.approx((8.0 + 20 / 3) / 2)
        assert point.difference.interval.half_width == pytest.approx(half, rel=1e-5)
    # 75 % of the FLOPs = 25 % sparsity: only seed 0's front (10–60 %) reaches it: −6.25 − (−9.25) = +3.0
    single = points[("prune (sparsity)", "flops", 75)]
    assert single.difference.n == 1 and single.difference.interval.mean == pytest.approx(3.0)
    assert ("prune (sparsity)", "flops", 25) not in points  # 75 % sparsity: beyond prune's curve
    assert not any(family.startswith("meta-sparsity") for family, _, _ in points)  # one variant: no curve
    assert "### Method families against the front at fixed cost points" in render_markdown(group)


def test_split_values_show_the_seeds_range():
    from mtbench.leaderboard import Cell

    assert Cell([0.0, 0.0, 26.3, 26.3, 0.0]).split_values  # two clusters: the gap is the whole range
    assert Cell([-20.0, -25.0, -30.0, -257.0, -130.0]).split_values  # two outliers, far beyond 3 MADs
    assert not Cell([10.0, 20.0, 30.0]).split_values  # evenly spread
    assert not Cell([1.0, 1.3, 0.8, 1.1, 0.9]).split_values
    assert not Cell([1.0, 5.0]).split_values  # too few seeds to tell
    # s = 14.405, t_{0.975,4} · s / √5 = 17.89
    assert Cell([0.0, 0.0, 0.0, 26.3, 26.3]).text_with_range(1) == "10.5 ± 17.9 (seeds 0.0 … 26.3)"
    assert Cell([10.0, 20.0, 30.0]).text_with_range(1) == Cell([10.0, 20.0, 30.0]).text(1)
