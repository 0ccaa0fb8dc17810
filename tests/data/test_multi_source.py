"""data.source: multi: several datasets under one root, scanned part by part, split part by part.

Real data: DRIVE + CHASE_DB1 (../shared/datasets) linked into a temporary root. A tiny synthetic
multi dataset goes through the data stages' functions (validate → split → preprocess).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from retinaseg.core.config import (
    ConfigError,
    DataPartParams,
    PreprocessParams,
    SplitParams,
    SyntheticParams,
    ValidateParams,
    params_from_dict,
)
from retinaseg.data.manifest import MANIFEST_COLUMNS, build_manifest, read_manifest, relative_posix
from retinaseg.data.preprocess import run_preprocess
from retinaseg.data.sources import SourceError, scan_source
from retinaseg.data.split import SPLITS, read_split, split_dataset, write_splits
from retinaseg.data.synthetic import generate_dataset
from retinaseg.data.validation import validate_dataset

DRIVE_CHASE = [
    DataPartParams(name="DRIVE", source="drive", path="DRIVE"),
    DataPartParams(name="CHASE_DB1", source="chase", path="CHASE_DB1"),
]


@pytest.fixture(scope="module")
def real_root(tmp_path_factory, drive_root, chase_root) -> Path:
    """A multi root holding links to the real DRIVE and CHASE_DB1 folders."""
    root = tmp_path_factory.mktemp("multi")
    (root / "DRIVE").symlink_to(drive_root.resolve(), target_is_directory=True)
    (root / "CHASE_DB1").symlink_to(chase_root.resolve(), target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def real_manifest(real_root) -> pd.DataFrame:
    frame, problems = build_manifest(scan_source("multi", real_root, DRIVE_CHASE))
    assert [p for p in problems if p.severity == "error"] == []
    return frame


# ----------------------------------------------------------------------------- real DRIVE + CHASE


@pytest.mark.drive
def test_scanning_drive_and_chase_gives_prefixed_ids_and_root_relative_paths(real_root):
    scan = scan_source("multi", real_root, DRIVE_CHASE)
    assert scan.source == "multi" and scan.root == real_root
    assert scan.orphan_images == [] and scan.orphan_masks == [] and scan.collisions == []
    drive = [p for p in scan.pairs if p.dataset == "DRIVE"]
    chase = [p for p in scan.pairs if p.dataset == "CHASE_DB1"]
    assert (len(drive), len(chase), len(scan.pairs)) == (40, 28, 68)
    assert {p.id for p in drive} == {f"DRIVE_train_{n:02d}" for n in range(21, 41)} | {
        f"DRIVE_test_{n:02d}" for n in range(1, 21)
    }
    assert all(p.id.startswith("CHASE_DB1_Image_") for p in chase)
    # the dataset's own split stays with each pair: DRIVE's, and none for CHASE
    assert sorted({p.split for p in drive}) == ["test", "train"] and {p.split for p in chase} == {None}
    drive_21 = next(p for p in drive if p.id == "DRIVE_train_21")
    assert relative_posix(drive_21.image, real_root) == "DRIVE/training/images/21_training.tif"
    assert relative_posix(drive_21.fov, real_root) == "DRIVE/training/mask/21_training_mask.gif"
    chase_01l = next(p for p in chase if p.id == "CHASE_DB1_Image_01L")
    assert relative_posix(chase_01l.mask, real_root) == "CHASE_DB1/Image_01L_1stHO.png"
    assert chase_01l.fov is None  # CHASE ships no FOV masks


@pytest.mark.drive
def test_the_real_manifest_names_each_rows_part(real_manifest):
    assert real_manifest["dataset"].value_counts().to_dict() == {"DRIVE": 40, "CHASE_DB1": 28}
    assert real_manifest["image_path"].str.match(r"^(DRIVE/(training|test)/images/|CHASE_DB1/Image_)").all()


@pytest.mark.drive
def test_the_split_keeps_drives_test_and_carves_chase_by_test_fraction(real_manifest):
    params = SplitParams(val_fraction=0.2, test_fraction=0.2)
    splits, report = split_dataset(real_manifest, params, seed=42)
    test = splits["test"]
    drive_test = set(real_manifest.loc[real_manifest["split_hint"] == "test", "id"])
    assert len(drive_test) == 20
    assert set(test.loc[test["dataset"] == "DRIVE", "id"]) == drive_test
    # CHASE has no split of its own: test_fraction of its 28 images (whole groups) go to test
    n_chase_test = int((test["dataset"] == "CHASE_DB1").sum())
    assert 0.2 * 28 <= n_chase_test < 0.2 * 28 + report["largest_group"]
    # every image in exactly one split; no DRIVE test image in train or val
    ids = [i for name in SPLITS for i in splits[name]["id"]]
    assert sorted(ids) == sorted(real_manifest["id"]) and len(ids) == len(set(ids))
    for name in ("train", "val"):
        assert not set(splits[name]["id"]) & drive_test
    # val is carved part by part: val_fraction of each part's train images (whole groups)
    for name, n_pool in (("DRIVE", 20), ("CHASE_DB1", 28 - n_chase_test)):
        n_val = int((splits["val"]["dataset"] == name).sum())
        assert 0.2 * n_pool <= n_val < 0.2 * n_pool + report["largest_group"], (name, n_val)
    assert report["parts"] == {
        name: {
            "uses_dataset_split": name == "DRIVE",
            "counts": {s: int((splits[s]["dataset"] == name).sum()) for s in SPLITS},
        }
        for name in ("CHASE_DB1", "DRIVE")
    }
    assert report["parts"]["DRIVE"]["counts"]["test"] == 20
    assert sum(p["counts"]["test"] for p in report["parts"].values()) == report["counts"]["test"]


@pytest.mark.drive
def test_the_multi_split_is_reproducible_for_a_seed(real_manifest):
    params = SplitParams()
    a, report_a = split_dataset(real_manifest, params, seed=3)
    b, report_b = split_dataset(real_manifest, params, seed=3)
    for name in SPLITS:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert report_a == report_b
    others = [split_dataset(real_manifest, params, seed=s)[0] for s in (4, 5)]
    chase_tests = {
        tuple(sorted(s["test"].loc[s["test"]["dataset"] == "CHASE_DB1", "id"])) for s in (a, *others)
    }
    assert len(chase_tests) > 1  # the seed decides which CHASE images are test


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": "multi"}, "'data.parts' is empty but 'data.source' is 'multi'"),
        (
            {"source": "drive", "parts": [{"name": "a", "source": "drive", "path": "a"}]},
            "'data.parts' lists 1 part(s) but 'data.source' is 'drive'",
        ),
        (
            {"source": "multi", "parts": [{"name": "a", "source": "drive", "path": "../a"}]},
            "'data.parts[0].path' is '../a'; it must be a folder inside 'data.root'",
        ),
        (
            {
                "source": "multi",
                "parts": [
                    {"name": "a", "source": "drive", "path": "a"},
                    {"name": "b", "source": "chase", "path": "/abs/b"},
                ],
            },
            "'data.parts[1].path' is '/abs/b'",
        ),
        (
            {
                "source": "multi",
                "parts": [
                    {"name": "a", "source": "drive", "path": "a"},
                    {"name": "a", "source": "chase", "path": "b"},
                ],
            },
            "'data.parts' names 'a' more than once",
        ),
        (
            {
                "source": "multi",
                "parts": [
                    {"name": "a", "source": "drive", "path": "x"},
                    {"name": "b", "source": "chase", "path": "x/y"},
                ],
            },
            "'data.parts[1].path' 'x/y' overlaps 'data.parts[0].path' 'x'",
        ),
        (
            {"source": "multi", "parts": [{"name": "a", "source": "drive", "path": "."}]},
            "'data.parts[0].path' is '.'",
        ),
        (
            {"source": "multi", "parts": [{"name": "a", "source": "multi", "path": "a"}]},
            "'data.parts[0].source' is 'multi'; expected",
        ),
        (
            {"source": "multi", "parts": [{"name": "a b", "source": "drive", "path": "a"}]},
            "'data.parts[0].name' is 'a b'; it must match",
        ),
        ({"source": "multi", "parts": [{"name": "a", "source": "drive"}]}, "'data.parts[0].path' is missing"),
        (
            {"source": "multi", "parts": [{"name": "a", "source": "drive", "path": "a", "root": "r"}]},
            "unknown key(s) data.parts[0].root",
        ),
    ],
)
def test_bad_parts_are_config_errors_that_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict({"data": data}, "params.yaml")
    assert str(err.value).startswith("params.yaml: ") and message in str(err.value)


def test_good_parts_are_read_into_their_fields():
    params = params_from_dict(
        {
            "data": {
                "source": "multi",
                "root": "../shared/datasets",
                "parts": [
                    {"name": "DRIVE", "source": "drive", "path": "DRIVE"},
                    {"name": "CHASE_DB1", "source": "chase", "path": "CHASE_DB1"},
                ],
            }
        }
    )
    assert params.data.parts == DRIVE_CHASE


# ----------------------------------------------------------------------------- a synthetic multi dataset


def _synthetic_multi(root: Path) -> list[DataPartParams]:
    """``root/A``: a synthetic dataset (its own train/test); ``root/B``: a folder dataset without a
    split (synthetic images of another size, one of them at A's size: B's only size outlier)."""
    generate_dataset(root / "A", SyntheticParams(n_train=6, n_test=2, size=64, seed=1))
    generate_dataset(root / "tmp_b", SyntheticParams(n_train=9, n_test=0, size=96, seed=2))
    shutil.move(root / "tmp_b" / "train", root / "B")
    shutil.rmtree(root / "tmp_b")
    for folder in ("images", "masks", "fov"):  # one 64 px pair among B's 96 px pairs
        shutil.copy(root / "A" / "train" / folder / "syn_000.png", root / "B" / folder / "odd.png")
    return [
        DataPartParams(name="A", source="synthetic", path="A"),
        DataPartParams(name="B", source="folder", path="B"),
    ]


def test_a_synthetic_multi_dataset_goes_through_validate_split_preprocess(tmp_path):
    root = tmp_path / "multi"
    parts = _synthetic_multi(root)
    result = validate_dataset(
        "multi", root, ValidateParams(), tmp_path / "manifest.csv", tmp_path / "validation", parts=parts
    )
    assert result.success and result.n_pairs == 8 + 10 and result.errors == []
    # sizes are compared within a part: B's 96 px images are not outliers beside A's 64 px ones
    outliers = [p for p in result.warnings if p.check == "size_outlier"]
    assert [(p.file, p.severity) for p in outliers] == [("B/images/odd.png", "warning")]
    assert "of its part 'B'" in outliers[0].message
    summary = json.loads((tmp_path / "validation" / "summary.json").read_text())
    assert summary["source"] == "multi" and summary["n_pairs_per_part"] == {"A": 8, "B": 10}

    header = (tmp_path / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header == [MANIFEST_COLUMNS[0], "dataset", *MANIFEST_COLUMNS[1:]]
    manifest = read_manifest(tmp_path / "manifest.csv")
    assert manifest.loc[manifest["id"] == "A_syn_000", "image_path"].item() == "A/train/images/syn_000.png"
    assert manifest.loc[manifest["id"] == "B_odd", "image_path"].item() == "B/images/odd.png"

    # only byte-identical images are one group here (64 px synthetic eyes look alike to the hash):
    # B's odd.png is A's syn_000, a group that spans the parts, kept in one split
    params = SplitParams(val_fraction=0.25, test_fraction=0.2, phash_max_distance=0)
    splits, report = split_dataset(manifest, params, seed=0)
    assert report["groups"] == [["A_syn_000", "B_odd"]]
    assert report["warnings"] == ["group A_syn_000 spans the parts A, B (A_syn_000, B_odd)"]
    assert len({s for s in SPLITS if {"A_syn_000", "B_odd"} & set(splits[s]["id"])}) == 1
    write_splits(splits, report, tmp_path / "splits", tmp_path / "split.json")
    test = read_split(tmp_path / "splits", "test")
    assert set(test.loc[test["dataset"] == "A", "id"]) == {"A_syn_006", "A_syn_007"}  # A's own test/
    assert (test["dataset"] == "B").sum() == 2  # 0.2 of the 9 images of B's own groups, rounded up
    assert report["parts"]["A"]["uses_dataset_split"] and not report["parts"]["B"]["uses_dataset_split"]
    assert json.loads((tmp_path / "split.json").read_text())["parts"] == report["parts"]

    summary = run_preprocess(tmp_path / "splits", root, tmp_path / "processed", PreprocessParams(size=64))
    assert summary["splits"] == report["counts"] and sum(summary["splits"].values()) == 18
    for name in SPLITS:
        index = pd.read_csv(tmp_path / "processed" / name / "index.csv")
        assert sorted(index["id"]) == sorted(splits[name]["id"])
        for sid in index["id"]:
            assert (tmp_path / "processed" / name / "images" / f"{sid}.png").is_file()
    train_index = pd.read_csv(tmp_path / "processed" / "train" / "index.csv")
    assert set(train_index["orig_w"]) == {64, 96}  # both parts' images, each at its own size


def test_a_single_datasets_manifest_and_splits_have_no_dataset_column(tmp_path):
    generate_dataset(tmp_path / "syn", SyntheticParams(n_train=4, n_test=2, size=64, seed=1))
    result = validate_dataset(
        "synthetic", tmp_path / "syn", ValidateParams(), tmp_path / "m.csv", tmp_path / "r"
    )
    assert result.success
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert "n_pairs_per_part" not in json.loads((tmp_path / "r" / "summary.json").read_text())
    frame, _ = build_manifest(scan_source("synthetic", tmp_path / "syn"))
    splits, report = split_dataset(frame, SplitParams(), seed=0)  # the in-memory manifest, "" datasets
    assert "parts" not in report
    assert all("dataset" not in s.columns for s in splits.values())


def test_a_missing_part_folder_is_a_source_error_naming_the_part(tmp_path):
    parts = _synthetic_multi(tmp_path / "multi")
    shutil.rmtree(tmp_path / "multi" / "B")
    with pytest.raises(SourceError) as err:
        scan_source("multi", tmp_path / "multi", parts)
    message = str(err.value)
    assert "data.parts[1] ('B', source 'folder')" in message and str(tmp_path / "multi" / "B") in message


def test_parts_belong_to_multi_only(tmp_path):
    parts = _synthetic_multi(tmp_path / "multi")
    with pytest.raises(SourceError, match="parts are only read for data source 'multi'"):
        scan_source("synthetic", tmp_path / "multi" / "A", parts)
    with pytest.raises(SourceError, match="needs its parts"):
        scan_source("multi", tmp_path / "multi")


# ----------------------------------------------------------------------------- split rules on a table


def _table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(id, dataset, split_hint) rows; every image its own sha256 and perceptual hash (split with
    ``phash_max_distance=0``: only equal hashes are near-duplicates)."""
    return pd.DataFrame(
        {
            "id": [r[0] for r in rows],
            "dataset": [r[1] for r in rows],
            "split_hint": [r[2] for r in rows],
            "sha256": [f"{i:064x}" for i in range(len(rows))],
            "phash": [f"{i:016x}" for i in range(len(rows))],
        }
    )


def test_a_group_that_spans_parts_stays_together_and_is_warned_about():
    rows = [(f"A_{i}", "A", "test" if i < 2 else "train") for i in range(6)]
    rows += [(f"B_{i}", "B", "") for i in range(6)]
    frame = _table(rows)
    frame.loc[frame["id"] == "B_5", "phash"] = frame.loc[frame["id"] == "A_0", "phash"].item()  # A_0's twin
    splits, report = split_dataset(frame, SplitParams(phash_max_distance=0), seed=0)
    assert "B_5" in set(splits["test"]["id"])  # with its test-hinted twin, though B has no split
    assert any("spans the parts A, B" in w for w in report["warnings"])


def test_a_multi_manifest_with_a_row_without_its_part_is_refused():
    frame = _table([("A_0", "A", ""), ("x", "", ""), ("A_1", "A", "")])
    with pytest.raises(ValueError, match="rows without a dataset in a multi dataset's manifest: x"):
        split_dataset(frame, SplitParams(), seed=0)
