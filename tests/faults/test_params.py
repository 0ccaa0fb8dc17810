"""Bad parameters: out of range, mistyped, unknown, breaking a rule between keys, not YAML; through
every stage script, the commands' ``--params``, and ``dvc exp run -S``.

Each stage stops before it touches anything: one line naming the params file, the key, the value and
the allowed range, exit 1 (the CLI: 2), and the stage's earlier outputs unchanged. The loader itself
(every key's range, the rules, hypothesis fuzz of the whole file) is tested in
tests/core/test_config_validation.py; docs/faults.md counts those cases in this family's row.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from retinaseg.core.config import ConfigError, load_params
from tests.conftest import REPO_ROOT
from tests.faults.helpers import FULL, error_lines, run_cli, snapshot
from tests.repo_copy import VENV_BIN, copy_repo, pipeline_env
from tests.tiny import TINY_PIPELINE

FAMILY = "Bad parameters (params.yaml, --params, dvc exp run -S)"

#: stage → (its arguments, one of its own keys set out of range)
STAGES: dict[str, tuple[list[str], tuple[str, object]]] = {
    "generate": ([], ("synthetic.size", 8)),
    "validate": ([], ("validate.max_grey_fraction", 1.5)),
    "split": ([], ("split.val_fraction", 1.5)),
    "preprocess": ([], ("preprocess.size", 31)),
    "train": (["--model", "unet"], ("train.batch_size", 0)),
    "evaluate": (["--model", "unet"], ("evaluate.tile_overlap", 1.0)),
    "compare": ([], ("compare.metric", "speed")),
}

#: bad values every stage refuses (it validates the whole file): name → (dotted key, value)
SHARED: dict[str, tuple[str, object]] = {
    "mistyped": ("train.epochs", "ten"),
    "float-for-int": ("train.batch_size", 2.0),
    "unknown-key": ("train.epochz", 3),
    "cross-field": ("split.test_fraction", 0.9),  # with val_fraction 0.2: the fractions sum past 1
}


def _write_params(path: Path, key: str, value: object) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    *groups, leaf = key.split(".")
    node = params
    for group in groups:
        node = node[group]
    node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _expected(path: Path, cwd: Path | None = None) -> str:
    """The error line for ``path`` (as the command names it, relative to ``cwd``)."""
    with contextlib.chdir(cwd or Path.cwd()), pytest.raises(ConfigError) as err:
        load_params(path.relative_to(cwd) if cwd else path)
    return f"error: {err.value}"


CASES = [(stage, "out-of-range", *STAGES[stage][1]) for stage in STAGES]
CASES += [(stage, name, key, value) for stage in STAGES for name, (key, value) in SHARED.items()]


@pytest.mark.parametrize(("stage", "kind", "key", "value"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_stage_refuses_bad_params_in_one_line_and_touches_nothing(tmp_path, stage, kind, key, value):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "manifest.csv").write_text("an earlier output\n")
    (work / "reports").mkdir()
    (work / "reports" / "split.json").write_text("{}\n")
    params = _write_params(work / "params.yaml", key, value)
    before = snapshot(work)
    done = run_cli(["stage", stage, *STAGES[stage][0]], cwd=work)
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert line == _expected(params, work)
    assert line.startswith("error: params.yaml: ") and key.rsplit(".", 1)[-1] in line
    if kind == "out-of-range":
        assert re.search(r"allowed range|expected|must be", line), line
    assert snapshot(work) == before and done.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "x.png", "--out", "out"],
        ["validate", "--source", "folder", "--root", "."],
        ["generate", "--out", "syn"],
        ["evaluate", "--model", "m", "--source", "folder", "--root", "."],
        ["serve"],
        ["promote", "1"],
    ],
    ids=lambda c: c[0],
)
def test_a_command_refuses_bad_params_in_one_line(tmp_path, command):
    params = _write_params(tmp_path / "bad.yaml", "train.batch_size", 0)
    done = run_cli(["retinaseg", *command, "--params", str(params)], cwd=tmp_path)
    assert done.returncode == 2
    assert error_lines(done.stderr) == [_expected(params)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written


def test_a_params_file_that_is_not_there_is_one_line(tmp_path):
    done = run_cli(["stage", "split", "--params", "nope.yaml"], cwd=tmp_path)
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert line.startswith("error: nope.yaml: ") and "not found" in line


def test_a_params_file_that_is_not_yaml_is_one_line(tmp_path):
    text = (REPO_ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text + "\ntrain: [1, 2\n")
    done = run_cli(["stage", "split"], cwd=tmp_path)
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    # where the parser gave up (the end of the file) and the unclosed list that began two lines up
    last = len(text.splitlines()) + 3
    assert line == (
        f"error: params.yaml: not valid YAML: line {last}, column 1: expected ',' or ']', "
        f"but got '<stream end>' (while parsing a flow sequence that began on line {last - 1})"
    )


EXP_CASES = [("train.batch_size", "0"), ("models.unet.depth", "9"), ("split.val_fraction", "1.5")]
EXP_CASES += [("train.epochs", "ten"), ("train.loss.name", "l2")] if FULL else []


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("exp")
    env = pipeline_env(base)
    repo = copy_repo(REPO_ROOT, base / "repo", TINY_PIPELINE, env)
    env["PYTHONPATH"] = str(repo / "src")  # the copy's own code runs (see test_sigkill)
    return repo, env


@pytest.mark.slow
@pytest.mark.parametrize(("key", "value"), EXP_CASES if FULL else EXP_CASES[:1], ids=lambda v: str(v))
def test_dvc_exp_run_with_a_bad_override_stops_at_the_first_stage(exp_repo, key, value):
    repo, env = exp_repo
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)
    done = subprocess.run(
        [str(VENV_BIN / "dvc"), "exp", "run", "-S", f"{key}={value}"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    ours = [line for line in output.splitlines() if line.startswith("error: params.yaml: ")]
    assert len(ours) == 1 and f"'{key}'" in ours[0], output
    assert not (repo / "data" / "raw" / "synthetic").exists()  # the first stage wrote nothing
    shutil.rmtree(repo / "data" / "raw", ignore_errors=True)
