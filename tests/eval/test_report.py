"""Report files: rounded JSON, Markdown table and one bar chart per plotted metric."""

from __future__ import annotations

import json
import math

import pytest

from workembed.eval.plots import metric_bars
from workembed.eval.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

REPORT = {
    "model": "minilm",
    "scorer": "cosine",
    "k": 100,
    "datasets": {"tiny": {"queries": 4, "targets": 6}, "none": {"queries": 1, "targets": 2}},
    "results": {
        "tiny": {
            "minilm": {"n_queries": 3, "map": 0.912345, "rp@5": 1.0},
            "bm25": {"n_queries": 3, "map": 7 / 9, "rp@5": 0.5},
        },
        "none": {
            "minilm": {"n_queries": 0, "map": math.nan, "rp@5": math.nan},
            "bm25": {"n_queries": 0, "map": math.nan, "rp@5": math.nan},
        },
    },
}


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk that follows the signature."""
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_write_report_writes_json_markdown_and_one_png_per_metric(tmp_path):
    from matplotlib.image import imread

    files = write_report(REPORT, tmp_path / "reports" / "zero-shot.json")
    folder = tmp_path / "reports"
    assert files == {
        "json": folder / "zero-shot.json",
        "markdown": folder / "zero-shot.md",
        "rp@5": folder / "zero-shot-rp_at_5.png",
        "map": folder / "zero-shot-map.png",
    }
    written = json.loads(files["json"].read_text())
    assert written["results"]["tiny"]["bm25"]["map"] == 0.7778
    assert written["results"]["none"]["minilm"]["map"] is None
    assert "| tiny | minilm | 3 | 0.9123 |" in files["markdown"].read_text()
    for metric in ("rp@5", "map"):
        data = files[metric].read_bytes()
        assert _png_size(data) == (720, 540)  # 6 x 4.5 inches at 120 dpi
        assert imread(files[metric]).shape == (540, 720, 4)  # the whole file decodes


def test_plots_can_be_chosen_or_left_out(tmp_path):
    assert set(write_report(REPORT, tmp_path / "r.json", plots=())) == {"json", "markdown"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r.json", "r.md"]
    files = write_report(REPORT, tmp_path / "s.json", plots=["ndcg@10"])
    assert files["ndcg@10"] == tmp_path / "s-ndcg_at_10.png"
    with pytest.raises(ValueError, match="unknown plot metric.*precision"):
        write_report(REPORT, tmp_path / "t.json", plots=["precision"])
    assert not (tmp_path / "t.json").exists()


def test_bar_chart_width_grows_with_datasets_and_systems(tmp_path):
    wide = {
        **REPORT,
        "results": {f"set-{i}": {f"sys-{j}": {"map": 0.1 * j} for j in range(3)} for i in range(6)},
    }
    path = metric_bars(wide, "map", tmp_path / "wide.png")
    assert _png_size(path.read_bytes()) == (1320, 540)  # (2 + 0.5 * 6 * 3) = 11 inches at 120 dpi
    with pytest.raises(ValueError, match="unknown metric 'MAP'"):
        metric_bars(REPORT, "MAP", tmp_path / "x.png")
