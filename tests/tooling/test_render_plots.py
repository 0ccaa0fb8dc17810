"""scripts/render_plots.py: DVC plots rendered offline (real dvc, real vl-convert) in a scratch repo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "render_plots.py"
DVC = Path(sys.executable).with_name("dvc")

try:
    import vl_convert  # noqa: F401
except ImportError:
    if os.environ.get("CI"):  # a dependency of the project: CI must not skip these tests
        raise
    pytest.skip("vl-convert-python is not installed (make venv)", allow_module_level=True)


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
    }


@pytest.fixture()
def scratch_repo(tmp_path: Path) -> Path:
    """A DVC repository without git, holding the project's plot templates."""
    if not DVC.is_file():
        pytest.skip(f"{DVC} not found")
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=root, env=_env(tmp_path), check=True)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    return root


def _render(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=root,
        env=_env(root.parent),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write_history(path: Path, losses: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{epoch},{loss},{loss * 1.1},{1 - loss}" for epoch, loss in enumerate(losses, 1)]
    path.write_text("epoch,train_loss,val_loss,val_dice\n" + "\n".join(rows) + "\n")


def _line_strokes(svg: str) -> set[str]:
    """The stroke colours of the line marks in a Vega SVG."""
    tree = ElementTree.fromstring(svg)
    strokes = set()
    for group in tree.iter("{http://www.w3.org/2000/svg}g"):
        if "mark-line" in (group.get("class") or ""):
            strokes |= {p.get("stroke") for p in group.iter("{http://www.w3.org/2000/svg}path")}
    return strokes - {None}


DVC_YAML = """\
plots:
  - loss:
      title: Loss
      template: by_model_log
      x: epoch
      y:
        training/unet.csv: [train_loss, val_loss]
        training/attention_unet.csv: [train_loss, val_loss]
  - dice:
      template: by_model
      x: epoch
      y:
        training/unet.csv: val_dice
        training/attention_unet.csv: val_dice
  - training/unet.csv:
      x: epoch
      y: val_dice
"""


def test_renders_every_plot_to_svg_png_and_an_offline_page(scratch_repo):
    _write_history(scratch_repo / "training" / "unet.csv", [1.0, 0.5, 0.3])
    _write_history(scratch_repo / "training" / "attention_unet.csv", [0.9, 0.6, 0.2])
    (scratch_repo / "dvc.yaml").write_text(DVC_YAML)

    proc = _render(scratch_repo)
    assert proc.returncode == 0, proc.stderr
    out = scratch_repo / "dvc_plots"
    # a plot id that is a path becomes a safe file name
    for stem in ("loss", "dice", "training_unet.csv"):
        svg = (out / "rendered" / f"{stem}.svg").read_text()
        ElementTree.fromstring(svg)  # well-formed
        assert (out / "rendered" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the project's templates: one colour per model, whatever the number of fields per file
    for stem in ("loss", "dice"):
        strokes = _line_strokes((out / "rendered" / f"{stem}.svg").read_text())
        assert len(strokes) == 2, (stem, strokes)

    page = (out / "static.html").read_text()
    assert page.count('src="data:image/svg+xml;base64,') == 3
    # nothing on the page is fetched from anywhere: no script, no stylesheet, no remote URL
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "-> dvc_plots/static.html" in proc.stdout


def test_fails_clearly_when_the_data_files_do_not_exist_yet(scratch_repo):
    (scratch_repo / "dvc.yaml").write_text(DVC_YAML)
    proc = _render(scratch_repo)
    assert proc.returncode == 1
    assert "nothing to plot" in proc.stderr and "run the pipeline first" in proc.stderr
    assert "training/unet.csv" in proc.stderr  # the missing file is named
    assert not (scratch_repo / "dvc_plots" / "static.html").exists()


def test_fails_clearly_when_no_plot_is_defined(scratch_repo):
    proc = _render(scratch_repo)
    assert proc.returncode == 1
    assert "nothing to plot" in proc.stderr and "no plots are defined" in proc.stderr


def test_a_partly_missing_plot_is_a_warning(scratch_repo):
    _write_history(scratch_repo / "training" / "unet.csv", [1.0, 0.5])
    (scratch_repo / "dvc.yaml").write_text(DVC_YAML)
    proc = _render(scratch_repo, "--out", "figures")
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "training/attention_unet.csv" in proc.stderr
    assert (scratch_repo / "figures" / "rendered" / "loss.svg").is_file()
    assert "training/attention_unet.csv" in (scratch_repo / "figures" / "static.html").read_text()
