"""DVC stage `compare`: reports/metrics/*.json + reports/training/*.json → reports/comparison.{md,json},
models/champion.json; registers the best model in the MLflow registry and, outside experiments,
promotes it to @champion only when it beats the current champion (retinaseg.registry)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retinaseg.core.config import load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.evaluation.compare import compare_models
from retinaseg.registry import register_and_maybe_promote


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-register", action="store_true", help="skip the MLflow registry")
    args = parser.parse_args(argv)
    clean_stale_temps(["models/champion.json", "reports/comparison.md", "reports/comparison.json"])
    try:
        params = load_params(args.params)
        champion = compare_models(params)
        line = "not registered (--no-register)"
        if not args.no_register:
            metrics = json.loads(Path(f"reports/metrics/{champion['name']}.json").read_text())
            _, _, line = register_and_maybe_promote(champion, metrics, params)
    except (RetinasegError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(Path("reports/comparison.md").read_text())
    name, metric, value = champion["name"], champion["metric"], champion["value"]
    print(f"best model of this run: {name} ({metric} {value:.4f})")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
