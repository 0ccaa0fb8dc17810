"""The one atomic folder swap, the one folder hash and the one CSV reader (and the atomic file write)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from retinaseg.core.fileio import CsvError, atomic_dir, atomic_path, hash_tree, read_csv, write_json


def _tree(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes()) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ atomic_dir


def test_atomic_dir_creates_a_new_folder(tmp_path):
    target = tmp_path / "deep" / "out"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "a.txt").write_text("new")
    assert _tree(target) == [("a.txt", b"new")]
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]  # nothing left beside it


def test_atomic_dir_replaces_the_whole_old_tree(tmp_path):
    target = tmp_path / "out"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "stale.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "fresh.txt").write_text("new")
        assert (target / "sub" / "stale.txt").is_file()  # the old tree stays until the block succeeds
    assert _tree(target) == [("fresh.txt", b"new")]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_failure_leaves_the_old_tree_untouched(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("disk full")
    assert _tree(target) == [("keep.txt", b"old")]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the temporary folder is gone


def test_atomic_dir_failure_without_an_old_tree_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_dir(tmp_path / "out"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_writes_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": 1})
    with pytest.raises(ValueError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise ValueError("boom")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# ----------------------------------------------------------------------------------------- hash_tree


def test_hash_tree_tracks_content_and_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"123")
    first = hash_tree(tmp_path)
    assert hash_tree(tmp_path) == first and len(first) == 64
    (tmp_path / "a" / "x.png").write_bytes(b"124")
    changed = hash_tree(tmp_path)
    assert changed != first
    (tmp_path / "a" / "x.png").rename(tmp_path / "a" / "y.png")
    assert hash_tree(tmp_path) not in (first, changed)


def test_hash_tree_is_equal_for_equal_trees_wherever_they_are(tmp_path):
    for root in (tmp_path / "one", tmp_path / "two"):
        (root / "images").mkdir(parents=True)
        (root / "images" / "a.png").write_bytes(b"\x89PNG...")
        (root / "notes.txt").write_text("same")
    assert hash_tree(tmp_path / "one") == hash_tree(tmp_path / "two")


def test_hash_tree_file_boundaries_are_unambiguous(tmp_path):
    # one file whose bytes look like "end of a, then file b" vs. really two files
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    (one / "a").write_bytes(b"x\0b\0y")
    two.mkdir()
    (two / "a").write_bytes(b"x")
    (two / "b").write_bytes(b"y")
    assert hash_tree(one) != hash_tree(two)


# ------------------------------------------------------------------------------------------ read_csv


def test_read_csv_keeps_text_columns_as_text(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,path,width,hash\n007,,12,00ff\nNA,a.png,3,1e5\n")
    frame = read_csv(path, text_columns=("id", "path", "hash"), required=("id",))
    assert frame["id"].tolist() == ["007", "NA"]  # leading zeros and "NA" are ids, not numbers/missing
    assert frame["path"].tolist() == ["", "a.png"]
    assert frame["hash"].tolist() == ["00ff", "1e5"]
    assert frame["width"].tolist() == [12, 3] and pd.api.types.is_integer_dtype(frame["width"])


def test_read_csv_errors_name_the_file(tmp_path):
    missing = r"nope.csv: split file not found \(run the split stage first\)"
    with pytest.raises(FileNotFoundError, match=missing):
        read_csv(tmp_path / "nope.csv", what="split file", hint="run the split stage first")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(CsvError, match="empty.csv: not a readable CSV"):
        read_csv(empty)
    partial = tmp_path / "partial.csv"
    partial.write_text("id,image_path\n1,a.png\n")
    with pytest.raises(ValueError, match=r"partial.csv: missing column\(s\) mask_path"):
        read_csv(partial, required=("id", "image_path", "mask_path"))
