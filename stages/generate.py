"""DVC stage `generate`: params.synthetic → data/raw/synthetic/{train,test}/{images,masks,fov}/<id>.png
and reports/synthetic_montage.png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.data.synthetic import generate_dataset, write_montage

OUT = Path("data/raw/synthetic")
MONTAGE = Path("reports/synthetic_montage.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    clean_stale_temps([OUT, MONTAGE])  # what a killed run left behind (never a live run's)
    try:
        params = load_params(args.params).synthetic
        generate_dataset(OUT, params)  # written beside OUT, then renamed over it
        write_montage(OUT, MONTAGE)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = f"{params.n_train} train + {params.n_test} test samples"
    print(f"generate: {counts}, {params.size} px, seed {params.seed}")
    print(f"          -> {OUT}, montage {MONTAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
