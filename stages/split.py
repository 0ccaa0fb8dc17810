"""DVC stage `split`: data/manifest.csv → data/splits/{train,val,test}.csv, reports/split.json."""

from __future__ import annotations

import argparse
import sys

from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.data.manifest import read_manifest
from retinaseg.data.split import split_dataset, write_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    clean_stale_temps(["data/splits", "reports/split.json"])  # a killed run's leftovers
    try:
        params = load_params(args.params)
        splits, report = split_dataset(read_manifest("data/manifest.csv"), params.split, params.split_seed())
        write_splits(splits, report, "data/splits", "reports/split.json")
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{name} {n}" for name, n in report["counts"].items())
    print(f"split: {counts}; {report['n_groups']} groups (largest {report['largest_group']})")
    for name, part in report.get("parts", {}).items():  # data.source: multi
        own = "its own test split" if part["uses_dataset_split"] else "test carved by split.test_fraction"
        print(f"  {name}: " + ", ".join(f"{s} {n}" for s, n in part["counts"].items()) + f" ({own})")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
