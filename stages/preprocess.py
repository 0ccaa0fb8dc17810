"""DVC stage `preprocess`: data/splits + data.root → data/processed/{train,val,test}/."""

from __future__ import annotations

import argparse
import sys

from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.data.preprocess import run_preprocess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    clean_stale_temps(["data/processed"])  # a killed run's leftovers (never a live run's)
    try:
        params = load_params(args.params)
        summary = run_preprocess(
            "data/splits", params.data.root, "data/processed", params.preprocess, params.data.train_labels
        )
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{name} {n}" for name, n in summary["splits"].items())
    print(
        f"preprocess: {counts} at {summary['size']}px (clahe {summary['clahe']}); "
        f"{summary['fov_derived']} FOV masks derived"
    )
    if summary["train_labels"] == "union":
        union = ", ".join(f"{name} {summary['second_observer'][name]}" for name in ("train", "val"))
        print(f"preprocess: both observers' masks united for {union} images (test: the first observer's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
