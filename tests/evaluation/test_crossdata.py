"""The cross-dataset matrix (retinaseg.evaluation.crossdata) on tiny models and datasets, without DVC:
the training dataset reproduces evaluate's scores, other datasets are scored at evaluate's threshold
on the images and FOV the brief names, the table and heat-map, MLflow, and clear errors."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinaseg.core.config import PreprocessParams, SyntheticParams, params_from_dict
from retinaseg.data.io import binarise_mask, read_image, read_mask
from retinaseg.data.split import read_split
from retinaseg.data.synthetic import generate_dataset
from retinaseg.evaluation import crossdata as C
from retinaseg.evaluation import metrics as M
from retinaseg.evaluation.evaluate import evaluate_model
from retinaseg.inference.predictor import predict_proba
from retinaseg.models.factory import build_model
from retinaseg.models.saved import ModelCard, load_model_dir, save_model_dir
from tests.evaluation.conftest import write_dataset
from tests.tiny import TINY_UNET

MODELS = ("unet", "attention_unet")  # the tiny ones (the ResNet34 encoder is the DVC test's)


def _save_models(models_dir: Path, size: int = 32) -> Path:
    for seed, name in enumerate(MODELS):
        torch.manual_seed(seed)
        card = ModelCard(name=name, model_params=TINY_UNET, preprocess=PreprocessParams(size=size))
        save_model_dir(build_model(name, TINY_UNET), card, models_dir / name)
    return models_dir


def _params(train_root: Path, datasets: list[dict], source: str = "folder"):
    return params_from_dict(
        {
            "base": {"device": "cpu", "seed": 1, "threads": 1},
            "data": {"source": source, "root": str(train_root)},
            "evaluate": {"bootstrap": 20, "n_overlays": 0, "curve_points": 20},
            "datasets": datasets,
        }
    )


@pytest.fixture()
def world(tmp_path, mlflow_uri, monkeypatch):
    """A training dataset with splits, two tiny models evaluated on it (reports/metrics), and a
    second dataset (synthetic layout, another seed and size: its own test split of 2 images)."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns: keep it out of the repo
    train = write_dataset(
        tmp_path / "train", {"train": ["t0"], "val": ["v0", "v1"], "test": ["s0", "s1", "s2"]}
    )
    other = tmp_path / "other"
    generate_dataset(other, SyntheticParams(n_train=2, n_test=2, size=48, seed=3))
    datasets = [
        {"name": "train", "source": "folder", "root": str(train)},
        {"name": "other-syn", "source": "synthetic", "root": str(other)},
    ]
    params = _params(train, datasets)
    models = _save_models(tmp_path / "models")
    reports = tmp_path / "reports"
    for name in MODELS:
        evaluate_model(params, name, models / name, train / "splits", train, reports)
    return {"params": params, "train": train, "other": other, "models": models, "reports": reports}


def _run(world, name: str, **kwargs) -> dict:
    return C.evaluate_on_dataset(
        world["params"],
        name,
        models_dir=world["models"],
        metrics_dir=world["reports"] / "metrics",
        splits_dir=world["train"] / "splits",
        out_path=world["reports"] / "crossdata" / f"{name}.json",
        model_names=MODELS,
        **kwargs,
    )["report"]


def test_training_dataset_reproduces_evaluate_and_other_dataset_uses_its_threshold(world):
    train_report = _run(world, "train")
    assert train_report == json.loads((world["reports"] / "crossdata" / "train.json").read_text())
    d = train_report["dataset"]
    assert d["training"] is True and d["n_images"] == 3 and d["fov"] == "dataset"
    for name in MODELS:
        evaluated = json.loads((world["reports"] / "metrics" / f"{name}.json").read_text())
        assert d["test_fingerprint"] == evaluated["protocol"]["test_fingerprint"]
        scores = train_report["models"][name]
        assert scores["threshold"] == evaluated["threshold"]
        for key in C.SCORES:  # the same images, predictions, threshold and code: equal, not close
            assert scores[key] == evaluated["fov"][key], key

    other = _run(world, "other-syn")
    d = other["dataset"]
    assert d["training"] is False and d["images"] == "its own test split" and d["fov"] == "dataset"
    assert d["n_images"] == 2 and d["auc_pixels"] == "all FOV pixels"
    # recomputed independently: the model's own preprocessing, evaluate's threshold, the dataset's FOV
    for name in MODELS:
        t = json.loads((world["reports"] / "metrics" / f"{name}.json").read_text())["threshold"]
        assert other["models"][name]["threshold"] == t
        expected = _other_syn_scores(world, name, t)
        assert other["models"][name]["f1"] == pytest.approx(expected["f1"])
        assert other["models"][name]["mcc"] == pytest.approx(expected["mcc"])


def _other_syn_scores(world, name: str, threshold: float, size: int | None = None) -> dict:
    """Pooled FOV scores of model ``name`` on the other dataset's test split, computed without the
    crossdata module: the model card's preprocessing (or another ``size``) at ``threshold``."""
    model, card = load_model_dir(world["models"] / name)
    pre = card.preprocess_params() if size is None else PreprocessParams(size=size)
    total = M.Confusion(0, 0, 0, 0)
    for k in (2, 3):  # the generator's test split: samples after the 2 training ones
        image = read_image(world["other"] / "test" / "images" / f"syn_{k:03d}.png")
        gt = binarise_mask(read_mask(world["other"] / "test" / "masks" / f"syn_{k:03d}.png")).astype(bool)
        fov = binarise_mask(read_mask(world["other"] / "test" / "fov" / f"syn_{k:03d}.png")).astype(bool)
        total = total + M.confusion(predict_proba(model, image, pre) >= threshold, gt, fov)
    return M.scores_from_confusion(*total)


def test_diagnose_script_splits_a_loss_into_threshold_and_scale(world, repo_root):
    # scripts/crossdata_diagnose.py, run where the pipeline's models/ and reports/metrics/ lie (the
    # fixture's cwd): at the val threshold and the card's size it is the crossdata score; elsewhere
    # it is the same protocol at another threshold or input size
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("diagnose", repo_root / "scripts" / "crossdata_diagnose.py")
    diagnose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnose)
    Path("params.yaml").write_text(yaml.safe_dump({
        "base": {"device": "cpu", "seed": 1, "threads": 1},
        "data": {"source": "folder", "root": str(world["train"])},
        "evaluate": {"curve_points": 20},
    }))  # fmt: skip
    out = Path("diagnose.json")
    argv = ["--model", "unet", "--dataset", f"other-syn=synthetic:{world['other']}",
            "--thresholds", "val,0.3", "--sizes", "card,48", "--errors", "--out", str(out)]  # fmt: skip
    assert diagnose.main(argv) == 0
    grid = {(r["size"], r["threshold"]): r for r in json.loads(out.read_text())["grid"]}
    val = json.loads((world["reports"] / "metrics" / "unet.json").read_text())["threshold"]
    assert set(grid) == {(32, val), (32, 0.3), (48, val), (48, 0.3)}
    assert grid[(32, val)]["val_threshold"] and grid[(32, val)]["card_size"]
    protocol = _run(world, "other-syn")["models"]["unet"]
    assert grid[(32, val)]["f1"] == protocol["f1"] and grid[(32, val)]["auc_roc"] == protocol["auc_roc"]
    for size, t in [(32, 0.3), (48, val), (48, 0.3)]:
        expected = _other_syn_scores(world, "unet", t, size=None if size == 32 else size)
        assert grid[(size, t)]["f1"] == pytest.approx(expected["f1"]), (size, t)
    assert grid[(48, val)]["f1"] != grid[(32, val)]["f1"]  # the size reached the model
    for row in grid.values():  # --errors counts the same pixels the scores came from
        where = row["errors"]
        assert where["threshold"] == row["threshold"]
        assert where["f1"] == pytest.approx(row["f1"])
        assert where["sensitivity"] == pytest.approx(row["sensitivity"])
        marked, annotated = where["tp"] + where["fp"], where["tp"] + where["fn"]
        assert where["marked_over_reference"] == pytest.approx(marked / annotated)
        assert 0 <= where["fp_near"] <= where["fp"] and 0 <= where["fp_rim"] <= where["fp"]
    scales = {s["size"]: s["mean"] for s in json.loads(out.read_text())["scale"]}
    assert set(scales) == {32, 48}  # each size's eye and vessels in model pixels, the same images
    assert scales[48]["fov_diameter"] == pytest.approx(scales[32]["fov_diameter"] * 1.5)
    assert scales[48]["vessel_share"] == scales[32]["vessel_share"] > 0
    assert diagnose.main(["--dataset", "gone=synthetic:no-such-folder"]) == 2  # one error line, no traceback


def test_error_counts_sort_false_positives_by_where_they_lie():
    # a 200 px eye (FOV disc of radius 80) with an annotated vessel 4 px wide and a short one near
    # the edge; the model marks the first 2 px wider on each side, a blob far from it and a patch at
    # the FOV's edge, and misses a piece of the first and all of the second
    from retinaseg.evaluation.evaluate import Sample

    yy, xx = np.mgrid[:200, :200]
    fov = (yy - 100) ** 2 + (xx - 100) ** 2 <= 80**2
    gt = np.zeros((200, 200), bool)
    gt[98:102, 60:150] = True
    gt[60:64, 150:158] = True  # about 11.5 px from the edge, never marked: 32 false negatives
    prob = np.zeros((200, 200), np.float32)
    prob[96:104, 60:150] = 0.9  # the vessel, widened by 2 px a side: 2 × 2 × 90 false positives
    prob[98:102, 140:150] = 0.2  # a missed piece of it (below the threshold): 40 false negatives
    prob[140:150, 95:105] = 0.8  # a blob 38 px from the vessel: 100 false positives
    prob[96:104, 176:182] = 0.7  # a patch on the FOV's edge (x 180), 26 px past the vessel's end
    sample = Sample("eye", np.zeros((200, 200, 3), np.uint8), gt, fov, False)
    rim_fp = int(np.count_nonzero(fov[96:104, 176:182]))
    assert 0 < rim_fp < 48

    # model pixels of 2 image pixels (a 0.5 preprocessing scale): near = 1.5 model px = 3 px here,
    # the rim = 10 model px = 20 px
    (counts,) = C.error_counts(sample, prob, [0.5], model_px=2.0, near_px=1.5, rim_px=10.0)
    assert counts["tp"] == 4 * 80 and counts["fn"] == 40 + 32
    assert counts["fp"] == 360 + 100 + rim_fp
    assert counts["fp_near"] == 360  # the widening only: the blob and the patch lie farther
    assert counts["fp_rim"] == rim_fp  # the patch only: the widening lies 30 px or more from the edge
    assert counts["fn_rim"] == 32  # the short vessel; the missed piece ends 30 px from the edge
    # 1-px model pixels: near = 1.5 px keeps the inner ring of the widening only, and the rim
    # (10 px) no longer reaches the short vessel
    (narrow,) = C.error_counts(sample, prob, [0.5], model_px=1.0, near_px=1.5, rim_px=10.0)
    assert narrow["fp_near"] == 180 and narrow["fp_rim"] == rim_fp and narrow["fn_rim"] == 0


def test_vessel_scale_measures_the_eye_and_its_vessels_in_the_models_pixels(tmp_path):
    # a 200 px photograph: a FOV disc 161 px across, three horizontal vessels 6 px wide and 100 long
    yy, xx = np.mgrid[:200, :200]
    fov = (yy - 100) ** 2 + (xx - 100) ** 2 <= 80**2
    vessels = np.zeros((200, 200), bool)
    for top in (60, 97, 134):
        vessels[top : top + 6, 50:150] = True
    image = np.where(fov[..., None], 120, 0).astype(np.uint8).repeat(3, axis=2)
    for name, array in (("image", image), ("mask", vessels * 255), ("fov", fov * 255)):
        Image.fromarray(array.astype(np.uint8)).save(tmp_path / f"{name}.png")
    paths = [("eye", tmp_path / "image.png", tmp_path / "mask.png", tmp_path / "fov.png")]

    # twice the area over the outline's length: a ribbon's ends and the outline drawn through its
    # edge pixels' centres make it a few percent short on a vessel only 17 times as long as wide
    assert C.vessel_width(vessels) == pytest.approx(6.0, rel=0.05)
    assert C.vessel_width(np.zeros((8, 8), np.uint8)) == 0.0
    share = vessels[fov].mean()
    whole = C.vessel_scale(paths, PreprocessParams(size=100))  # the longest side 200 -> 100
    assert whole["size"] == 100 and whole["scale"] == "image" and len(whole["images"]) == 1
    assert whole["mean"]["fov_diameter"] == pytest.approx(80.5)
    assert whole["mean"]["vessel_width"] == pytest.approx(3.0, rel=0.05)
    assert whole["mean"]["vessel_share"] == pytest.approx(share)
    assert whole["min"] == whole["mean"] == whole["max"]
    cropped = C.vessel_scale(paths, PreprocessParams(size=100, scale="fov"))  # the FOV's box -> 100
    assert cropped["mean"]["fov_diameter"] == pytest.approx(100.0)
    assert cropped["mean"]["vessel_width"] == pytest.approx(6.0 * 100 / 161, rel=0.1)
    assert cropped["mean"]["vessel_share"] == pytest.approx(share)  # at the original resolution


def test_a_dataset_without_fov_or_split_is_scored_whole_with_derived_fov(world, tmp_path):
    bare = write_dataset(tmp_path / "bare", {"all": ["a", "b"]}, with_fov=False)
    shutil.rmtree(bare / "splits")
    params = _params(
        world["train"],
        [{"name": "train", "source": "folder", "root": str(world["train"])},
         {"name": "bare", "source": "folder", "root": str(bare)}],
    )  # fmt: skip
    report = C.evaluate_on_dataset(
        params, "bare", world["models"], world["reports"] / "metrics", world["train"] / "splits",
        tmp_path / "bare.json", MODELS,
    )["report"]  # fmt: skip
    d = report["dataset"]
    assert d["images"] == "all its images (no test split)" and d["n_images"] == 2 and d["fov"] == "derived"


def test_large_datasets_keep_a_seeded_share_of_pixels_for_the_auc(world):
    exact = _run(world, "other-syn")
    sampled = _run(world, "other-syn", max_curve_pixels=2000)  # 2 images of 48² = 4608 pixels
    assert "share of the FOV pixels" in sampled["dataset"]["auc_pixels"]
    for name in MODELS:
        a, b = exact["models"][name], sampled["models"][name]
        assert a["f1"] == b["f1"] and a["mcc"] == b["mcc"]  # counts use every pixel
        assert b["auc_roc"] == pytest.approx(a["auc_roc"], abs=0.05) and b["auc_roc"] != a["auc_roc"]
    assert _run(world, "other-syn", max_curve_pixels=2000) == sampled  # seeded


def test_table_heatmap_and_mlflow(world, mlflow_uri):
    import mlflow

    from retinaseg.tracking import model_sha256

    for name in ("train", "other-syn"):
        _run(world, name)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment(world["params"].mlflow.experiment)
    with mlflow.start_run() as run:  # unet's training run, found by its weights' sha256
        mlflow.set_tags({"model": "unet", "model_sha256": model_sha256(world["models"] / "unet")})

    md, png = world["reports"] / "crossdata.md", world["reports"] / "crossdata.png"
    reports = C.write_table(world["params"], world["reports"] / "crossdata", md, png)
    text = md.read_text()
    assert "| Model | Threshold (val) | train (training) | other-syn |" in text
    for name in MODELS:
        t = json.loads((world["reports"] / "metrics" / f"{name}.json").read_text())["threshold"]
        s = reports[1]["models"][name]
        assert f"| {name} | {t:.3f} |" in text
        assert f"{s['f1']:.4f} / {s['auc_roc']:.4f} / {s['mcc']:.4f} |" in text
    assert "never tuned on the dataset scored" in text

    first = png.read_bytes()
    assert C.heatmap_png(reports) == first  # the same bytes on every run
    assert b"Software" not in first and b"Creation" not in first
    with Image.open(io.BytesIO(first)) as im:
        assert im.format == "PNG" and im.width > im.height > 50
    models, columns, values = C.f1_matrix(reports)
    assert models == list(MODELS) and columns == ["train (training)", "other-syn"] and values.shape == (2, 2)

    lines = C.log_to_mlflow(reports, world["params"].mlflow.experiment, world["models"], (md, png))
    assert any(line.startswith("unet: logged to MLflow run") for line in lines)
    assert any(line.startswith("attention_unet: no run") for line in lines)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    for r in reports:
        for key in C.CELL_SCORES:
            assert logged[f"cross_{r['dataset']['name']}_{key}"] == pytest.approx(r["models"]["unet"][key])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "crossdata")}
    assert artifacts == {"crossdata/crossdata.md", "crossdata/crossdata.png"}


def test_clear_errors(world, tmp_path):
    params = _params(
        world["train"],
        [{"name": "train", "source": "folder", "root": str(world["train"])},
         {"name": "gone", "source": "chase", "root": str(tmp_path / "nowhere")}],
    )  # fmt: skip
    with pytest.raises(
        C.CrossdataError, match=r"dataset 'gone': datasets\[1\]\.root '.*nowhere' does not exist"
    ):
        C.evaluate_on_dataset(
            params, "gone", world["models"], world["reports"] / "metrics", model_names=MODELS
        )
    with pytest.raises(
        C.CrossdataError, match=r"no dataset named 'DRIVE' in 'datasets' \(its names: 'train', 'gone'\)"
    ):
        C.dataset_entry(params, "DRIVE")

    metrics = world["reports"] / "metrics" / "unet.json"
    data = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**data, "threshold": "high"}))
    with pytest.raises(
        C.CrossdataError, match=r"unet\.json: key 'threshold' must be a number in \[0, 1\], got 'high'"
    ):
        _run(world, "train")
    # evaluate scored other images than the split holds now (a stale metrics file): refused
    metrics.write_text(json.dumps({**data, "protocol": {**data["protocol"], "test_fingerprint": "0" * 64}}))
    with pytest.raises(C.CrossdataError, match=r"unet\.json: evaluate scored other test images"):
        _run(world, "train")
    metrics.unlink()
    with pytest.raises(C.CrossdataError, match=r"unet\.json: not found; the evaluate stage writes it"):
        _run(world, "train")
    empty = tmp_path / "empty"
    with pytest.raises(
        C.CrossdataError, match=r"train\.json: not found; the crossdata stage of datasets\[0\]"
    ):
        C.load_matrix(world["params"], empty)
    # a report written for another root of that name (params changed since): refused, not tabled
    empty.mkdir()
    for name in ("train", "other-syn"):
        (empty / f"{name}.json").write_text(
            json.dumps({"dataset": {"name": name, "source": "synthetic", "root": "elsewhere"}, "models": {}})
        )
    with pytest.raises(
        C.CrossdataError, match=r"train\.json: written for .*'elsewhere'.*rerun its crossdata stage"
    ):
        C.load_matrix(world["params"], empty)


def test_a_part_of_a_combined_training_dataset_is_scored_on_its_test_rows_only(tmp_path, monkeypatch):
    """data.source: multi: an entry that is one of data.parts was trained on, except its rows of the
    test split; scanning it whole (CHASE has no test split of its own) would score training images."""
    from tests.data.builders import make_chase_like

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "multi"
    generate_dataset(root / "SYN", SyntheticParams(n_train=2, n_test=1, size=48, seed=5))
    make_chase_like(root / "CHASE", n=3, size=48)  # Image_01L, Image_01R, Image_02L
    syn_files = [f"SYN/test/{kind}/syn_002.png" for kind in ("images", "masks", "fov")]
    rows = [
        ("SYN_syn_002", *syn_files),
        ("CHASE_Image_01R", "CHASE/Image_01R.jpg", "CHASE/Image_01R_1stHO.png", ""),
    ]
    splits = tmp_path / "splits"
    splits.mkdir()
    header = "id,dataset,image_path,mask_path,fov_path\n"
    body = "".join(f"{i},{i.split('_')[0]},{a},{b},{c}\n" for i, a, b, c in rows)
    (splits / "test.csv").write_text(header + body)
    params = params_from_dict(
        {
            "base": {"device": "cpu", "threads": 1},
            "data": {
                "source": "multi",
                "root": str(root),
                "parts": [{"name": "SYN", "source": "synthetic", "path": "SYN"},
                          {"name": "CHASE", "source": "chase", "path": "./CHASE"}],
            },
            "datasets": [{"name": "syn", "source": "synthetic", "root": str(root / "SYN")},
                         {"name": "chase", "source": "chase", "root": str(root / "CHASE")}],
        }
    )  # fmt: skip
    chase = C.select_images(params, "chase", splits)
    assert chase.training and not chase.whole_training_set
    assert [p[0] for p in chase.paths] == ["CHASE_Image_01R"]  # not the two images trained on
    assert chase.paths[0][1:] == (root / "CHASE/Image_01R.jpg", root / "CHASE/Image_01R_1stHO.png", None)
    assert "part 'CHASE' of data.parts" in chase.images
    syn = C.select_images(params, "syn", splits)
    assert [p[0] for p in syn.paths] == ["SYN_syn_002"] and syn.paths[0][
        3
    ] == root / "SYN/test/fov/syn_002.png"


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.slow
@pytest.mark.drive
def test_real_chase_and_drive_subsets(drive_root, chase_root, tmp_path, mlflow_uri, monkeypatch):
    """Three CHASE_DB1 photographs (no FOV masks: derived; no split: all scored) and DRIVE (FOV masks
    given; its test/ folder is the test split), with a tiny untrained U-Net: structure only."""
    chase_src = chase_root
    monkeypatch.chdir(tmp_path)
    chase = tmp_path / "CHASE_DB1"  # a few files copied into tmp (never into the repository)
    chase.mkdir()
    for stem in ("Image_01L", "Image_01R", "Image_02L"):
        for suffix in (".jpg", "_1stHO.png", "_2ndHO.png"):
            shutil.copy2(chase_src / f"{stem}{suffix}", chase / f"{stem}{suffix}")
    drive = tmp_path / "DRIVE"
    for split, ids, tag in (("test", ("01", "02"), "test"), ("training", ("21",), "training")):
        for sub, name in (
            ("images", "{i}_{t}.tif"),
            ("1st_manual", "{i}_manual1.gif"),
            ("mask", "{i}_{t}_mask.gif"),
        ):
            (drive / split / sub).mkdir(parents=True, exist_ok=True)
            for i in ids:
                f = name.format(i=i, t=tag)
                shutil.copy2(drive_root / split / sub / f, drive / split / sub / f)

    torch.manual_seed(0)
    models = tmp_path / "models"
    card = ModelCard(name="unet", model_params=TINY_UNET, preprocess=PreprocessParams(size=64))
    save_model_dir(build_model("unet", TINY_UNET), card, models / "unet")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "unet.json").write_text(json.dumps({"protocol": {"threshold_from": "val"}, "threshold": 0.5}))
    params = _params(
        tmp_path / "data" / "raw" / "synthetic",
        [{"name": "CHASE_DB1", "source": "chase", "root": str(chase)},
         {"name": "DRIVE", "source": "drive", "root": str(drive)}],
        source="synthetic",
    )  # fmt: skip
    reports = []
    for name in ("CHASE_DB1", "DRIVE"):
        reports.append(
            C.evaluate_on_dataset(
                params, name, models, metrics, tmp_path, tmp_path / f"{name}.json", ("unet",)
            )["report"]
        )
    chase_report, drive_report = (r["dataset"] for r in reports)
    assert (chase_report["n_images"], chase_report["fov"], chase_report["training"]) == (3, "derived", False)
    assert chase_report["images"] == "all its images (no test split)"
    assert (drive_report["n_images"], drive_report["fov"]) == (2, "dataset")
    assert drive_report["images"] == "its own test split"  # 21_training is not scored
    for r in reports:
        s = r["models"]["unet"]
        assert s["threshold"] == 0.5 and 0.0 <= s["f1"] <= 1.0 and 0.0 <= s["auc_roc"] <= 1.0
    text = C.crossdata_markdown(reports)
    assert "| unet | 0.500 |" in text and "CHASE_DB1 (chase" in text and "FOV: derived" in text


def _member(root: Path, train: Path, seed: int, splits_from: Path | None = None) -> Path:
    """A checkout that ran the pipeline: models/unet (initialised from ``seed``), data/splits (the
    training dataset's), params.yaml with its base.seed."""
    torch.manual_seed(seed)
    card = ModelCard(name="unet", model_params=TINY_UNET, preprocess=PreprocessParams(size=32))
    save_model_dir(build_model("unet", TINY_UNET), card, root / "models" / "unet")
    shutil.copytree(splits_from or train / "splits", root / "data" / "splits")
    (root / "params.yaml").write_text(f"base:\n  seed: {seed}\n")
    return root


def _pooled_f1(maps: list, samples: list, threshold: float) -> float:
    total = M.Confusion(0, 0, 0, 0)
    for p, s in zip(maps, samples, strict=True):
        total = total + M.confusion(p >= threshold, s.gt, s.fov)
    return M.scores_from_confusion(*total)["f1"]


def test_a_seed_ensemble_is_the_mean_map_at_its_own_val_threshold(world, tmp_path):
    """Each member alone scores what evaluate scores (threshold from the shared val split, never
    the target); the ensemble is the members' mean map at the threshold chosen on that val split."""
    from retinaseg.evaluation.evaluate import iter_split_samples
    from retinaseg.inference.predictor import MeanPredictor, Predictor

    train = world["train"]
    a, b = _member(tmp_path / "seed5", train, 5), _member(tmp_path / "seed6", train, 6)
    out = tmp_path / "ensemble" / "train.json"
    report = C.evaluate_ensemble_on_dataset(world["params"], "train", [a, b], out_path=out)
    assert json.loads(out.read_text()) == report
    assert report["members"] == [
        {"name": "seed5", "checkout": str(a), "seed": 5},
        {"name": "seed6", "checkout": str(b), "seed": 6},
    ]
    assert list(report["scores"]) == ["seed5", "seed6", "ensemble"]
    assert (report["tta"], report["tta_scales"]) == (False, [1.0])  # the inference the scores used
    assert report["dataset"]["training"] is True and report["dataset"]["n_images"] == 3
    for member, root in (("seed5", a), ("seed6", b)):
        reports = tmp_path / f"reports-{member}"
        evaluate_model(world["params"], "unet", root / "models" / "unet", train / "splits", train, reports)
        evaluated = json.loads((reports / "metrics" / "unet.json").read_text())
        assert report["scores"][member]["threshold"] == evaluated["threshold"]
        assert report["scores"][member]["f1"] == evaluated["fov"]["f1"]

    # the ensemble recomputed without the crossdata module: mean map, best pooled val F1, test F1
    members = [Predictor.from_card(*load_model_dir(r / "models" / "unet")) for r in (a, b)]
    val = list(iter_split_samples(read_split(train / "splits", "val"), train))
    test = list(iter_split_samples(read_split(train / "splits", "test"), train))

    def mean_maps(samples):
        return [(m0 + m1) / np.float32(2) for m0, m1 in
                zip(*[[p.probability(s.image) for s in samples] for p in members], strict=True)]  # fmt: skip

    hist = sum(M.threshold_histograms(p, s.gt, s.fov) for p, s in zip(mean_maps(val), val, strict=True))
    threshold, _ = M.best_threshold_from_histograms(hist)
    assert report["scores"]["ensemble"]["threshold"] == threshold
    assert report["scores"]["ensemble"]["f1"] == pytest.approx(_pooled_f1(mean_maps(test), test, threshold))
    np.testing.assert_allclose(
        MeanPredictor(members).probability(test[0].image), mean_maps(test[:1])[0], rtol=0, atol=1e-7
    )

    # an ensemble of one model twice is that model: the mean of equal maps is the map
    twin = _member(tmp_path / "twin", train, 5)
    same = C.evaluate_ensemble_on_dataset(world["params"], "other-syn", [a, twin])
    assert same["scores"]["ensemble"] == same["scores"]["seed5"] == same["scores"]["twin"]


def test_an_ensemble_of_checkouts_with_other_splits_is_refused(world, tmp_path):
    train = world["train"]
    a = _member(tmp_path / "a", train, 1)
    other_splits = tmp_path / "other-splits"
    shutil.copytree(train / "splits", other_splits)
    (other_splits / "val.csv").write_text((other_splits / "val.csv").read_text().replace("v1", "v1 "))
    b = _member(tmp_path / "b", train, 2, splits_from=other_splits)
    refused = (
        r"b/data/splits/val\.csv differs from .*a/data/splits/val\.csv: "
        r"an ensemble's members must share one split \(train them with the same split\.seed"
    )
    with pytest.raises(C.CrossdataError, match=refused):
        C.evaluate_ensemble_on_dataset(world["params"], "train", [a, b])
    with pytest.raises(C.CrossdataError, match=r"an ensemble needs two checkouts or more, got 1"):
        C.evaluate_ensemble_on_dataset(world["params"], "train", [a])
    with pytest.raises(C.CrossdataError, match=r"nowhere: no readable split .*ran the pipeline"):
        C.evaluate_ensemble_on_dataset(world["params"], "train", [a, tmp_path / "nowhere"])
