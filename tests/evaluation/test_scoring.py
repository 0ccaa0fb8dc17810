"""`retinaseg score`: pairing by sample id, binary vs probability predictions, the DRIVE second observer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from retinaseg.cli import main
from retinaseg.evaluation.scoring import score_folders

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


def test_unpaired_files_are_listed(folders):
    _png(folders / "pred" / "03_manual2.png", PRED * 255)
    (folders / "gt" / "02_manual1.png").unlink()
    with pytest.raises(ValueError, match="predictions without ground truth") as err:
        score_folders(folders / "pred", folders / "gt")
    assert "02_manual2.png, 03_manual2.png" in str(err.value)
    (folders / "pred" / "01_manual2.png").unlink()
    with pytest.raises(ValueError, match="ground truth without a prediction.*01_manual1.png"):
        score_folders(folders / "pred", folders / "gt")


def test_missing_fov_and_size_mismatch_are_errors(folders):
    (folders / "fov" / "02_test_mask.png").unlink()
    with pytest.raises(ValueError, match="no FOV mask"):
        score_folders(folders / "pred", folders / "gt", folders / "fov")
    _png(folders / "pred" / "02_manual2.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="02_manual2.png: size"):
        score_folders(folders / "pred", folders / "gt")


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
