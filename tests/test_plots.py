"""Pictures: every chart writes a PNG (checked by its signature), and a learned-λ chart only for a learned λ."""

from __future__ import annotations

from mtbench.plots import lambda_chart, sparsity_chart
from mtbench.result import HistoryRow

PNG = b"\x89PNG\r\n\x1a\n"


def test_contact_sheet_is_a_png(cli, nyu_mtan, tmp_path):
    code, text = cli("data", "show", "nyuv2", "--root", nyu_mtan, "--out", tmp_path / "sheet.png")
    assert code == 0, text
    assert (tmp_path / "sheet.png").read_bytes()[:8] == PNG


def test_lambda_and_sparsity_charts(tmp_path):
    history = [
        HistoryRow.from_json({"step": s, "lambda": 0.01 / (1 + s), "lambda_grad": (-1) ** s * 0.1,
                              "lambda_grad_positive": 0.5, "group_sparsity": 0.01 * s})
        for s in range(0, 50, 10)
    ]  # fmt: skip
    assert lambda_chart(history, tmp_path / "l.png").read_bytes()[:8] == PNG
    assert lambda_chart([HistoryRow(step=0, group_sparsity=0.0)], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    layers = [{"name": "a", "groups": 4, "zero_groups": 1}, {"name": "b", "groups": 2, "zero_groups": 2}]
    stats = {"layers": layers, "group_sparsity": 0.5, "param_sparsity": 0.4}
    assert sparsity_chart(stats, tmp_path / "s.png").read_bytes()[:8] == PNG
