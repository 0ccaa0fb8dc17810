"""DVC stage `train@<model>`: data/processed → models/<model>/, reports/training/<model>.{csv,json} + MLflow.

Runs alone (`python stages/train.py --model unet`) or distributed
(`torchrun --nproc_per_node=N stages/train.py --model unet`). Fails (exit 1, one `error:` line)
on an invalid params file and when the run cannot save its own best epoch (TrainingError).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retinaseg.core.config import MODEL_NAMES, load_params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import clean_stale_temps
from retinaseg.tracking import MlflowTrainingLogger
from retinaseg.training.engine import train_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    m = args.model
    clean_stale_temps(
        [f"models/{m}", f".checkpoints/{m}", f"reports/training/{m}.csv", f"reports/training/{m}.json"]
    )
    try:
        params = load_params(args.params)
        summary = train_model(
            params,
            args.model,
            processed_dir=Path("data/processed"),
            out_dir=Path(f"models/{args.model}"),
            report_dir=Path("reports/training"),
            logger=MlflowTrainingLogger(),
        )
    except (RetinasegError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "best_val_dice" in summary:  # rank 0 of a distributed run, or a single process
        print(
            f"train@{args.model}: best val Dice {summary['best_val_dice']:.4f} "
            f"at epoch {summary['best_epoch']} "
            f"({summary['epochs_run']} epochs, {summary['train_seconds']:.0f}s on {summary['device']}); "
            f"model in models/{args.model}/"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
