"""The data-loader and FIVES-memory benchmarks run end to end in --quick mode and write their reports."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch


def _load(repo_root, name: str):
    path = repo_root / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_data_loader_quick_reports_the_loader_to_step_ratio(repo_root, tmp_path, capsys):
    bench = _load(repo_root, "data_loader")
    threads = torch.get_num_threads()
    out = tmp_path / "data_loader.json"
    try:
        rc = bench.main(
            ["--quick", "--threads", "1", "--params", str(repo_root / "params.yaml"), "--cache-mb", "0"]
            + ["--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["settings"]["quick"] and report["bare_step_images_per_s"] > 0
    assert report["settings"]["cache_mb"] == 0  # --cache-mb reached the params (params.yaml: 1024)
    assert [r["workers"] for r in report["loader"]] == [0, 1]
    for row in report["loader"]:
        assert row["loader_images_per_s"] > 0
        assert row["ratio_loader_to_step"] == pytest.approx(
            row["loader_images_per_s"] / report["bare_step_images_per_s"], rel=0.01
        )
        assert 0 <= row["stall_share"] <= 1
    assert set(report["augment"]) == {"albumentations_cpu_1_process_images_per_s", "kornia_cpu_images_per_s"}
    assert "| workers | loader images/s |" in capsys.readouterr().out


@pytest.mark.slow
def test_fives_rss_quick_measures_an_epoch_under_the_limit(repo_root, tmp_path, capsys):
    bench = _load(repo_root, "fives_rss")
    threads = torch.get_num_threads()
    out = tmp_path / "fives.json"
    try:
        rc = bench.main(
            ["--quick", "--jobs", "1", "--params", str(repo_root / "params.yaml"), "--out", str(out)]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["n"] == 8 and report["size"] == 256 and report["images_seen"] == 8
    assert report["cache_mb"] == 1024  # params.yaml's base.cache_mb, as the engine would use it
    assert report["png_bytes_on_disk"] > 0 and report["decoded_bytes_if_held"] == 8 * 256 * 256 * 5
    assert 0 < report["pss_before_mb"] <= report["peak_pss_mb"] < report["limit_mb"]
    assert report["under_limit"] is True
    assert "peak PSS" in capsys.readouterr().out


def test_tree_memory_counts_this_process():
    import pathlib

    bench = _load(pathlib.Path(__file__).resolve().parents[2], "fives_rss")
    rss, pss = bench.tree_memory()
    assert rss > 10 * 2**20 and 0 < pss <= rss


@pytest.mark.slow
def test_inference_latency_quick_times_each_predict_setting_and_both_tilers(repo_root, tmp_path):
    bench = _load(repo_root, "inference_latency")
    threads = torch.get_num_threads()
    out = tmp_path / "inference.json"
    try:
        params = str(repo_root / "params.yaml")
        rc = bench.main(["--quick", "--random-init", "--threads", "1", "--params", params, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    e2e = [r for r in rows if r["kind"] == "end_to_end"]
    # contiguous, channels-last, and channels-last with the batch norms folded (predict's default)
    assert sorted((r["channels_last"], r["fold_batch_norm"]) for r in e2e) == [
        (False, False),
        (True, False),
        (True, True),
    ]
    tilers = [r for r in rows if r["kind"] == "tiler"]
    assert [r["tiler"] for r in tilers] == ["own", "monai"]
    # the same tiling and Gaussian blending: the two maps agree to float rounding
    assert all(r["max_abs_diff_own_vs_monai"] < 1e-4 for r in tilers)
