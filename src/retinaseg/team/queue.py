"""Run several ``dvc exp`` experiments at once on one machine, the cores split between them.

``python -m retinaseg.team.queue -j 2 -e "models.unet.base_channels=8" -e "train.lr=0.001 train.epochs=20"``
queues one experiment per ``-e`` (its ``-S`` overrides, separated by spaces), then runs
``dvc queue start -j N`` with ``RETINASEG_JOBS=N`` in its environment. DVC's queue workers inherit
that environment (checked: a training run under ``RETINASEG_JOBS=2`` records ``env.torch_threads``
1 on a 2-core machine, 2 without it), so each job's torch threads and DataLoader workers are its
share of the cores (:mod:`retinaseg.core.budget`) instead of every job taking every core.

It first waits for the workers of an earlier start to leave (they would count among the N and run
the new experiments with their own budget), then polls ``dvc queue status`` until nothing is queued
or running, prints each experiment's outcome and exits non-zero when any failed (``dvc queue logs
<name>`` shows why). It never calls ``dvc queue stop``: the workers leave by themselves once the
queue is empty, while a stop request stays in DVC's broker and makes the next start's workers quit
after one task each (seen here: 2 of 4 experiments left queued with no worker).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from retinaseg.core.budget import JOBS_ENV
from retinaseg.core.errors import RetinasegError

ACTIVE = ("Queued", "Running")


class QueueError(RetinasegError, RuntimeError):
    """A ``dvc`` command of the queue that failed (names the command and shows its output)."""


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # Success | Failed | ...

    @property
    def ok(self) -> bool:
        return self.status == "Success"


def dvc_binary() -> str:
    """``dvc`` of this environment (beside sys.executable), else from PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def _dvc(args: list[str], repo: Path, env: dict[str, str] | None = None) -> str:
    """Run ``dvc args`` in ``repo``; its output, or a QueueError with it. The output goes through a
    temporary file, not a pipe: ``dvc queue start`` leaves worker processes behind that inherit its
    stdout, and reading a pipe to its end would wait for them to exit (a worker that hangs while
    shutting down once held a test for half an hour)."""
    cmd = [dvc_binary(), *args]
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.run(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise QueueError(f"{shlex.join(cmd)} failed (exit {proc.returncode}) in {repo}:\n{text}")
    return text


def queue_env(jobs: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``dvc queue start -j jobs``: ``RETINASEG_JOBS=jobs`` and the venv on PATH
    (the stages call ``python``)."""
    env = dict(os.environ if environ is None else environ)
    env[JOBS_ENV] = str(jobs)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def enqueue(
    repo: Path, overrides: list[str], name: str | None = None, targets: list[str] | None = None
) -> None:
    """``dvc exp run --queue [-n name] -S o1 -S o2 … [targets]``."""
    args = ["exp", "run", "--queue"]
    if name:
        args += ["-n", name]
    for override in overrides:
        args += ["-S", override]
    _dvc(args + list(targets or []), repo, queue_env(1))


def start(repo: Path, jobs: int, environ: dict[str, str] | None = None, budget: bool = True) -> None:
    """``dvc queue start -j jobs`` with ``RETINASEG_JOBS=jobs`` (``budget=False``: 1, every job
    takes every core: what plain ``dvc queue start -j N`` does; for measuring the difference)."""
    if jobs < 1:
        raise QueueError(f"-j {jobs}: the number of jobs must be at least 1")
    _dvc(["queue", "start", "-j", str(jobs)], repo, queue_env(jobs if budget else 1, environ))


def statuses(repo: Path) -> list[Outcome]:
    """The rows of ``dvc queue status`` (name, else task id; and status)."""
    out = _dvc(["queue", "status"], repo)
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] != "Task" and not line.startswith("Worker"):
            task, name, status = parts[0], parts[1], parts[-1]
            rows.append(Outcome(name if name != "None" else task, status))
    return rows


def wait(repo: Path, poll_s: float = 2.0, timeout_s: float | None = None) -> list[Outcome]:
    """Poll until nothing is queued or running; returns the final statuses."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        rows = statuses(repo)
        if not any(r.status in ACTIVE for r in rows):
            return rows
        if deadline is not None and time.monotonic() > deadline:
            raise QueueError(f"the queue in {repo} still runs after {timeout_s:.0f} s: {rows}")
        time.sleep(poll_s)


def workers(repo: Path) -> tuple[int, int]:
    """(active, idle) queue workers, from ``dvc queue status``."""
    out = _dvc(["queue", "status"], repo)
    for line in out.splitlines():
        if line.startswith("Worker status:"):
            numbers = [int(w) for w in line.replace(",", " ").split() if w.isdigit()]
            if len(numbers) == 2:
                return numbers[0], numbers[1]
    return 0, 0


def wait_for_no_workers(repo: Path, timeout_s: float = 120.0, poll_s: float = 2.0) -> None:
    """Wait until the workers of an earlier ``dvc queue start`` have left (they leave by themselves
    once the queue is empty): a new ``dvc queue start -j N`` counts them among its N, and they
    would run the new experiments with their own ``RETINASEG_JOBS``."""
    deadline = time.monotonic() + timeout_s
    while any(workers(repo)):
        if time.monotonic() > deadline:
            raise QueueError(
                f"queue workers of an earlier `dvc queue start` still run in {repo} after {timeout_s:.0f} s; "
                "wait for them (dvc queue status) or stop them (dvc queue stop), then start again"
            )
        time.sleep(poll_s)


def stop(repo: Path) -> None:
    """``dvc queue stop``: the workers leave once their tasks are done."""
    _dvc(["queue", "stop"], repo)


def run_queue(
    repo: Path,
    experiments: list[list[str]],
    jobs: int,
    names: list[str] | None = None,
    targets: list[str] | None = None,
    timeout_s: float | None = None,
    budget: bool = True,
) -> list[Outcome]:
    """Queue ``experiments`` (each a list of ``-S`` overrides), run them ``jobs`` at a time with the
    cores split between them, wait, stop the workers; returns the outcomes of these experiments."""
    repo = Path(repo)
    names = names or [None] * len(experiments)  # type: ignore[list-item]
    before = {r.name for r in statuses(repo)}
    for overrides, name in zip(experiments, names, strict=True):
        enqueue(repo, overrides, name, targets)
    wait_for_no_workers(repo)
    start(repo, jobs, budget=budget)
    rows = wait(repo, timeout_s=timeout_s)
    # no `dvc queue stop` here: the workers leave by themselves once the queue is empty, and a stop
    # request left in DVC's broker is taken by the next start's workers (they quit after one task)
    return [r for r in rows if r.name not in before]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m retinaseg.team.queue",
        description="Queue DVC experiments and run them N at a time, the cores split between them.",
    )
    parser.add_argument("-j", "--jobs", type=int, default=2, help="experiments run at once (default 2)")
    parser.add_argument(
        "-e",
        "--exp",
        action="append",
        required=True,
        metavar="'KEY=VALUE [KEY=VALUE ...]'",
        help="one experiment: its params overrides (as dvc exp run -S), space-separated; one -e each",
    )
    parser.add_argument("-n", "--name", action="append", help="experiment names, one per -e (optional)")
    parser.add_argument("--repo", default=".", help="the repository (default: the current directory)")
    parser.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    args = parser.parse_args(argv)
    if args.name and len(args.name) != len(args.exp):
        parser.error(
            f"{len(args.name)} --name for {len(args.exp)} --exp: give one name per experiment or none"
        )
    try:
        outcomes = run_queue(
            Path(args.repo), [shlex.split(e) for e in args.exp], args.jobs, args.name, timeout_s=args.timeout
        )
    except RetinasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for outcome in outcomes:
        print(f"{outcome.name}: {outcome.status}")
    failed = [o.name for o in outcomes if not o.ok]
    if failed:
        print(f"failed: {', '.join(failed)} (see: dvc queue logs <name>)", file=sys.stderr)
        return 1
    print("compare them: dvc exp show")
    return 0


if __name__ == "__main__":
    sys.exit(main())
