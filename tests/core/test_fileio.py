"""The one atomic folder swap, the one folder hash and the one CSV reader (and the atomic file write);
written files and folders follow the umask; the leftovers of a killed run are cleaned, nothing else."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from retinaseg.core import fileio
from retinaseg.core.errors import RetinasegError, WriteError
from retinaseg.core.fileio import (
    CsvError,
    atomic_dir,
    atomic_path,
    clean_stale_temps,
    current_umask,
    hash_tree,
    read_csv,
    write_bytes,
    write_json,
    write_png,
    write_text,
)


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


# ----------------------------------------------------------------------------------- modes and umask


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_written_files_follow_the_umask(tmp_path, umask):
    write_bytes(tmp_path / "a.bin", b"1")
    write_json(tmp_path / "sub" / "b.json", {"a": 1})
    write_png(tmp_path / "c.png", np.zeros((4, 4), np.uint8))
    with atomic_path(tmp_path / "d.txt") as tmp:
        tmp.write_text("made by another writer")
    for name in ("a.bin", "sub/b.json", "c.png", "d.txt"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert _mode(tmp_path / "sub") == 0o777 & ~umask  # made by mkdir


def test_a_folder_swapped_in_follows_the_umask(tmp_path, umask):
    target = tmp_path / "out"
    for _ in range(2):  # a new folder, then one replacing the old tree
        with atomic_dir(target) as tmp:
            (tmp / "inner").mkdir()
            write_png(tmp / "inner" / "x.png", np.zeros((4, 4), np.uint8))
        assert _mode(target) == 0o777 & ~umask
        assert _mode(target / "inner") == 0o777 & ~umask
        assert _mode(target / "inner" / "x.png") == 0o666 & ~umask


# ----------------------------------------------------------------------------- stale temporary files


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def _temp(folder, name: str, pid: int, kind: str = "file", host: str | None = None, age_s: float = 3600):
    """A temporary entry named as fileio names them, last modified ``age_s`` ago."""
    host = host or fileio._host_tag()
    suffix = {"file": ".tmp.png", "dir": ".tmp", "old": ".old"}[kind]
    path = folder / f".{name}.{host}-{pid}-abcd_123{suffix}"
    if kind == "file":
        path.write_bytes(b"half")
        stamped = [path]
    else:
        (path / "deep").mkdir(parents=True)
        (path / "deep" / "x.png").write_bytes(b"half")
        stamped = [path / "deep" / "x.png", path / "deep", path]
    when = time.time() - age_s
    for p in stamped:
        os.utime(p, (when, when))
    return path


def test_clean_stale_temps_removes_what_a_killed_run_left(tmp_path):
    dead = _dead_pid()
    out = tmp_path / "data" / "processed"
    (out / "train").mkdir(parents=True)
    left = [
        _temp(tmp_path / "data", "processed", dead, "dir"),  # atomic_dir's folder being built
        _temp(tmp_path / "data", "processed", dead, "old"),  # the old tree moved aside
        _temp(out / "train", "a.png", dead),  # a file being written inside the output
        _temp(tmp_path, "metrics.json", dead),
    ]
    removed = clean_stale_temps([out, tmp_path / "metrics.json"])
    assert sorted(removed) == sorted(left)
    assert not any(p.exists() for p in left)
    assert out.is_dir() and (out / "train").is_dir()  # the outputs themselves are not touched


def test_clean_stale_temps_never_touches_a_live_run_or_anything_not_ours(tmp_path):
    dead = _dead_pid()
    out = tmp_path / "out"
    out.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            kept = [
                _temp(tmp_path, "out", live.pid, "dir"),  # a concurrent run, still going
                _temp(tmp_path, "out", dead, "dir", host="0a0b0c"),  # made on another machine
                _temp(tmp_path, "out", dead, age_s=-5),  # written after this process started
                _temp(out, "mine.png", os.getpid(), age_s=-5),  # this process's own, in progress
            ]
            users = [
                tmp_path / ".out.tmp",
                tmp_path / ".out.12345.tmp",
                out / "notes.tmp",
                out / ".x.tmp.png",
            ]
            for p in users:
                p.write_text("the user's")
                os.utime(p, (1, 1))
            assert clean_stale_temps([out]) == []
            assert all(p.exists() for p in kept + users)
        finally:
            live.kill()


def test_a_temp_file_of_a_real_writer_is_kept_while_it_runs_and_cleaned_after_it_is_killed(tmp_path):
    target = tmp_path / "report.json"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from retinaseg.core.fileio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half'); print(tmp.name, flush=True); time.sleep(60)",
            str(target),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        name = writer.stdout.readline().strip()
        temp = tmp_path / name
        assert fileio.TEMP_NAME.match(name) and temp.is_file()
        os.utime(temp, (1, 1))  # as if written long before this process started: only its pid protects it
        assert clean_stale_temps([target]) == [] and temp.exists()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert clean_stale_temps([target]) == [temp] and not temp.exists()
    assert not target.exists()


# ------------------------------------------------------------------------------- write errors name the path


def test_a_write_error_names_the_file_asked_for_never_the_temporary_one(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(WriteError) as err:
        write_text(tmp_path / "taken", "x")  # a folder where the file should be
    assert str(err.value) == f"{tmp_path / 'taken'}: Is a directory" and err.value.errno == errno.EISDIR
    (tmp_path / "plain.txt").write_text("a file")
    with pytest.raises(WriteError) as err:
        write_json(tmp_path / "plain.txt" / "m.json", {})  # a file where a folder should be
    assert (
        str(err.value)
        == f"{tmp_path / 'plain.txt' / 'm.json'}: {tmp_path / 'plain.txt'} is a file, not a folder"
    )
    assert isinstance(err.value, OSError) and isinstance(err.value, RetinasegError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "taken"]


def test_the_file_size_limit_is_a_write_error_naming_the_file(tmp_path):
    write_bytes(tmp_path / "big.bin", b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: a real EFBIG
    try:
        with pytest.raises(WriteError) as err:
            write_bytes(tmp_path / "big.bin", b"x" * 10_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert err.value.errno == errno.EFBIG and str(err.value) == f"{tmp_path / 'big.bin'}: File too large"
    assert (tmp_path / "big.bin").read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_a_write_error_inside_a_folder_being_built_names_its_place_in_the_target(tmp_path):
    target = tmp_path / "processed"
    with pytest.raises(WriteError) as err, atomic_dir(target) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "train" / "a.png"))
    assert str(err.value) == f"{target / 'train' / 'a.png'}: No space left on device"
    with pytest.raises(FileNotFoundError), atomic_dir(target):  # about another file: unchanged
        open(tmp_path / "no-such-input.png", "rb")  # noqa: SIM115
    assert list(tmp_path.iterdir()) == []
