"""`retinaseg score`: pairing by sample id, binary vs probability predictions, predict output folders,
one bad file reported while the others are scored, the DRIVE second observer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinaseg.cli import main
from retinaseg.evaluation.scoring import ScoreError, is_predict_output, score_folders
from tests.unreadable import unreadable_file

GT = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.uint8)
PRED = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=np.uint8)
FOV = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=np.uint8)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture()
def folders(tmp_path):
    for name in ("01", "02"):
        _png(tmp_path / "pred" / f"{name}_manual2.png", PRED * 255)
        _png(tmp_path / "gt" / f"{name}_manual1.png", GT * 255)
        _png(tmp_path / "fov" / f"{name}_test_mask.png", FOV * 255)
    return tmp_path


def test_binary_predictions_scored_by_hand(folders):
    r = score_folders(folders / "pred", folders / "gt", folders / "fov")
    assert r["n_images"] == 2 and r["prediction_kind"] == "binary"
    # inside FOV (top two rows), per image: tp=2 fp=1 fn=1 tn=4; pooled over 2 images doubles them
    assert (r["fov"]["tp"], r["fov"]["fp"], r["fov"]["fn"], r["fov"]["tn"]) == (4, 2, 2, 8)
    assert r["fov"]["f1"] == pytest.approx(4 / 6) and r["fov"]["n_pixels"] == 16
    # whole image adds the bottom row: one more TP per image
    assert r["image"]["f1"] == pytest.approx(6 / 8) and r["image"]["n_pixels"] == 24
    assert "auc_roc" not in r["fov"]
    assert [row["id"] for row in r["per_image"]] == ["01", "02"]


def test_probability_maps_get_thresholded_and_aucs(tmp_path):
    prob = np.array([[0.9, 0.4, 0.3, 0.1], [0.8, 0.6, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]])
    _png(tmp_path / "pred" / "7.png", np.rint(prob * 255))
    _png(tmp_path / "gt" / "7_mask.png", GT * 255)
    r = score_folders(tmp_path / "pred", tmp_path / "gt", threshold=0.5)
    assert r["prediction_kind"] == "probability"
    # p >= 0.5: (0,0), (1,0), (1,1), (2,3) → the same as PRED
    assert (r["image"]["tp"], r["image"]["fp"], r["image"]["fn"]) == (3, 1, 1)
    # vessels 0.9, 0.8, 0.7 beat all 8 background pixels; 0.4 loses to the 0.6 one: AUC = 31/32
    assert r["image"]["auc_roc"] == pytest.approx(31 / 32)


def test_predictions_without_truth_are_errors_and_the_others_are_scored(folders):
    _png(folders / "pred" / "03_manual2.png", PRED * 255)
    (folders / "gt" / "02_manual1.png").unlink()
    seen: list[str] = []
    r = score_folders(folders / "pred", folders / "gt", on_error=seen.append)
    assert r["n_images"] == 1 and [row["id"] for row in r["per_image"]] == ["01"]
    assert r["n_failed"] == 2 and len(seen) == 2
    assert [Path(e["file"]).name for e in r["errors"]] == ["02_manual2.png", "03_manual2.png"]
    assert "02_manual2.png: no ground truth for sample '02'" in seen[0]
    assert r["unscored_ground_truth"] == []


def test_ground_truth_without_a_prediction_is_listed_not_an_error(folders):
    (folders / "pred" / "01_manual2.png").unlink()
    r = score_folders(folders / "pred", folders / "gt", folders / "fov")
    assert r["n_images"] == 1 and r["n_failed"] == 0
    assert r["unscored_ground_truth"] == ["01_manual1.png"]


def test_missing_fov_and_size_mismatch_are_per_file_errors(folders):
    (folders / "fov" / "02_test_mask.png").unlink()
    r = score_folders(folders / "pred", folders / "gt", folders / "fov")
    assert r["n_images"] == 1 and "no FOV mask for sample '02'" in r["errors"][0]["error"]
    _png(folders / "pred" / "02_manual2.png", np.zeros((5, 5), dtype=np.uint8))
    r = score_folders(folders / "pred", folders / "gt")
    assert r["n_images"] == 1 and "02_manual2.png: size (5, 5) differs" in r["errors"][0]["error"]
    _png(folders / "pred" / "01_manual2.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(ScoreError, match="none of the 2 prediction"):
        score_folders(folders / "pred", folders / "gt")


def test_folder_problems_are_score_errors(folders, tmp_path):
    with pytest.raises(ScoreError, match="prediction folder not found"):
        score_folders(tmp_path / "nope", folders / "gt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScoreError, match="no image files in the ground-truth folder"):
        score_folders(folders / "pred", tmp_path / "empty")
    _png(folders / "pred" / "01_test.png", PRED * 255)  # a second prediction for sample 01
    with pytest.raises(ScoreError, match="two prediction files for sample '01'"):
        score_folders(folders / "pred", folders / "gt")
    for bad in (5, -0.1, float("nan"), float("inf")):
        with pytest.raises(ScoreError, match=r"threshold must be a finite number in \[0, 1\]"):
            score_folders(folders / "gt", folders / "gt", threshold=bad)


def test_a_folder_named_like_an_image_is_one_bad_file(folders, capsys):
    (folders / "pred" / "03_manual2.png").mkdir()  # a folder where a prediction file should be
    _png(folders / "gt" / "03_manual1.png", GT * 255)
    _png(folders / "fov" / "03_test_mask.png", FOV * 255)
    args = [
        "score",
        "--pred",
        str(folders / "pred"),
        "--gt",
        str(folders / "gt"),
        "--fov",
        str(folders / "fov"),
    ]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert "2 image(s), predictions: binary" in out and "inside FOV" in out
    lines = err.strip().splitlines()
    assert lines[0] == f"error: {folders / 'pred' / '03_manual2.png'}: not a regular file"
    assert lines[-1] == "1 of 3 prediction files failed" and len(lines) == 2


def test_an_unreadable_truth_file_is_one_bad_file(folders, capsys):
    (folders / "gt" / "02_manual1.png").unlink()
    unreadable = unreadable_file(folders / "gt" / "02_manual1.png")
    assert main(["score", "--pred", str(folders / "pred"), "--gt", str(folders / "gt")]) == 1
    out, err = capsys.readouterr()
    assert "1 image(s), predictions: binary" in out
    assert f"error: {unreadable}: cannot read the file (Permission denied)" in err
    assert "1 of 2 prediction files failed" in err


# ---------------------------------------------------------------------------- predict output folders


def _predict_folder(folder, threshold=0.3, report=True):
    """What `retinaseg predict` writes for the inputs 01_test.tif and 02_test.tif."""
    prob = np.array([[0.9, 0.4, 0.2, 0.1], [0.8, 0.35, 0.1, 0.0], [0.1, 0.1, 0.1, 0.7]])
    for stem in ("01_test", "02_test"):
        _png(folder / f"{stem}_mask.png", (prob >= threshold) * 255)
        _png(folder / f"{stem}_prob.png", np.rint(prob * 255))
        _png(folder / f"{stem}_overlay.png", np.zeros((3, 4, 3), dtype=np.uint8))
    if report:
        (folder / "predict_report.json").write_text(json.dumps({"threshold": threshold, "outputs": []}))
    return folder


def test_predict_output_folder_scores_its_masks(folders):
    pred = _predict_folder(folders / "out")
    r = score_folders(pred, folders / "gt", folders / "fov")
    assert r["n_images"] == 2 and r["n_failed"] == 0 and r["prediction_kind"] == "binary"
    assert r["predictions"] == {"folder": str(pred), "predict_output": True, "use": "mask", "ignored": 4}
    assert [row["prediction"] for row in r["per_image"]] == ["01_test_mask.png", "02_test_mask.png"]
    # mask = prob >= 0.3: inside the FOV (0,0), (0,1), (1,0) are vessels, (1,1) is not: tp=3 fp=1 fn=0
    assert (r["fov"]["tp"], r["fov"]["fp"], r["fov"]["fn"]) == (6, 2, 0)


def test_predict_output_folder_scores_its_probabilities_at_predicts_threshold(folders):
    pred = _predict_folder(folders / "out", threshold=0.3)
    masks = score_folders(pred, folders / "gt", folders / "fov")
    probs = score_folders(pred, folders / "gt", folders / "fov", use="prob")
    assert probs["prediction_kind"] == "probability" and probs["predictions"]["use"] == "prob"
    assert (probs["threshold"], probs["threshold_from"]) == (0.3, "predict_report.json")
    assert probs["fov"]["f1"] == pytest.approx(masks["fov"]["f1"])  # the same pixels as its masks
    assert "auc_roc" in probs["fov"]
    high = score_folders(pred, folders / "gt", use="prob", threshold=0.5)
    assert (high["threshold"], high["threshold_from"]) == (0.5, "given")
    assert (high["image"]["tp"], high["image"]["fp"]) == (6, 0)  # 0.9, 0.8, 0.7 per image


def test_predict_output_recognised_without_its_report(folders):
    pred = _predict_folder(folders / "out", report=False)
    r = score_folders(pred, folders / "gt", use="prob")
    assert r["predictions"]["predict_output"] and r["threshold_from"] == "default"
    assert r["threshold"] == 0.5


def test_use_is_refused_for_a_folder_predict_did_not_write(folders):
    with pytest.raises(ScoreError, match="not a retinaseg predict output folder"):
        score_folders(folders / "pred", folders / "gt", use="prob")
    # a folder of plain probability maps named <id>_prob.png alone is not mistaken for one
    assert not is_predict_output(folders / "pred")


def test_cli_score_on_a_predict_folder(folders, capsys):
    pred = _predict_folder(folders / "out")
    base = ["score", "--pred", str(pred), "--gt", str(folders / "gt"), "--fov", str(folders / "fov")]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "2 image(s), predictions: binary (the _mask files of a retinaseg predict output; " in out
    assert "4 other files ignored)" in out
    assert main([*base, "--use", "prob"]) == 0
    out = capsys.readouterr().out
    assert "predictions: probability (the _prob files" in out
    assert "threshold 0.3 (from predict_report.json)" in out


@pytest.mark.parametrize("value", ["5", "nan", "-0.1", "inf", "x"])
def test_cli_score_threshold_must_be_in_the_unit_interval(folders, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["score", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--threshold", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"retinaseg score: error: argument --threshold: must be a number in [0, 1], got {value!r}"


def test_cli_score_writes_json(folders, capsys):
    out = folders / "scores.json"
    rc = main(
        [
            "score",
            "--pred",
            str(folders / "pred"),
            "--gt",
            str(folders / "gt"),
            "--fov",
            str(folders / "fov"),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert "inside FOV" in capsys.readouterr().out
    assert json.loads(out.read_text())["fov"]["f1"] == pytest.approx(4 / 6)
    assert main(["score", "--pred", str(folders / "nope"), "--gt", str(folders / "gt")]) == 2
    assert capsys.readouterr().err == f"error: {folders / 'nope'}: prediction folder not found\n"


@pytest.mark.drive
def test_drive_second_observer_is_the_published_human_baseline(drive_root):
    t = drive_root / "test"
    r = score_folders(t / "2nd_manual", t / "1st_manual", t / "mask")
    assert r["n_images"] == 20 and r["prediction_kind"] == "binary"
    fov = r["fov"]
    assert fov["n_pixels"] == 4_538_143
    assert fov["f1"] == pytest.approx(0.7891, abs=5e-4)
    assert fov["accuracy"] == pytest.approx(0.9473, abs=5e-4)
    assert fov["sensitivity"] == pytest.approx(0.7746, abs=5e-4)
    assert fov["specificity"] == pytest.approx(0.9725, abs=5e-4)


def test_cli_score_json_where_a_folder_is_names_it(folders, capsys):
    target = folders / "scores.json"
    (target / "old").mkdir(parents=True)  # a folder where the JSON file should go
    args = ["score", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"), "--json", str(target)]
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert "inside FOV" not in out and "whole image" in out  # scored and printed, then the write failed
    assert err == f"error: {target}: Is a directory\n"
    assert not list(folders.glob(".scores.json*"))  # no temporary file left behind
