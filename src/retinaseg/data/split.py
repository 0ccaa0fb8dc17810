"""Leak-aware, seeded train/val/test split.

Near-duplicates must not straddle splits: the Kaggle vessel set stores each eye four times (original,
flips, a rotation), so a random split by row puts copies of one eye in train and test. Pairs are
grouped by connected components of "perceptual-hash distance ≤ ``split.phash_max_distance``" or
"identical sha256" (union-find), and whole groups are assigned to splits.

A dataset's own train/test split (``split_hint``) is respected: when any row has a hint, test is the
hinted test rows (a group straddling the dataset's train/test goes to test, with a warning), else
``test_fraction`` of the rows is carved out by group. ``val_fraction`` of train is carved out by group.
Group order is shuffled with ``numpy.random.default_rng(seed)``, so a seed gives the same split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import DisjointSet

from retinaseg.core.config import SplitParams
from retinaseg.core.fileio import read_csv, write_json, write_text

SPLITS = ("train", "val", "test")
# columns of a split CSV that are text (ids, paths, hashes): never parsed as numbers or NaN
SPLIT_TEXT_COLUMNS = (
    "id",
    "split_hint",
    "image_path",
    "mask_path",
    "fov_path",
    "dtype",
    "sha256",
    "phash",
    "group",
)


def _hash_bits(phashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def near_duplicate_groups(manifest: pd.DataFrame, max_distance: int) -> list[list[str]]:
    """Connected components of "phash Hamming distance ≤ max_distance or same sha256".

    Returns the groups as sorted id lists, ordered by their first id.
    """
    ids = manifest["id"].astype(str).tolist()
    components = DisjointSet(ids)
    bits = _hash_bits(manifest["phash"])
    for i in range(len(ids) - 1):
        # one row of the pairwise distance matrix at a time: memory O(n), fine for thousands of images
        distances = np.bitwise_count(bits[i] ^ bits[i + 1 :])
        for j in np.nonzero(distances <= max_distance)[0]:
            components.merge(ids[i], ids[i + 1 + int(j)])
    for _, same in manifest.groupby("sha256")["id"]:
        first = str(same.iloc[0])
        for other in same.iloc[1:]:
            components.merge(first, str(other))
    return sorted((sorted(group) for group in components.subsets()), key=lambda g: g[0])


def _carve(groups: list[list[str]], fraction: float, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Take whole groups (in seeded random order) until ``fraction`` of the ids; returns (taken, rest).

    At least one group is taken when ``fraction > 0`` and there are ≥ 2 groups; never all of them.
    """
    total = sum(len(g) for g in groups)
    if fraction <= 0 or len(groups) < 2:
        return [], [i for g in groups for i in g]
    target = fraction * total
    order = rng.permutation(len(groups))
    taken: list[str] = []
    for k in order:
        if len(taken) >= target:
            break
        if len(taken) + len(groups[k]) >= total:
            continue  # taking this group would leave nothing behind
        taken += groups[k]
    taken_set = set(taken)
    return taken, [i for g in groups for i in g if i not in taken_set]


def split_dataset(
    manifest: pd.DataFrame, params: SplitParams, seed: int
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Split ``manifest`` into train/val/test by near-duplicate group.

    Returns ``({"train": df, "val": df, "test": df}, report)``; each frame is the manifest rows plus a
    ``group`` column (the group's first id), sorted by id. ``report`` has the counts per split, the
    number of groups, the largest group size, the groups of more than one id, and warnings.
    """
    if manifest.empty:
        raise ValueError("the manifest has no rows to split")
    if manifest["id"].duplicated().any():
        dupes = sorted(manifest.loc[manifest["id"].duplicated(), "id"].astype(str).unique())
        raise ValueError(f"duplicate ids in the manifest: {', '.join(dupes)} (run validation)")
    rng = np.random.default_rng(seed)
    groups = near_duplicate_groups(manifest, params.phash_max_distance)
    group_of = {i: g[0] for g in groups for i in g}
    hints = dict(zip(manifest["id"].astype(str), manifest["split_hint"].fillna("").astype(str), strict=True))
    warnings: list[str] = []
    uses_dataset_split = any(h in ("train", "test") for h in hints.values())
    if uses_dataset_split:
        test_groups, train_groups = [], []
        for group in groups:
            kinds = {hints[i] for i in group}
            if "test" in kinds:
                test_groups.append(group)
                if kinds - {"test"}:
                    warnings.append(
                        f"group {group[0]} has near-duplicates in the dataset's train and test splits "
                        f"({', '.join(group)}); all kept in test"
                    )
            else:
                train_groups.append(group)
        test_ids = [i for g in test_groups for i in g]
    else:
        test_ids, _ = _carve(groups, params.test_fraction, rng)
        chosen = set(test_ids)
        train_groups = [g for g in groups if g[0] not in chosen]
    val_ids, train_ids = _carve(train_groups, params.val_fraction, rng)
    assignment = {
        **dict.fromkeys(train_ids, "train"),
        **dict.fromkeys(val_ids, "val"),
        **dict.fromkeys(test_ids, "test"),
    }
    frame = manifest.copy()
    frame["id"] = frame["id"].astype(str)
    frame["group"] = frame["id"].map(group_of)
    splits = {
        name: frame[frame["id"].map(assignment) == name].sort_values("id").reset_index(drop=True)
        for name in SPLITS
    }
    for name in ("train", "test"):
        if splits[name].empty:
            warnings.append(f"the {name} split is empty")
    if splits["val"].empty and params.val_fraction > 0:
        warnings.append("the val split is empty (train has fewer than two groups)")
    report = {
        "seed": int(seed),
        "phash_max_distance": params.phash_max_distance,
        "uses_dataset_split": uses_dataset_split,
        "counts": {name: len(splits[name]) for name in SPLITS},
        "n_images": len(frame),
        "n_groups": len(groups),
        "largest_group": max(len(g) for g in groups),
        "groups": [g for g in groups if len(g) > 1],
        "warnings": warnings,
    }
    return splits, report


def write_splits(
    splits: dict[str, pd.DataFrame], report: dict[str, Any], out_dir: str | Path, report_path: str | Path
) -> None:
    """Write ``out_dir/{train,val,test}.csv`` and the report JSON (each file atomically)."""
    out_dir = Path(out_dir)
    for name in SPLITS:
        write_text(out_dir / f"{name}.csv", splits[name].to_csv(index=False))
    write_json(report_path, report)


def read_split(splits_dir: str | Path, split: str) -> pd.DataFrame:
    """``<splits_dir>/<split>.csv`` sorted by id; paths are relative to the data root, ``fov_path`` is
    ``""`` when the dataset has no FOV mask. ``FileNotFoundError`` when missing, ``ValueError``
    (:class:`~retinaseg.core.fileio.CsvError`) when unreadable or without id/image/mask columns."""
    frame = read_csv(
        Path(splits_dir) / f"{split}.csv",
        text_columns=SPLIT_TEXT_COLUMNS,
        required=("id", "image_path", "mask_path"),
        what="split file",
        hint="run the split stage first",
    )
    return frame.sort_values("id", kind="stable").reset_index(drop=True)
