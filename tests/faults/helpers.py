"""What the fault families share: the fast/full switch, folder snapshots, running a command (in this
process or as its own) bound by permission bits or under a file-size limit, reading its error lines."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import io
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retinaseg.core.fileio import TEMP_NAME

#: ``RETINASEG_FAULTS=full`` (``make test-faults``): the full part of the suite; else the fast part.
FULL = os.environ.get("RETINASEG_FAULTS", "").lower() == "full"


def pick(fast, full):
    """``full`` in the full part of the suite, ``fast`` otherwise."""
    return full if FULL else fast


def snapshot(root: Path, ignore: Callable[[str], bool] = lambda rel: False) -> dict[str, str]:
    """``{relative POSIX path: sha256}`` of every file under ``root`` (or of ``root`` itself, a file);
    a missing path is ``{}``. Modes and timestamps are not part of it."""
    root = Path(root)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return {
        rel: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if not ignore(rel := p.relative_to(root).as_posix())
    }


def temp_leftovers(root: Path) -> list[Path]:
    """Entries under ``root`` named like the temporary files of retinaseg.core.fileio."""
    return sorted(p for p in Path(root).rglob(".*") if TEMP_NAME.match(p.name))


_PROGRESS_BAR = re.compile(r"^\s*\d+%\|")


def error_lines(stderr: str) -> list[str]:
    """Every line a command printed on stderr except its progress bar (tqdm redraws it with ``\\r``):
    its ``error:`` lines and the ``N of M files failed`` count, and anything else it should not
    have printed (a warning, a traceback), so a comparison with the expected lines catches those."""
    lines = (part.strip() for line in stderr.splitlines() for part in line.split("\r"))
    return [line for line in lines if line and not _PROGRESS_BAR.match(line)]


# ------------------------------------------------------------------------------- commands as processes

#: Capabilities that let root ignore permission bits (read any file, write any folder).
_DAC_CAPS = ("dac_override", "dac_read_search")


def _setpriv() -> list[str] | None:
    exe = shutil.which("setpriv")
    if exe is None:
        return None
    prefix = [exe, "--bounding-set", ",".join(f"-{c}" for c in _DAC_CAPS)]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else None


def unprivileged_prefix() -> list[str]:
    """A command prefix under which permission bits bind. An ordinary user needs none. Root (as in
    CI) keeps its uid but loses the two capabilities that override them (``setpriv
    --bounding-set``, util-linux): it then cannot read a mode-000 file or write a read-only folder,
    like anyone else. Skips, with the reason, when neither is possible."""
    if os.geteuid() != 0:
        return []
    prefix = _setpriv()
    if prefix is None:
        pytest.skip(
            "running as root and `setpriv --bounding-set -dac_override,-dac_read_search` is unavailable "
            "or not permitted here (no CAP_SETPCAP): root reads and writes whatever the permission bits say"
        )
    return prefix


def _limit_file_size(max_bytes: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec: a write past max_bytes fails with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (instead of the signal killing the process)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return apply


# ------------------------------------------------------------------------------- commands in-process

#: Linux capability numbers (linux/capability.h) and the capget/capset ABI, version 3.
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextlib.contextmanager
def permission_bits_bind() -> Iterator[None]:
    """In this thread, make permission bits bind root too: ``CAP_DAC_OVERRIDE`` and
    ``CAP_DAC_READ_SEARCH`` leave the effective set (capabilities are per thread) and come back at the
    end (they stay permitted). Nothing to do for an ordinary user. Skips when capset is refused."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip(f"capget failed (errno {ctypes.get_errno()}): cannot make root obey permission bits")
    saved = data[0].effective
    data[0].effective = saved & ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip(f"capset failed (errno {ctypes.get_errno()}): cannot make root obey permission bits")
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0, "could not restore the capabilities"


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[None]:
    """``RLIMIT_FSIZE`` lowered to ``max_bytes`` for this process (and raised back): a write past it
    fails with ``EFBIG`` (Python ignores ``SIGXFSZ``, so the signal does not kill the process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@dataclass
class Done:
    """What a command did: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def _stage_main(name: str) -> Callable[[list[str]], int]:
    from tests.conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(f"_fault_stage_{name}", REPO_ROOT / "stages" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_cli(
    args: list[str],
    cwd: Path | None = None,
    unprivileged: bool = False,
    max_file_bytes: int | None = None,
    process: bool = False,
) -> Done:
    """Run ``["retinaseg", ...]`` (the CLI) or ``["stage", <name>, ...]`` (a stage script) in this
    process (its ``main``, the output captured), or with ``process=True`` as its own process. The
    working folder is ``cwd``, by default an empty one (no params.yaml: the built-in values)."""
    cwd = cwd if cwd is not None else Path(tempfile.mkdtemp(prefix="retinaseg-fault-cwd-"))
    if process:
        done = run_command(args, cwd, unprivileged, max_file_bytes)
        return Done(done.returncode, done.stdout, done.stderr)
    from retinaseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if cwd is not None:
            stack.enter_context(contextlib.chdir(cwd))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        if unprivileged:
            stack.enter_context(permission_bits_bind())
        if max_file_bytes is not None:
            stack.enter_context(file_size_limit(max_file_bytes))
        try:
            code = main(args[1:]) if args[0] == "retinaseg" else _stage_main(args[1])(args[2:])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return Done(code, out.getvalue(), err.getvalue())


#: How the permission and file-size cases run: in this process (fast: the command's ``main``), and in
#: the full part also as a process of its own. One case of each family always runs both ways.
_PROCESS = pytest.param("process", marks=pytest.mark.slow)  # seconds of imports per process
HOWS = ["in-process", _PROCESS] if FULL else ["in-process"]
BOTH = ["in-process", _PROCESS]


# --------------------------------------------------------------------- one command, its own process


def run_command(
    args: list[str],
    cwd: Path | None = None,
    unprivileged: bool = False,
    max_file_bytes: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run ``args`` (``["retinaseg", ...]`` runs the CLI of this interpreter, ``["stage", name, ...]``
    the stage script) in its own process and return what it did."""
    if args[0] == "retinaseg":
        args = [sys.executable, "-m", "retinaseg.cli", *args[1:]]
    elif args[0] == "stage":
        from tests.conftest import REPO_ROOT

        args = [sys.executable, str(REPO_ROOT / "stages" / f"{args[1]}.py"), *args[2:]]
    prefix = unprivileged_prefix() if unprivileged else []
    return subprocess.run(
        [*prefix, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "GX_ANALYTICS_ENABLED": "false", **(env or {})},
        preexec_fn=_limit_file_size(max_file_bytes) if max_file_bytes is not None else None,
        check=False,
    )
