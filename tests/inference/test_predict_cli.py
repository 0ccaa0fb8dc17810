"""`retinaseg predict` at the command line: one bad input is reported and the others segmented, option
values are checked before anything runs, a failed write names the output file, and predict's output
folder is what `retinaseg score --pred` takes (on real DRIVE files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaseg.cli import main
from tests.unreadable import unreadable_file


def _fundus(path: Path, seed: int, h: int = 40, w: int = 48) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    for i, stem in enumerate(("eye_a", "eye_c")):
        _fundus(folder / f"{stem}.png", i)
    return folder


def _error_lines(err: str) -> list[str]:
    """stderr without the progress bar."""
    return [ln for ln in err.splitlines() if ln.startswith("error: ") or ln.endswith(" files failed")]


def _predict(model: Path, out: Path, *inputs: Path, extra: tuple[str, ...] = ()) -> int:
    return main(
        ["predict", *map(str, inputs), "--model", str(model), "--out", str(out), "--device", "cpu", *extra]
    )


def test_an_unreadable_input_is_reported_and_the_others_segmented(inputs, tiny_model_dir, tmp_path, capsys):
    locked = unreadable_file(inputs / "eye_b.png")
    out = tmp_path / "out"
    assert _predict(tiny_model_dir, out, inputs) == 1
    captured = capsys.readouterr()
    assert _error_lines(captured.err) == [
        f"error: {locked}: cannot read the file (Permission denied)",
        "1 of 3 files failed",
    ]
    assert "segmented 2 of 3 image(s)" in captured.out
    for stem in ("eye_a", "eye_c"):
        assert {p.name for p in out.glob(f"{stem}_*")} == {
            f"{stem}_{k}.png" for k in ("mask", "prob", "overlay")
        }
    assert not list(out.glob("eye_b_*"))
    report = json.loads((out / "predict_report.json").read_text())
    assert (report["n_ok"], report["n_failed"]) == (2, 1)


def test_a_fifo_and_a_missing_file_are_bad_inputs(inputs, tiny_model_dir, tmp_path, capsys):
    fifo = tmp_path / "eye_b.png"
    os.mkfifo(fifo)  # named like an image, not a regular file (never opened: it would block)
    assert _predict(tiny_model_dir, tmp_path / "out", inputs / "eye_a.png", fifo, tmp_path / "gone.png") == 1
    assert _error_lines(capsys.readouterr().err) == [
        f"error: {tmp_path / 'gone.png'}: no such file or folder",
        f"error: {fifo}: not a regular file",
        "2 of 3 files failed",
    ]
    assert (tmp_path / "out" / "eye_a_mask.png").is_file()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", "0", "must be a whole number >= 1, got '0'"),
        ("--batch-size", "2.5", "must be a whole number >= 1, got '2.5'"),
        ("--threshold", "1.5", "must be a number in [0, 1], got '1.5'"),
        ("--threshold", "nan", "must be a number in [0, 1], got 'nan'"),
        ("--device", "gpu", "must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
        (
            "--tta-scales",
            "1,5",
            "must be 1 to 8 different numbers in [0.25, 4], comma-separated (e.g. 0.85,1,1.15), got '1,5'",
        ),
        (
            "--tta-scales",
            "1,1",
            "must be 1 to 8 different numbers in [0.25, 4], comma-separated (e.g. 0.85,1,1.15), got '1,1'",
        ),
        (
            "--tta-scales",
            "a",
            "must be 1 to 8 different numbers in [0.25, 4], comma-separated (e.g. 0.85,1,1.15), got 'a'",
        ),
    ],
)
def test_option_values_are_checked(inputs, tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "predict",
                str(inputs),
                "--model",
                str(tmp_path / "m"),
                "--out",
                str(tmp_path / "o"),
                option,
                value,
            ]
        )
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"retinaseg predict: error: argument {option}: {message}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--vessel-scale", "0", "must be a finite number > 0, got '0'"),
        ("--vessel-scale", "inf", "must be a finite number > 0, got 'inf'"),
        ("--vessel-scale", "-1", "must be a finite number > 0, got '-1'"),
        ("--threshold", "-0.5", "must be a number in [0, 1], got '-0.5'"),
        ("--split", "val", "invalid choice: 'val' (choose from"),
    ],
)
def test_evaluate_option_values_are_checked(tmp_path, capsys, option, value, message):
    args = ["evaluate", "--model", str(tmp_path), "--source", "drive", "--root", str(tmp_path), option, value]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert f"retinaseg evaluate: error: argument {option}: {message}" in capsys.readouterr().err


def test_an_absent_device_is_one_error_line(inputs, tiny_model_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert (
        main(
            [
                "predict",
                str(inputs),
                "--model",
                str(tiny_model_dir),
                "--out",
                str(tmp_path / "o"),
                "--device",
                "cuda",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda: device 'cuda' was requested but")


def test_a_folder_where_an_output_file_should_be_stops_with_its_name(
    inputs, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    (out / "eye_a_mask.png" / "inside").mkdir(parents=True)  # a folder where predict writes a file
    assert _predict(tiny_model_dir, out, inputs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {out / 'eye_a_mask.png'}: Is a directory"
    assert not list(out.glob(".*.tmp*"))  # no temporary file left behind


def test_an_output_folder_that_is_a_file_is_refused(inputs, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert _predict(tiny_model_dir, tmp_path / "out", inputs) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'out'} exists and is not a folder\n"


@pytest.mark.drive
def test_predict_then_score_on_drive(drive_root, tiny_model_dir, tmp_path, capsys):
    """The chain a user runs: predict three DRIVE test images, score the output folder against DRIVE's
    own truth and FOV folders (all 20 files: the 17 without a prediction are listed, not errors)."""
    test = drive_root / "test"
    images = [test / "images" / f"{i:02d}_test.tif" for i in (1, 2, 3)]
    out = tmp_path / "pred"
    assert _predict(tiny_model_dir, out, *images) == 0
    capsys.readouterr()
    score = ["score", "--pred", str(out), "--gt", str(test / "1st_manual"), "--fov", str(test / "mask")]
    assert main([*score, "--json", str(tmp_path / "mask.json")]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    lines = printed.out.splitlines()
    assert lines[0] == (
        "3 image(s), predictions: binary "
        "(the _mask files of a retinaseg predict output; 6 other files ignored)"
    )
    assert (
        "not scored: 17 ground-truth file(s) without a prediction (04_manual1.gif, 05_manual1.gif, "
        in printed.out
    )
    masks = json.loads((tmp_path / "mask.json").read_text())
    assert [row["id"] for row in masks["per_image"]] == ["01", "02", "03"]
    assert [row["prediction"] for row in masks["per_image"]] == [f"{i:02d}_test_mask.png" for i in (1, 2, 3)]
    assert masks["fov"]["n_pixels"] == sum(
        int((np.asarray(Image.open(test / "mask" / f"{i:02d}_test_mask.gif").convert("L")) > 127).sum())
        for i in (1, 2, 3)
    )

    assert main([*score, "--use", "prob", "--json", str(tmp_path / "prob.json")]) == 0
    assert "predictions: probability (the _prob files" in capsys.readouterr().out
    probs = json.loads((tmp_path / "prob.json").read_text())
    assert probs["threshold_from"] == "predict_report.json" and "auc_roc" in probs["fov"]
    # the masks are prob >= threshold: both give the same confusion counts, up to the 1/255 rounding of prob
    assert (
        abs(probs["fov"]["tp"] + probs["fov"]["fp"] - masks["fov"]["tp"] - masks["fov"]["fp"])
        <= 0.01 * masks["fov"]["n_pixels"]
    )


def test_precision_fp32_on_the_cpu_gives_the_default_output_and_an_unknown_one_is_refused(
    inputs, tiny_model_dir, tmp_path, capsys
):
    # on the CPU `auto` is fp32: forcing fp32 must give byte-identical probability maps
    assert _predict(tiny_model_dir, tmp_path / "auto", inputs) == 0
    assert _predict(tiny_model_dir, tmp_path / "fp32", inputs, extra=("--precision", "fp32")) == 0
    for stem in ("eye_a", "eye_c"):
        auto = (tmp_path / "auto" / f"{stem}_prob.png").read_bytes()
        assert auto == (tmp_path / "fp32" / f"{stem}_prob.png").read_bytes()
    with pytest.raises(SystemExit) as exc:
        _predict(tiny_model_dir, tmp_path / "x", inputs, extra=("--precision", "int8"))
    assert exc.value.code == 2
    assert "--precision: invalid choice: 'int8'" in capsys.readouterr().err


def test_tta_scales_average_the_maps_and_are_reported(inputs, tiny_model_dir, tmp_path):
    assert _predict(tiny_model_dir, tmp_path / "plain", inputs) == 0
    assert _predict(tiny_model_dir, tmp_path / "ms", inputs, extra=("--tta-scales", "0.75,1,1.25")) == 0
    plain = json.loads((tmp_path / "plain" / "predict_report.json").read_text())
    ms = json.loads((tmp_path / "ms" / "predict_report.json").read_text())
    assert (plain["tta_scales"], ms["tta_scales"]) == ([1.0], [0.75, 1.0, 1.25])
    assert ms["n_ok"] == plain["n_ok"] > 0
    for stem in ("eye_a", "eye_c"):
        a = np.asarray(Image.open(tmp_path / "plain" / f"{stem}_prob.png"))
        b = np.asarray(Image.open(tmp_path / "ms" / f"{stem}_prob.png"))
        assert a.shape == b.shape and not np.array_equal(a, b)  # the other scales change the map
