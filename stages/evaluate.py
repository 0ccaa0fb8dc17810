"""DVC stage `evaluate@<model>`: models/<model> + data/splits + data root → reports/metrics/<model>.json,
reports/per_image/<model>.csv, reports/plots/<model>/{roc,pr}.csv, reports/overlays/<model>/ + MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinaseg.core.config import MODEL_NAMES, ConfigError, load_params
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.evaluation.evaluate import evaluate_model, summary_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    m = args.model
    clean_stale_temps(
        [f"reports/{d}/{m}" for d in ("overlays", "plots")]
        + [f"reports/per_image/{m}.csv", f"reports/metrics/{m}.json"]
    )
    try:
        params = load_params(args.params)
        result = evaluate_model(
            params,
            args.model,
            model_dir=Path("models") / args.model,
            splits_dir=Path("data/splits"),
            data_root=Path(params.data.root),
            out=Path("reports"),
        )
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    m = result["metrics"]
    print(
        f"evaluate@{args.model}: {m['n_test_images']} test images, threshold {m['threshold']:.3f} (from val)"
    )
    print(summary_table(m))
    print(f"{result['mlflow']}; metrics in reports/metrics/{args.model}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
