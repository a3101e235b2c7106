"""bench_report.py: the learning curve's legend hides none of its points and shows whole; the cost curve that decides."""

import os

import pytest

import bench_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_learning_curves_legend_covers_no_point(tmp_path):
    fig = bench_report.plot_learning_curve(os.path.join(REPO, "bench_results", "smollm2", "acceptance.jsonl"),
                                           str(tmp_path / "curve.png"))
    renderer = fig.canvas.get_renderer()
    [legend] = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    box = legend.get_window_extent(renderer)
    points = [p for ax in fig.axes for line in ax.get_lines() for p in ax.transData.transform(line.get_xydata())]
    assert len(points) > 50
    assert not [p for p in points if box.contains(*p)]
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0  # and it is not cut off


def test_break_even_and_the_predicted_speedup_by_hand():
    """T(1) = 10 ms, T(4) = 12 ms, T(8) = 20 ms (T(6) between them: 16 ms). sdsat k = 3 feeds
    4 and yields 1.8 tokens a forward: it breaks even at 1.2, predicted 1.8 / 1.2 = 1.5x.
    Passes that all carry SATs cost what the run's SAT curve says: fused feeding 8 at 30 ms
    breaks even at 3.0 (2.4 / 3.0 = 0.8x); a tree of copies alone stays on the plain curve."""
    row = {"temperature": 0, "compiled": False}
    res = {"forward_latency_s": {"1": 0.010, "4": 0.012, "8": 0.020}, "sat_latency_s": {"1": 0.010, "8": 0.030},
           "sets": {"p": {
               "ar": {**row, "kind": "ar", "tokens_fed_per_forward": 1, "tokens_per_forward": 1.0, "speedup": 1.0},
               "sdsat k=3": {**row, "kind": "chain", "tokens_fed_per_forward": 4, "tokens_per_forward": 1.8,
                             "speedup": 1.4},
               "tree": {**row, "kind": "draft_tree", "shape": "no SATs; 1 copies of 5", "tokens_fed_per_forward": 6,
                        "tokens_per_forward": 2.4, "speedup": 1.7},
               "fused k=2": {**row, "kind": "fused", "tokens_fed_per_forward": 8, "tokens_per_forward": 2.4,
                             "speedup": 0.9},
               "_repeated_4gram_fraction_ar": 0.1}}}
    rows = bench_report.break_even(res)
    assert [(r["method"], r["fed"]) for r in rows] == [("sdsat k=3", 4), ("tree", 6), ("fused k=2", 8)]
    assert rows[0]["cost_ratio"] == pytest.approx(1.2) and rows[0]["predicted"] == pytest.approx(1.5)
    assert rows[1]["cost_ratio"] == pytest.approx(1.6) and rows[1]["predicted"] == pytest.approx(1.5)
    assert rows[2]["cost_ratio"] == pytest.approx(3.0) and rows[2]["predicted"] == pytest.approx(0.8)
    assert "| p | sdsat k=3 | 4 | 1.20 | 1.80 | 1.50x | 1.40x |" in bench_report.break_even_table(res, "bfloat16")
