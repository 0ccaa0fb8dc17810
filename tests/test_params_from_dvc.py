"""Params written by DVC read back as the values the user meant.

`dvc exp run -S key=value` edits params.yaml through DVC's own override code
(`dvc.utils.hydra.apply_overrides`) and writes YAML 1.2: `-S train.lr=1e-5` becomes `lr: 1e-05`.
These tests drive that same DVC function on a copy of the real params.yaml, then load the file
with the project's config loader."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from dvc.utils.hydra import apply_overrides
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retinaseg.core.config import load_params

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture()
def params_copy(repo_root, tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", path)
    return path


def _set(path: Path, **overrides: str) -> None:
    """Apply `-S key=value` overrides exactly as `dvc exp run -S` does."""
    apply_overrides(path, [f"{key}={value}" for key, value in overrides.items()])


def _spellings(x: float) -> list[str]:
    """The ways a user types a float on the command line."""
    return [repr(x), f"{x:e}", f"{x:E}", f"{x:.3e}".replace("e-0", "e-").replace("e+0", "e+")]


finite_floats = st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(x=finite_floats, which=st.integers(min_value=0, max_value=3))
def test_floats_in_any_notation_read_back_as_floats(params_copy, x, which):
    text = _spellings(x)[which]
    _set(params_copy, **{"train.lr": text, "train.weight_decay": text})
    params = load_params(params_copy)
    assert isinstance(params.train.lr, float)
    assert params.train.lr == float(text)
    assert params.train.weight_decay == float(text)


@SETTINGS
@given(n=st.integers(min_value=0, max_value=10**9))
def test_integers_read_back_as_integers(params_copy, n):
    _set(params_copy, **{"train.samples_per_epoch": str(n)})
    value = load_params(params_copy).train.samples_per_epoch
    assert type(value) is int and value == n


@SETTINGS
@given(n=st.integers(min_value=0, max_value=10**6))
def test_an_integer_for_a_float_key_is_that_float(params_copy, n):
    _set(params_copy, **{"train.lr": str(n)})
    value = load_params(params_copy).train.lr
    assert isinstance(value, float) and value == float(n)


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("True", True)])
def test_booleans(params_copy, text, expected):
    _set(params_copy, **{"train.amp": text, "preprocess.clahe": text})
    params = load_params(params_copy)
    assert params.train.amp is expected and params.preprocess.clahe is expected


def test_null_for_an_optional_key(params_copy):
    _set(params_copy, **{"models.resnet34_unet.encoder_weights": "imagenet"})
    assert load_params(params_copy).models.resnet34_unet.encoder_weights == "imagenet"
    _set(params_copy, **{"models.resnet34_unet.encoder_weights": "null"})
    assert load_params(params_copy).models.resnet34_unet.encoder_weights is None


@SETTINGS
@given(n=st.integers(min_value=1, max_value=10**9))
def test_a_number_for_a_string_key_is_that_string(params_copy, n):
    _set(params_copy, **{"data.root": str(n)})
    assert load_params(params_copy).data.root == str(n)


def test_a_quoted_string_keeps_its_spelling(params_copy):
    _set(params_copy, **{"data.root": "'007'"})
    assert load_params(params_copy).data.root == "007"


def test_the_issue_example_exactly(params_copy):
    _set(params_copy, **{"train.lr": "0.00001"})
    assert "lr: 1e-05" in params_copy.read_text()  # what DVC writes: YAML 1.2
    params = load_params(params_copy)
    assert params.train.lr == 1e-5 and not math.isnan(params.train.lr)


def test_a_float_for_an_integer_key_is_still_an_error(params_copy):
    from retinaseg.core.config import ConfigError

    _set(params_copy, **{"train.batch_size": "2.5"})
    with pytest.raises(ConfigError, match="'train.batch_size' must be an integer, got 2.5"):
        load_params(params_copy)


@pytest.mark.slow
def test_dvc_exp_run_with_scientific_notation_trains_and_logs_numbers(repo_root, tmp_path):
    """The issue's command, end to end: `dvc exp run -S train.lr=1e-5 -S train.weight_decay=5e-4`
    on the tiny pipeline; MLflow records both as the numbers given."""
    import mlflow

    from tests.repo_copy import VENV_BIN, copy_repo, pipeline_env, run
    from tests.tiny import TINY_PIPELINE

    env = pipeline_env(tmp_path)
    repo = copy_repo(repo_root, tmp_path / "repo", TINY_PIPELINE, env)
    run(
        [
            str(VENV_BIN / "dvc"),
            "exp",
            "run",
            "-S",
            "train.lr=1e-5",
            "-S",
            "train.weight_decay=5e-4",
            "train@unet",
        ],
        repo,
        env,
    )
    assert "lr: 1e-05" in (repo / "params.yaml").read_text()

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["retinaseg"])
    assert list(runs["tags.model"]) == ["unet"]
    assert float(runs["params.train.lr"][0]) == 1e-5
    assert float(runs["params.train.weight_decay"][0]) == 5e-4
