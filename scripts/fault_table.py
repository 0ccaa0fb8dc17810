"""Run the fault suite and write docs/faults.md: its cases by family, with the counts that passed.

    python scripts/fault_table.py          # the fast part (what CI runs)
    python scripts/fault_table.py --full   # the full part (RETINASEG_FAULTS=full, as `make test-faults`)

Runs ``pytest tests/faults tests/core/test_config_validation.py --junitxml=...`` and counts the
results of that run, so no number in the table is typed by hand. A family is one module of
tests/faults (its ``FAMILY`` string); the parameter loader's own cases (tests/core/
test_config_validation.py) are a row of their own. The server figures come from
reports/benchmarks/server_load.json (``python benchmarks/server_load.py``, 60 s). Exits 1 when a case
failed (the table is written all the same).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = "tests/faults"
LOADER_TESTS = "tests/core/test_config_validation.py"
LOADER_FAMILY = "Bad parameters: the loader itself (every key's range, the rules, fuzzed files)"
SERVER_REPORT = ROOT / "reports" / "benchmarks" / "server_load.json"
OUT = ROOT / "docs" / "faults.md"


@dataclass
class Counts:
    cases: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    xfailed: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, outcome: str, reason: str = "") -> None:
        self.cases += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        if reason and reason not in self.reasons:
            self.reasons.append(reason)


def family_of(module_path: Path) -> str:
    """The module's ``FAMILY = "..."`` (read, not imported: importing would load torch)."""
    for node in ast.parse(module_path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FAMILY" for t in node.targets):
            return ast.literal_eval(node.value)
    return module_path.stem


def outcome_of(case: ET.Element) -> tuple[str, str]:
    """(passed | failed | skipped | xfailed, the reason given) of one junit testcase."""
    for child in case:
        if child.tag in ("failure", "error"):
            return "failed", (child.get("message") or "").splitlines()[0][:200]
        if child.tag == "skipped":
            message = child.get("message") or ""
            if child.get("type") == "pytest.xfail":
                return "xfailed", message
            return "skipped", message
    return "passed", ""


def run_suite(full: bool, junit: Path) -> float:
    env = {**os.environ, "RETINASEG_FAULTS": "full" if full else "fast", "GX_ANALYTICS_ENABLED": "false"}
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            SUITE,
            LOADER_TESTS,
            "-q",
            "-p",
            "no:cacheprovider",
            "-rxXs",
            "-o",
            "junit_logging=system-out",  # the SIGKILL cases print where each kill landed
            f"--junitxml={junit}",
        ],
        cwd=ROOT,
        env=env,
        check=False,
    )
    return time.monotonic() - started


#: the line each SIGKILL case prints (tests/faults/test_sigkill.py): where the kill landed, what it left
KILL_LINE = re.compile(
    r"^(?P<stage>\S+) killed .*?; (?P<when>killed|it had finished); left behind: (?P<left>.*?); "
    r"dvc\.lock (?P<lock>intact|cut short[^;]*|rewritten); \.dvc/tmp/rwlock (?P<rwlock>corrupted|readable)",
    re.MULTILINE,
)


def kills(junit: Path) -> list[dict[str, str]]:
    """What every SIGKILL case printed about its kill."""
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        out = case.find("system-out")
        if out is not None and out.text:
            outcome = outcome_of(case)[0]
            cleanup = re.search(r"^cleanup: (.*)$", out.text, re.MULTILINE)
            found += [
                {**m.groupdict(), "outcome": outcome, "cleanup": cleanup.group(1) if cleanup else ""}
                for m in KILL_LINE.finditer(out.text)
            ]
    return found


def kill_section(found: list[dict[str, str]]) -> list[str]:
    if not found:
        return []
    during = sum(k["when"] == "killed" for k in found)
    left = sum(k["left"] != "nothing" for k in found)
    cut = sum(k["lock"].startswith("cut short") for k in found)
    rewritten = sum(k["lock"] == "rewritten" for k in found)
    rwlock = sum(k["rwlock"] == "corrupted" for k in found)
    stages = sorted({k["stage"] for k in found})
    same = sum(k["outcome"] == "passed" for k in found)
    by_rerun = sum(k["left"] != "nothing" and k["cleanup"] == "the rerun" for k in found)
    by_next = sum(k["cleanup"].startswith("the stage's next run") for k in found)
    return [
        "## What the kills hit",
        "",
        f"{len(found)} kills in {len(stages)} stages ({', '.join(stages)}): {during} landed while the stage "
        f"ran, {len(found) - during} just after it had finished. {left} left temporary files or folders of "
        f"ours behind: the rerun removed them {by_rerun} times; {by_next} times DVC found the stage up to "
        "date (the kill came before it touched its DVC outputs, e.g. while validate built its Data Docs) "
        "and the stage's next run removed them (and nothing else). "
        f"{same} of {len(found)} reruns ended with every output byte-identical to the uninterrupted run's, "
        "nothing of ours left behind, `dvc status` up to date and `git status` clean.",
        "",
        "Outside retinaseg, in DVC itself, which rewrites its own files in place: "
        f"{cut} kills cut `dvc.lock` short (the rerun re-ran every stage whose entry was lost), "
        f"{rewritten} left it rewritten, and {rwlock} corrupted `.dvc/tmp/rwlock`, after which every `dvc` "
        "command stops with `ERROR: Unable to read RWLock-file '.dvc/tmp/rwlock'. JSON structure is "
        "corrupted` until the file is removed (treeverse/dvc#7615; safe when no dvc process runs). The "
        "cases apply that remedy when DVC asks for it and count it here.",
        "",
    ]


def collect(junit: Path) -> tuple[dict[str, Counts], dict[str, dict[str, Counts]], dict[str, str]]:
    """Counts per family and per (family, test function); the module of each family."""
    families: dict[str, Counts] = defaultdict(Counts)
    tests: dict[str, dict[str, Counts]] = defaultdict(lambda: defaultdict(Counts))
    modules: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").split("::")[0]
        path = ROOT / (module.replace(".", "/") + ".py")
        rel = path.relative_to(ROOT).as_posix()
        family = LOADER_FAMILY if rel == LOADER_TESTS else family_of(path)
        modules[family] = rel
        outcome, reason = outcome_of(case)
        families[family].add(outcome, reason)
        tests[family][case.get("name", "").split("[")[0]].add(outcome, reason)
    return families, tests, modules


def server_section() -> list[str]:
    if not SERVER_REPORT.is_file():
        return ["(no reports/benchmarks/server_load.json: run `python benchmarks/server_load.py`)"]
    r = json.loads(SERVER_REPORT.read_text())
    c, load, big = r["config"], r["load"], r["big_request"]
    p50, p99 = load["latency_ok_ms"]["p50"], load["latency_ok_ms"]["p99"]
    lines = [
        f"From `{SERVER_REPORT.relative_to(ROOT).as_posix()}` (`python benchmarks/server_load.py`, "
        f"{c['clients']} clients for {c['seconds']:g} s, {c['image']} {c['format']} photographs, "
        f"concurrency {c['max_concurrency']}, queue {c['max_queue']}, {r['machine']['cpus']} CPUs, "
        f"an untrained {c['model']['base_channels']}-channel U-Net on the CPU):",
        "",
        "| requests | statuses | dropped | p50 (200s) | p99 (200s) | server RSS idle / peak | "
        "49 MP request: extra RSS | checks |",
        "|---|---|---|---|---|---|---|---|",
        f"| {load['requests']} | {', '.join(f'{k}: {v}' for k, v in load['statuses'].items())} | "
        f"{load['dropped']} | {p50:.0f} ms | {p99:.0f} ms | "
        f"{load['rss_idle_mb']:.0f} / {load['rss_peak_mb']:.0f} MB (limit {r['limits']['rss_gb']:g} GB) | "
        + (
            f"+{big['added_mb']:.0f} MB, HTTP {big['status']} in {big['latency_s']:.1f} s "
            f"(limit {r['limits']['big_added_gb']:g} GB)"
            if not big.get("skipped")
            else "skipped"
        )
        + f" | {'all passed' if r['passed'] else 'FAILED'} |",
    ]
    return lines


def render(families, tests, modules, full: bool, seconds: float, killed: list[dict[str, str]]) -> str:
    order = sorted(families, key=lambda f: (f == LOADER_FAMILY, modules[f]))
    total = Counts()
    for f in order:
        for key in ("cases", "passed", "failed", "skipped", "xfailed"):
            setattr(total, key, getattr(total, key) + getattr(families[f], key))
    mode = "full (`make test-faults`, RETINASEG_FAULTS=full)" if full else "fast (plain `pytest`, as in CI)"
    lines = [
        "# Faults we test",
        "",
        "<!-- Generated by scripts/fault_table.py from a real run; do not edit by hand. -->",
        "",
        "Every case puts retinaseg in front of bad input, a fault or a hostile client and asserts three "
        "things: the message (one line naming the file or key and the problem), the exit status, and that "
        "nothing written earlier was lost or changed (the output folder hashed before and after). The "
        "suite is tests/faults, one module per family; plain `pytest` runs its fast part (CI), "
        "`make test-faults` its full part (more kill points in every stage of the real three-model "
        "pipeline, more fuzz examples, a longer server load).",
        "",
        f"Run: {mode}, {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs"
        + (f", {seconds / 60:.1f} min." if seconds == seconds else "."),
        "",
        "| Family | Module | Cases | Passed | Failed | Skipped | Expected failures |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for f in order:
        c = families[f]
        lines.append(
            f"| {f} | `{modules[f]}` | {c.cases} | {c.passed} | {c.failed} | {c.skipped} | {c.xfailed} |"
        )
    lines.append(
        f"| **All** | | **{total.cases}** | **{total.passed}** | **{total.failed}** | {total.skipped} | "
        f"{total.xfailed} |"
    )
    lines += ["", "## Cases by test", ""]
    for f in order:
        lines.append(f"**{f}** (`{modules[f]}`)")
        lines.append("")
        for name, c in sorted(tests[f].items()):
            extra = (
                "" if c.passed == c.cases else f" ({c.failed} failed, {c.skipped} skipped, {c.xfailed} xfail)"
            )
            lines.append(f"- `{name}`: {c.passed} of {c.cases} passed{extra}")
        lines.append("")
    notes = [(f, r) for f in order for r in families[f].reasons]
    if notes:
        lines += ["## Skipped, expected to fail, or failed: the reasons given", ""]
        lines += [f"- {f}: {r}" for f, r in notes]
        lines.append("")
    lines += kill_section(killed)
    lines += ["## The server under load", "", *server_section(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full part (RETINASEG_FAULTS=full)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--junit", type=Path, default=None, help="keep pytest's junit report here")
    parser.add_argument(
        "--no-run", action="store_true", help="write the table from an earlier run's --junit report"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retinaseg-faults-") as tmp:
        junit = args.junit or Path(tmp) / "junit.xml"
        if args.no_run:
            if args.junit is None or not junit.is_file():
                print("error: --no-run needs the --junit report of an earlier run", file=sys.stderr)
                return 1
            seconds = float("nan")
        else:
            seconds = run_suite(args.full, junit)
        if not junit.is_file():
            print("error: pytest wrote no junit report", file=sys.stderr)
            return 1
        families, tests, modules = collect(junit)
        killed = kills(junit)
    args.out.write_text(render(families, tests, modules, args.full, seconds, killed))
    failed = sum(c.failed for c in families.values())
    total = sum(c.cases for c in families.values())
    print(f"{args.out}: {total} cases, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
