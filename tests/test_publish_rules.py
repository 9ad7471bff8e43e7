"""`leaderboard publish` refuses what cannot be compared — a smoke-budget result, a result without its stl
reference, a cell with too few seeds, mixed schema or protocol versions — naming the file and the rule and
leaving the leaderboard folder as it was; ``--allow-incomparable`` publishes into a table marked as such."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_leaderboard import _payload
from typer.testing import CliRunner

from mtbench.cli import app
from mtbench.errors import LeaderboardError
from mtbench.leaderboard import build, collect, publish, render_markdown
from mtbench.leaderboard.rules import MIN_SEEDS, RULES, Table, breaches, rule_name
from mtbench.sweep_spec import load_spec

REPO = Path(__file__).resolve().parent.parent
SPEC = """schema_version = 1
budgets = ["quick"]
seeds = [{seeds}]

[[datasets]]
name = "nyuv2-synth"
unseen = ["depth"]

[methods.stl]
[methods.ew]
"""


# --- helpers ----------------------------------------------------------------------------------------------


def _runs(methods: tuple[str, ...] = ("stl", "ew"), seeds: tuple[int, ...] = (0, 1, 2), **fields: object) -> list:
    """Payloads of ``methods`` × ``seeds`` on nyuv2-synth at the quick budget (``fields`` replace top-level ones)."""
    payloads = []
    for index, method in enumerate(methods):
        for seed in seeds:
            payload = _payload(method, seed, 0.40 + 0.02 * index + 0.01 * seed, 1.0 - 0.03 * index + 0.01 * seed)
            payloads.append({**payload, **fields})
    return payloads


def _write(inbox: Path, payloads: list[dict]) -> list[Path]:
    """Each payload as a result file under ``inbox`` (named method-seed-schema.json)."""
    inbox.mkdir(parents=True, exist_ok=True)
    sources = []
    for payload in payloads:
        source = inbox / f"{payload['method']['name']}-{payload['seed']}-v{payload['schema_version']}.json"
        source.write_text(json.dumps(payload))
        sources.append(source)
    return sources


def _every_file(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _refused(board: Path, sources: list[Path], named: Path, rule: str, **options: object) -> str:
    """Publish ``sources`` into ``board``: refused, naming ``named`` and ``rule``, with nothing changed."""
    before = _every_file(board) if board.exists() else None
    with pytest.raises(LeaderboardError) as caught:
        publish(sources, board, **options)
    message = str(caught.value)
    assert message.startswith(f"{named}: refused by rule {rule} of table nyuv2-synth--"), message
    assert "--allow-incomparable" in message
    assert (_every_file(board) if board.exists() else None) == before
    return message


def _markdown(board: Path) -> str:
    (table,) = board.glob("nyuv2-synth--*.md")
    return table.read_text(encoding="utf-8")


def _html(board: Path) -> str:
    (page,) = board.glob("nyuv2-synth--*.html")
    return page.read_text(encoding="utf-8")


def _cli(*args: str) -> tuple[int, str]:
    """Run the mtbench CLI in-process; (exit code, output with line breaks and runs of spaces collapsed)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def board(tmp_path: Path) -> Path:
    """A published, comparable leaderboard: stl and ew, seeds 0–2."""
    folder = tmp_path / "board"
    publish(_write(tmp_path / "first", _runs()), folder)
    return folder


# --- the refusals -----------------------------------------------------------------------------------------


def test_smoke_budget_result_is_refused_naming_the_file_and_nothing_is_written(board, tmp_path):
    payloads = _runs()
    for payload in payloads:
        payload["protocol"]["budget"] = "smoke"
    sources = _write(tmp_path / "smoke", payloads)  # stl seeds 0–2, then ew's: the first row is ew's
    message = _refused(board, sources, sources[3], "smoke-budget")
    assert "ew seed 0 ran on budget smoke, a pipeline check, not a measurement" in message
    # into a folder that does not exist yet: not even the folder is made
    _refused(tmp_path / "new-board", sources, sources[3], "smoke-budget")
    assert not (tmp_path / "new-board").exists()


def test_result_without_its_reference_is_refused_and_a_published_reference_counts(board, tmp_path):
    # uw seed 3: no stl of seed 3 is published or published with it
    sources = _write(tmp_path / "uw", _runs(("uw",), (0, 1, 2, 3)))
    message = _refused(board, sources, sources[3], "no-reference")
    assert "uw seed 3 has no reference: its table holds no stl run of seed 3" in message
    # seeds 0–2 find stl of their seed among the published results; seed 3 its stl among the incoming ones
    publish(_write(tmp_path / "uw-and-stl", _runs(("uw",), (0, 1, 2, 3)) + _runs(("stl",), (3,))), board)
    assert "NOT COMPARABLE" not in _markdown(board)


def test_variant_with_fewer_seeds_than_a_table_needs_is_refused(board, tmp_path):
    sources = _write(tmp_path / "uw", _runs(("uw",), (0, 1)))
    message = _refused(board, sources, sources[0], "too-few-seeds")
    assert f"uw has 2 seed(s) (0, 1); a table cell needs at least {MIN_SEEDS}" in message


def test_with_a_spec_a_cell_needs_every_seed_of_the_spec(board, tmp_path):
    four = tmp_path / "four.toml"
    four.write_text(SPEC.format(seeds="0, 1, 2, 3"))
    three = tmp_path / "three.toml"
    three.write_text(SPEC.format(seeds="0, 1, 2"))
    sources = _write(tmp_path / "uw", _runs(("uw",), (0, 1, 2)))
    message = _refused(board, sources, sources[0], "too-few-seeds", spec=load_spec(four))
    assert f"uw lacks seed(s) 3 of the sweep spec {four}" in message
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(SPEC.format(seeds="0, 1, 2").replace('budgets = ["quick"]', 'budgets = ["scarce"]'))
    before = _every_file(board)
    with pytest.raises(LeaderboardError, match=f"the sweep spec {elsewhere} covers none of the tables"):
        publish(sources, board, spec=load_spec(elsewhere))
    assert _every_file(board) == before
    publish(sources, board, spec=load_spec(three))
    assert (board / "results" / "nyuv2-synth").is_dir() and "NOT COMPARABLE" not in _markdown(board)


def test_mixed_schema_or_protocol_versions_are_refused_but_schema_1_and_2_mix(tmp_path):
    board = tmp_path / "board"
    payloads = _runs(schema_version=2)
    for payload in payloads:
        payload["protocol"]["finetune_batch"] = 8  # what reading schema 1 fills in for the quick budget
    # scored under the evaluation protocol of schema 3 (it records how), in a table of old-protocol results
    evaluation = {"bn_recalibration_batches": 2, "splits": {"train": 20, "val": 4, "test": 8}, "validation": "4"}
    odd = {**payloads[-1], "schema_version": 3, "evaluation": evaluation}
    sources = _write(tmp_path / "mixed", payloads[:-1] + [odd])
    message = _refused(board, sources, sources[-1], "mixed-versions")
    assert "results of schema 1–2 (old protocol) and schema 3 (mtbench/protocol.py) in one table" in message
    assert "found:    5 of schema 1–2 (old protocol), 1 of schema 3 (mtbench/protocol.py)" in message
    # schema 1 reads exactly as schema 2 (the committed tables mix them): comparable
    publish(_write(tmp_path / "old", payloads[:3] + _runs(("ew",))), board)
    assert len(list((board / "results").rglob("*--seed*.json"))) == 6
    assert "NOT COMPARABLE" not in _markdown(board)


def test_a_refusal_names_every_rule_broken(tmp_path):
    payload = _payload("ew", 0, 0.4, 1.0)
    payload["protocol"]["budget"] = "smoke"
    (source,) = _write(tmp_path / "in", [payload])
    message = _refused(tmp_path / "board", [source], source, "smoke-budget")
    assert "(and 2 more breach(es) of: no-reference, too-few-seeds)" in message


# --- publishing anyway, and tables without a breach -----------------------------------------------------------


def test_allow_incomparable_publishes_and_the_table_carries_the_banner(tmp_path):
    board = tmp_path / "board"
    publish(_write(tmp_path / "in", _runs(seeds=(0, 1))), board, allow_incomparable=True)
    banner = "NOT COMPARABLE: too-few-seeds (ew has 2 seed(s) (0, 1); a table cell needs at least 3; and 1 more)"
    markdown = _markdown(board)
    assert markdown.splitlines()[2] == f"**{banner}**"
    assert f'<body>\n<p class="synthetic not-comparable">{banner}</p>\n<h1>' in _html(board)
    (entry,) = [line for line in (board / "README.md").read_text().splitlines() if line.startswith("- [")]
    assert entry.endswith(" — **NOT COMPARABLE: too-few-seeds**")
    assert "NOT COMPARABLE" not in next(board.glob("nyuv2-synth--*.csv")).read_text()
    # nothing is recorded beside the results: a rebuild recomputes the rules and marks the table again
    assert sorted(p.name for p in (board / "results").iterdir()) == ["MANIFEST.json", "nyuv2-synth"]
    build(board / "results", board)
    assert _markdown(board) == markdown
    # once the table holds enough seeds, the same rules let it through without a mark
    publish(_write(tmp_path / "more", _runs(seeds=(2,))), board)
    assert "NOT COMPARABLE" not in _markdown(board) + _html(board) + (board / "README.md").read_text()


def test_a_comparable_table_renders_exactly_as_without_the_rules(board):
    (group,) = collect(board / "results")
    assert breaches(Table(group)) == []
    assert _markdown(board) == render_markdown(group)
    assert "NOT COMPARABLE" not in _html(board) + (board / "README.md").read_text()


def test_only_the_tables_a_publish_changes_are_checked(tmp_path):
    board = tmp_path / "board"
    smoke = _runs()
    for payload in smoke:
        payload["protocol"]["budget"] = "smoke"
    publish(_write(tmp_path / "smoke", smoke), board, allow_incomparable=True)
    publish(_write(tmp_path / "quick", _runs()), board)  # another table: the smoke one does not block it
    marked = [line for line in (board / "README.md").read_text().splitlines() if "NOT COMPARABLE" in line]
    assert len(marked) == 1 and "budget smoke" in marked[0]
    # --record-existing adopts the whole store: every table is checked
    before = _every_file(board)
    with pytest.raises(LeaderboardError, match="refused by rule smoke-budget"):
        publish([], board, record_existing=True)
    assert _every_file(board) == before


def test_committed_tables_break_no_rule():
    groups = collect(REPO / "leaderboard" / "results", strict=True)
    assert groups and all(breaches(Table(group)) == [] for group in groups)
    assert [rule_name(rule) for rule in RULES] == ["smoke-budget", "no-reference", "too-few-seeds", "mixed-versions"]


# --- the command ------------------------------------------------------------------------------------------


def test_cli_refuses_names_the_file_and_publishes_with_the_option(tmp_path):
    payloads = _runs()
    for payload in payloads:
        payload["protocol"]["budget"] = "smoke"
    sources = [str(source) for source in _write(tmp_path / "in", payloads)]
    board = tmp_path / "board"
    code, output = _cli("leaderboard", "publish", *sources, "--out", str(board))
    assert code == 1 and f"error: {sources[3]}: refused by rule smoke-budget" in output
    assert "fix: run it on a measuring budget" in output and not board.exists()
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(seeds="0, 1, 2"))
    code, output = _cli("leaderboard", "publish", *sources, "--out", str(board), "--spec", str(spec))
    assert code == 1 and f"the sweep spec {spec} covers none of the tables" in output  # a smoke table
    code, output = _cli("leaderboard", "publish", *sources, "--out", str(board), "--allow-incomparable")
    assert code == 0 and "marked NOT COMPARABLE" in output
    assert _markdown(board).splitlines()[2].startswith("**NOT COMPARABLE: smoke-budget (")
