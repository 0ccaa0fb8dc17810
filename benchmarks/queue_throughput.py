"""Queue throughput on one machine: 4 queued experiments run with ``-j 1`` vs ``-j 2``, same run.

In a throwaway copy of this repository (the working tree, a small synthetic config) the pipeline is
reproduced up to ``evaluate@unet`` once; then the same 4 experiments (``train.lr`` × 4: each retrains
and re-evaluates the U-Net) are queued and run by :func:`retinaseg.team.queue.run_queue`:

- ``-j 1`` (one at a time, ``RETINASEG_JOBS=1``: each takes every core),
- ``-j 2`` with the thread budget (``RETINASEG_JOBS=2``: each takes half the cores),
- ``-j 2`` without it (``RETINASEG_JOBS=1``: what plain ``dvc queue start -j 2`` did before the
  budget; two jobs each taking every core), unless ``--no-unbudgeted``.

Reports the wall time of each configuration (from queueing to the last experiment done) and writes
``reports/benchmarks/queue_throughput.json``. MLflow: ``MLFLOW_TRACKING_URI`` when set (the team
server), else a sqlite store in the temporary copy.

    python benchmarks/queue_throughput.py
    python benchmarks/queue_throughput.py --epochs 2 --no-unbudgeted      # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from retinaseg.core.budget import available_cores
from retinaseg.core.fileio import write_json
from retinaseg.team import queue

DEFAULT_OUT = Path("reports/benchmarks/queue_throughput.json")
REPO = Path(__file__).resolve().parents[1]
LRS = ("0.001", "0.002", "0.004", "0.008")


def small_params(epochs: int) -> dict[str, Any]:
    """A synthetic config where one experiment trains for seconds, not minutes."""
    return {
        "synthetic": {"n_train": 8, "n_test": 2, "size": 128},
        "preprocess": {"size": 128},
        "train": {"epochs": epochs, "batch_size": 4, "warmup_epochs": 0},
        "models": {"unet": {"base_channels": 16, "depth": 3}},
        "evaluate": {"bootstrap": 50, "n_overlays": 0},
    }


def _git_env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def make_copy(dest: Path, params_update: dict[str, Any], env: dict[str, str]) -> Path:
    """The working tree's files (tracked + untracked, not ignored; no outputs) as a fresh git repo."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listing.split("\0")):
        src = REPO / rel
        if src.is_file() and not rel.startswith(("reports/", "models/")) and rel != "dvc.lock":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    _merge(params, params_update)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "bench"]):
        _run(cmd, dest, env)
    return dest


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def measure(repo: Path, label: str, jobs: int, budget: bool) -> dict[str, Any]:
    names = [f"{label}-{i}" for i in range(len(LRS))]
    queue.wait_for_no_workers(repo)  # the previous configuration's workers leave ~60 s after its end
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    outcomes = queue.run_queue(
        repo, [[f"train.lr={lr}"] for lr in LRS], jobs, names, targets=["evaluate@unet"], budget=budget
    )
    wall = time.monotonic() - start
    failed = [o.name for o in outcomes if not o.ok]
    if failed:
        raise SystemExit(f"{label}: experiments failed: {failed} (dvc queue logs <name> in {repo})")
    row = {
        "jobs": jobs,
        "RETINASEG_JOBS": jobs if budget else 1,
        "experiments": len(names),
        "wall_s": round(wall, 1),
        # other work on the machine slows every configuration: compare rows with similar loads
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }
    print(f"{label}: -j {jobs}, RETINASEG_JOBS={row['RETINASEG_JOBS']}: {row['wall_s']} s for {len(names)}")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-unbudgeted", action="store_true", help="skip -j 2 without the thread budget")
    parser.add_argument("--keep", action="store_true", help="keep the temporary repository")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    env = _git_env()
    tmp = Path(tempfile.mkdtemp(prefix="retinaseg-queue-bench-"))
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    os.environ.update(
        {k: env[k] for k in ("PATH", "GX_ANALYTICS_ENABLED", "DVC_NO_ANALYTICS", "MLFLOW_TRACKING_URI")}
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("GIT_")})
    try:
        repo = make_copy(tmp / "repo", small_params(args.epochs), env)
        t0 = time.monotonic()
        _run([str(queue.dvc_binary()), "repro", "evaluate@unet"], repo, env)
        baseline = time.monotonic() - t0
        _run(["git", "add", "-A"], repo, env)
        _run(["git", "commit", "-q", "-m", "baseline"], repo, env)
        load_before = os.getloadavg()[0]
        rows = [measure(repo, "j1", 1, True), measure(repo, "j2", 2, True)]
        if not args.no_unbudgeted:
            rows.append(measure(repo, "j2-nobudget", 2, False))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "what": "4 queued dvc experiments (train.lr x 4; each: train@unet + evaluate@unet) run by "
        "retinaseg.team.queue.run_queue; wall time from queueing to the last one done",
        "machine": {"cores": available_cores(), "loadavg_1min_before": round(load_before, 2)},
        "config": {**small_params(args.epochs), "baseline_repro_s": round(baseline, 1)},
        "runs": rows,
        "speedup_j2_vs_j1": round(rows[0]["wall_s"] / rows[1]["wall_s"], 3),
    }
    write_json(args.out, result)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
