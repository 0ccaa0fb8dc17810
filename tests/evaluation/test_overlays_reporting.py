"""Overlay colours, Markdown tables with bold best values, README section replacement."""

from __future__ import annotations

import numpy as np
import pytest

from retinaseg.evaluation.overlays import FN_COLOUR, FP_COLOUR, TP_COLOUR, error_overlay, side_by_side
from retinaseg.evaluation.reporting import markdown_table, update_readme_section
from retinaseg.inference.overlays import probability_overlay


def test_error_overlay_colours_each_outcome_distinctly():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    pred = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
    gt = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    fov = np.array([[1, 1, 1], [1, 0, 1]], dtype=bool)
    out = error_overlay(image, pred, gt, fov)
    assert tuple(out[0, 0]) == TP_COLOUR
    assert tuple(out[0, 1]) == FP_COLOUR
    assert tuple(out[0, 2]) == FN_COLOUR
    assert tuple(out[1, 0]) == (100, 100, 100)  # true negative: the image
    assert tuple(out[1, 1]) == (35, 35, 35)  # outside the FOV: darkened, not coloured
    assert len({TP_COLOUR, FP_COLOUR, FN_COLOUR}) == 3
    with pytest.raises(ValueError, match="shape"):
        error_overlay(image, pred[:, :2], gt)


def test_probability_overlay_tints_only_above_threshold():
    image = np.full((1, 3, 3), 50, dtype=np.uint8)
    prob = np.array([[0.2, 0.6, 1.0]])
    out = probability_overlay(image, prob, threshold=0.5)
    assert tuple(out[0, 0]) == (50, 50, 50)
    assert out[0, 1, 1] > 50 and out[0, 2, 1] > out[0, 1, 1]  # stronger tint where prob is higher
    assert side_by_side(out, out).shape == (1, 3 + 4 + 3, 3)


def test_markdown_table_bolds_best_per_column_in_its_direction():
    rows = [["a", 0.81, 7.8], ["b", 0.83, 1.9], ["c", None, 24.4]]
    md = markdown_table(["model", "f1", "params"], rows, digits=[0, 3, 1], bold_best={1: True, 2: False})
    lines = md.splitlines()
    assert lines[0] == "| model | f1 | params |"
    assert lines[1] == "|:---|---:|---:|"
    assert lines[2] == "| a | 0.810 | 7.8 |"
    assert lines[3] == "| b | **0.830** | **1.9** |"
    assert lines[4] == "| c | – | 24.4 |"


def test_update_readme_section_replaces_only_the_marked_text(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# T\n\nintro\n<!-- comparison:start -->\nold table\n<!-- comparison:end -->\n\nfooter\n"
    )
    assert update_readme_section(readme, "comparison", "| new |\n|---|\n") is True
    assert readme.read_text() == (
        "# T\n\nintro\n<!-- comparison:start -->\n| new |\n|---|\n<!-- comparison:end -->\n\nfooter\n"
    )
    assert update_readme_section(readme, "comparison", "| new |\n|---|") is False  # idempotent


def test_update_readme_section_without_markers_is_an_error_and_leaves_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="README.md.*comparison:start"):
        update_readme_section(readme, "comparison", "x")
    assert readme.read_text() == "no markers here\n"
