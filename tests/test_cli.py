"""The `retinaseg` command line itself: --version, and --help without importing the heavy libraries."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from retinaseg.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"retinaseg {importlib.metadata.version('retinaseg')}"


def test_parsing_imports_no_heavy_library():
    heavy = ("torch", "mlflow", "great_expectations", "pandas", "cv2")
    code = (
        "import sys; from retinaseg.cli import build_parser; build_parser().format_help(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
