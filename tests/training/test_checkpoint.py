"""Run identities and fingerprints, safe loading and the resume decision (the data hash: tests/core)."""

from __future__ import annotations

import shutil
from fractions import Fraction

import pytest
import torch
import yaml

from retinaseg.core.config import load_params
from retinaseg.training.checkpoint import (
    BEST,
    CODE_PATHS,
    LAST,
    PACKAGE_DIR,
    TrainingError,
    code_hash,
    find_resumable,
    load_checkpoint,
    own_best,
    run_identity,
    save_checkpoint,
    training_fingerprint,
)


def test_fingerprint_covers_training_params_only(repo_root):
    def fp(**overrides):
        return training_fingerprint(load_params(repo_root / "params.yaml", overrides), "unet", "data1")

    base = fp()
    assert fp() == base
    changed = [("train.lr", 0.1), ("base.seed", 1), ("augment.hflip", 0.0), ("preprocess.size", 128),
               ("models.unet.depth", 3), ("train.loss.name", "focal_dice"), ("train.epochs", 3)]  # fmt: skip
    for key, value in changed:
        assert fp(**{key: value}) != base, key
    # not part of what training computes: resume policy, workers, device, other models, evaluation
    for key, value in [("train.resume", "never"), ("base.workers", 2), ("base.device", "cpu"),
                       ("models.attention_unet.depth", 3), ("evaluate.tta", True)]:  # fmt: skip
        assert fp(**{key: value}) == base, key
    params = load_params(repo_root / "params.yaml")
    assert training_fingerprint(params, "unet", "data2") != base
    assert training_fingerprint(params, "unet", "data1", code_sha256="other code") != base
    assert training_fingerprint(params, "unet", "data1", code_sha256=code_hash()) == base


def test_code_hash_covers_the_training_code_only(tmp_path):
    package = tmp_path / "retinaseg"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__", "vendor"))
    base = code_hash(package)
    assert base == code_hash(PACKAGE_DIR) and len(base) == 64
    (package / "training" / "engine.py").write_text((package / "training" / "engine.py").read_text() + "\n")
    assert code_hash(package) != base
    (package / "training" / "engine.py").write_bytes((PACKAGE_DIR / "training" / "engine.py").read_bytes())
    (package / "evaluation" / "metrics.py").write_text("changed")  # not training code
    assert code_hash(package) == base


def test_code_paths_are_the_train_stage_code_deps_in_dvc_yaml(repo_root):
    stage = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["train"]
    prefix = "src/retinaseg/"
    deps = sorted(d.removeprefix(prefix) for d in stage["deps"] if d.startswith(prefix))
    assert sorted(CODE_PATHS) == deps


def test_identity_differences_name_what_changed(repo_root):
    params = load_params(repo_root / "params.yaml")
    a = run_identity(params, "unet", "data1", "code1")
    b = run_identity(load_params(repo_root / "params.yaml", {"train.lr": 0.1}), "unet", "data2", "code2")
    text = b.differences(a.to_dict())
    assert "params (train.lr: 0.003 → 0.1)" in text and "processed data" in text and "code" in text
    assert a.differences(a.to_dict()) == "nothing recorded differs"
    assert "without a recorded identity" in a.differences(None)


def _state(fingerprint, epoch, best_epoch):
    return {
        "model": {"w": torch.zeros(1)},
        "fingerprint": fingerprint,
        "epoch": epoch,
        "best_epoch": best_epoch,
    }


def test_resume_needs_this_runs_best_epoch_in_best_pt(tmp_path):
    save_checkpoint(tmp_path / LAST, _state("f", epoch=3, best_epoch=2))
    state, reason = find_resumable(tmp_path, "f")
    assert state is None and "best epoch is gone" in reason and f"{tmp_path / BEST} is missing" in reason
    save_checkpoint(tmp_path / BEST, _state("g", epoch=2, best_epoch=2))  # another run's
    state, reason = find_resumable(tmp_path, "f")
    assert state is None and "fingerprint mismatch" in reason
    save_checkpoint(tmp_path / BEST, _state("f", epoch=1, best_epoch=1))  # this run's, an older epoch
    state, reason = find_resumable(tmp_path, "f")
    assert state is None and "holds epoch 1, not this run's best epoch 2" in reason
    save_checkpoint(tmp_path / BEST, _state("f", epoch=2, best_epoch=2))
    state, reason = find_resumable(tmp_path, "f")
    assert state["epoch"] == 3 and reason.startswith("resuming from")


def test_own_best_refuses_anything_but_this_runs_best(tmp_path):
    with pytest.raises(TrainingError, match="no epoch of this run improved"):
        own_best(tmp_path, "f", best_epoch=0)
    with pytest.raises(TrainingError, match="is missing"):
        own_best(tmp_path, "f", best_epoch=2)
    save_checkpoint(tmp_path / BEST, _state("g", epoch=2, best_epoch=2))
    with pytest.raises(TrainingError, match="fingerprint mismatch.*-S train.resume=never"):
        own_best(tmp_path, "f", best_epoch=2)
    save_checkpoint(tmp_path / BEST, _state("f", epoch=2, best_epoch=2))
    assert own_best(tmp_path, "f", best_epoch=2)["epoch"] == 2


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "fingerprint": "f", "epoch": 3,
             "history": [{"epoch": 1, "val_dice": 0.5}]}  # fmt: skip
    save_checkpoint(tmp_path / LAST, state)
    loaded = torch.load(tmp_path / LAST, weights_only=True)
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["weight"], model.weight)
    assert find_resumable(tmp_path, "f")[0]["history"] == [{"epoch": 1, "val_dice": 0.5}]
    assert find_resumable(tmp_path, "g")[0] is None


def test_corrupt_or_foreign_checkpoint_means_a_fresh_start(tmp_path):
    assert find_resumable(tmp_path, "f") == (None, f"no checkpoint at {tmp_path / LAST}")
    (tmp_path / LAST).write_bytes(b"garbage")
    state, reason = find_resumable(tmp_path, "f")
    assert state is None and "not a readable training checkpoint" in reason and LAST in reason
    torch.save({"something": torch.zeros(1)}, tmp_path / LAST)
    state, reason = find_resumable(tmp_path, "f")
    assert state is None and "not a retinaseg training checkpoint" in reason


def test_pickled_objects_are_refused(tmp_path):
    # any class outside torch's weights_only allow-list stands in for a malicious payload
    torch.save({"model": Fraction(1, 3), "fingerprint": "f"}, tmp_path / LAST)
    state, reason = find_resumable(tmp_path, "f")
    assert state is None and "not a readable training checkpoint" in reason
    try:
        load_checkpoint(tmp_path / LAST)
    except ValueError as exc:
        assert str(tmp_path / LAST) in str(exc)
    else:
        raise AssertionError("a pickled object was loaded")
