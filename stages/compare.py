"""DVC stage `compare`: reports/metrics/*.json + reports/training/*.json → reports/comparison.{md,json},
models/champion.json; registers the champion in the MLflow registry (alias @champion)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinaseg.core.config import ConfigError, load_params
from retinaseg.evaluation.compare import compare_models
from retinaseg.registry import register_champion_choice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--no-register", action="store_true", help="skip the MLflow registry")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        champion = compare_models(params)
        if not args.no_register:
            champion = register_champion_choice(champion, params)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(Path("reports/comparison.md").read_text())
    name, metric, value = champion["name"], champion["metric"], champion["value"]
    print(f"champion: {name} ({metric} {value:.4f}) -> {champion['model_uri']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
