"""A second observer's masks (CHASE_DB1's _2ndHO, STARE's .vk) and ``data.train_labels: union``.

The scan pairs the first observer's mask and keeps the second beside it; validation writes it to the
manifest (only when a dataset has one) and leaves out one it cannot use, with a warning; preprocess
gives train and val the union of both and test the first observer's, the reference of every score.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retinaseg.core.config import ConfigError, PreprocessParams, SplitParams, ValidateParams, params_from_dict
from retinaseg.data.manifest import MANIFEST_COLUMNS, read_manifest
from retinaseg.data.preprocess import PreprocessError, run_preprocess
from retinaseg.data.sources import scan_source
from retinaseg.data.split import SPLITS, read_split, split_dataset, write_splits
from retinaseg.data.synthetic import generate_sample
from retinaseg.data.validation import validate_dataset
from retinaseg.models.package import render_model_card
from retinaseg.models.saved import ModelCard
from retinaseg.training.engine import _train_data_facts
from tests.data.builders import make_chase_like, make_stare_like, second_observer_extra

SIZE = 64


def _validated_splits(tmp_path: Path, n: int = 8) -> tuple[Path, Path]:
    """A CHASE-like dataset through validate and split, as the pipeline's stages run them; returns
    (data root, splits folder)."""
    root = make_chase_like(tmp_path / "chase", n=n, size=SIZE)
    result = validate_dataset(
        "chase", root, ValidateParams(), tmp_path / "manifest.csv", tmp_path / "validation"
    )
    assert result.success and result.warnings == []
    manifest = read_manifest(tmp_path / "manifest.csv")
    splits, report = split_dataset(manifest, SplitParams(val_fraction=0.25, test_fraction=0.25), seed=0)
    assert all(len(splits[name]) > 0 for name in SPLITS)
    write_splits(splits, report, tmp_path / "splits", tmp_path / "split.json")
    return root, tmp_path / "splits"


def _first_mask(sample_id: str) -> np.ndarray:
    """The first observer's mask of make_chase_like's sample ``sample_id`` (0/1)."""
    number, side = int(sample_id[6:8]), sample_id[8]
    return generate_sample((number - 1) * 2 + "LR".index(side), SIZE)[1]


def test_the_scan_keeps_the_second_observers_mask_beside_the_first(tmp_path):
    root = make_chase_like(tmp_path / "CHASEDB1", n=3)
    scan = scan_source("chase", root)
    assert [(p.mask.name, p.second_mask.name) for p in scan.pairs] == [
        (f"{sid}_1stHO.png", f"{sid}_2ndHO.png") for sid in ("Image_01L", "Image_01R", "Image_02L")
    ]
    (root / "Image_02L_1stHO.png").unlink()  # the second observer's alone: it becomes the mask
    pair = next(p for p in scan_source("chase", root).pairs if p.id == "Image_02L")
    assert (pair.mask.name, pair.second_mask) == ("Image_02L_2ndHO.png", None)

    stare = scan_source("stare", make_stare_like(tmp_path / "stare", n=2, vk_only=(1,))).pairs
    assert [(p.mask.name, p.second_mask and p.second_mask.name) for p in stare] == [
        ("im0001.ah.ppm", "im0001.vk.ppm"),
        ("im0002.vk.ppm", None),
    ]


def test_the_manifest_lists_second_masks_only_for_a_dataset_that_has_them(tmp_path):
    _validated_splits(tmp_path)
    header = (tmp_path / "manifest.csv").read_text().splitlines()[0].split(",")
    at = MANIFEST_COLUMNS.index("mask_path") + 1
    assert header == [*MANIFEST_COLUMNS[:at], "second_mask_path", *MANIFEST_COLUMNS[at:]]
    manifest = read_manifest(tmp_path / "manifest.csv")
    assert list(manifest["second_mask_path"]) == [f"{sid}_2ndHO.png" for sid in manifest["id"]]
    assert "second_mask_path" in read_split(tmp_path / "splits", "train").columns

    drive_like = make_stare_like(tmp_path / "one-observer", n=3, vk_only=(0, 1, 2))  # .vk alone
    result = validate_dataset("stare", drive_like, ValidateParams(), tmp_path / "m1.csv", tmp_path / "r1")
    assert result.success
    assert (tmp_path / "m1.csv").read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)


def test_an_unusable_second_mask_is_left_out_with_a_warning_and_the_pair_kept(tmp_path):
    root = make_chase_like(tmp_path / "chase", n=3, size=SIZE)
    Image.fromarray(np.zeros((SIZE + 2, SIZE), np.uint8)).save(root / "Image_01R_2ndHO.png")
    (root / "Image_02L_2ndHO.png").write_bytes(b"")
    result = validate_dataset("chase", root, ValidateParams(), tmp_path / "m.csv", tmp_path / "r")
    assert result.success and result.n_pairs == 3
    found = {(p.file, p.check, p.severity): p.message for p in result.warnings}
    assert set(found) == {
        ("Image_01R_2ndHO.png", "second_mask_unusable", "warning"),
        ("Image_02L_2ndHO.png", "second_mask_unusable", "warning"),
    }
    wrong_size, empty = (
        found[(f, "second_mask_unusable", "warning")] for f in ("Image_01R_2ndHO.png", "Image_02L_2ndHO.png")
    )
    assert "is 64×66 but its image is 64×64" in wrong_size
    assert "empty file" in empty
    manifest = read_manifest(tmp_path / "m.csv")
    assert dict(zip(manifest["id"], manifest["second_mask_path"], strict=True)) == {
        "Image_01L": "Image_01L_2ndHO.png",
        "Image_01R": "",
        "Image_02L": "",
    }


def test_union_gives_train_and_val_both_observers_and_test_the_first(tmp_path):
    root, splits = _validated_splits(tmp_path)
    params = PreprocessParams(size=SIZE)
    first = run_preprocess(splits, root, tmp_path / "first", params)
    union = run_preprocess(splits, root, tmp_path / "union", params, train_labels="union")
    assert (first["train_labels"], union["train_labels"]) == ("first", "union")
    counts = {name: len(read_split(splits, name)) for name in SPLITS}
    assert union["second_observer"] == {"train": counts["train"], "val": counts["val"], "test": 0}
    assert first["second_observer"] == {"train": 0, "val": 0, "test": 0}
    extra = second_observer_extra(SIZE)
    for name in SPLITS:
        index = pd.read_csv(tmp_path / "union" / name / "index.csv", keep_default_na=False)
        assert ("second_mask_path" in index.columns) == (name != "test")
        assert "second_mask_path" not in pd.read_csv(tmp_path / "first" / name / "index.csv").columns
        for sid in index["id"]:
            got = np.asarray(Image.open(tmp_path / "union" / name / "masks" / f"{sid}.png")) // 255
            reference = _first_mask(sid)
            assert np.array_equal(
                np.asarray(Image.open(tmp_path / "first" / name / "masks" / f"{sid}.png")) // 255, reference
            )
            want = np.maximum(reference, extra) if name != "test" else reference
            assert np.array_equal(got, want), (name, sid)
            for sub in ("images", "fov"):  # only the masks differ
                a = (tmp_path / "union" / name / sub / f"{sid}.png").read_bytes()
                assert a == (tmp_path / "first" / name / sub / f"{sid}.png").read_bytes()


def test_union_without_any_second_mask_is_an_error_and_leaves_the_output(tmp_path):
    root, splits = _validated_splits(tmp_path)
    out = tmp_path / "processed"
    run_preprocess(splits, root, out, PreprocessParams(size=SIZE))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for name in SPLITS:  # a dataset validated with one observer only: no second_mask_path column
        frame = read_split(splits, name).drop(columns="second_mask_path")
        frame.to_csv(splits / f"{name}.csv", index=False)
    with pytest.raises(
        PreprocessError, match=r"data.train_labels is 'union' but no train or val image has a second"
    ):
        run_preprocess(splits, root, out, PreprocessParams(size=SIZE), train_labels="union")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(PreprocessError, match=r"data.train_labels: 'both' is not one of first, union"):
        run_preprocess(splits, root, out, PreprocessParams(size=SIZE), train_labels="both")


def test_the_param_takes_first_or_union_only():
    assert params_from_dict({"data": {"train_labels": "union"}}).data.train_labels == "union"
    assert params_from_dict({}).data.train_labels == "first"
    with pytest.raises(ConfigError, match="data.train_labels"):
        params_from_dict({"data": {"train_labels": "second"}})


def test_the_model_card_says_when_it_learned_from_both_observers(tmp_path):
    root, splits = _validated_splits(tmp_path)
    run_preprocess(splits, root, tmp_path / "union", PreprocessParams(size=SIZE), train_labels="union")
    run_preprocess(splits, root, tmp_path / "first", PreprocessParams(size=SIZE))
    n = len(read_split(splits, "train"))
    union = _train_data_facts(SimpleNamespace(split_dir=tmp_path / "union" / "train"))
    first = _train_data_facts(SimpleNamespace(split_dir=tmp_path / "first" / "train"))
    assert union == {
        "train_orig_width": SIZE,
        "train_orig_height": SIZE,
        "train_labels": f"union of two observers' masks on {n} of {n} training images",
    }
    assert first == {"train_orig_width": SIZE, "train_orig_height": SIZE}
    card = ModelCard(name="unet", model_params={}, preprocess={"size": SIZE}, threshold=0.5, extra=union)
    text = render_model_card(card, n_params=1)
    assert f"| train_labels | `union of two observers' masks on {n} of {n} training images` |" in text
