"""The `retinaseg` command line itself: --version, --help without importing the heavy libraries, and what
reaches the user: one line for the project's errors and for OSErrors, a traceback for anything else."""

from __future__ import annotations

import errno
import importlib.metadata
import subprocess
import sys

import pytest

from retinaseg import cli
from retinaseg.cli import main
from retinaseg.data.io import ImageReadError


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


# ------------------------------------------------------------------------------ what reaches the user


def _command_raising(monkeypatch, exc: BaseException) -> None:
    """Make `retinaseg score` raise ``exc`` from inside its handler."""

    def handler(args):
        raise exc

    monkeypatch.setattr(cli, "cli_score", handler)


SCORE = ["score", "--pred", "p", "--gt", "g"]


def test_a_retinaseg_error_is_one_line_and_exit_2(monkeypatch, capsys):
    _command_raising(monkeypatch, ImageReadError("eyes/01.png", "empty file"))
    assert main(SCORE) == 2
    assert capsys.readouterr().err == "error: eyes/01.png: empty file\n"


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "out/a_mask.png"),
            "out/a_mask.png: Permission denied",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "out/a.json"),
            "out/a.json: No space left on device",
        ),
        (
            IsADirectoryError(errno.EISDIR, "Is a directory", "tmp.png", None, "out/a.png"),
            "tmp.png -> out/a.png: Is a directory",
        ),
        (FileNotFoundError("data/manifest.csv: manifest not found"), "data/manifest.csv: manifest not found"),
    ],
)
def test_an_os_error_is_one_line_naming_the_path(monkeypatch, capsys, exc, line):
    _command_raising(monkeypatch, exc)
    assert main(SCORE) == 2
    assert capsys.readouterr().err == f"error: {line}\n"


@pytest.mark.parametrize(
    "exc", [RuntimeError("CUDA out of memory"), ValueError("a bug"), KeyError("x"), TypeError("y")]
)
def test_anything_else_keeps_its_traceback(monkeypatch, exc):
    _command_raising(monkeypatch, exc)
    with pytest.raises(type(exc)):
        main(SCORE)


def test_exit_codes_are_documented():
    doc = cli.__doc__
    assert "- 1: done, but some files failed" in doc and "- 2: nothing (more) could be done" in doc
