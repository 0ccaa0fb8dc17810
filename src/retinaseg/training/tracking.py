"""Alias of :mod:`retinaseg.tracking` (docs/architecture.md lists the tracking helpers under
``retinaseg.training``; the implementation lives in ``src/retinaseg/tracking.py``)."""

from retinaseg.tracking import (
    TrackingError,
    configure,
    download_model_dir,
    latest_run_id,
    main_repo_root,
    start_run,
    tracking_uri,
)

__all__ = [
    "TrackingError",
    "configure",
    "download_model_dir",
    "latest_run_id",
    "main_repo_root",
    "start_run",
    "tracking_uri",
]
