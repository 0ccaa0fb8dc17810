"""`retinaseg validate` with its defaults writes a scratch folder, never the validate stage's DVC-tracked
outputs; a bad file is reported with a count and the others are still validated."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

import pytest
import yaml

from retinaseg.cli import build_parser, main
from retinaseg.core.fileio import hash_tree
from tests.data.builders import make_folder_dataset
from tests.unreadable import unreadable_file


def _dvc_paths(repo_root: Path) -> set[PurePosixPath]:
    """Every path a stage of dvc.yaml writes: outs, metrics and plots, and the folders the stages
    write untracked (Data Docs beside reports/validation/summary.json)."""
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    paths = set()
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key, []):
                name = entry if isinstance(entry, str) else next(iter(entry))
                paths.add(PurePosixPath(name))
    return paths


def _overlaps(a: PurePosixPath, b: PurePosixPath) -> bool:
    return a == b or a in b.parents or b in a.parents


def test_default_report_and_manifest_are_no_dvc_output(repo_root):
    args = build_parser().parse_args(["validate", "--source", "folder", "--root", "somewhere"])
    report = PurePosixPath(args.report)
    assert args.manifest is None  # then <report>/manifest.csv
    tracked = _dvc_paths(repo_root)
    assert PurePosixPath("reports/validation/summary.json") in tracked  # the stage's own report
    assert PurePosixPath("data/manifest.csv") in tracked
    for written in (report, report / "manifest.csv", report / "summary.json", report / "docs"):
        assert not written.is_absolute()
        clashes = [str(t) for t in tracked if _overlaps(written, t) or _overlaps(written, t.parent)]
        assert not clashes, f"retinaseg validate writes {written} by default, inside DVC's {clashes}"


@pytest.mark.slow  # Great Expectations takes seconds to import and run
def test_a_default_run_leaves_reports_validation_untouched(tmp_path, monkeypatch, capsys):
    data = make_folder_dataset(tmp_path / "data", n=3, size=48)
    project = tmp_path / "project"
    tracked = project / "reports" / "validation"
    tracked.mkdir(parents=True)
    (tracked / "summary.json").write_text('{"success": true, "from": "dvc repro"}\n')
    (project / "data").mkdir()
    (project / "data" / "manifest.csv").write_text("id\n")
    before = hash_tree(project)
    monkeypatch.chdir(project)
    assert main(["validate", "--source", "folder", "--root", str(data)]) == 0
    out = capsys.readouterr().out
    assert "validation passed: 3 pairs kept" in out
    assert "report: validation-report/summary.json; manifest: validation-report/manifest.csv" in out
    assert (tracked / "summary.json").read_text() == '{"success": true, "from": "dvc repro"}\n'
    assert sorted(p.name for p in tracked.iterdir()) == ["summary.json"]  # no docs/ written there
    assert (project / "data" / "manifest.csv").read_text() == "id\n"
    scratch = project / "validation-report"
    assert json.loads((scratch / "summary.json").read_text())["n_pairs"] == 3
    assert (scratch / "manifest.csv").is_file() and (scratch / "docs" / "index.html").is_file()
    shutil.rmtree(scratch)
    assert hash_tree(project) == before  # apart from the scratch folder, the project is as it was


@pytest.mark.slow
def test_an_unreadable_file_is_counted_and_the_others_validated(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", n=3, size=48)
    (data / "images" / "case_01.png").unlink()
    unreadable_file(data / "images" / "case_01.png")
    report = tmp_path / "report"
    assert main(["validate", "--source", "folder", "--root", str(data), "--report", str(report)]) == 1
    out, err = capsys.readouterr()
    assert "images/case_01.png" in out and "validation FAILED: 2 pairs kept" in out
    assert err.strip().splitlines()[-1] == "1 of 9 files failed"  # 3 images, 3 masks, 3 FOV masks
    summary = json.loads((report / "summary.json").read_text())
    assert {p["file"] for p in summary["problems"] if p["severity"] == "error"} == {"images/case_01.png"}
