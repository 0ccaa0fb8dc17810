"""SIGKILL at random points of each pipeline stage, then ``dvc repro``: the outputs end byte-identical
to an uninterrupted run's, with nothing left behind.

A copy of the repository runs the tiny pipeline (tests/tiny.py) once, uninterrupted: the reference
outputs, committed, and how long each stage took. Then, per case, one stage runs again
(``dvc repro --force --single-item <stage>``; a training stage from scratch, its checkpoints removed)
and its whole process group (dvc, the shell, python) is killed with SIGKILL at a random moment of
that stage: a seeded uniform fraction of its reference duration after DVC says ``Running stage``.
Then ``dvc repro --no-run-cache`` (the stage's code really runs again: DVC's run cache would merely
restore the reference outputs) must succeed and leave every pipeline output byte-identical to the
reference, no temporary file of ours anywhere (the stage cleaned its killed run's leftovers at start),
``dvc status`` up to date and ``git status`` clean. (When the kill came before the stage touched its
DVC outputs, DVC finds it up to date and does not run it: what it left, e.g. validate's Data Docs being
built, goes when the stage next starts, which the case then runs. DVC rewrites dvc.lock in place: a
kill while it writes cuts the file short, and the rerun re-runs the stages whose entries were lost;
their outputs must be identical too. The copy runs its own code: ``PYTHONPATH`` is its ``src``.)

Fast part (CI): the pipeline narrowed to the U-Net (the other models' matrix entries removed from the
copy's dvc.yaml), one kill in ``preprocess`` (a folder swapped in whole) and one in ``train@unet``
(checkpoints, resume). Full part (``make test-faults``): the real three-model pipeline, every stage,
``RETINASEG_FAULTS_KILLS`` (default 3) kill points each. ``RETINASEG_FAULTS_SEED`` picks the points.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from retinaseg.core.fileio import TEMP_NAME
from tests.conftest import REPO_ROOT
from tests.faults.helpers import FULL, pick, run_cli, snapshot, temp_leftovers
from tests.repo_copy import VENV_BIN, copy_repo, pipeline_env, run
from tests.tiny import TINY_PIPELINE

FAMILY = "SIGKILL at random points of each pipeline stage, then dvc repro"

SEED = os.environ.get("RETINASEG_FAULTS_SEED", "20261201")
KILLS = pick(fast=1, full=int(os.environ.get("RETINASEG_FAULTS_KILLS", "3")))
FAST_STAGES = ("preprocess", "train@unet")
FULL_STAGES = (
    "generate",
    "validate",
    "split",
    "preprocess",
    "train@unet",
    "train@attention_unet",
    "train@resnet34_unet",
    "evaluate@unet",
    "evaluate@resnet34_unet",
    "compare",
    "crossdata@0",
    "crossdata_table",
)
STAGES = pick(fast=FAST_STAGES, full=FULL_STAGES)
#: what the reference run reproduces (fast: up to the U-Net's training)
TARGET = pick(fast=["train@unet"], full=[])
DVC = str(VENV_BIN / "dvc")

#: every pipeline output DVC tracks (cached outs, metrics, plots data); the Data Docs carry timestamps
OUTPUT_ROOTS = (
    "data/manifest.csv",
    "data/splits",
    "data/processed",
    "data/raw/synthetic",
    "models",
    "reports",
)
UNTRACKED = ("reports/validation/docs/",)


def outputs(repo: Path) -> dict[str, str]:
    """sha256 of every pipeline output file (our temporary files and folders are :func:`leftovers`)."""
    found: dict[str, str] = {}
    for root in OUTPUT_ROOTS:
        for rel, digest in snapshot(repo / root).items():
            path = root if rel == "." else f"{root}/{rel}"
            if not path.startswith(UNTRACKED) and not any(TEMP_NAME.match(part) for part in path.split("/")):
                found[path] = digest
    return found


def leftovers(repo: Path) -> list[str]:
    """Our temporary names anywhere in the working tree (not in DVC's or git's own folders)."""
    return [
        p.relative_to(repo).as_posix()
        for p in temp_leftovers(repo)
        if not p.relative_to(repo).as_posix().startswith((".git/", ".dvc/"))
    ]


def _lock_state(repo: Path) -> str:
    """What the kill left of dvc.lock: DVC rewrites it in place (not atomically), so a kill while it
    writes cuts it short and the rerun re-runs every stage whose entry was lost."""
    committed = subprocess.run(
        ["git", "show", "HEAD:dvc.lock"], cwd=repo, capture_output=True, text=True
    ).stdout
    now = (repo / "dvc.lock").read_text() if (repo / "dvc.lock").is_file() else ""
    if now == committed:
        return "intact"
    return f"cut short ({len(now)} of {len(committed)} bytes)" if len(now) < len(committed) else "rewritten"


def _git_status(repo: Path) -> str:
    return subprocess.run(
        ["git", "status", "--short"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()


class Watched:
    """A ``dvc`` command in its own process group, its output read line by line with timestamps."""

    def __init__(self, args: list[str], repo: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [DVC, *args],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a kill reaches dvc, the shell and python
        )
        self.lines: list[tuple[float, str]] = []
        self.started: dict[str, float] = {}
        self.stage_started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            self.lines.append((now, line.rstrip()))
            found = re.search(r"Running stage '([^']+)'", line)
            if found:
                self.started[found.group(1)] = now
                self.stage_started.set()

    def wait(self, timeout: float = 900) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    def kill_group(self) -> None:
        with _suppress_lookup():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        _wait_group_gone(self.proc.pid)

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is ProcessLookupError


def _wait_group_gone(pgid: int, timeout: float = 30) -> None:
    """Until no live (non-zombie) process of group ``pgid`` remains."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                alive.append(stat.parent.name)
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of the killed group {pgid} still run: {alive}")


@dataclass
class Reference:
    repo: Path
    env: dict[str, str]
    durations: dict[str, float]
    outputs: dict[str, str]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    base = tmp_path_factory.mktemp("sigkill")
    env = pipeline_env(base)
    repo = copy_repo(REPO_ROOT, base / "repo", TINY_PIPELINE, env)
    # the stages import the copy's own code (not the checkout's, through the editable install): what
    # dvc.lock records is what runs, even while the checkout is being edited
    env["PYTHONPATH"] = str(repo / "src")
    if not FULL:  # the U-Net only: the other models' training and evaluation are the same code
        dvc_yaml = repo / "dvc.yaml"
        text, n = re.subn(
            r"model: \[unet, attention_unet, resnet34_unet\]", "model: [unet]", dvc_yaml.read_text()
        )
        assert n == 2, "dvc.yaml's model matrices changed: update this test"
        dvc_yaml.write_text(text)
        run(["git", "commit", "-qam", "U-Net only"], repo, env)
    watched = Watched(["repro", *TARGET], repo, env)
    assert watched.wait() == 0, watched.output()
    ends = sorted(watched.started.values()) + [watched.lines[-1][0]]
    durations = {stage: ends[ends.index(t) + 1] - t for stage, t in watched.started.items()}
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "reference outputs"], repo, env)
    assert leftovers(repo) == [] and _git_status(repo) == ""
    return Reference(repo, env, durations, outputs(repo))


CASES = [(stage, k) for stage in STAGES for k in range(KILLS)]


def _dvc(args: list[str], repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=1800)


#: What DVC says when a kill corrupted its lock table (it rewrites it in place, not atomically):
#: treeverse/dvc#7615. Its remedy, as DVC's own troubleshooting says: remove .dvc/tmp/rwlock (safe when
#: no dvc process runs).
RWLOCK_CORRUPT = "Unable to read RWLock-file '.dvc/tmp/rwlock'"


def _repro(args: list[str], repo: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, bool]:
    """``dvc <args>``; when DVC stops at a lock table a kill corrupted, its remedy and once more.
    Returns the result and whether the remedy was needed."""
    done = _dvc(args, repo, env)
    if done.returncode != 0 and RWLOCK_CORRUPT in done.stdout + done.stderr:
        (repo / ".dvc" / "tmp" / "rwlock").unlink()
        return _dvc(args, repo, env), True
    return done, False


def _restore(repo: Path, env: dict[str, str]) -> None:
    """Back to the reference outputs after a failed case: the committed tree and the cached outputs."""
    subprocess.run(["git", "reset", "-q", "--hard", "HEAD"], cwd=repo, check=False)  # DVC stages dvc.lock
    (repo / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)
    _dvc(["checkout", "--force", "-q"], repo, env)
    for left in leftovers(repo):
        shutil.rmtree(repo / left) if (repo / left).is_dir() else (repo / left).unlink()


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "k"), CASES, ids=[f"{s}-kill{k + 1}" for s, k in CASES])
def test_a_killed_stage_reruns_to_the_same_outputs(reference, stage, k):
    repo, env = reference.repo, reference.env
    if outputs(repo) != reference.outputs or leftovers(repo):  # an earlier case failed: start afresh
        _restore(repo, env)
        if outputs(repo) != reference.outputs or leftovers(repo):
            pytest.fail("an earlier case left the outputs changed and they could not be restored")
    if stage.startswith("train@"):  # train from scratch, so the kill can land mid-training
        shutil.rmtree(repo / ".checkpoints" / stage.split("@")[1], ignore_errors=True)
    fraction = random.Random(f"{SEED}:{stage}:{k}").uniform(0.05, 0.95)
    delay = fraction * reference.durations[stage]

    watched = Watched(["repro", "--force", "--single-item", stage], repo, env)
    deadline = time.monotonic() + 600
    while not watched.stage_started.wait(timeout=0.2):
        assert watched.proc.poll() is None, f"dvc stopped before the stage began:\n{watched.output()}"
        assert time.monotonic() < deadline, f"the stage did not begin within 600 s:\n{watched.output()}"
    time.sleep(max(0.0, watched.started[stage] + delay - time.monotonic()))
    killed = watched.proc.poll() is None
    if killed:
        watched.kill_group()
    else:
        assert watched.wait() == 0, watched.output()
    left = leftovers(repo)
    lock = _lock_state(repo)

    rerun, remedied = _repro(["repro", "--no-run-cache", *TARGET], repo, env)
    rwlock = "corrupted (removed, as DVC advises)" if remedied else "readable"
    where = (
        f"{stage} killed {delay:.1f}s in ({fraction:.0%} of {reference.durations[stage]:.1f}s; "
        f"seed {SEED}); {'killed' if killed else 'it had finished'}; left behind: {left or 'nothing'}; "
        f"dvc.lock {lock}; .dvc/tmp/rwlock {rwlock}"
    )
    print(where)  # in the junit report (scripts/fault_table.py counts what the kills hit)
    assert rerun.returncode == 0, f"{where}\n{rerun.stdout}\n{rerun.stderr}"
    changed = {
        path
        for path in set(reference.outputs) | set(outputs(repo))
        if reference.outputs.get(path) != outputs(repo).get(path)
    }
    assert not changed, f"{where}: outputs differ from the uninterrupted run: {sorted(changed)}"
    ran = set(re.findall(r"Running stage '([^']+)'", rerun.stdout))
    remaining = leftovers(repo)
    cleanup = "the rerun" if left else "nothing to clean"
    if remaining:
        # The kill came before the stage touched its DVC outputs, so DVC found it up to date and did not
        # run it (e.g. validate's Data Docs, built first, are no DVC output). The leftovers stay until the
        # stage next starts, which removes them (the guarantee): run it as a user would, next time.
        assert stage not in ran, f"{where}: the stage ran again and left {remaining}"
        again, _ = _repro(["repro", "--force", "--single-item", stage], repo, env)
        assert again.returncode == 0, f"{where}\n{again.stdout}\n{again.stderr}"
        assert outputs(repo) == reference.outputs, f"{where}: outputs changed by the stage's next run"
        assert leftovers(repo) == [], f"{where}: the stage's next run left {leftovers(repo)}"
        cleanup = "the stage's next run (DVC found it up to date after the kill)"
    print(f"cleanup: {cleanup}")
    status = _dvc(["status", *TARGET], repo, env)
    assert "up to date" in status.stdout, f"{where}: dvc status after the rerun:\n{status.stdout}"
    assert _git_status(repo) == "", f"{where}: git status after the rerun:\n{_git_status(repo)}"


# ----------------------------------------------------------------- each stage cleans what a kill left

#: stage → (its arguments, its outputs as dvc.yaml lists them)
STAGE_OUTPUTS: dict[str, tuple[list[str], list[str]]] = {
    "generate": ([], ["data/raw/synthetic", "reports/synthetic_montage.png"]),
    "validate": ([], ["data/manifest.csv", "reports/validation"]),
    "split": ([], ["data/splits", "reports/split.json"]),
    "preprocess": ([], ["data/processed"]),
    "train": (["--model", "unet"], ["models/unet", ".checkpoints/unet", "reports/training/unet.json"]),
    "evaluate": (
        ["--model", "unet"],
        ["reports/overlays/unet", "reports/plots/unet", "reports/metrics/unet.json"],
    ),
    "compare": ([], ["models/champion.json", "reports/comparison.md", "reports/comparison.json"]),
    "crossdata": (["--dataset", "synthetic"], ["reports/crossdata/synthetic.json"]),
    "crossdata_table": ([], ["reports/crossdata.md", "reports/crossdata.png"]),
}


def _temp_of(output: Path, pid: int, kind: str) -> Path:
    from retinaseg.core import fileio

    suffix = ".tmp" if kind == "dir" else ".tmp" + output.suffix
    path = output.parent / f".{output.name}.{fileio._host_tag()}-{pid}-abcd1234{suffix}"
    if kind == "dir":
        (path / "train").mkdir(parents=True)
        (path / "train" / "x.png").write_bytes(b"half")
        stamped = [path / "train" / "x.png", path / "train", path]
    else:
        path.write_bytes(b"half")
        stamped = [path]
    for entry in stamped:
        os.utime(entry, (1_000_000, 1_000_000))  # long before this process started
    assert TEMP_NAME.match(path.name)
    return path


@pytest.mark.parametrize("stage", list(STAGE_OUTPUTS))
def test_a_stage_cleans_the_leftovers_of_a_killed_run_and_only_those(tmp_path, stage):
    """What a SIGKILL leaves (temporary files and folders of a process that is gone) is removed when the
    stage starts next; the temporary files of a run still going, and anything not ours, are kept.
    (The stage then stops at its bad params: nothing else runs.)"""
    args, outs = STAGE_OUTPUTS[stage]
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as live:
        try:
            stale, kept = [], []
            for rel in outs:
                output = tmp_path / rel
                is_dir = not output.suffix or rel.endswith("unet")
                (output if is_dir else output.parent).mkdir(parents=True, exist_ok=True)
                kind = "dir" if is_dir else "file"
                stale.append(_temp_of(output, dead, kind))
                kept.append(_temp_of(output, live.pid, kind))
                notes = output.parent / f".{output.name}.notes"
                notes.write_text("the user's")
                kept.append(notes)
                if is_dir:  # a file of a killed write inside the output folder
                    stale.append(_temp_of(output / "inner.png", dead, "file"))
            (tmp_path / "params.yaml").write_text("train: {epochs: 0}\n")
            done = run_cli(["stage", stage, *args], cwd=tmp_path)
            assert done.returncode == 1 and done.stderr.startswith("error: params.yaml: ")
            assert [p for p in stale if p.exists()] == []
            assert [p for p in kept if not p.exists()] == []
        finally:
            live.kill()
