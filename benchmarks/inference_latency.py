"""Inference latency: milliseconds per image for each trained model in ``models/``.

For every model and device (CPU, and CUDA when present) it times

* ``forward``: the network alone on an N x 3 x H x W batch at 512 x 512 and at DRIVE's native
  584 x 565 (H x W), batch 1 and batched, channels-last off and on, fp32, plus autocast mixed
  precision on CUDA;
* ``end_to_end``: what ``retinaseg predict`` does for one 584 x 565 image with the model's own
  preprocessing (resize/pad to ``preprocess.size``, forward, sigmoid, restore the original size),
  via the one inference API, :class:`retinaseg.inference.predictor.Predictor`, with params.yaml's
  tile size and overlap: contiguous, channels-last, and channels-last with the batch norms folded
  into the convolutions (predict's default), fp32 and (CUDA) the default mixed precision;
* ``tiler``: one 1024 x 1024 image in 512-pixel tiles (overlap 0.25, 4 tiles per forward pass,
  Gaussian blending, fp32) through the project's sliding window and through MONAI's
  ``sliding_window_inference``: the time of each and the largest difference between their maps.

Warm-up runs are excluded; each figure is the median of ``--repeats`` timed runs. Prints a Markdown
table and writes ``reports/benchmarks/inference.json`` (with torch version, threads, device names).

    python benchmarks/inference_latency.py               # models/<name>/ (trained)
    python benchmarks/inference_latency.py --random-init # freshly built, params.yaml widths
    python benchmarks/inference_latency.py --quick       # smoke test: tiny sizes, few repeats
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retinaseg.core.config import MODEL_NAMES, ConfigError, Params, load_params
from retinaseg.core.fileio import write_json
from retinaseg.inference.predictor import (
    InferenceSettings,
    Predictor,
    autocast_dtype,
    prepare_model,
    sliding_window_probs,
)
from retinaseg.models.factory import build_model
from retinaseg.models.saved import ModelCard, load_model_dir, local_model_dirs

DRIVE_HW = (584, 565)
SQUARE_HW = (512, 512)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def discover_models(models_dir: Path, device: torch.device) -> list[tuple[str, torch.nn.Module, Any]]:
    """(name, model, card) for every ``models/<name>`` directory holding model.json + model.pt."""
    found = []
    for path in local_model_dirs(models_dir):
        model, card = load_model_dir(path, device)
        found.append((path.name, model, card))
    return found


def random_init_models(
    params_path: Path, names: list[str], device: torch.device
) -> list[tuple[str, Any, Any]]:
    """Freshly built models at params.yaml's widths (random weights); their cards carry its preprocess."""
    params = load_params(params_path)
    found = []
    for name in names:
        torch.manual_seed(params.base.seed)
        model = build_model(name, params.model_params(name)).to(device).eval()
        card = ModelCard(
            name=name,
            model_params=params.model_params(name),
            preprocess=dataclasses.asdict(params.preprocess),
        )
        found.append((name, model, card))
    return found


def _amp_label(device: torch.device, precision: str = "auto") -> str:
    dtype = autocast_dtype(device, precision)
    return "fp32" if dtype is None else f"amp-{str(dtype)[6:]}"


def _precisions(device: torch.device, cpu_bf16: bool) -> list[str]:
    """fp32 and predict's default mixed precision on CUDA; fp32 (and bf16 autocast if asked) elsewhere."""
    if device.type == "cuda":
        return ["fp32", "auto"]
    return ["fp32", "bf16"] if cpu_bf16 else ["fp32"]


def forward_rows(
    name: str,
    model: torch.nn.Module,
    device: torch.device,
    sizes: list[tuple[int, int]],
    batches: list[int],
    warmup: int,
    repeats: int,
    cpu_bf16: bool = False,
) -> list[dict[str, Any]]:
    """Network-only timings over sizes x batch sizes x channels-last off/on x precisions."""
    rows = []
    precisions = _precisions(device, cpu_bf16)
    generator = torch.Generator().manual_seed(0)
    for h, w in sizes:
        for batch in batches:
            x0 = torch.randn(batch, 3, h, w, generator=generator).to(device)
            for channels_last in (False, True):
                prepare_model(model, device, channels_last)
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                x = x0.contiguous(memory_format=fmt)
                for precision in precisions:
                    dtype = autocast_dtype(device, precision)

                    def run(x: torch.Tensor = x, dtype: torch.dtype | None = dtype) -> None:
                        with (
                            torch.inference_mode(),
                            torch.autocast(device.type, dtype, enabled=dtype is not None),
                        ):
                            model(x)

                    ms = median_ms(run, device, warmup, repeats)
                    rows.append(
                        {
                            "model": name,
                            "kind": "forward",
                            "device": device.type,
                            "height": h,
                            "width": w,
                            "batch": batch,
                            "channels_last": channels_last,
                            "precision": _amp_label(device, precision),
                            "ms_per_batch": round(ms, 2),
                            "ms_per_image": round(ms / batch, 2),
                        }
                    )
    return rows


def tiler_rows(
    name: str, model: torch.nn.Module, device: torch.device, side: int, warmup: int, repeats: int
) -> list[dict[str, Any]]:
    """The project's sliding window against MONAI's on one ``side``² image in ``side // 2`` tiles."""
    from monai.inferers import sliding_window_inference

    tile, overlap, tile_batch = side // 2, 0.25, 4
    prepare_model(model, device, channels_last=True)
    image = torch.randn(3, side, side, generator=torch.Generator().manual_seed(1)).to(device)

    def own() -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_probs(model, image, tile, overlap, False, tile_batch, "fp32", True)

    def probs(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(x.contiguous(memory_format=torch.channels_last)).float())

    def monai() -> torch.Tensor:
        with torch.inference_mode():
            out = sliding_window_inference(
                image[None],
                (tile, tile),
                tile_batch,
                probs,
                overlap=overlap,
                mode="gaussian",
                sigma_scale=0.125,
            )
            return out[0, 0]

    diff = (own() - monai()).abs()
    rows = []
    for tiler, fn in (("own", own), ("monai", monai)):
        ms = median_ms(fn, device, warmup, repeats)
        rows.append(
            {
                "model": name,
                "kind": "tiler",
                "tiler": tiler,
                "device": device.type,
                "height": side,
                "width": side,
                "tile": tile,
                "overlap": overlap,
                "batch": tile_batch,
                "channels_last": True,
                "precision": "fp32",
                "ms_per_batch": round(ms, 2),
                "ms_per_image": round(ms, 2),
                "max_abs_diff_own_vs_monai": round(float(diff.max()), 6),
                "mean_abs_diff_own_vs_monai": round(float(diff.mean()), 7),
            }
        )
    return rows


def end_to_end_row(
    name: str,
    model: torch.nn.Module,
    card: Any,
    device: torch.device,
    hw: tuple[int, int],
    warmup: int,
    repeats: int,
    settings: InferenceSettings | None = None,
) -> dict[str, Any]:
    """What ``retinaseg predict`` costs for one image of size ``hw`` (model's own preprocessing)."""
    settings = settings or InferenceSettings()
    predictor = Predictor.from_card(model, card, device, settings)
    pre = predictor.preprocess
    image = np.random.default_rng(0).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    ms = median_ms(lambda: predictor.probabilities([image]), device, warmup, repeats)
    return {
        "model": name,
        "kind": "end_to_end",
        "device": device.type,
        "height": hw[0],
        "width": hw[1],
        "batch": 1,
        "channels_last": settings.channels_last,
        "fold_batch_norm": settings.fold_batch_norm,
        "precision": _amp_label(device, settings.precision),
        "preprocess_size": pre.size,
        "ms_per_batch": round(ms, 2),
        "ms_per_image": round(ms, 2),
    }


def e2e_variants(
    settings: InferenceSettings, device: torch.device, cpu_bf16: bool = False
) -> list[InferenceSettings]:
    """predict's settings: contiguous with the batch norms kept (how predict ran before either became
    the default), channels-last with them kept, and channels-last with them folded (predict's default
    now), each in fp32 and, on CUDA, the default mixed precision."""
    precisions = _precisions(device, cpu_bf16)
    return [
        dataclasses.replace(settings, channels_last=cl, fold_batch_norm=fold, precision=precision)
        for cl, fold in ((False, False), (True, False), (True, True))
        for precision in precisions
    ]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    header = "| model | kind | device | input (HxW) | batch | channels-last | precision | ms/image |"
    lines = [header, "|---|---|---|---|---:|---|---|---:|"]
    for r in rows:
        size = f"{r['height']}x{r['width']}"
        kind = r["kind"]
        if kind == "end_to_end":
            size += f" -> {r['preprocess_size']}"
            kind += ", BN folded" if r["fold_batch_norm"] else ", BN kept"
        if kind == "tiler":
            kind = f"tiler {r['tiler']} (max diff {r['max_abs_diff_own_vs_monai']:.1e})"
            size += f" / {r['tile']}"
        lines.append(
            f"| {r['model']} | {kind} | {r['device']} | {size} | {r['batch']} | "
            f"{'on' if r['channels_last'] else 'off'} | {r['precision']} | {r['ms_per_image']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--random-init", action="store_true", help="benchmark freshly built models instead")
    parser.add_argument(
        "--model", action="append", default=None, help="with --random-init: which models (default: all three)"
    )
    parser.add_argument(
        "--devices", default="auto", help="comma list of cpu,cuda; auto = cpu + cuda if present"
    )
    parser.add_argument("--batch", type=int, default=4, help="the batched case's batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 64 px inputs, 1 warm-up, 2 repeats (--random-init: unet only)",
    )
    parser.add_argument(
        "--cpu-bf16", action="store_true", help="also time bf16 autocast on the CPU (AMX CPUs run it fast)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/inference.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.devices == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(d.strip()) for d in args.devices.split(",") if d.strip()]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        print("error: --devices asks for cuda but no CUDA device is available", file=sys.stderr)
        return 2
    sizes = [(64, 64), (72, 60)] if args.quick else [SQUARE_HW, DRIVE_HW]
    e2e_hw = sizes[1]
    warmup, repeats = (1, 2) if args.quick else (args.warmup, args.repeats)
    batches = sorted({1, max(1, args.batch)})
    try:  # predict's tile size and overlap: params.yaml's evaluate group (built-in values without one)
        params = load_params(args.params) if args.params.is_file() else Params()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = InferenceSettings.from_params(params.evaluate, tta=False)

    rows: list[dict[str, Any]] = []
    for device in devices:
        try:
            if args.random_init:
                names = args.model or (["unet"] if args.quick else list(MODEL_NAMES))
                models = random_init_models(args.params, names, device)
            else:
                models = discover_models(args.models_dir, device)
        except (ConfigError, ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not models:
            print(
                f"error: no trained models in {args.models_dir}/ (model.json + model.pt); "
                "run `dvc repro` first, or pass --random-init",
                file=sys.stderr,
            )
            return 2
        for name, model, card in models:
            rows.extend(forward_rows(name, model, device, sizes, batches, warmup, repeats, args.cpu_bf16))
            for variant in e2e_variants(settings, device, args.cpu_bf16):
                rows.append(end_to_end_row(name, model, card, device, e2e_hw, warmup, repeats, variant))
            rows.extend(tiler_rows(name, model, device, 96 if args.quick else 1024, warmup, repeats))
            print(f"  timed {name} on {device.type}", file=sys.stderr)

    report = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "devices": [d.type for d in devices],
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "random_init": args.random_init,
        "quick": args.quick,
        "warmup": warmup,
        "repeats": repeats,
        "statistic": "median",
        "rows": rows,
    }
    write_json(args.out, report)
    print(markdown_table(rows))
    print(f"\nwrote {args.out} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
