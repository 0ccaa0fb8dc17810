"""DVC stage `validate`: data.root → data/manifest.csv, reports/validation/{summary.json,docs/}."""

from __future__ import annotations

import argparse
import sys

from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.data.validation import findings, validate_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    clean_stale_temps(["data/manifest.csv", "reports/validation"])  # a killed run's leftovers
    try:
        params = load_params(args.params)
        result = validate_dataset(
            params.data.source,
            params.data.root,
            params.validate,
            manifest_path="data/manifest.csv",
            report_dir="reports/validation",
            parts=params.data.parts,  # data.source: multi
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for finding in findings(result.problems):  # one line per kind of problem; all in summary.json
        print(finding.line())
    verdict = "passed" if result.success else "FAILED"
    print(
        f"validation {verdict}: {result.n_pairs} pairs, {len(result.errors)} errors, "
        f"{len(result.warnings)} warnings, {len(result.excluded)} excluded (reports/validation/summary.json)"
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
