"""Leak-aware split: groups of near-duplicates stay together, the dataset's test split is respected,
a seed gives the same split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retinaseg.core.config import SplitParams
from retinaseg.data.manifest import build_manifest, read_manifest
from retinaseg.data.sources import scan_source
from retinaseg.data.split import near_duplicate_groups, split_dataset, write_splits


def _manifest(n: int, hints=None, phashes=None) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "id": [f"s{i:02d}" for i in range(n)],
            "split_hint": hints or [""] * n,
            "sha256": [f"{i:064x}" for i in range(n)],
            # random 64-bit hashes: pairwise distances ~32, no accidental groups
            "phash": phashes or [f"{int(x):016x}" for x in rng.integers(0, 2**63, size=n, dtype=np.int64)],
        }
    )


def test_groups_by_hash_distance_and_sha():
    frame = _manifest(
        4, phashes=["0000000000000000", "0000000000000003", "ffffffffffffffff", "00000000ffffffff"]
    )
    frame.loc[3, "sha256"] = frame.loc[2, "sha256"]
    assert near_duplicate_groups(frame, 2) == [["s00", "s01"], ["s02", "s03"]]
    assert near_duplicate_groups(frame, 1) == [["s00"], ["s01"], ["s02", "s03"]]


def test_same_seed_same_split_other_seed_other_val(tmp_path):
    frame = _manifest(30)
    a, report = split_dataset(frame, SplitParams(), seed=1)
    b, _ = split_dataset(frame, SplitParams(), seed=1)
    c, _ = split_dataset(frame, SplitParams(), seed=2)
    write_splits(a, report, tmp_path / "a", tmp_path / "a.json")
    write_splits(b, report, tmp_path / "b", tmp_path / "b.json")
    for name in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{name}.csv").read_bytes() == (tmp_path / "b" / f"{name}.csv").read_bytes()
        assert list(a[name]["id"]) == sorted(a[name]["id"])
    assert set(a["val"]["id"]) != set(c["val"]["id"])
    assert report["counts"] == {"train": 19, "val": 5, "test": 6}  # test 20 % of 30; val ≥ 20 % of 24 = 4.8
    assert sum(report["counts"].values()) == 30 and report["n_groups"] == 30


def test_dataset_test_split_respected_and_straddling_group_warned():
    hints = ["train"] * 6 + ["test"] * 3
    phashes = [
        f"{i:016x}" * 1
        for i in (0, 0xF0F0, 0xFF00FF, 0xFFFF0000FF, 0xF0F0F0F0F0, 0xFFFFFFFFFF00, 2**60, 2**63, 2**62)
    ]
    phashes = [f"{int(h, 16):016x}" for h in phashes]
    phashes[5] = phashes[8]  # a train eye that is a copy of a test eye
    splits, report = split_dataset(_manifest(9, hints, phashes), SplitParams(phash_max_distance=0), seed=0)
    assert set(splits["test"]["id"]) == {"s05", "s06", "s07", "s08"}
    assert any("s05" in w for w in report["warnings"])
    assert len(splits["val"]) >= 1 and len(splits["train"]) >= 1


def test_val_never_empty_with_two_groups():
    for seed in range(5):
        splits, _ = split_dataset(_manifest(2, ["train", "train"]), SplitParams(val_fraction=0.01), seed)
        assert len(splits["val"]) == 1 and len(splits["train"]) == 1


def test_duplicate_ids_refused():
    frame = _manifest(3)
    frame.loc[2, "id"] = "s00"
    with pytest.raises(ValueError, match="duplicate ids"):
        split_dataset(frame, SplitParams(), 0)


@pytest.mark.drive
def test_kaggle_copies_stay_together(kaggle_drive_root, tmp_path):
    frame, problems = build_manifest(scan_source("kaggle", kaggle_drive_root))
    assert not [p for p in problems if p.severity == "error"]
    frame.drop(columns=["image_range"]).to_csv(tmp_path / "m.csv", index=False)
    frame = read_manifest(tmp_path / "m.csv")
    for seed in range(3):
        splits, report = split_dataset(frame, SplitParams(val_fraction=0.5), seed)
        # each training eye's 4 copies (train_0..3, train_4..7) form one group
        assert sorted(map(sorted, report["groups"])) == [
            ["train_0", "train_1", "train_2", "train_3"],
            ["train_4", "train_5", "train_6", "train_7"],
        ]
        assert list(splits["test"]["id"]) == ["test_0"]
        for group in report["groups"]:
            sides = {name for name, df in splits.items() if set(group) & set(df["id"])}
            assert len(sides) == 1
        assert len(splits["val"]) == 4 and len(splits["train"]) == 4


def test_split_seed_keeps_one_split_across_base_seeds():
    """``split.seed`` set: models trained with other ``base.seed`` share one split (a seed study, an
    ensemble); null: ``base.seed`` draws the split, as before the key existed."""
    from pathlib import Path

    from retinaseg.core.config import load_params

    params_yaml = Path(__file__).resolve().parents[2] / "params.yaml"
    one = load_params(params_yaml, {"base.seed": 1, "split.seed": 42})
    two = load_params(params_yaml, {"base.seed": 2, "split.seed": 42})
    assert one.split_seed() == two.split_seed() == 42
    assert load_params(params_yaml, {"base.seed": 5}).split_seed() == 5
    frame = _manifest(30)
    a, report = split_dataset(frame, one.split, one.split_seed())
    b, _ = split_dataset(frame, two.split, two.split_seed())
    c, _ = split_dataset(frame, one.split, one.base.seed)
    assert report["seed"] == 42
    for name in ("train", "val", "test"):
        assert list(a[name]["id"]) == list(b[name]["id"])
    assert set(a["val"]["id"]) != set(c["val"]["id"])
