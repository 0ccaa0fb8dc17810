"""benchmarks/cpu_recipe.py runs two variants end to end on real DRIVE (--quick) and reports both."""

from __future__ import annotations

import json

import pytest
import torch

from tests.benchmarks.test_input_benchmarks import _load


@pytest.mark.slow
def test_cpu_recipe_quick_trains_evaluates_and_times_each_variant(repo_root, drive_root, tmp_path, capsys):
    bench = _load(repo_root, "cpu_recipe")
    threads = torch.get_num_threads()
    out = tmp_path / "cpu_recipe.json"
    try:
        rc = bench.main(
            [
                "--drive",
                str(drive_root),
                "--quick",
                "--variant",
                "old=recipes/drive-cpu.yaml:train.channels_last=false,base.cache_mb=0",
                "--variant",
                "new=recipes/drive-cpu.yaml:train.epochs=3",
                "--work",
                str(tmp_path / "work"),
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    report = json.loads(out.read_text())
    old, new = report["variants"]
    assert (old["name"], new["name"]) == ("old", "new")
    # the variant's own overrides reached the run (--quick fixes the epochs only where a variant does not)
    assert old["overrides"]["train.channels_last"] is False and old["overrides"]["base.cache_mb"] == 0
    assert new["overrides"]["train.epochs"] == 3
    assert (old["epochs_run"], new["epochs_run"]) == (2, 3)
    for row in (old, new):
        assert row["n_test_images"] == 20  # DRIVE's test split, scored inside the FOV
        assert 0.0 < row["test_fov_f1"] < 1.0 and 0.0 < row["test_fov_auc_roc"] <= 1.0
        assert row["train_seconds"] > 0
        for timing in row["predict_ms_per_image"].values():
            assert 0 < timing["min_ms"] <= timing["median_ms"]
    # one validate/split/preprocess served both variants (same data and preprocessing)
    assert sorted(p.name for p in (tmp_path / "work").iterdir() if p.name.startswith("data")) == ["data0"]
    printed = capsys.readouterr().out
    assert "| variant | training |" in printed and "| new |" in printed


def test_a_malformed_variant_is_refused_by_name(repo_root, drive_root, tmp_path, capsys):
    bench = _load(repo_root, "cpu_recipe")
    rc = bench.main(
        ["--drive", str(drive_root), "--variant", "recipes/drive-cpu.yaml", "--out", str(tmp_path / "x")]
    )
    assert rc == 2
    assert "--variant 'recipes/drive-cpu.yaml': expected NAME=RECIPE" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
