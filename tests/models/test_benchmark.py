"""The training-throughput benchmark runs end to end in --quick mode and writes its report."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch


def _load_benchmark(repo_root):
    path = repo_root / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_writes_table_and_json(repo_root, tmp_path, capsys):
    bench = _load_benchmark(repo_root)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        rc = bench.main(
            [
                "--quick",
                "--threads",
                "1",
                "--params",
                str(repo_root / "params.yaml"),
                "--unet-widths",
                "4",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["torch_threads"] == 1
    labels = [r["label"] for r in report["results"]]
    assert labels == [m for m in ["unet-16", "attention_unet-16", "resnet34_unet", "unet-4"] for _ in (0, 1)]
    assert [r["channels_last"] for r in report["results"]] == [False, True] * 4
    for row in report["results"]:
        assert row["error"] is None
        assert row["device"] == "cpu" and row["precision"] == "fp32"
        assert row["size"] == 64 and row["batch"] == 1 and row["steps"] == 1
        assert row["images_per_s"] > 0 and row["peak_mem_mb"] > 0
        assert row["s_per_image"] == pytest.approx(1 / row["images_per_s"])
    table = capsys.readouterr().out
    assert "| model | params |" in table and "| unet-4 |" in table


def test_cuda_grid_has_eight_variants_per_model(repo_root):
    bench = _load_benchmark(repo_root)
    cpu_only = bench.variants(["cpu"], allow_compile=True)
    assert [(v.device, v.precision, v.channels_last) for v in cpu_only] == [
        ("cpu", "fp32", False),
        ("cpu", "fp32", True),
    ]
    if torch.cuda.is_available():
        grid = bench.variants(["cuda"], allow_compile=True)
        assert len(grid) == 8 and len(bench.variants(["cuda"], allow_compile=False)) == 4
