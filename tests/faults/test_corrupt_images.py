"""Corrupt image files of every format we read (PNG, JPEG, TIFF, GIF, BMP, PPM): cut at several
offsets, zero bytes, a header that claims 10 gigapixels, text under an image suffix, and valid content
under another format's suffix, through ``retinaseg predict``, ``score``, ``validate`` and ``data add``.

Each bad file is one error line naming it and the problem; the other files are still processed; the
command exits 1 with ``N of M files failed``; what an earlier run wrote is not lost or changed; the
inputs are only read. Random byte flips (hypothesis) through the readers: an image or an
``ImageReadError``, nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from retinaseg.cli import main
from retinaseg.core.fileio import hash_tree
from retinaseg.data.io import ImageReadError, check_image, read_image
from retinaseg.inference.inputs import decode_image_bytes, validate_input_file
from tests.faults.helpers import error_lines, pick, run_cli, snapshot, temp_leftovers
from tests.faults.images import BAD_KINDS, FORMATS, bad_file, encode, expected_reason, other_suffix, picture

FAMILY = "Corrupt image files (truncated, empty, bombs, wrong type) and fuzzed bytes"

BAD = [(fmt, kind) for fmt in FORMATS for kind in BAD_KINDS]
BAD_IDS = [f"{fmt}-{kind}" for fmt, kind in BAD]
REPORT = "predict_report.json"


def _bad_name(fmt: str, kind: str) -> str:
    return f"bad_{fmt.lower()}_{kind}{FORMATS[fmt]}"


def _wrong_suffix_name(fmt: str) -> str:
    return f"ok_{fmt.lower()}_as{other_suffix(fmt)}"


def _line(err: str, path: Path) -> str:
    lines = [ln for ln in error_lines(err) if ln.startswith(f"error: {path}:")]
    assert len(lines) == 1, f"expected one error line for {path}, got {error_lines(err)}"
    return lines[0]


# ------------------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def earlier_predict_output(tiny_model_dir, good_inputs, tmp_path_factory) -> Path:
    """What a good `retinaseg predict` run on eye_a and eye_b wrote: the output to protect."""
    out = tmp_path_factory.mktemp("earlier") / "out"
    with contextlib.chdir(out.parent):  # no params.yaml there: the built-in values
        assert (
            main(["predict", str(good_inputs), "--model", str(tiny_model_dir), "--out", str(out), *_CPU]) == 0
        )
    return out


_CPU = ["--device", "cpu"]


def _predict_case(tmp_path, tiny_model_dir, good_inputs, earlier, bad: Path, capsys) -> tuple[int, str, Path]:
    out = tmp_path / "out"
    shutil.copytree(earlier, out)
    before_inputs = hash_tree(bad.parent), hash_tree(good_inputs)
    code = main(
        ["predict", str(good_inputs / "eye_a.png"), str(bad), "--model", str(tiny_model_dir)]
        + ["--out", str(out), *_CPU]
    )
    err = capsys.readouterr().err
    # no earlier output lost or changed: eye_a's outputs written again, identical; eye_b's untouched
    assert snapshot(out, ignore=lambda rel: rel == REPORT) == snapshot(
        earlier, ignore=lambda rel: rel == REPORT
    )
    assert (hash_tree(bad.parent), hash_tree(good_inputs)) == before_inputs  # inputs only read
    assert temp_leftovers(out) == []
    return code, err, out


@pytest.mark.parametrize(("fmt", "kind"), BAD, ids=BAD_IDS)
def test_predict_names_the_bad_file_and_segments_the_others(
    fmt, kind, tmp_path, tiny_model_dir, good_inputs, earlier_predict_output, capsys
):
    bad = tmp_path / "in" / _bad_name(fmt, kind)
    bad.parent.mkdir()
    bad.write_bytes(bad_file(fmt, kind))
    code, err, out = _predict_case(tmp_path, tiny_model_dir, good_inputs, earlier_predict_output, bad, capsys)
    assert code == 1
    line, count = error_lines(err)  # nothing else on stderr: no warning, no traceback
    assert line.startswith(f"error: {bad}: ") and re.search(expected_reason(kind), line), line
    assert count == "1 of 2 files failed"
    report = json.loads((out / REPORT).read_text())
    assert [e["input"] for e in report["errors"]] == [str(bad)] and report["n_ok"] == 1
    assert not list(out.glob(f"{bad.stem}_*"))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_predict_reads_the_content_not_the_suffix(fmt, tmp_path, tiny_model_dir, good_inputs, capsys):
    path = tmp_path / "in" / _wrong_suffix_name(fmt)
    path.parent.mkdir()
    path.write_bytes(encode(fmt))
    out = tmp_path / "out"
    assert main(["predict", str(path), "--model", str(tiny_model_dir), "--out", str(out), *_CPU]) == 0
    assert error_lines(capsys.readouterr().err) == []
    assert (out / f"{path.stem}_mask.png").is_file()


# --------------------------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> tuple[Path, Path]:
    """Ground truth for samples a, b, c and good binary predictions for a and b."""
    root = tmp_path_factory.mktemp("score")
    gt, pred = root / "gt", root / "pred"
    gt.mkdir()
    pred.mkdir()
    rng = np.random.default_rng(3)
    for sid in ("a", "b", "c"):
        mask = (rng.random((48, 64)) > 0.8).astype(np.uint8) * 255
        Image.fromarray(mask).save(gt / f"{sid}.png")
        if sid != "c":
            Image.fromarray(np.roll(mask, 1, axis=1)).save(pred / f"{sid}.png")
    return gt, pred


@pytest.mark.parametrize(("fmt", "kind"), BAD, ids=BAD_IDS)
def test_score_names_the_bad_prediction_and_scores_the_others(fmt, kind, tmp_path, truth, capsys):
    gt, good_pred = truth
    pred = tmp_path / "pred"
    shutil.copytree(good_pred, pred)
    bad = pred / f"c{FORMATS[fmt]}"
    bad.write_bytes(bad_file(fmt, kind))
    before = hash_tree(pred), hash_tree(gt)
    report = tmp_path / "scores.json"
    code = main(["score", "--pred", str(pred), "--gt", str(gt), "--json", str(report)])
    err = capsys.readouterr().err
    assert code == 1
    line, count = error_lines(err)
    assert line.startswith(f"error: {bad}: ") and re.search(expected_reason(kind), line), line
    assert count == "1 of 3 prediction files failed"
    scores = json.loads(report.read_text())
    assert scores["n_images"] == 2 and [e["file"] for e in scores["errors"]] == [str(bad)]
    assert (hash_tree(pred), hash_tree(gt)) == before


# ------------------------------------------------------------------------------- validate and data add


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory) -> Path:
    """A folder-layout dataset: three good pairs, every bad file of every format as an image (with a
    good mask), and every format's valid content under another format's suffix."""
    root = tmp_path_factory.mktemp("dataset") / "user"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((48, 64), np.uint8)
    mask[20:28, :] = 255

    def pair(name: str, content: bytes) -> None:
        (root / "images" / name).write_bytes(content)
        Image.fromarray(mask).save(root / "masks" / f"{Path(name).stem}_mask.png")

    for k in range(3):
        pair(f"good_{k}.png", encode("PNG", picture(10 + k)))
    for fmt, kind in BAD:
        pair(_bad_name(fmt, kind), bad_file(fmt, kind))
    for fmt in FORMATS:
        pair(_wrong_suffix_name(fmt), encode(fmt, picture(20)))
    return root


@pytest.fixture(scope="module")
def validated(bad_dataset, tmp_path_factory) -> dict:
    """One `retinaseg validate` of the bad dataset, with an earlier manifest at --manifest."""
    work = tmp_path_factory.mktemp("validate")
    manifest = work / "manifest.csv"
    manifest.write_text("the earlier manifest\n")
    before = hash_tree(bad_dataset)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(work), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(
            ["validate", "--source", "folder", "--root", str(bad_dataset)]
            + ["--report", str(work / "report"), "--manifest", str(manifest)]
        )
    summary = json.loads((work / "report" / "summary.json").read_text())
    return {
        "code": code,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "problems": summary["problems"],
        "manifest": manifest.read_text(),
        "dataset_unchanged": hash_tree(bad_dataset) == before,
    }


@pytest.mark.parametrize(("fmt", "kind"), BAD, ids=BAD_IDS)
def test_validate_names_every_bad_file_and_keeps_the_earlier_manifest(fmt, kind, validated):
    name = f"images/{_bad_name(fmt, kind)}"
    mine = [p for p in validated["problems"] if p["file"] == name]
    assert len(mine) == 1 and mine[0]["severity"] == "error", mine
    assert re.search(expected_reason(kind), mine[0]["message"])
    assert f"{mine[0]['check']}:" in validated["stdout"]  # the finding's line on the terminal
    assert validated["code"] == 1 and validated["manifest"] == "the earlier manifest\n"
    n_bad = len(BAD)
    assert error_lines(validated["stderr"]) == [f"{n_bad} of {2 * (3 + n_bad + len(FORMATS))} files failed"]
    assert validated["dataset_unchanged"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_validate_reads_the_content_not_the_suffix(fmt, validated):
    name = f"images/{_wrong_suffix_name(fmt)}"
    assert [p for p in validated["problems"] if p["file"] == name and p["severity"] == "error"] == []


@pytest.fixture(scope="module")
def added(bad_dataset, tmp_path_factory, repo_root) -> dict:
    """One `retinaseg data add` of the bad dataset into a fresh DVC repository."""
    repo = tmp_path_factory.mktemp("add") / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    shutil.copy(repo_root / ".gitignore", repo / ".gitignore")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(repo), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["data", "add", "--source", "folder", "--root", str(bad_dataset)])
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "repo": repo}


@pytest.mark.parametrize(("fmt", "kind"), BAD, ids=BAD_IDS)
def test_data_add_names_every_bad_file_and_adds_the_dataset(fmt, kind, added, bad_dataset):
    bad = bad_dataset / "images" / _bad_name(fmt, kind)
    assert re.search(expected_reason(kind), _line(added["stderr"], bad))
    n_files = 2 * (3 + len(BAD) + len(FORMATS))
    assert error_lines(added["stderr"])[-1] == f"{len(BAD)} of {n_files} files failed"
    assert len(error_lines(added["stderr"])) == len(BAD) + 1  # one line per bad file, and the count
    assert added["code"] == 1 and "pairs copied in data/raw/folder" in added["stdout"]
    assert hash_tree(added["repo"] / "data" / "raw" / "folder") == hash_tree(bad_dataset)


# --------------------------------------------------------------------------------------------- fuzzing

_EXAMPLES = pick(fast=20, full=400)


def _outcome(read, *args) -> str:
    """``"image"`` or ``"error"``; any other exception fails the test."""
    try:
        array = read(*args)
    except ImageReadError as exc:
        assert str(exc).startswith(str(args[0]) if isinstance(args[0], Path) else "<fuzz>")
        return "error"
    if array is not None:
        assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    return "image"


@pytest.mark.parametrize("fmt", list(FORMATS))
@settings(
    max_examples=_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    values=st.lists(st.integers(1, 255), min_size=8, max_size=8),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_flipped_and_cut_bytes_are_an_image_or_one_read_error(fmt, tmp_path, positions, values, cut):
    from tests.faults.images import flipped, truncated

    data = flipped(encode(fmt), positions, values)
    if cut is not None:
        data = truncated(data, max(1, int(len(data) * cut)))
    path = tmp_path / f"fuzz{FORMATS[fmt]}"
    path.write_bytes(data)
    _outcome(read_image, path)  # the dataset reader (validate, preprocess, evaluate)
    _outcome(lambda p: check_image(p), path)  # data add's check
    _outcome(lambda p: (validate_input_file(p), read_image(p))[1], path)  # predict's path
    _outcome(lambda d: decode_image_bytes(d, "<fuzz>"), data)  # uploads and the server's rows


@pytest.mark.slow
def test_predict_as_a_process_prints_one_line_per_bad_file_and_nothing_else(
    tmp_path, tiny_model_dir, good_inputs
):
    """All the bad files at once through a real `retinaseg predict` process: no warning of an image
    library and no traceback reaches the terminal, only one line per bad file and the count."""
    folder = tmp_path / "in"
    folder.mkdir()
    for fmt, kind in BAD:
        (folder / _bad_name(fmt, kind)).write_bytes(bad_file(fmt, kind))
    shutil.copy(good_inputs / "eye_a.png", folder / "eye_a.png")
    out = tmp_path / "out"
    done = run_cli(
        ["retinaseg", "predict", str(folder), "--model", str(tiny_model_dir), "--out", str(out)] + _CPU,
        process=True,
    )
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert lines[-1] == f"{len(BAD)} of {len(BAD) + 1} files failed"
    expected = {str(folder / _bad_name(fmt, kind)): expected_reason(kind) for fmt, kind in BAD}
    assert len(lines) == len(expected) + 1, lines
    for line in lines[:-1]:
        path, reason = line.removeprefix("error: ").split(": ", 1)
        assert re.search(expected.pop(path), reason), line
    assert (out / "eye_a_mask.png").is_file()
