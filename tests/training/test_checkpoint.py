"""Checkpoint fingerprints, safe loading and the resume decision (the data hash: tests/core)."""

from __future__ import annotations

from fractions import Fraction

import torch

from retinaseg.core.config import load_params
from retinaseg.training.checkpoint import (
    LAST,
    find_resumable,
    load_checkpoint,
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
