"""Validation: every defect of the broken corpus reported once with the right file and check;
DRIVE passes; the Kaggle layout passes with warnings only; on_error=exclude keeps the good pairs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from retinaseg.cli import main
from retinaseg.core.config import ValidateParams
from retinaseg.core.fileio import hash_tree
from retinaseg.data.validation import CHECKS, validate_dataset
from tests.data.broken_corpus import KEPT_IDS, make_broken_corpus

pytestmark = pytest.mark.slow  # Great Expectations takes a few seconds to import and run


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken") / "corpus"
    return root, make_broken_corpus(root)


def _validate(repo_root, root, report, *extra):
    return main(
        [
            "validate",
            "--source",
            "folder",
            "--root",
            str(root),
            "--report",
            str(report),
            "--params",
            str(repo_root / "params.yaml"),
            *extra,
        ]
    )


def test_broken_corpus_reports_every_defect(broken, tmp_path, repo_root, capsys):
    root, expected = broken
    before = hash_tree(root)
    status = _validate(repo_root, root, tmp_path / "report")
    out = capsys.readouterr().out
    assert status == 1
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["success"] is False
    reported = {(p["file"], p["check"], p["severity"]) for p in summary["problems"]}
    lines = out.strip().splitlines()
    for file, (check, severity) in expected.items():
        assert (file, check, severity) in reported, f"{file}: {check} not reported"
        # the finding's line names the file (a finding names its first three files)
        assert any(
            ln.startswith(f"{severity.upper()}  ") and f"{check}: " in ln and file in ln for ln in lines
        ), f"no line for {file}: {check}: {out}"
    errors = {(f, c) for f, c, s in reported if s == "error"}
    assert errors == {(f, c) for f, (c, s) in expected.items() if s == "error"}
    assert all(CHECKS[c] == s for _, c, s in reported)
    # one line per finding (a check at a severity), the summary line last; summary.json lists all
    assert len(lines) == len({(c, s) for _, c, s in reported}) + 1
    assert lines[-1].startswith("validation FAILED")
    # a failed run writes no manifest, and the data root is untouched
    assert not (tmp_path / "report" / "manifest.csv").exists()
    assert (tmp_path / "report" / "docs" / "index.html").is_file()
    assert hash_tree(root) == before


def test_exclude_keeps_the_good_pairs(broken, tmp_path, repo_root, capsys):
    root, _ = broken
    manifest = tmp_path / "manifest.csv"
    status = _validate(
        repo_root, root, tmp_path / "report", "--on-error", "exclude", "--manifest", str(manifest)
    )
    out = capsys.readouterr().out
    assert status == 0
    kept = pd.read_csv(manifest, dtype={"id": str})
    assert sorted(kept["id"]) == sorted(KEPT_IDS)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["success"] is True and summary["n_pairs"] == len(KEPT_IDS)
    assert set(summary["excluded"]) == {"blank", "dup", "flat", "photo"}
    assert "EXCLUDED flat" in out


@pytest.mark.drive
def test_drive_validates(drive_root, tmp_path):
    result = validate_dataset("drive", drive_root, ValidateParams(), tmp_path / "m.csv", tmp_path / "rep")
    assert result.success and result.n_pairs == 40 and result.problems == []
    manifest = pd.read_csv(tmp_path / "m.csv")
    assert (manifest["split_hint"].value_counts() == 20).all()
    assert not manifest["fov_derived"].any()
    assert manifest["image_path"].str.match(r"^(training|test)/images/").all()
    assert (tmp_path / "rep" / "docs" / "index.html").is_file()


@pytest.mark.drive
def test_kaggle_layout_has_only_grey_edge_warnings(kaggle_drive_root, tmp_path):
    result = validate_dataset(
        "kaggle", kaggle_drive_root, ValidateParams(), tmp_path / "m.csv", tmp_path / "rep"
    )
    assert result.success
    assert result.errors == []
    assert result.warnings and {p.check for p in result.warnings} == {"grey_edges"}
    manifest = pd.read_csv(tmp_path / "m.csv")
    assert manifest["fov_derived"].all()  # Kaggle ships no FOV masks
