"""How many CPU threads and DataLoader workers one job may use: the one place that decides.

A machine's cores are shared by the jobs running on it at once (``dvc queue start -j N``, a Ray
sweep's trials, torchrun's processes on one node). Each job takes ``cores // jobs`` (at least 1):
two trainings that each take every core thrash (measured on 2 cores: epochs went from ~17 s to
~110 s). The number of concurrent jobs comes from the environment variable ``RETINASEG_JOBS``
(set it beside ``dvc queue start -j N``; ``retinaseg queue`` and the sweep set it themselves), and
from torchrun's ``LOCAL_WORLD_SIZE`` (its processes on this node).

``base.threads``: 0 = this job's share of the cores; N > 0 = exactly N.
``base.workers``: ``auto`` = on CUDA, this job's share of the cores minus the one that drives the
GPU, at most :data:`MAX_AUTO_WORKERS`; on the CPU, 0 (the cores are busy with the model itself and
a worker process would only take threads from it); N = exactly N.
"""

from __future__ import annotations

import os

from retinaseg.core.errors import RetinasegError

JOBS_ENV = "RETINASEG_JOBS"
MAX_AUTO_WORKERS = 8


class BudgetError(RetinasegError, ValueError):
    """A malformed ``RETINASEG_JOBS`` (names the variable and the value)."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def concurrent_jobs(environ: dict[str, str] | None = None) -> int:
    """Jobs sharing this machine: ``RETINASEG_JOBS`` × torchrun's processes on this node (≥ 1)."""
    env = os.environ if environ is None else environ
    jobs = 1
    raw = env.get(JOBS_ENV, "").strip()
    if raw:
        try:
            jobs = int(raw)
        except ValueError:
            raise BudgetError(
                f"{JOBS_ENV}={raw!r} is not an integer; set it to the number of jobs run at once"
            ) from None
        if jobs < 1:
            raise BudgetError(f"{JOBS_ENV}={raw!r} must be at least 1 (the number of jobs run at once)")
    local = env.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 0:
        jobs *= int(local)
    return jobs


def cpu_threads(requested: int, environ: dict[str, str] | None = None, cores: int | None = None) -> int:
    """Torch threads for this job: ``requested`` if > 0, else ``cores // jobs`` (≥ 1)."""
    if requested > 0:
        return requested
    cores = available_cores() if cores is None else cores
    return max(1, cores // concurrent_jobs(environ))


def loader_workers(
    requested: int | str, device_type: str, environ: dict[str, str] | None = None, cores: int | None = None
) -> int:
    """DataLoader workers for this job: ``requested`` if a number, else the ``auto`` rule above."""
    if requested != "auto":
        return int(requested)
    if device_type != "cuda":
        return 0
    share = cpu_threads(0, environ, cores)
    return max(0, min(MAX_AUTO_WORKERS, share - 1))
