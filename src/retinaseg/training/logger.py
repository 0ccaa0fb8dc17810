"""What the training engine reports to: an interface, so training does not depend on MLflow.

The engine calls a :class:`TrainingLogger` on rank 0: ``run()`` around the whole training,
``log_environment()`` once the run is open, ``log_epoch()`` after every epoch (and for the epochs
of a resumed run) and ``log_outputs()`` once at the end. The values that differ from run to run
(epoch ``seconds``, the summary's ``train_seconds`` and ``mlflow_run_id``) reach the logger but not
the DVC outputs. This base class records nothing (tests and tools train without a tracking
store); ``stages/train.py`` passes :class:`retinaseg.tracking.MlflowTrainingLogger`, which lives
in the tracking layer above training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from retinaseg.core.config import Params


class TrainingLogger:
    """Records nothing; subclass it to send a training run somewhere."""

    @contextlib.contextmanager
    def run(self, params: Params, model_name: str, data_hash: str, device: str) -> Iterator[str | None]:
        """Open the run for the whole training; yields its id (None when nothing is recorded)."""
        yield None

    def log_environment(self, environment: dict[str, str]) -> None:
        """Where the run trains: python/torch versions, the installed packages' hash, CPU/GPU model
        (``retinaseg.training.environment.training_environment``; also in the model card)."""

    def log_epoch(self, row: dict[str, float]) -> None:
        """One history row: ``epoch`` plus that epoch's metrics and its wall time ``seconds``."""

    def log_outputs(
        self,
        summary: dict[str, Any],
        history_csv: Path,
        samples: Sequence[tuple[str, np.ndarray]],
        model: nn.Module,
        model_dir: Path,
    ) -> None:
        """The finished training: the summary, the history file, ``(id, image | truth | prediction)``
        panels of a few validation images, and the best model (saved in ``model_dir``)."""
