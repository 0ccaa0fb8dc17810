"""Segmenting image files into an output folder: what ``retinaseg predict`` runs.

Folder inputs are expanded **non-recursively**: the files directly inside the folder whose suffix is
one of :data:`retinaseg.data.io.IMAGE_SUFFIXES` (case-insensitive), in sorted order. Files named
explicitly are checked by content whatever their suffix (:mod:`retinaseg.inference.inputs`).

For each input ``<stem>.<ext>`` three PNGs are written to the output folder (atomically):
``<stem>_mask.png`` (0/255), ``<stem>_prob.png`` (probability x 255) and ``<stem>_overlay.png``
(vessels tinted on the image), plus ``predict_report.json`` listing the outputs and the errors.
The input folders are only read; an output folder equal to an input folder is refused.

A bad input (missing, empty, unreadable, corrupt, not an image, too many pixels) is an error entry
naming the file; the other inputs are still segmented. A failure to *write* an output (permission
denied, disk full, a folder where the file should be) stops the run: it raises the
:class:`~retinaseg.core.errors.WriteError` (an ``OSError``) naming the output file. Outputs already
written stay (each is complete: written atomically); the report is not written.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from retinaseg.core.errors import RetinasegError
from retinaseg.core.fileio import write_json, write_png
from retinaseg.data.io import IMAGE_SUFFIXES, ImageReadError, read_image
from retinaseg.inference.inputs import InputInfo, validate_input_file
from retinaseg.inference.loading import as_threshold_was_chosen, load_predictor
from retinaseg.inference.predictor import InferenceSettings, Segmentation, resolve_threshold

#: What predict writes per input ``<stem>.<ext>``: ``<stem>_<kind>.png``
#: (``retinaseg.evaluation.scoring`` recognises the same names).
OUTPUT_KINDS: tuple[str, ...] = ("mask", "prob", "overlay")
REPORT_NAME = "predict_report.json"


class PredictError(RetinasegError, ValueError):
    """Arguments ``predict_paths`` cannot work with (an output folder that is an input folder or a
    file, a threshold outside [0, 1], a batch size below 1)."""


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[dict[str, str]]]:
    """Files named directly, plus the image files (by suffix, sorted, non-recursive) inside named
    folders. Returns (files, errors) where errors are ``{"input", "error"}`` for missing paths and
    folders without images."""
    suffixes = {s.lower() for s in IMAGE_SUFFIXES}
    files: list[Path] = []
    errors: list[dict[str, str]] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            except OSError as exc:
                errors.append(
                    {"input": str(path), "error": f"{path}: cannot list the folder ({exc.strerror or exc})"}
                )
                continue
            if not found:
                errors.append(
                    {"input": str(path), "error": f"{path}: no image files ({' '.join(sorted(suffixes))})"}
                )
            candidates = found
        elif path.exists():
            candidates = [path]
        else:
            errors.append({"input": str(path), "error": f"{path}: no such file or folder"})
            candidates = []
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                files.append(candidate)
    return files, errors


def check_output_dir(inputs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Refuse an output folder that is an input folder or the folder of an input file (we never
    write beside the inputs); returns the output folder."""
    out = Path(out_dir)
    out_resolved = out.resolve()
    for raw in inputs:
        path = Path(raw)
        folder = path if path.is_dir() else path.parent
        if folder.exists() and folder.resolve() == out_resolved:
            raise PredictError(
                f"--out {out} is the input folder {folder}; choose another output folder "
                "(retinaseg predict never writes beside its inputs)"
            )
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} exists and is not a folder")
    return out


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """Where the three outputs for an input with this stem go."""
    return {kind: out_dir / f"{stem}_{kind}.png" for kind in OUTPUT_KINDS}


def _assign_stems(files: list[Path], errors: list[dict[str, str]]) -> list[tuple[Path, str]]:
    """Pair each file with its output stem; a second file with the same stem is an error (its
    outputs would overwrite the first's)."""
    owner: dict[str, Path] = {}
    kept: list[tuple[Path, str]] = []
    for path in files:
        stem = path.stem
        if stem in owner:
            errors.append(
                {
                    "input": str(path),
                    "error": f"{path}: its outputs ({stem}_*.png) would overwrite those of "
                    f"{owner[stem]}; rename one",
                }
            )
            continue
        owner[stem] = path
        kept.append((path, stem))
    return kept


_Item = tuple[Path, str, InputInfo]  # (input path, output stem, header facts)


def _batches(items: list[_Item], batch_size: int) -> list[list[_Item]]:
    """Consecutive batches of at most ``batch_size`` inputs. Inputs of any original size batch
    together: preprocessing makes every image ``preprocess.size`` square (the predictor maps each
    result back to its own size)."""
    step = max(1, batch_size)
    return [items[start : start + step] for start in range(0, len(items), step)]


def _write_outputs(paths: dict[str, Path], seg: Segmentation) -> None:
    # a failed write is a WriteError (an OSError) naming the output file (retinaseg.core.fileio)
    write_png(paths["mask"], seg.mask)
    write_png(paths["prob"], seg.prob_uint8())
    write_png(paths["overlay"], seg.overlay)


def predict_paths(
    inputs: Sequence[str | Path],
    model_ref: str | Path,
    out_dir: str | Path,
    threshold: float | None = None,
    tta: bool | None = None,
    device: str = "auto",
    batch_size: int = 4,
    settings: InferenceSettings | None = None,
    on_error: Callable[[str], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    tta_scales: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Segment every input image (files, or folders expanded non-recursively) and write
    ``<stem>_{mask,prob,overlay}.png`` into ``out_dir`` plus ``predict_report.json``.

    ``settings`` gives the tile size and overlap (default: params.yaml's ``evaluate`` values);
    ``batch_size`` overrides its own. ``tta`` (flip) and ``tta_scales``, when not given, are what
    a model package records its threshold was chosen with (``retinaseg model export``; only when
    ``threshold`` is not given either, since the threshold is then the package's), else no flips
    and ``settings.scales``; the report's ``tta_from`` says ``"model"`` when the package set either.
    A bad input (empty, corrupt, not an image, too many pixels) becomes an error entry naming the
    file and the problem, passed at once to ``on_error``; the other files are still processed.
    ``on_progress(done, total)`` follows the inputs. Raises ``ModelLoadError`` when the model cannot
    be loaded, ``PredictError`` when ``--out`` is an input folder or a file, the threshold is not in
    [0, 1] or ``batch_size`` < 1, and ``OSError`` (naming the output file) when an output cannot be
    written. Returns ``{"model", "threshold", "tta", "tta_scales", "tta_from", "tile_size",
    "tile_overlap", "device", "n_inputs", "n_ok", "n_failed", "outputs": [...], "errors": [...]}``.
    """
    out = check_output_dir(inputs, out_dir)
    if threshold is not None and not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        # a bad threshold fails before the model is loaded
        raise PredictError(f"threshold must be a finite number in [0, 1], got {threshold!r}")
    if batch_size < 1:
        raise PredictError(f"batch size must be at least 1, got {batch_size!r}")
    files, errors = expand_inputs(inputs)
    base = settings or InferenceSettings()
    settings = dataclasses.replace(base, batch_size=batch_size)  # keeps precision, channels-last
    predictor = load_predictor(model_ref, device, settings)
    if threshold is None:  # the model's threshold: its maps made as it was chosen, unless told otherwise
        predictor, from_model = as_threshold_was_chosen(predictor, model_ref, tta, tta_scales)
    else:  # a threshold given by hand: only the settings given
        scales = settings.scales if tta_scales is None else tuple(tta_scales)
        predictor, from_model = predictor.with_settings(tta=bool(tta), scales=scales), False
    settings = predictor.settings
    thr = predictor.threshold if threshold is None else resolve_threshold(threshold)
    report_error = on_error or (lambda message: None)
    done = 0

    def advance(n: int = 1) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done, len(files))

    def fail(path: Path, exc: Exception) -> None:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        errors.append({"input": str(path), "error": message})
        report_error(message)
        advance()

    named = _assign_stems(files, errors)
    for entry in errors:  # missing paths, empty folders, output-name collisions
        report_error(entry["error"])
    advance(len(files) - len(named))
    pending: list[_Item] = []
    for path, stem in named:
        try:
            pending.append((path, stem, validate_input_file(path)))
        except ImageReadError as exc:
            fail(path, exc)

    outputs: list[dict[str, Any]] = []
    for batch in _batches(pending, settings.batch_size):
        images, members = [], []
        for path, stem, info in batch:
            try:
                images.append(read_image(path))
                members.append((path, stem, info))
            except ImageReadError as exc:
                fail(path, exc)
            except OSError as exc:  # e.g. the file vanished or became unreadable since the check
                fail(path, ImageReadError(path, f"cannot read the file ({exc.strerror or exc})"))
        if not images:
            continue
        for (path, stem, info), seg in zip(members, predictor.segment(images, thr), strict=True):
            paths = output_paths(out, stem)
            _write_outputs(paths, seg)
            outputs.append(
                {
                    "input": str(path),
                    "width": info.width,
                    "height": info.height,
                    "vessel_fraction": round(seg.vessel_fraction, 6),
                    **{kind: str(p) for kind, p in paths.items()},
                }
            )
            advance()

    outputs.sort(key=lambda row: row["input"])
    report = {
        "model": str(model_ref),
        "model_name": getattr(predictor.card, "name", None),
        "threshold": thr,
        "tta": settings.tta,
        "tta_scales": list(settings.scales),
        "tta_from": "model" if from_model else "settings",
        "tile_size": settings.tile_size,
        "tile_overlap": settings.tile_overlap,
        "device": str(predictor.device),
        "n_inputs": len(outputs) + len(errors),
        "n_ok": len(outputs),
        "n_failed": len(errors),
        "outputs": outputs,
        "errors": errors,
    }
    write_json(out / REPORT_NAME, report)
    return report
