"""Small, generic helpers that turn numbers into Markdown: tables with the best value in bold, and the
replacement of a marked section of a Markdown file (the README's comparison table).

Hand-written on purpose: ``pandas.DataFrame.to_markdown`` needs the optional ``tabulate`` package and
cannot bold the best cell per column; the whole job is a few lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retinaseg.core.fileio import write_text


def format_value(value: Any, digits: int = 4) -> str:
    """A cell's text: floats with ``digits`` decimals, ``None``/NaN as an en dash, the rest via ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def best_rows(values: Sequence[Any], higher_is_better: bool = True) -> set[int]:
    """Indices of the best numeric values in a column (all of them on a tie); non-numbers are ignored."""
    numeric = [
        (i, float(v))
        for i, v in enumerate(values)
        if isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(float(v))
    ]
    if not numeric:
        return set()
    pick = max if higher_is_better else min
    best = pick(v for _, v in numeric)
    return {i for i, v in numeric if v == best}


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    digits: int | Sequence[int] = 4,
    bold_best: dict[int, bool] | None = None,
) -> str:
    """A GitHub Markdown table.

    Args:
        headers: column titles.
        rows: cell values (numbers are formatted with ``digits``; one int for all columns or one per column).
        bold_best: ``{column index: higher_is_better}``: the best value of each listed column is **bold**.
    """
    n = len(headers)
    if any(len(r) != n for r in rows):
        raise ValueError(f"every row needs {n} cells")
    col_digits = [digits] * n if isinstance(digits, int) else list(digits)
    cells = [[format_value(v, col_digits[j]) for j, v in enumerate(r)] for r in rows]
    for col, higher in (bold_best or {}).items():
        for i in best_rows([r[col] for r in rows], higher):
            cells[i][col] = f"**{cells[i][col]}**"
    numeric_col = [
        bool(rows) and all(isinstance(r[j], int | float) or r[j] is None for r in rows) for j in range(n)
    ]
    align = ["---:" if numeric_col[j] else ":---" for j in range(n)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


def _markers(marker: str) -> tuple[str, str]:
    return f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"


def replace_section(text: str, marker: str, markdown: str, source: str = "<text>") -> str:
    """``text`` with everything between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` replaced."""
    start, end = _markers(marker)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    matches = pattern.findall(text)
    if len(matches) != 1:
        what = "no" if not matches else f"{len(matches)}"
        raise ValueError(f"{source}: expected one '{start}' … '{end}' section, found {what}")
    return pattern.sub(lambda _: f"{start}\n{markdown.strip()}\n{end}", text)


def update_readme_section(readme_path: str | Path, marker: str, markdown: str) -> bool:
    """Replace the ``marker`` section of a Markdown file in place (atomically); True when it changed."""
    path = Path(readme_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    old = path.read_text()
    new = replace_section(old, marker, markdown, str(path))
    if new != old:
        write_text(path, new)
    return new != old
