"""The terminal summary of validation problems: one line per finding, the full list in the report."""

from __future__ import annotations

from retinaseg.data.manifest import Problem
from retinaseg.data.validation import FINDING_FILES_SHOWN, findings


def test_a_repeated_finding_is_one_line_with_a_count_and_the_first_files():
    problems = [
        Problem(f"masks/{i:03d}.png", "grey_edges", "warning", f"{i / 100:.2%} grey (interpolated) pixels")
        for i in range(100)
    ]
    problems.append(Problem("images/flat.png", "constant_image", "error", "every pixel has the same value"))
    found = findings(problems)
    assert [(f.severity, f.check, len(f.files)) for f in found] == [
        ("error", "constant_image", 1),
        ("warning", "grey_edges", 100),
    ]
    # a single file reads exactly like the problem's own line
    assert found[0].line() == problems[-1].line()
    line = found[1].line()
    assert line.startswith(
        "WARNING  grey_edges: 100 files (masks/000.png, masks/001.png, masks/002.png, +97 more)"
    )
    assert "masks/003.png" not in line and FINDING_FILES_SHOWN == 3
    assert line.endswith("e.g. masks/000.png: 0.00% grey (interpolated) pixels")


def test_each_check_and_severity_is_its_own_finding():
    problems = [
        Problem("b.png", "duplicate_id", "error", "id 'b' is used by more than one pair"),
        Problem("a.png", "duplicate_id", "error", "id 'b' is used by more than one pair"),
        Problem("a.png", "alpha_channel", "warning", "image has an alpha channel (dropped)"),
    ]
    found = findings(problems)
    assert [(f.check, f.files) for f in found] == [
        ("duplicate_id", ("a.png", "b.png")),
        ("alpha_channel", ("a.png",)),
    ]
    assert found[0].line() == (
        "ERROR  duplicate_id: 2 files (a.png, b.png), e.g. a.png: id 'b' is used by more than one pair"
    )
    assert findings([]) == []
