"""bench_report.py's plots: the learning curve's legend hides none of its points, and shows whole."""

import os

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
