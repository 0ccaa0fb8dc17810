"""DVC stage `crossdata_table`: reports/crossdata/*.json (one per dataset of params.yaml) →
reports/crossdata.md (models × datasets, F1 / AUC-ROC / MCC) and reports/crossdata.png (a heat-map of
F1); logs cross_<dataset>_{f1,auc_roc,mcc} and both files into each model's training run in MLflow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinaseg.core.config import load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.evaluation.crossdata import log_to_mlflow, write_table

OUT_MD = Path("reports/crossdata.md")
OUT_PNG = Path("reports/crossdata.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    clean_stale_temps([OUT_MD, OUT_PNG])
    try:
        params = load_params(args.params)
        reports = write_table(params, "reports/crossdata", OUT_MD, OUT_PNG)
        lines = log_to_mlflow(reports, params.mlflow.experiment, "models", (OUT_MD, OUT_PNG))
    except (RetinasegError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    listed = {f"{d.name}.json" for d in params.datasets}
    for stale in sorted(p.name for p in Path("reports/crossdata").glob("*.json") if p.name not in listed):
        print(f"note: reports/crossdata/{stale} is not a dataset of params.yaml: left out (delete it)")
    print(OUT_MD.read_text())
    print("\n".join(lines))
    print(f"wrote {OUT_MD} and {OUT_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
