"""Leak-aware, seeded train/val/test split.

Near-duplicates must not straddle splits: the Kaggle vessel set stores each eye four times (original,
flips, a rotation), so a random split by row puts copies of one eye in train and test. Pairs are
grouped by connected components of "perceptual-hash distance ≤ ``split.phash_max_distance``" or
"identical sha256" (union-find), and whole groups are assigned to splits.

A dataset's own train/test split (``split_hint``) is respected: when any row has a hint, test is the
hinted test rows (a group straddling the dataset's train/test goes to test, with a warning), else
``test_fraction`` of the rows is carved out by group. ``val_fraction`` of train is carved out by group.
Group order is shuffled with ``numpy.random.default_rng(seed)``, so a seed gives the same split.

A multi dataset (``data.source: multi``; the manifest's ``dataset`` column names each row's part) is
split part by part: a part with its own train/test split keeps it (DRIVE's test/ is test), a part
without one gives up ``test_fraction`` of its groups to test (parts in name order, one generator);
then each part gives up ``val_fraction`` of its train groups to val (so the threshold chosen on val
is chosen on every part, not mostly on the largest). Near-duplicates are grouped across
parts (a group belongs to the part of its first id; one spanning parts is warned about). The report
then counts every split per part.
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
    "dataset",  # only in the files of a multi dataset
    "split_hint",
    "image_path",
    "mask_path",
    "second_mask_path",  # only where some image has a second observer's mask
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
    ``group`` column (the group's first id), sorted by id (the ``dataset`` column only for a multi
    dataset). ``report`` has the counts per split, the number of groups, the largest group size, the
    groups of more than one id, and warnings; for a multi dataset also ``parts``: per part its counts
    and whether it kept its own split.
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
    multi = _parts_of(manifest)
    if multi is None:
        uses_dataset_split, test_ids, train_groups = _test_of_one(groups, hints, params, rng, warnings)
    else:
        uses_dataset_split, test_ids, train_groups = _test_of_parts(
            groups, hints, multi, params, rng, warnings
        )
    if multi is None:
        val_ids, train_ids = _carve(train_groups, params.val_fraction, rng)
    else:  # val carved part by part: the threshold is chosen on every part, not mostly on one
        val_ids, train_ids = [], []
        for name in sorted(set(multi.values())):
            taken, rest = _carve([g for g in train_groups if multi[g[0]] == name], params.val_fraction, rng)
            val_ids += taken
            train_ids += rest
    assignment = {
        **dict.fromkeys(train_ids, "train"),
        **dict.fromkeys(val_ids, "val"),
        **dict.fromkeys(test_ids, "test"),
    }
    frame = manifest.copy() if multi is not None else manifest.drop(columns="dataset", errors="ignore")
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
        "uses_dataset_split": bool(uses_dataset_split),  # multi: whether any part keeps its own split
        "counts": {name: len(splits[name]) for name in SPLITS},
        "n_images": len(frame),
        "n_groups": len(groups),
        "largest_group": max(len(g) for g in groups),
        "groups": [g for g in groups if len(g) > 1],
        "warnings": warnings,
    }
    if multi is not None:  # per part: its split counts and whether it kept its own test split
        report["parts"] = {
            name: {
                "uses_dataset_split": name in uses_dataset_split,
                "counts": {split: int((splits[split]["dataset"] == name).sum()) for split in SPLITS},
            }
            for name in sorted(set(multi.values()))
        }
    return splits, report


def _parts_of(manifest: pd.DataFrame) -> dict[str, str] | None:
    """``{id: part name}`` for a multi dataset's manifest; None for a single dataset."""
    if "dataset" not in manifest.columns:
        return None
    names = manifest["dataset"].fillna("").astype(str)
    if not (names != "").any():
        return None
    if (names == "").any():
        missing = manifest.loc[names == "", "id"].astype(str).tolist()
        raise ValueError(f"rows without a dataset in a multi dataset's manifest: {', '.join(missing[:5])}")
    return dict(zip(manifest["id"].astype(str), names, strict=True))


def _hinted_test(
    groups: list[list[str]], hints: dict[str, str], warnings: list[str], where: str = "the dataset's"
) -> tuple[list[list[str]], list[list[str]]]:
    """(test groups, train groups): a group with a test-hinted id is test (warned when it straddles)."""
    test_groups, train_groups = [], []
    for group in groups:
        kinds = {hints[i] for i in group}
        if "test" in kinds:
            test_groups.append(group)
            if kinds - {"test"}:
                warnings.append(
                    f"group {group[0]} has near-duplicates in {where} train and test splits "
                    f"({', '.join(group)}); all kept in test"
                )
        else:
            train_groups.append(group)
    return test_groups, train_groups


def _test_of_one(
    groups: list[list[str]],
    hints: dict[str, str],
    params: SplitParams,
    rng: np.random.Generator,
    warnings: list[str],
) -> tuple[bool, list[str], list[list[str]]]:
    """One dataset: (uses its own split, test ids, train groups)."""
    if any(h in ("train", "test") for h in hints.values()):
        test_groups, train_groups = _hinted_test(groups, hints, warnings)
        return True, [i for g in test_groups for i in g], train_groups
    test_ids, _ = _carve(groups, params.test_fraction, rng)
    chosen = set(test_ids)
    return False, test_ids, [g for g in groups if g[0] not in chosen]


def _test_of_parts(
    groups: list[list[str]],
    hints: dict[str, str],
    part_of: dict[str, str],
    params: SplitParams,
    rng: np.random.Generator,
    warnings: list[str],
) -> tuple[set[str], list[str], list[list[str]]]:
    """A multi dataset: (the parts that keep their own split, test ids, train groups of all parts).

    A group with a test-hinted id is test whatever its part; the other groups belong to the part of
    their first id, and a part without hints gives up ``test_fraction`` of its groups.
    """
    names = sorted(set(part_of.values()))
    hinted = {n for n in names if any(hints[i] in ("train", "test") for i in part_of if part_of[i] == n)}
    for group in groups:
        spanned = sorted({part_of[i] for i in group})
        if len(spanned) > 1:
            warnings.append(f"group {group[0]} spans the parts {', '.join(spanned)} ({', '.join(group)})")
    test_groups, rest = _hinted_test(groups, hints, warnings, "a part's")
    test_ids = [i for g in test_groups for i in g]
    for name in names:
        if name in hinted:
            continue
        carved, _ = _carve([g for g in rest if part_of[g[0]] == name], params.test_fraction, rng)
        test_ids += carved
    chosen = set(test_ids)
    return hinted, test_ids, [g for g in rest if g[0] not in chosen]


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
