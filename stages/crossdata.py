"""DVC stage `crossdata@<i>`: every trained model (models/*) scored on datasets[i] of params.yaml at the
threshold evaluate chose on the training data's val split (reports/metrics/*.json) →
reports/crossdata/<name>.json. The logic: retinaseg.evaluation.crossdata."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinaseg.core.config import ConfigError, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.evaluation.crossdata import CELL_SCORES, dataset_entry, evaluate_on_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a name from 'datasets' in params.yaml")
    parser.add_argument(
        "--source",
        help="must equal the dataset's source in params.yaml (dvc.yaml passes it so that a changed source "
        "reruns the stage without a dependency on the whole 'datasets' list)",
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    out = Path("reports/crossdata") / f"{args.dataset}.json"
    clean_stale_temps([out])
    try:
        params = load_params(args.params)
        index, entry = dataset_entry(params, args.dataset)
        if args.source is not None and args.source != entry.source:
            raise ConfigError(
                f"{args.params}: datasets[{index}].source is {entry.source!r}, but --source says "
                f"{args.source!r} (dvc.yaml is out of date with params.yaml: dvc repro)"
            )
        result = evaluate_on_dataset(params, args.dataset, out_path=out)
    except (RetinasegError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = result["report"]
    d = report["dataset"]
    role = "training dataset" if d["training"] else "unseen in training"
    print(f"crossdata {d['name']} ({role}): {d['images']}, {d['n_images']} images, FOV: {d['fov']}")
    for model, scores in report["models"].items():
        cells = ", ".join(f"{k} {scores[k]:.4f}" if scores[k] is not None else f"{k} –" for k in CELL_SCORES)
        ms = result["ms_per_image"][model]
        print(f"  {model}: threshold {scores['threshold']:.3f} (val) -> {cells} ({ms:.0f} ms/image)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
