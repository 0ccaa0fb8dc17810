"""Copy reports/comparison.md into README.md between <!-- comparison:start --> and <!-- comparison:end -->.

Run by hand (`python scripts/update_readme.py`) after `dvc repro`; the compare stage itself never
edits README.md, which is not one of its declared outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinaseg.evaluation.reporting import update_readme_section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--table", default="reports/comparison.md")
    parser.add_argument("--marker", default="comparison")
    args = parser.parse_args(argv)
    table = Path(args.table)
    if not table.is_file():
        print(f"error: {table}: not found (run `dvc repro compare` first)", file=sys.stderr)
        return 1
    try:
        changed = update_readme_section(args.readme, args.marker, table.read_text())
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
