"""Dataset validation: scan a dataset, build its manifest, run the checks, write the report.

``validate_dataset`` never modifies anything under the data root. It writes ``manifest_path`` (the
kept pairs), ``<report_dir>/summary.json`` and Great Expectations Data Docs under
``<report_dir>/docs/``. Per-file decode checks come from :func:`retinaseg.data.manifest.build_manifest`;
the dataset-level checks run as a Great Expectations 1.x suite over the manifest table, and every
failed expectation's unexpected rows become :class:`Problem` s naming the file.

Checks (stable names; ``severity`` decides whether the dataset passes):

=====================  ========  ===================================================================
check                  severity  meaning
=====================  ========  ===================================================================
unreadable             error     truncated or corrupt image data
empty_file             error     a zero-byte file
not_an_image           error     a file that is not an image format we read
missing_file           error     a listed file that does not exist
image_without_mask     error     an image with no mask
mask_without_image     error     a mask with no image
mask_size_mismatch     error     mask size differs from its image
fov_size_mismatch      error     FOV mask size differs from its image
not_a_mask             error     more than ``validate.max_grey_fraction`` of the mask is grey
empty_mask             error     the mask has no vessel pixels (after binarising at 127)
constant_image         error     every pixel of the image has the same value
duplicate_id           error     two pairs share one id
empty_image            error     width or height is zero
missing_path           error     a manifest row without an image or mask path
grey_edges             warning   some grey (interpolated) mask pixels, within the limit: binarised
duplicate_content      warning   two ids whose image files are byte-identical (same sha256)
alpha_channel          warning   an RGBA / LA file (alpha is dropped)
16bit                  warning   a 16-bit file (scaled to 8 bits)
second_mask_unusable   warning   a second observer's mask that cannot be read or whose size differs
                                 from its image: left out (``data.train_labels: union`` then uses
                                 the first observer's mask alone for that image)
size_outlier           warning   the pair's size differs from the dataset's most common size (for a
                                 multi dataset: its part's most common size)
no_pairs               error     the scan found no pairs at all (file ``.``)
=====================  ========  ===================================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from retinaseg.core.config import DataPartParams, ValidateParams
from retinaseg.core.fileio import atomic_dir, write_json, write_text
from retinaseg.data.manifest import DATASET_COLUMN, Problem, build_manifest, is_multi, written_columns
from retinaseg.data.offline_docs import make_docs_offline
from retinaseg.data.sources import scan_source

__all__ = [
    "CHECKS",
    "Finding",
    "Problem",
    "ValidationResult",
    "findings",
    "run_expectation_suite",
    "validate_dataset",
]

CHECKS: dict[str, str] = {
    "unreadable": "error",
    "empty_file": "error",
    "not_an_image": "error",
    "missing_file": "error",
    "image_without_mask": "error",
    "mask_without_image": "error",
    "mask_size_mismatch": "error",
    "fov_size_mismatch": "error",
    "not_a_mask": "error",
    "empty_mask": "error",
    "constant_image": "error",
    "duplicate_id": "error",
    "empty_image": "error",
    "missing_path": "error",
    "grey_edges": "warning",
    "duplicate_content": "warning",
    "alpha_channel": "warning",
    "16bit": "warning",
    "second_mask_unusable": "warning",
    "size_outlier": "warning",
    "no_pairs": "error",
}

_DOCS_SITE = "retinaseg"


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_dataset`. ``manifest`` holds the kept pairs."""

    success: bool
    n_pairs: int
    problems: list[Problem]
    manifest: pd.DataFrame = field(repr=False)
    excluded: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


@dataclass(frozen=True)
class _Rule:
    """One expectation of the suite and how its failures become problems."""

    check: str
    file_column: str
    message: Callable[[pd.Series], str]
    build: Callable[[], Any]  # → a gx expectation


def _rules(frame: pd.DataFrame, params: ValidateParams) -> list[_Rule]:
    import great_expectations as gx  # seconds to import: only when the suite runs (CHECKS etc. do not)

    e = gx.expectations
    max_grey = params.max_grey_fraction
    rules = [
        _Rule(
            "missing_path",
            "id",
            lambda r: "no image path",
            lambda: e.ExpectColumnValuesToNotBeNull(column="image_path"),
        ),
        _Rule(
            "missing_path",
            "id",
            lambda r: "no mask path",
            lambda: e.ExpectColumnValuesToNotBeNull(column="mask_path"),
        ),
        _Rule(
            "empty_image",
            "image_path",
            lambda r: f"image is {r['width']}×{r['height']}",
            lambda: e.ExpectColumnValuesToBeBetween(column="width", min_value=1),
        ),
        _Rule(
            "empty_image",
            "image_path",
            lambda r: f"image is {r['width']}×{r['height']}",
            lambda: e.ExpectColumnValuesToBeBetween(column="height", min_value=1),
        ),
        _Rule(
            "duplicate_id",
            "image_path",
            lambda r: f"id {r['id']!r} is used by more than one pair",
            lambda: e.ExpectColumnValuesToBeUnique(column="id"),
        ),
        _Rule(
            "constant_image",
            "image_path",
            lambda r: "every pixel has the same value",
            lambda: e.ExpectColumnValuesToBeBetween(column="image_range", min_value=0, strict_min=True),
        ),
        _Rule(
            "not_a_mask",
            "mask_path",
            lambda r: (
                f"{r['mask_grey_fraction']:.1%} of pixels are grey (limit {max_grey:.1%}): not a binary mask"
            ),
            lambda: e.ExpectColumnValuesToBeBetween(
                column="mask_grey_fraction", min_value=0, max_value=max_grey
            ),
        ),
        _Rule(
            "empty_mask",
            "mask_path",
            lambda r: "no vessel pixels (nothing above 127)",
            lambda: e.ExpectColumnValuesToBeBetween(column="vessel_fraction", min_value=0, strict_min=True),
        ),
        _Rule(
            "grey_edges",
            "mask_path",
            lambda r: f"{r['mask_grey_fraction']:.2%} grey (interpolated) pixels; binarised at 127",
            # rows above the not-a-mask limit are reported as not_a_mask instead (see _translate)
            lambda: e.ExpectColumnValuesToBeBetween(column="mask_grey_fraction", min_value=0, max_value=0),
        ),
        _Rule(
            "duplicate_content",
            "image_path",
            lambda r: f"byte-identical to another id's image (sha256 {r['sha256'][:12]}…)",
            lambda: e.ExpectColumnValuesToBeUnique(column="sha256"),
        ),
    ]
    if params.size_outlier_warn and len(frame) and is_multi(frame):
        # parts come from different cameras: a size is an outlier within its own part
        rules.append(
            _Rule(
                "size_outlier",
                "image_path",
                lambda r: (
                    f"size {r['size']} differs from the most common size {r['usual_size']} "
                    f"of its part {r[DATASET_COLUMN]!r}"
                ),
                lambda: e.ExpectColumnPairValuesToBeEqual(column_A="size", column_B="usual_size"),
            )
        )
    elif params.size_outlier_warn and len(frame):
        common = frame["size"].mode().sort_values().iloc[0]
        rules.append(
            _Rule(
                "size_outlier",
                "image_path",
                lambda r: f"size {r['size']} differs from the dataset's most common size {common}",
                lambda: e.ExpectColumnValuesToBeInSet(column="size", value_set=[common]),
            )
        )
    return rules


def _ephemeral_context(docs_dir: Path):
    """One ephemeral GX context whose only Data Docs site is a folder at ``docs_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # must be set before GX is first imported
    import great_expectations as gx  # seconds to import: only when the suite runs
    from great_expectations.data_context.types.base import ProgressBarsConfig  # (same)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        _DOCS_SITE,
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    return context


def run_expectation_suite(frame: pd.DataFrame, params: ValidateParams, docs_dir: Path) -> list[Problem]:
    """Run the dataset-level checks as a GX suite over ``frame``; Data Docs go to ``docs_dir``.

    ``frame`` is :func:`build_manifest`'s table (with ``image_range``). Returns one problem per
    unexpected row of every failed expectation.
    """
    import great_expectations as gx  # seconds to import: only when the suite runs

    frame = frame.reset_index(drop=True).copy()
    frame["size"] = frame["width"].astype(str) + "x" + frame["height"].astype(str)
    if is_multi(frame):  # each part's most common size (the first in sort order on a tie)
        usual = frame.groupby(DATASET_COLUMN)["size"].agg(lambda s: s.mode().sort_values().iloc[0])
        frame["usual_size"] = frame[DATASET_COLUMN].map(usual)
    context = _ephemeral_context(docs_dir)
    batch = (
        context.data_sources.add_pandas("dataset")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("all_pairs")
    )
    rules = _rules(frame, params)
    suite = context.suites.add(gx.ExpectationSuite(name="retinaseg_dataset"))
    for number, rule in enumerate(rules):
        expectation = rule.build()
        expectation.meta = {"rule": number, "check": rule.check, "severity": CHECKS[rule.check]}
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="retinaseg_dataset", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="retinaseg_validate",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[_DOCS_SITE])],
            result_format={"result_format": "COMPLETE"},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    problems: list[Problem] = []
    for run_result in outcome.run_results.values():
        for result in run_result.results:
            if not result.success:
                problems += _translate(result, frame, rules, params)
    return problems


def _translate(result: Any, frame: pd.DataFrame, rules: list[_Rule], params: ValidateParams) -> list[Problem]:
    """Problems for the unexpected rows of one failed expectation."""
    rule = rules[int(result.expectation_config.meta["rule"])]
    check = rule.check
    indices = result.result.get("unexpected_index_list") or []
    problems = []
    for index in indices:
        row = frame.loc[int(index)]
        if check == "grey_edges" and row["mask_grey_fraction"] > params.max_grey_fraction:
            continue
        file = row[rule.file_column] if isinstance(row[rule.file_column], str) else str(row["id"])
        problems.append(Problem(file, check, CHECKS[check], rule.message(row)))
    return problems


def _ids_with_errors(frame: pd.DataFrame, problems: list[Problem]) -> set[str]:
    """Ids of pairs that any error names (by image, mask or FOV path)."""
    error_files = {p.file for p in problems if p.severity == "error"}
    bad = set()
    for row in frame.itertuples(index=False):
        if {row.image_path, row.mask_path, row.fov_path} & error_files:
            bad.add(row.id)
    return bad


def _build_docs(frame: pd.DataFrame, params: ValidateParams, docs_dir: Path) -> list[Problem]:
    """Run the suite with Data Docs built in a temporary folder, then swapped into ``docs_dir``."""
    with atomic_dir(docs_dir) as tmp:
        problems = run_expectation_suite(frame, params, tmp)
        offline = make_docs_offline(tmp)  # GX's pages load their scripts from CDNs: use vendored copies
        problems += [Problem("docs", "data_docs_offline", "warning", line) for line in offline.lines()]
        return problems


def _sort_problems(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.severity != "error", p.file, p.check, p.message))


def validate_dataset(
    source: str,
    root: str | Path,
    params: ValidateParams,
    manifest_path: str | Path,
    report_dir: str | Path,
    parts: Sequence[DataPartParams] = (),
) -> ValidationResult:
    """Validate dataset ``source`` at ``root``; write the manifest, summary.json and Data Docs.

    ``parts`` (``data.parts``) are the datasets of ``source`` ``multi``; its manifest has a
    ``dataset`` column (the part's name) after ``id``, and the summary counts the pairs per part.

    ``params.on_error == "fail"``: success only without errors; the manifest is written only on
    success (a failed run leaves the previous manifest alone). ``"exclude"``: pairs named by an error
    are dropped (listed as ``excluded``) and the run succeeds when at least one pair remains.
    """
    root, report_dir, manifest_path = Path(root), Path(report_dir), Path(manifest_path)
    scan = scan_source(source, root, parts)
    frame, problems = build_manifest(scan)
    problems += _build_docs(frame, params, report_dir / "docs")
    if frame.empty:
        problems.append(Problem(".", "no_pairs", "error", f"no image/mask pairs found for source {source!r}"))
    problems = _sort_problems(problems)
    bad_ids = _ids_with_errors(frame, problems)
    kept = frame[~frame["id"].isin(bad_ids)].reset_index(drop=True)
    has_errors = any(p.severity == "error" for p in problems)
    success = (not has_errors) if params.on_error == "fail" else len(kept) > 0
    excluded = sorted(bad_ids) if params.on_error == "exclude" else []
    result = ValidationResult(success, len(kept), problems, kept[written_columns(frame)], excluded)
    if success:
        write_text(manifest_path, result.manifest.to_csv(index=False))
    write_json(report_dir / "summary.json", _summary(result, source, root, params))
    return result


def _summary(result: ValidationResult, source: str, root: Path, params: ValidateParams) -> dict[str, Any]:
    summary = {
        "success": result.success,
        "n_pairs": result.n_pairs,
        "n_errors": len(result.errors),
        "n_warnings": len(result.warnings),
        "n_excluded": len(result.excluded),
        "excluded": result.excluded,
        "source": source,
        "root": root.as_posix(),
        "on_error": params.on_error,
        "problems": [p.to_dict() for p in result.problems],
    }
    if DATASET_COLUMN in result.manifest.columns:  # a multi dataset: the kept pairs of each part
        summary["n_pairs_per_part"] = {
            str(name): int(n)
            for name, n in result.manifest[DATASET_COLUMN].value_counts().sort_index().items()
        }
    return summary


# ---------------------------------------------------------------------------------- what to print

#: how many file names a finding shows; the report (summary.json) lists every one
FINDING_FILES_SHOWN = 3


@dataclass(frozen=True)
class Finding:
    """One kind of problem (a check at a severity) and the files it was found in."""

    severity: str
    check: str
    files: tuple[str, ...]
    example: str  # the message of the first file

    def line(self, show: int = FINDING_FILES_SHOWN) -> str:
        """One line: a single file reads like :meth:`Problem.line`; several are counted, the first
        ``show`` named: ``WARNING  grey_edges: 100 files (a.png, b.png, c.png, +97 more), e.g. a.png: …``."""
        head = self.severity.upper()
        if len(self.files) == 1:
            return f"{head}  {self.files[0]}: {self.check}: {self.example}"
        named = ", ".join(self.files[:show])
        more = f", +{len(self.files) - show} more" if len(self.files) > show else ""
        return (
            f"{head}  {self.check}: {len(self.files)} files ({named}{more}), "
            f"e.g. {self.files[0]}: {self.example}"
        )


def findings(problems: Sequence[Problem]) -> list[Finding]:
    """The problems grouped by (severity, check), errors first, in the order of the sorted problems;
    for a short summary on the terminal (the report keeps the full list)."""
    groups: dict[tuple[str, str], list[Problem]] = {}
    for problem in _sort_problems(list(problems)):
        groups.setdefault((problem.severity, problem.check), []).append(problem)
    return [
        Finding(severity, check, tuple(p.file for p in group), group[0].message)
        for (severity, check), group in groups.items()
    ]
