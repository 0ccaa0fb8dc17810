"""@champion moves only by a checked promotion: real MLflow store (sqlite), real registered versions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

NAME = "retinaseg-vessels"
FINGERPRINT = "a" * 64
PROTOCOL = "fov; threshold from val; test split"


@pytest.fixture()
def store(mlflow_uri, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # anything MLflow writes to ./mlruns stays in tmp_path
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    yield mlflow_uri
    mlflow.set_tracking_uri(None)


def _register(model_dir, value: float, fingerprint: str = FINGERPRINT) -> int:
    from retinaseg.registry import Evidence, register_candidate

    evidence = Evidence("f1", value, fingerprint, PROTOCOL, "synthetic")
    return register_candidate("unet", model_dir, 0.5, evidence, NAME, "retinaseg")


def _champion() -> int | None:
    from mlflow import MlflowClient

    from retinaseg.registry import current_champion

    return current_champion(MlflowClient(), NAME)


def _tags(version: int) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_model_version(NAME, str(version)).tags)


def test_first_better_worse_forced(store, tiny_model_dir):
    from retinaseg.registry import PromotionError, promote

    v1 = _register(tiny_model_dir, 0.70)
    first = promote(NAME, v1)
    assert first.promoted and first.previous is None and "first champion" in first.message
    assert _champion() == v1 and _tags(v1)["promotion"] == "champion"

    # a worse candidate is refused, with both numbers, and the alias stays
    v2 = _register(tiny_model_dir, 0.65)
    refused = promote(NAME, v2)
    assert not refused.promoted and _champion() == v1
    assert f"candidate version {v2} f1 0.6500 vs champion version {v1} f1 0.7000" in refused.message
    assert _tags(v2)["promotion"] == "refused" and "not better" in _tags(v2)["promotion_reason"]

    # an equal score is not better either
    v3 = _register(tiny_model_dir, 0.70)
    assert not promote(NAME, v3).promoted and _champion() == v1

    # a better one is promoted; the old champion is marked superseded
    v4 = _register(tiny_model_dir, 0.72)
    better = promote(NAME, v4)
    assert better.promoted and better.previous == v1 and _champion() == v4
    assert _tags(v1)["promotion"] == f"superseded by version {v4}"

    # --force needs a reason, which is recorded on the version
    with pytest.raises(PromotionError, match="--force needs --reason"):
        promote(NAME, v2, force=True)
    forced = promote(NAME, v2, force=True, reason="rollback: v4 fails on the clinic's camera")
    assert forced.promoted and _champion() == v2
    assert _tags(v2)["force_reason"] == "rollback: v4 fails on the clinic's camera"
    assert _tags(v2)["promotion"] == "champion" and _tags(v2)["promotion_reason"].startswith("forced")


def test_scores_on_other_test_data_are_not_compared(store, tiny_model_dir):
    from retinaseg.registry import promote

    v1 = _register(tiny_model_dir, 0.70)
    promote(NAME, v1)
    v2 = _register(tiny_model_dir, 0.99, fingerprint="b" * 64)
    result = promote(NAME, v2)
    assert not result.promoted and _champion() == v1
    assert "not comparable" in result.message and "different test data" in result.message


def test_a_version_without_evidence_cannot_be_compared(store, tiny_model_dir):
    import mlflow

    from retinaseg.registry import PromotionError, promote

    v1 = _register(tiny_model_dir, 0.70)
    promote(NAME, v1)
    # a version registered by hand, with no evidence tags
    run = mlflow.search_runs(experiment_names=["retinaseg"], output_format="list")[0]
    bare = int(mlflow.register_model(f"runs:/{run.info.run_id}/pyfunc_model", NAME).version)
    with pytest.raises(PromotionError, match="no recorded metric"):
        promote(NAME, bare)
    with pytest.raises(PromotionError, match="does not exist"):
        promote(NAME, 999)
    assert _champion() == v1


def test_an_experiment_registers_but_never_moves_the_alias(store, tiny_model_dir, monkeypatch, tmp_path):
    import json

    from retinaseg.core.config import params_from_dict
    from retinaseg.registry import promote, register_and_maybe_promote

    v1 = _register(tiny_model_dir, 0.50)
    promote(NAME, v1)
    metrics = {
        "protocol": {"dataset": "synthetic", "threshold_from": "val", "test_fingerprint": FINGERPRINT},
        "fov": {"f1": 0.90},
    }
    champion = {"name": "unet", "threshold": 0.5}
    models_dir = tiny_model_dir.parent

    monkeypatch.setenv("DVC_EXP_NAME", "drive-lr-sweep")
    version, result, line = register_and_maybe_promote(champion, metrics, params_from_dict({}), models_dir)
    assert result is None and _champion() == v1  # better, but an experiment: registered only
    assert _tags(version)["promotion"] == "not attempted"
    assert "experiments never move @champion" in _tags(version)["promotion_reason"]
    assert f"retinaseg promote {version}" in line

    monkeypatch.delenv("DVC_EXP_NAME")
    never = params_from_dict({"registry": {"promote": "never"}})
    version, result, _ = register_and_maybe_promote(champion, metrics, never, models_dir)
    assert result is None and _champion() == v1
    assert _tags(version)["promotion_reason"] == "registry.promote is never"

    # `dvc repro` on the main line with promote: auto — the better model is promoted
    version, result, line = register_and_maybe_promote(champion, metrics, params_from_dict({}), models_dir)
    assert result is not None and result.promoted and _champion() == version
    assert "promoted to @champion" in line
    json.dumps(metrics)  # the evidence came from a plain metrics dict


def test_the_alias_moving_during_the_check_is_refused(store, tiny_model_dir):
    """Against a server store there is no file lock: the alias is re-read inside the act."""
    from mlflow import MlflowClient

    from retinaseg.registry import PromotionError, promote

    v1 = _register(tiny_model_dir, 0.50)
    promote(NAME, v1)
    v2 = _register(tiny_model_dir, 0.60)
    v3 = _register(tiny_model_dir, 0.70)

    class AnotherPromoterActs(MlflowClient):
        """A real client; between this promotion's first and second read of the alias, another
        promotion (v3) lands, as it would from another machine."""

        reads = 0

        def get_model_version_by_alias(self, name, alias):
            self.reads += 1
            if self.reads == 2:
                MlflowClient().set_registered_model_alias(NAME, "champion", str(v3))
            return super().get_model_version_by_alias(name, alias)

    with pytest.raises(PromotionError, match=f"changed from version {v1} to {v3}"):
        promote(NAME, v2, client=AnotherPromoterActs())
    assert _champion() == v3


def test_two_promotions_at_once_end_with_the_better_model(store, tiny_model_dir, repo_root):
    """Two processes promote at the same moment, each its own candidate: whichever goes first,
    the better candidate ends as champion and every version is still there."""
    from mlflow import MlflowClient

    from retinaseg.registry import promote

    v1 = _register(tiny_model_dir, 0.50)
    promote(NAME, v1)
    v2 = _register(tiny_model_dir, 0.60)
    v3 = _register(tiny_model_dir, 0.70)
    script = textwrap.dedent(
        """
        import sys, time
        from retinaseg.registry import promote
        start = float(sys.argv[2])
        while time.time() < start:
            time.sleep(0.001)
        r = promote("retinaseg-vessels", int(sys.argv[1]))
        print(r.promoted, r.message)
        """
    )
    import time

    start = f"{time.time() + 3.0:.3f}"
    env = {**os.environ, "PYTHONPATH": str(repo_root / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(v), start], env=env, stdout=subprocess.PIPE, text=True
        )
        for v in (v3, v2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert _champion() == v3, outputs
    versions = MlflowClient().search_model_versions(f"name = '{NAME}'")
    assert sorted(int(v.version) for v in versions) == [v1, v2, v3]


def test_retinaseg_promote_command(store, tiny_model_dir, capsys):
    from retinaseg.cli import main

    v1 = _register(tiny_model_dir, 0.70)
    assert main(["promote", str(v1)]) == 0
    assert f"models:/{NAME}@champion -> version {v1} (was None): first champion" in capsys.readouterr().out

    v2 = _register(tiny_model_dir, 0.60)
    assert main(["promote", str(v2)]) == 1
    err = capsys.readouterr().err
    expected = f"error: not promoted: not better: candidate version {v2} f1 0.6000 vs champion version {v1}"
    assert expected in err
    assert _champion() == v1

    assert main(["promote", str(v2), "--force"]) == 2  # a RetinasegError: one line, exit 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["promote", str(v2), "--force", "--reason", "the v1 data was mislabelled"]) == 0
    assert _champion() == v2 and _tags(v2)["force_reason"] == "the v1 data was mislabelled"
