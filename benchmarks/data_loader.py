"""Data-loader throughput against the model's bare training step: is the input pipeline fast enough?

On a synthetic processed split (``benchmarks/synthetic_split.py``; DRIVE-sized by default: 20 images of
584², random 192 px crops, batch 4: the drive-cpu recipe) or on ``--processed DIR`` (a processed
split such as ``data/processed/train``), it measures

* ``loader``: images/s the training DataLoader delivers, built as the engine builds it
  (:func:`retinaseg.training.engine.build_train_dataset` and ``_build_data``: per-item PNG decoding,
  the decoded-image cache of ``base.cache_mb``, albumentations in the workers, persistent workers,
  prefetch), for ``--workers`` 0, 1, 2 (first batch excluded: worker start; the median over
  ``--epochs``, so with the cache on, an epoch that decodes is weighed against ones that do not);
* ``bare_step``: images/s of the model's training step (forward, loss, backward, AdamW) on in-memory
  tensors of the same shape, on the device (``--device``: auto = CUDA when present);
* ``ratio`` = loader ÷ bare step: ≥ 1 means the pipeline keeps up. ``stall_share``, the share of the
  time the step would wait for data: with workers (loading overlaps the step) ``1 - min(1, ratio)``;
  with 0 workers (they alternate) ``loading time ÷ (loading time + step time)``;
* ``augment``: the augmentation alone, albumentations per image on one CPU core (decoded images in
  memory) against kornia on a batch on the device (the same kinds of transform: crop, flips, rot90,
  affine, brightness/contrast, gamma, applied to image and masks), images/s.

Prints a table and writes ``reports/benchmarks/data_loader.json``. ``--quick``: a smoke run (6 images
of 96², crops of 64, workers 0 and 1).

    python benchmarks/data_loader.py
    python benchmarks/data_loader.py --processed data/processed/train --crop 192
    python benchmarks/data_loader.py --quick
    python benchmarks/data_loader.py --cache-mb 0   # every item decodes its image (no cache)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_split import write_split  # noqa: E402

from retinaseg.core.config import Params, load_params  # noqa: E402
from retinaseg.core.fileio import write_json  # noqa: E402
from retinaseg.data.dataset import VesselDataset  # noqa: E402
from retinaseg.data.transforms import apply_train_transform, build_train_transform  # noqa: E402
from retinaseg.models.factory import build_model  # noqa: E402
from retinaseg.training.distributed import DistInfo  # noqa: E402
from retinaseg.training.engine import _build_data, build_train_dataset, use_channels_last  # noqa: E402
from retinaseg.training.losses import build_loss  # noqa: E402

DEFAULT_OUT = Path("reports/benchmarks/data_loader.json")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_params(args: argparse.Namespace, size: int, workers: int) -> Params:
    return load_params(
        args.params,
        {
            "base.device": "cpu",
            "base.workers": workers,
            "preprocess.size": size,
            "augment.crop_size": args.crop,
            "train.batch_size": args.batch,
            "train.samples_per_epoch": args.samples,
            "models.unet.base_channels": args.base_channels,
            "models.unet.depth": args.depth,
            **({} if args.cache_mb is None else {"base.cache_mb": args.cache_mb}),
        },
    )


def loader_rate(
    args: argparse.Namespace, split: Path, size: int, workers: int, device: torch.device
) -> float:
    """Images/s the engine's training loader delivers with ``workers`` workers (first batch excluded)."""
    params = make_params(args, size, workers)
    train = build_train_dataset(params, split, workers)  # the engine's: augmentation, length, cache
    data = _build_data(params, train, train, "-", device, DistInfo())
    rates = []
    for epoch in range(1, args.epochs + 1):
        data.sampler.set_epoch(epoch)
        it = iter(data.train_loader)
        next(it)  # worker start-up (first epoch) and the first batch
        start, images = time.perf_counter(), 0
        for batch in it:
            images += len(batch["image"])
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def bare_step_rate(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of the U-Net training step on in-memory tensors (median over ``--steps``)."""
    params = make_params(args, max(args.crop, 64), 0)
    torch.manual_seed(0)
    model = build_model("unet", params.model_params("unet")).to(device).train()
    cl = use_channels_last(device, params.train.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = build_loss(params.train.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.crop, args.crop, device=device).contiguous(memory_format=fmt)
    y = (torch.rand(args.batch, 1, args.crop, args.crop, device=device) > 0.9).float()
    amp = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            logits = model(x)
        build = loss_fn(logits.float(), y, weight=torch.ones_like(y))
        build.backward()
        optimizer.step()

    step()
    _sync(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times)


def albumentations_rate(args: argparse.Namespace, split: Path, size: int, n: int = 32) -> float:
    """Images/s of the albumentations pipeline alone, one process, decoded images in memory."""
    params = make_params(args, size, 0)
    transform = build_train_transform(params.augment, seed=0)
    ds = VesselDataset(split)
    samples = [ds.load(k % ds.n_images) for k in range(min(n, ds.n_images))]
    start = time.perf_counter()
    for k in range(n):
        apply_train_transform(transform, *samples[k % len(samples)])
    return n / (time.perf_counter() - start)


def kornia_rate(args: argparse.Namespace, split: Path, size: int, device: torch.device, n: int = 32) -> float:
    """Images/s of an equivalent kornia pipeline on a batch on ``device`` (image and two masks)."""
    import kornia.augmentation as K

    params = make_params(args, size, 0).augment
    crop = args.crop if args.crop > 0 else size
    pipeline = K.AugmentationSequential(
        K.RandomCrop((crop, crop)),
        K.RandomHorizontalFlip(p=params.hflip),
        K.RandomVerticalFlip(p=params.vflip),
        K.RandomRotation90(times=(0, 3), p=params.rot90),
        K.RandomAffine(
            degrees=params.rotate_limit, scale=(1 - params.scale_limit, 1 + params.scale_limit), p=0.5
        ),
        K.ColorJitter(brightness=params.brightness_contrast, contrast=params.brightness_contrast, p=0.5),
        K.RandomGamma(gamma=(1 - params.gamma, 1 + params.gamma), p=0.5),
        data_keys=["input", "mask", "mask"],
    ).to(device)
    ds = VesselDataset(split)
    loaded = [ds.load(k % ds.n_images) for k in range(args.batch)]
    image = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a, _, _ in loaded]).to(device).float() / 255
    mask = torch.stack([torch.from_numpy(m)[None] for _, m, _ in loaded]).to(device).float()
    fov = torch.stack([torch.from_numpy(f)[None] for _, _, f in loaded]).to(device).float()
    pipeline(image, mask, fov)  # warm-up
    _sync(device)
    batches = max(1, n // args.batch)
    start = time.perf_counter()
    for _ in range(batches):
        pipeline(image, mask, fov)
    _sync(device)
    return batches * args.batch / (time.perf_counter() - start)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processed", type=Path, default=None, help="a processed split folder (else synthetic)")
    p.add_argument("--n", type=int, default=20, help="synthetic images")
    p.add_argument("--size", type=int, default=584, help="synthetic image side")
    p.add_argument("--crop", type=int, default=192, help="augment.crop_size")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--samples", type=int, default=64, help="items per epoch (train.samples_per_epoch)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per worker count (median)")
    p.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts")
    p.add_argument("--base-channels", type=int, default=16, help="U-Net width of the bare step")
    p.add_argument("--depth", type=int, default=3, help="U-Net depth of the bare step")
    p.add_argument("--steps", type=int, default=5, help="timed bare steps (median)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: default)")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument(
        "--cache-mb", type=int, default=None, help="base.cache_mb (default: params.yaml's; 0: no cache)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 6 images of 96², crops of 64")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.size, args.crop, args.samples, args.epochs, args.steps = 6, 96, 64, 8, 1, 2
        args.workers = "0,1"
    return args


def run(args: argparse.Namespace, split: Path, size: int) -> dict[str, Any]:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    step = bare_step_rate(args, device)
    rows = []
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        rate = loader_rate(args, split, size, workers, device)
        ratio = rate / step
        # with workers loading overlaps the step; without, they alternate in one process
        stall = 1 - min(1.0, ratio) if workers > 0 else (1 / rate) / (1 / rate + 1 / step)
        rows.append(
            {
                "workers": workers,
                "loader_images_per_s": round(rate, 2),
                "ratio_loader_to_step": round(ratio, 3),
                "stall_share": round(stall, 3),
            }
        )
        print(f"  workers {workers}: {rate:.1f} images/s, ratio {ratio:.2f}", file=sys.stderr, flush=True)
    augment = {
        "albumentations_cpu_1_process_images_per_s": round(albumentations_rate(args, split, size), 2),
        f"kornia_{device.type}_images_per_s": round(kornia_rate(args, split, size, device), 2),
    }
    return {
        "device": device.type,
        "bare_step_images_per_s": round(step, 2),
        "loader": rows,
        "augment": augment,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="data_loader_") as tmp:
        if args.processed is not None:
            split = args.processed
            size = VesselDataset(split).image_size[0]
        else:
            split, size = write_split(Path(tmp) / "train", args.n, args.size), args.size
        result = run(args, split, size)
    report = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": {
            "data": str(args.processed) if args.processed else f"synthetic {args.n} x {size}²",
            "crop": args.crop,
            "batch": args.batch,
            "samples_per_epoch": args.samples,
            "model": f"unet {args.base_channels}x{args.depth}",
            "cache_mb": make_params(args, size, 0).base.cache_mb,
            "epochs_timed": args.epochs,
            "quick": args.quick,
        },
        **result,
    }
    write_json(args.out, report)
    model, device = report["settings"]["model"], result["device"]
    print(f"bare step ({model}, {device}): {result['bare_step_images_per_s']} images/s")
    print("| workers | loader images/s | loader ÷ bare step | stall share |")
    print("|---:|---:|---:|---:|")
    for r in result["loader"]:
        print(
            f"| {r['workers']} | {r['loader_images_per_s']} | {r['ratio_loader_to_step']} "
            f"| {r['stall_share']} |"
        )
    print("augmentation alone:", ", ".join(f"{k} {v}" for k, v in result["augment"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
