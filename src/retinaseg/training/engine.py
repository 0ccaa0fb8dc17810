"""The training engine: :func:`train_model`, called by ``stages/train.py`` (alone or under torchrun).

Per epoch: train on augmented samples, validate on the full val images (Dice inside the FOV at
0.5, and the loss), step the LR schedule, write ``last.pt`` (and ``best.pt`` on improvement),
append to the history, log to MLflow. At the end the best weights are saved with
``retinaseg.models.saved.save_model_dir`` and logged to MLflow.

Determinism: the model is initialised from ``base.seed``; every epoch reseeds torch, the
DataLoader generator, the sampler and the augmentation from ``(base.seed, epoch)``, so a run
resumed from ``last.pt`` replays exactly the epochs an uninterrupted run would have (on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from retinaseg.config import Params
from retinaseg.data.dataset import VesselDataset
from retinaseg.data.transforms import build_train_transform, seed_worker
from retinaseg.fileio import atomic_path, write_json, write_png
from retinaseg.training import checkpoint as ckpt
from retinaseg.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    cleanup_distributed,
    device_for_rank,
    init_distributed,
)

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")
N_SAMPLE_OVERLAYS = 3
PLATEAU_FACTOR = 0.5  # ReduceLROnPlateau: halve the LR ...
PLATEAU_PATIENCE = 3  # ... after this many epochs without a better val Dice
WARMUP_START_FACTOR = 0.01


def resolve_device(requested: str) -> torch.device:
    """``auto`` → cuda > mps > cpu; an explicit device that is absent → RuntimeError naming the flag."""
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was requested but torch.cuda.is_available() is False; "
            "set base.device=auto or cpu (-S base.device=cpu)"
        )
    if requested == "mps" and not has_mps:
        raise RuntimeError(
            "device 'mps' was requested but torch.backends.mps.is_available() is False; "
            "set base.device=auto or cpu (-S base.device=cpu)"
        )
    if requested not in ("cpu", "cuda", "mps"):
        raise RuntimeError(f"unknown device {requested!r}; expected auto | cpu | cuda | mps (base.device)")
    return torch.device(requested)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 32-bit seed for ``(seed, epoch, rank)`` (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _State:
    """What changes over a training run and is saved in checkpoints."""

    epoch: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Setup:
    """Everything built once before the epoch loop."""

    params: Params
    model_name: str
    device: torch.device
    dist: DistInfo
    raw_model: nn.Module  # the unwrapped module: state dicts, saving, validation
    model: nn.Module  # what the training step calls (maybe DDP- and/or compile-wrapped)
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scheduler_per_step: bool
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_ds: VesselDataset
    val_ds: VesselDataset
    steps_per_epoch: int
    checkpoint_dir: Path
    fingerprint: str
    data_hash: str


def train_model(
    params: Params,
    model_name: str,
    processed_dir: str | Path,
    out_dir: str | Path,
    report_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on ``processed_dir/{train,val}``; returns the summary dict.

    Writes ``out_dir/{model.pt,model.json}`` (best epoch), ``report_dir/<model>.csv`` (history)
    and ``report_dir/<model>.json`` (summary), checkpoints in ``checkpoint_dir`` (default
    ``.checkpoints/<model>`` in the current directory) and one MLflow run. Under torchrun only
    rank 0 writes files and logs.
    """
    device = resolve_device(params.base.device)
    info = init_distributed(device)
    try:
        device = device_for_rank(device, info)
        checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else Path(".checkpoints") / model_name
        setup = _build(params, model_name, Path(processed_dir), device, info, checkpoint_dir)
        return _run(setup, Path(out_dir), Path(report_dir))
    finally:
        cleanup_distributed()


# ----------------------------------------------------------------------------- building


def _build(
    params: Params,
    model_name: str,
    processed_dir: Path,
    device: torch.device,
    info: DistInfo,
    checkpoint_dir: Path,
) -> _Setup:
    from retinaseg.models.factory import build_model
    from retinaseg.training.losses import build_loss

    if params.base.threads > 0:
        torch.set_num_threads(params.base.threads)
    tp = params.train
    seed_everything(params.base.seed)

    transform = build_train_transform(params.augment, seed=params.base.seed)
    length = tp.samples_per_epoch if tp.samples_per_epoch > 0 else None
    train_ds = VesselDataset(processed_dir / "train", transform=transform, length=length)
    val_ds = VesselDataset(processed_dir / "val")
    crop = params.augment.crop_size
    if crop > min(train_ds.image_size):
        raise ValueError(
            f"augment.crop_size={crop} is larger than the processed training images "
            f"{train_ds.image_size} in {processed_dir / 'train'}; lower it (-S augment.crop_size=...)"
        )
    data_hash = ckpt.hash_directory(processed_dir)

    torch.manual_seed(params.base.seed)  # the initial weights depend on the seed only
    raw_model = build_model(model_name, params.model_params(model_name)).to(device)
    if device.type == "cuda" and tp.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    optimizer_cls = torch.optim.AdamW if tp.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(raw_model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    per_rank = math.ceil(len(train_ds) / info.world_size)
    steps_per_epoch = max(1, math.ceil(per_rank / tp.batch_size))
    scheduler, per_step = _build_scheduler(optimizer, tp, steps_per_epoch)

    amp_dtype = None
    if tp.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    model: nn.Module = raw_model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(raw_model, device_ids=ids)
    if tp.compile:
        model = torch.compile(model)

    return _Setup(
        params=params,
        model_name=model_name,
        device=device,
        dist=info,
        raw_model=raw_model,
        model=model,
        loss_fn=build_loss(tp.loss),
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_per_step=per_step,
        scaler=scaler,
        amp_dtype=amp_dtype,
        train_ds=train_ds,
        val_ds=val_ds,
        steps_per_epoch=steps_per_epoch,
        checkpoint_dir=checkpoint_dir,
        fingerprint=ckpt.training_fingerprint(params, model_name, data_hash),
        data_hash=data_hash,
    )


def _build_scheduler(optimizer: torch.optim.Optimizer, tp: Any, steps_per_epoch: int) -> tuple[Any, bool]:
    """(scheduler, stepped per optimizer step?) for ``train.scheduler``."""
    lr_sched = torch.optim.lr_scheduler
    if tp.scheduler == "none":
        return None, False
    if tp.scheduler == "plateau":
        plateau = lr_sched.ReduceLROnPlateau(
            optimizer, mode="max", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
        )
        return plateau, False
    # cosine decay per optimizer step, after a linear warm-up of warmup_epochs
    total = tp.epochs * steps_per_epoch
    warmup = min(tp.warmup_epochs * steps_per_epoch, max(total - 1, 0))
    cosine = lr_sched.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=tp.lr * 1e-2)
    if warmup == 0:
        return cosine, True
    linear = lr_sched.LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, total_iters=warmup)
    return lr_sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup]), True


# ----------------------------------------------------------------------------- the run


def _run(s: _Setup, out_dir: Path, report_dir: Path) -> dict[str, Any]:
    tp = s.params.train
    state = _State()
    resume_note = "train.resume=never: starting fresh"
    if tp.resume == "auto":
        saved, resume_note = ckpt.find_resumable(s.checkpoint_dir, s.fingerprint)
        if saved is not None:
            _restore(s, saved, state)
        elif s.checkpoint_dir.joinpath(ckpt.LAST).exists():
            resume_note = f"starting fresh: {resume_note}"
    _say(s, f"[{s.model_name}] {resume_note}")
    if s.dist.enabled:
        backend = torch.distributed.get_backend()
        _say(s, f"[{s.model_name}] distributed data parallel: {s.dist.world_size} processes ({backend})")

    run_id = None
    with _tracking_run(s) as run:
        if run is not None:
            run_id = run.info.run_id
            for row in state.history:  # a resumed run shows the whole curve
                _log_epoch(row)
        for epoch in range(state.epoch + 1, tp.epochs + 1):
            if state.stopped_early:
                break
            _train_one_epoch_and_checkpoint(s, state, epoch, report_dir)
        summary = None
        if s.dist.is_main:
            summary = _finish(s, state, out_dir, report_dir, run_id)
    barrier(s.dist)
    return summary if summary is not None else {"rank": s.dist.rank}


def _train_one_epoch_and_checkpoint(s: _Setup, state: _State, epoch: int, report_dir: Path) -> None:
    tp = s.params.train
    t0 = time.perf_counter()
    lr = s.optimizer.param_groups[0]["lr"]
    train_loss = _train_epoch(s, epoch)
    val_loss, val_dice = _validate(s)
    if s.scheduler is not None and not s.scheduler_per_step:
        s.scheduler.step(val_dice)
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_dice": val_dice,
        "lr": lr,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    state.history.append(row)
    state.epoch = epoch
    improved = val_dice > state.best_dice
    if improved:
        state.best_dice, state.best_epoch, state.bad_epochs = val_dice, epoch, 0
    else:
        state.bad_epochs += 1
    stop = 0 < tp.early_stopping_patience <= state.bad_epochs
    state.stopped_early = broadcast_flag(stop, s.device, s.dist) and epoch < tp.epochs
    if s.dist.is_main:
        if improved:  # best before last: a crash in between leaves last.pt one epoch behind, never ahead
            ckpt.save_checkpoint(s.checkpoint_dir / ckpt.BEST, _checkpoint_state(s, state))
        ckpt.save_checkpoint(s.checkpoint_dir / ckpt.LAST, _checkpoint_state(s, state))
        _write_history(state.history, report_dir / f"{s.model_name}.csv")
        _log_epoch(row)
        _say(
            s,
            f"[{s.model_name}] epoch {epoch}/{tp.epochs} train_loss {train_loss:.4f} val_loss {val_loss:.4f} "
            f"val_dice {val_dice:.4f} lr {lr:.2e} ({row['seconds']:.1f}s)" + (" *" if improved else ""),
        )
        if state.stopped_early:
            _say(s, f"[{s.model_name}] early stopping: no better val Dice for {state.bad_epochs} epochs")


def _epoch_loader(s: _Setup, epoch: int) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on (base.seed, epoch, rank)."""
    seed = s.params.base.seed
    rank_seed = epoch_seed(seed, epoch, s.dist.rank)
    torch.manual_seed(rank_seed)  # dropout etc.
    s.train_ds.reseed(rank_seed)  # augmentation when workers == 0 (workers reseed in seed_worker)
    generator = torch.Generator().manual_seed(rank_seed)
    if s.dist.enabled:
        sampler = DistributedSampler(
            s.train_ds, num_replicas=s.dist.world_size, rank=s.dist.rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(s.train_ds, generator=generator)
    workers = s.params.base.workers
    return DataLoader(
        s.train_ds,
        batch_size=s.params.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=generator,
        pin_memory=s.device.type == "cuda",
        drop_last=False,
    )


def _autocast(s: _Setup) -> contextlib.AbstractContextManager:
    if s.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=s.device.type, dtype=s.amp_dtype)


def _to_device(s: _Setup, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["image"].to(s.device, non_blocking=True)
    if s.device.type == "cuda" and s.params.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["mask"].to(s.device, non_blocking=True)


def _train_epoch(s: _Setup, epoch: int) -> float:
    """One pass; returns the mean training loss (over all ranks). Non-finite loss → RuntimeError."""
    tp = s.params.train
    s.model.train()
    loader = _epoch_loader(s, epoch)
    total, count = 0.0, 0
    for step, batch in enumerate(_progress(s, loader, f"{s.model_name} epoch {epoch}"), start=1):
        images, masks = _to_device(s, batch)
        s.optimizer.zero_grad(set_to_none=True)
        with _autocast(s):
            logits = s.model(images)
        loss = s.loss_fn(logits.float(), masks)
        # summed over ranks every step: all ranks see the same value, so they stop together
        loss_sum, n = all_reduce_sum([loss.item() * len(images), len(images)], s.device, s.dist)
        if not math.isfinite(loss_sum):
            raise RuntimeError(
                f"non-finite training loss ({loss_sum / n}) at epoch {epoch}, step {step} of "
                f"{s.model_name}; stopped. The last good checkpoint "
                f"({s.checkpoint_dir / ckpt.LAST}) is kept. Lower train.lr or check the data."
            )
        s.scaler.scale(loss).backward()
        if tp.grad_clip > 0:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.raw_model.parameters(), tp.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        if s.scheduler is not None and s.scheduler_per_step:
            s.scheduler.step()
        total += loss_sum
        count += int(n)
    return total / max(count, 1)


@torch.no_grad()
def _validate(s: _Setup) -> tuple[float, float]:
    """(val loss, val Dice inside the FOV at 0.5) on the full val images, pooled over all ranks.

    Each rank validates its share of the images (rank::world) and the sums are all-reduced,
    so every rank ends up with the same numbers (and takes the same early-stopping decision).
    """
    s.raw_model.eval()
    indices = list(range(s.dist.rank, len(s.val_ds), s.dist.world_size))
    loader = DataLoader(Subset(s.val_ds, indices), batch_size=s.params.train.batch_size, shuffle=False)
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # loss*n, n, tp, fp, fn
    for batch in loader:
        images, masks = _to_device(s, batch)
        fov = batch["fov"].to(s.device) > 0.5
        with _autocast(s):
            logits = s.raw_model(images)
        logits = logits.float()
        sums[0] += s.loss_fn(logits, masks).item() * len(images)
        sums[1] += len(images)
        pred = (logits > 0) & fov  # sigmoid(x) > 0.5  <=>  x > 0
        truth = (masks > 0.5) & fov
        sums[2] += (pred & truth).sum().item()
        sums[3] += (pred & ~truth).sum().item()
        sums[4] += (~pred & truth).sum().item()
    loss_sum, n, tp_, fp, fn = all_reduce_sum(sums, s.device, s.dist)
    denom = 2 * tp_ + fp + fn
    dice = 2 * tp_ / denom if denom > 0 else 1.0
    return loss_sum / max(n, 1), dice


def _progress(s: _Setup, loader: DataLoader, desc: str) -> Iterator:
    """A tqdm bar on rank 0 when stderr is a terminal; the plain loader otherwise."""
    if not (s.dist.is_main and sys.stderr.isatty()):
        return iter(loader)
    from tqdm import tqdm

    return iter(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True))


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_state(s: _Setup, state: _State) -> dict[str, Any]:
    return {
        "format": 1,
        "model_name": s.model_name,
        "fingerprint": s.fingerprint,
        "epoch": state.epoch,
        "best_dice": state.best_dice,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "stopped_early": state.stopped_early,
        "history": [dict(r) for r in state.history],
        "model": s.raw_model.state_dict(),
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict() if s.scheduler is not None else {},
        "scaler": s.scaler.state_dict(),
    }


def _restore(s: _Setup, saved: dict[str, Any], state: _State) -> None:
    s.raw_model.load_state_dict(saved["model"])
    s.optimizer.load_state_dict(saved["optimizer"])
    if s.scheduler is not None and saved["scheduler"]:
        s.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:
        s.scaler.load_state_dict(saved["scaler"])
    state.epoch = int(saved["epoch"])
    state.best_dice = float(saved["best_dice"])
    state.best_epoch = int(saved["best_epoch"])
    state.bad_epochs = int(saved["bad_epochs"])
    state.stopped_early = bool(saved["stopped_early"])
    state.history = [dict(r) for r in saved["history"]]


# ----------------------------------------------------------------------------- outputs


def _finish(s: _Setup, state: _State, out_dir: Path, report_dir: Path, run_id: str | None) -> dict[str, Any]:
    """Save the best model, the history and the summary; log them to MLflow (rank 0 only)."""
    from retinaseg.models.factory import count_parameters
    from retinaseg.models.saved import ModelCard, save_model_dir
    from retinaseg.tracking import git_commit

    best_path = s.checkpoint_dir / ckpt.BEST
    if best_path.is_file():
        s.raw_model.load_state_dict(ckpt.load_checkpoint(best_path)["model"])
    model = s.raw_model.to("cpu").eval()
    card = ModelCard(
        name=s.model_name,
        model_params=s.params.model_params(s.model_name),
        preprocess=dataclasses.asdict(s.params.preprocess),
        threshold=None,
        extra={
            "data_hash": s.data_hash,
            "git_commit": git_commit(),
            "best_epoch": state.best_epoch,
            "best_val_dice": state.best_dice,
            "train_image_size": s.params.preprocess.size,
            **_original_size(s.train_ds),
        },
    )
    save_model_dir(model, card, out_dir)
    _write_history(state.history, report_dir / f"{s.model_name}.csv")
    summary = {
        "best_val_dice": round(state.best_dice, 6),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        # summed over the epochs, so a resumed run reports the whole training time
        "train_seconds": round(sum(row["seconds"] for row in state.history), 2),
        "n_params": count_parameters(model),
        "device": str(s.device),
        "mlflow_run_id": run_id,
    }
    write_json(report_dir / f"{s.model_name}.json", summary)
    if run_id is not None:
        _log_outputs(s, model, out_dir, report_dir, summary)
    return summary


def _original_size(ds: VesselDataset) -> dict[str, int]:
    """Median original width/height of the training images (from index.csv), for cross-dataset scaling."""
    index = ds.split_dir / "index.csv"
    if not index.is_file():
        return {}
    frame = pd.read_csv(index)
    if not {"orig_w", "orig_h"} <= set(frame.columns):
        return {}
    return {
        "train_orig_width": int(frame["orig_w"].median()),
        "train_orig_height": int(frame["orig_h"].median()),
    }


def _write_history(history: list[dict[str, float]], path: Path) -> None:
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@contextlib.contextmanager
def _tracking_run(s: _Setup) -> Iterator[Any]:
    if not s.dist.is_main:
        yield None
        return
    from retinaseg.tracking import start_run

    with start_run(s.params, s.model_name, s.data_hash, str(s.device)) as run:
        yield run


def _log_epoch(row: dict[str, float]) -> None:
    from retinaseg.tracking import log_epoch

    log_epoch({k: v for k, v in row.items() if k != "epoch"}, epoch=int(row["epoch"]))


def _log_outputs(s: _Setup, model: nn.Module, out_dir: Path, report_dir: Path, summary: dict) -> None:
    import mlflow

    from retinaseg.tracking import log_artifact, log_torch_model

    keys = ("best_val_dice", "best_epoch", "train_seconds", "n_params")
    mlflow.log_metrics({k: float(summary[k]) for k in keys})
    log_artifact(report_dir / f"{s.model_name}.csv", artifact_path="training")
    tmp = Path(tempfile.mkdtemp(prefix="retinaseg-samples-"))
    try:
        for sample_id, panel in _sample_panels(model, s.val_ds, N_SAMPLE_OVERLAYS):
            write_png(tmp / f"{sample_id}.png", panel)
        log_artifact(tmp, artifact_path="samples")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log_torch_model(model, out_dir, input_size=64)


@torch.no_grad()
def _sample_panels(model: nn.Module, ds: VesselDataset, n: int) -> Iterator[tuple[str, np.ndarray]]:
    """(id, image | truth | prediction RGB uint8 panel) for the first ``n`` val images."""
    model.eval()
    for k in range(min(n, ds.n_images)):
        item = ds[k]
        logits = model(item["image"][None].to(next(model.parameters()).device)).float().cpu()
        pred = (logits[0, 0].numpy() > 0).astype(np.uint8) * 255
        truth = ds.masks[k] * 255
        grey = [np.repeat(m[..., None], 3, axis=2) for m in (truth, pred)]
        yield item["id"], np.concatenate([ds.images[k], *grey], axis=1)


def _say(s: _Setup, message: str) -> None:
    if s.dist.is_main:
        print(message, flush=True)
