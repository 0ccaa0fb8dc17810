"""The training engine: :func:`train_model`, called by ``stages/train.py`` (alone or under torchrun).

Per epoch: train on augmented samples, validate on the full val images (Dice inside the FOV at
0.5, and the loss), step the LR schedule, write ``last.pt`` (and ``best.pt`` on improvement),
append to the history, report to the :class:`~retinaseg.training.logger.TrainingLogger`. At the
end the best weights are saved with ``retinaseg.models.saved.save_model_dir`` and reported.
The loss counts the pixels inside the field of view only (the dataset's ``fov`` mask is the
loss weight), as the scores do.

Determinism: the model is initialised from ``base.seed``; every epoch reseeds torch from
``(base.seed, epoch, rank)``; the epoch's order is the one ``DistributedSampler(shuffle=True,
seed=base.seed).set_epoch(epoch)`` gives (with one replica in a single process, so ``torchrun
--nproc_per_node=N`` with batch size b sees the same global batches, as sets, as one process with
batch size N·b), and every item's augmentation is seeded from ``(base.seed, epoch, index)``
(:class:`EpochSampler`), so the batches do not depend on the number of DataLoader workers and a run
resumed from ``last.pt`` replays exactly the epochs an uninterrupted run would have (on CPU).
Training runs with ``torch.use_deterministic_algorithms`` (cuDNN deterministic, no benchmark
autotuning; on CUDA, ops without a deterministic kernel warn instead of failing), so the same code,
params and data on the same machine type give byte-identical outputs.

No host sync per step: the training loss and its count, and the validation loss and tp/fp/fn, are
summed on the device and read (all-reduced, and checked for finiteness) once per epoch. A
non-finite training loss is therefore noticed at the end of its epoch (the message names the first
step where it happened), before anything of that epoch is checkpointed or saved.

Input pipeline: the datasets decode images per item (:mod:`retinaseg.data.dataset`) and keep the
decoded ones up to ``base.cache_mb`` (divided among the workers); the loaders are built once, with
``base.workers`` processes (``auto``: :func:`retinaseg.core.budget.loader_workers`), persistent
across epochs and prefetching when there are workers, and pinned memory on CUDA.

Outputs (the train stage's DVC outputs) hold only what the computation determines: the model
(``model.pt`` + ``model.json`` with the run's identity and the training environment), the history
CSV (no wall times) and the summary JSON (no durations, no run id). Values that differ from run to
run (epoch seconds, total training time, the MLflow run id) go to the logger only.

The saved model is always this run's own best epoch: ``best.pt`` must carry this run's identity
(:class:`~retinaseg.training.checkpoint.RunIdentity`: params, data hash, code hash) and best epoch,
else the run fails with :class:`~retinaseg.training.checkpoint.TrainingError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from tqdm import tqdm

from retinaseg.core.budget import cpu_threads, loader_workers
from retinaseg.core.config import Params
from retinaseg.core.devices import resolve_device
from retinaseg.core.fileio import atomic_path, hash_tree, write_json
from retinaseg.data.dataset import VesselDataset
from retinaseg.data.preprocess import SECOND_MASK_COLUMN
from retinaseg.data.transforms import build_train_transform, item_seed, seed_worker
from retinaseg.models.factory import build_model, count_parameters
from retinaseg.models.saved import ModelCard, save_model_dir
from retinaseg.training import checkpoint as ckpt
from retinaseg.training.checkpoint import RunIdentity
from retinaseg.training.distributed import (
    DistInfo,
    all_reduce_tensor,
    barrier,
    broadcast_flag,
    cleanup_distributed,
    device_for_rank,
    init_distributed,
)
from retinaseg.training.environment import training_environment
from retinaseg.training.logger import TrainingLogger
from retinaseg.training.losses import build_loss

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "lr")  # the CSV; rows also hold "seconds"
# summary values that differ from run to run: returned and logged, never written to the summary JSON
RUN_ONLY_SUMMARY_KEYS = ("train_seconds", "mlflow_run_id")
N_SAMPLE_OVERLAYS = 3
# where train.channels_last applies: CUDA and the CPU. On the 2-core CPU a U-Net 16x3 training step
# (192 px crops, batch 4; benchmarks/train_throughput.py) ran 3.56 and 2.65 images/s channels-last
# against 2.23 and 1.79 contiguous (two runs on a quiet machine; one run under heavy load said the
# opposite, 2.21 vs 2.79). MPS is left contiguous.
CHANNELS_LAST_DEVICES = ("cuda", "cpu")
PLATEAU_FACTOR = 0.5  # ReduceLROnPlateau: halve the LR ...
PLATEAU_PATIENCE = 3  # ... after this many epochs without a better val Dice
WARMUP_START_FACTOR = 0.01
PREFETCH_FACTOR = 4  # batches each DataLoader worker prepares ahead (when there are workers)


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
class _Job:
    """What is trained, where, and where it is reported."""

    params: Params
    model_name: str
    device: torch.device
    dist: DistInfo
    checkpoint_dir: Path
    identity: RunIdentity  # params + data + code: a checkpoint is resumed only when it matches
    logger: TrainingLogger


@dataclass
class _Net:
    raw: nn.Module  # the unwrapped module: state dicts, saving, validation
    train: nn.Module  # what the training step calls (maybe DDP- and/or compile-wrapped)
    loss_fn: nn.Module


@dataclass
class _Optim:
    optimizer: torch.optim.Optimizer
    scheduler: Any  # None for train.scheduler=none
    per_step: bool  # the scheduler steps per optimizer step (else per epoch, on val Dice)
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None


@dataclass
class _Data:
    train: VesselDataset
    val: VesselDataset
    hash: str  # content hash of the processed data folder
    sampler: EpochSampler  # the training order and augmentation seeds; set_epoch(epoch) each epoch
    train_loader: DataLoader
    val_loader: DataLoader


class EpochSampler(Sampler[tuple[int, int]]):
    """``(index, augmentation seed)`` pairs of one epoch for one rank.

    The indices are exactly ``DistributedSampler(dataset, num_replicas, rank, shuffle=True,
    seed=seed)`` after ``set_epoch(epoch)``: in a single process (one replica) a permutation drawn
    from ``seed + epoch``, under torchrun the same permutation (padded to a multiple of the ranks)
    dealt out ``rank::num_replicas``. Each index is paired with
    ``item_seed(epoch_seed(seed, epoch), index)``: an item's augmentation depends on the seed, the
    epoch and the index only (not on the rank, the worker or the items before it).
    """

    def __init__(self, dataset: VesselDataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.seed = seed
        self.order = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order and seeds (call before iterating)."""
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        aug = epoch_seed(self.seed, self.epoch)
        return iter([(int(i), item_seed(aug, int(i))) for i in self.order])

    def __len__(self) -> int:
        return len(self.order)


@dataclass
class _Setup:
    """Everything built once before the epoch loop."""

    job: _Job
    net: _Net
    opt: _Optim
    data: _Data


def train_model(
    params: Params,
    model_name: str,
    processed_dir: str | Path,
    out_dir: str | Path,
    report_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
    logger: TrainingLogger | None = None,
) -> dict[str, Any]:
    """Train ``model_name`` on ``processed_dir/{train,val}``; returns the summary dict.

    Writes ``out_dir/{model.pt,model.json}`` (best epoch), ``report_dir/<model>.csv`` (history)
    and ``report_dir/<model>.json`` (summary), checkpoints in ``checkpoint_dir`` (default
    ``.checkpoints/<model>`` in the current directory), and reports the run to ``logger`` (default:
    nothing is recorded; the train stage passes an MLflow logger). Under torchrun only rank 0
    writes files and logs.
    """
    device = resolve_device(params.base.device)
    info = init_distributed(device)
    try:
        device = device_for_rank(device, info)
        checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else Path(".checkpoints") / model_name
        logger = logger or TrainingLogger()
        with deterministic_algorithms(device):
            setup = _build(params, model_name, Path(processed_dir), device, info, checkpoint_dir, logger)
            return _run(setup, Path(out_dir), Path(report_dir))
    finally:
        cleanup_distributed()


@contextlib.contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """Deterministic kernels while training; the process's previous settings are restored after.

    On CUDA, cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` (set here unless given) and ops without a
    deterministic kernel warn instead of failing (``warn_only``): such a model may differ in its last
    bits from run to run on a GPU. On the CPU every op the models use is deterministic.
    """
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


# ----------------------------------------------------------------------------- building


def _build(
    params: Params,
    model_name: str,
    processed_dir: Path,
    device: torch.device,
    info: DistInfo,
    checkpoint_dir: Path,
    logger: TrainingLogger,
) -> _Setup:
    torch.set_num_threads(cpu_threads(params.base.threads))  # this job's share of the cores
    tp = params.train
    seed_everything(params.base.seed)

    workers = loader_workers(params.base.workers, device.type)
    train_ds = build_train_dataset(params, processed_dir / "train", workers)
    val_ds = VesselDataset(
        processed_dir / "val", cache_bytes=cache_bytes_per_process(params.base.cache_mb, workers)
    )
    crop = params.augment.crop_size
    if crop > min(train_ds.image_size):
        raise ValueError(
            f"augment.crop_size={crop} is larger than the processed training images "
            f"{train_ds.image_size} in {processed_dir / 'train'}; lower it (-S augment.crop_size=...)"
        )
    data = _build_data(params, train_ds, val_ds, hash_tree(processed_dir), device, info)

    torch.manual_seed(params.base.seed)  # the initial weights depend on the seed only
    raw_model = build_model(model_name, params.model_params(model_name)).to(device)
    if use_channels_last(device, tp.channels_last):
        raw_model = raw_model.to(memory_format=torch.channels_last)

    optimizer_cls = torch.optim.AdamW if tp.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(raw_model.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    per_rank = math.ceil(len(train_ds) / info.world_size)
    steps_per_epoch = max(1, math.ceil(per_rank / tp.batch_size))
    scheduler, per_step = _build_scheduler(optimizer, tp, steps_per_epoch)

    amp_dtype = training_amp_dtype(device, tp.amp)
    if tp.amp and amp_dtype is None and info.is_main:
        print(f"[{model_name}] train.amp: mixed precision is for CUDA; training on {device.type} in fp32")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    model: nn.Module = raw_model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(raw_model, device_ids=ids)
    if tp.compile:
        model = torch.compile(model)

    identity = ckpt.run_identity(params, model_name, data.hash)
    job = _Job(params, model_name, device, info, checkpoint_dir, identity, logger)
    net = _Net(raw=raw_model, train=model, loss_fn=build_loss(tp.loss))
    opt = _Optim(optimizer, scheduler, per_step, scaler, amp_dtype)
    return _Setup(job, net, opt, data)


def build_train_dataset(params: Params, split_dir: Path, workers: int) -> VesselDataset:
    """The training set as the engine reads it: ``params.augment``'s augmentation seeded with
    ``base.seed``, ``train.samples_per_epoch`` items per pass (0: one per image), and each of the
    loader's ``workers`` processes' share of ``base.cache_mb`` (the benchmarks build it here too)."""
    samples = params.train.samples_per_epoch
    return VesselDataset(
        split_dir,
        transform=build_train_transform(params.augment, seed=params.base.seed),
        length=samples if samples > 0 else None,
        cache_bytes=cache_bytes_per_process(params.base.cache_mb, workers),
    )


def cache_bytes_per_process(cache_mb: int, workers: int) -> int:
    """Each loader process's share of ``base.cache_mb`` (the main process's when there are no
    workers; with workers, each worker holds a cache of its own)."""
    return cache_mb * 2**20 // max(1, workers)


def training_amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``: on CUDA bf16 where supported, else fp16
    (with a GradScaler); None (fp32) when off or on any other device."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def use_channels_last(device: torch.device, channels_last: bool) -> bool:
    """Whether ``train.channels_last`` applies on ``device`` (:data:`CHANNELS_LAST_DEVICES`)."""
    return channels_last and device.type in CHANNELS_LAST_DEVICES


def _build_data(
    params: Params,
    train_ds: VesselDataset,
    val_ds: VesselDataset,
    data_hash: str,
    device: torch.device,
    info: DistInfo,
) -> _Data:
    """The datasets with their loaders, built once for the whole run (workers persist across epochs)."""
    workers = loader_workers(params.base.workers, device.type)
    sampler = EpochSampler(train_ds, params.base.seed, info.world_size, info.rank)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {
            "persistent_workers": True,
            "prefetch_factor": PREFETCH_FACTOR,
            "worker_init_fn": seed_worker,
        }
    common = {"num_workers": workers, "pin_memory": device.type == "cuda", **extra}
    train_loader = DataLoader(
        train_ds,
        batch_size=params.train.batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(params.base.seed),  # worker seeds; not the global RNG
        drop_last=False,
        **common,
    )
    # each rank validates its share of the full val images (rank::world); the sums are all-reduced
    val_share = Subset(val_ds, list(range(info.rank, len(val_ds), info.world_size)))
    val_loader = DataLoader(
        val_share,
        batch_size=params.train.batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(params.base.seed),
        **common,
    )
    return _Data(train_ds, val_ds, data_hash, sampler, train_loader, val_loader)


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
    job, tp = s.job, s.job.params.train
    state = _State()
    resume_note = "train.resume=never: starting fresh"
    if tp.resume == "auto":
        saved, resume_note = ckpt.find_resumable(job.checkpoint_dir, job.identity)
        if saved is not None:
            _restore(s, saved, state)
        elif job.checkpoint_dir.joinpath(ckpt.LAST).exists():
            resume_note = f"starting fresh: {resume_note}"
    _say(s, f"[{job.model_name}] {resume_note}")
    if job.dist.enabled:
        backend = torch.distributed.get_backend()
        _say(s, f"[{job.model_name}] distributed data parallel: {job.dist.world_size} processes ({backend})")

    with _logged_run(s) as run_id:
        if job.dist.is_main:
            job.logger.log_environment(training_environment(job.device))
        if run_id is not None:
            for row in state.history:  # a resumed run shows the whole curve
                job.logger.log_epoch(row)
        for epoch in range(state.epoch + 1, tp.epochs + 1):
            if state.stopped_early:
                break
            _train_one_epoch_and_checkpoint(s, state, epoch, report_dir)
        summary = None
        if job.dist.is_main:
            summary = _finish(s, state, out_dir, report_dir, run_id)
    barrier(job.dist)
    return summary if summary is not None else {"rank": job.dist.rank}


def _train_one_epoch_and_checkpoint(s: _Setup, state: _State, epoch: int, report_dir: Path) -> None:
    job, tp = s.job, s.job.params.train
    t0 = time.perf_counter()
    lr = s.opt.optimizer.param_groups[0]["lr"]
    train_loss = _train_epoch(s, epoch)
    val_loss, val_dice = _validate(s)
    if s.opt.scheduler is not None and not s.opt.per_step:
        s.opt.scheduler.step(val_dice)
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
    state.stopped_early = broadcast_flag(stop, job.device, job.dist) and epoch < tp.epochs
    if job.dist.is_main:
        if improved:  # best before last: a crash in between leaves last.pt one epoch behind, never ahead
            ckpt.save_checkpoint(job.checkpoint_dir / ckpt.BEST, _checkpoint_state(s, state))
        ckpt.save_checkpoint(job.checkpoint_dir / ckpt.LAST, _checkpoint_state(s, state))
        _write_history(state.history, report_dir / f"{job.model_name}.csv")
        job.logger.log_epoch(row)
        _say(
            s,
            f"[{job.model_name}] epoch {epoch}/{tp.epochs} train_loss {train_loss:.4f} "
            f"val_loss {val_loss:.4f} val_dice {val_dice:.4f} lr {lr:.2e} ({row['seconds']:.1f}s)"
            + (" *" if improved else ""),
        )
        if state.stopped_early:
            _say(s, f"[{job.model_name}] early stopping: no better val Dice for {state.bad_epochs} epochs")


def _epoch_loader(s: _Setup, epoch: int) -> DataLoader:
    """The training loader set to ``epoch``: order and augmentation depend only on (base.seed, epoch)."""
    torch.manual_seed(epoch_seed(s.job.params.base.seed, epoch, s.job.dist.rank))  # dropout etc.
    s.data.sampler.set_epoch(epoch)
    return s.data.train_loader


def _autocast(s: _Setup) -> contextlib.AbstractContextManager:
    if s.opt.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=s.job.device.type, dtype=s.opt.amp_dtype)


def _to_device(s: _Setup, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, vessel masks, FOV masks) of a batch on the training device."""
    device = s.job.device
    images = batch["image"].to(device, non_blocking=True)
    if use_channels_last(device, s.job.params.train.channels_last):
        images = images.contiguous(memory_format=torch.channels_last)
    masks = batch["mask"].to(device, non_blocking=True)
    return images, masks, batch["fov"].to(device, non_blocking=True)


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _train_epoch(s: _Setup, epoch: int) -> float:
    """One pass; returns the mean training loss (over all ranks). Non-finite loss → RuntimeError.

    The loss sum, the sample count and the step of the first non-finite loss stay on the device
    during the epoch and are read once at its end (the same value on every rank, so all stop together).
    """
    job, opt = s.job, s.opt
    s.net.train.train()
    loader = _epoch_loader(s, epoch)
    acc = torch.zeros(2, dtype=_accumulator_dtype(job.device), device=job.device)  # loss * n, n
    step = torch.zeros((), dtype=torch.int64, device=job.device)
    first_bad = torch.zeros((), dtype=torch.int64, device=job.device)  # 0 = every loss finite so far
    for batch in _progress(s, loader, f"{job.model_name} epoch {epoch}"):
        images, masks, fov = _to_device(s, batch)
        opt.optimizer.zero_grad(set_to_none=True)
        with _autocast(s):
            logits = s.net.train(images)
        loss = s.net.loss_fn(logits.float(), masks, weight=fov)  # pixels inside the FOV only
        value = loss.detach()
        step += 1
        first_bad = torch.where(~torch.isfinite(value) & (first_bad == 0), step, first_bad)
        acc[0] += value.to(acc.dtype) * len(images)
        acc[1] += len(images)
        opt.scaler.scale(loss).backward()
        if job.params.train.grad_clip > 0:
            opt.scaler.unscale_(opt.optimizer)
            nn.utils.clip_grad_norm_(s.net.raw.parameters(), job.params.train.grad_clip)
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        if opt.scheduler is not None and opt.per_step:
            opt.scheduler.step()
    loss_sum, count = all_reduce_tensor(acc, job.dist).tolist()  # the epoch's one host sync
    if not math.isfinite(loss_sum):
        # the earliest bad step over the ranks: max of (big - step), 0 where a rank had none
        big = torch.iinfo(torch.int64).max
        encoded = torch.where(first_bad > 0, big - first_bad, torch.zeros_like(first_bad))
        bad_step = big - int(all_reduce_tensor(encoded, job.dist, op="max").item())
        raise RuntimeError(
            f"non-finite training loss ({loss_sum / max(count, 1)}) at epoch {epoch}, step {bad_step} of "
            f"{job.model_name} (first non-finite step; noticed at the end of the epoch); stopped. The last "
            f"good checkpoint ({job.checkpoint_dir / ckpt.LAST}) is kept. Lower train.lr or check the data."
        )
    return loss_sum / max(count, 1)


@torch.no_grad()
def _validate(s: _Setup) -> tuple[float, float]:
    """(val loss, val Dice inside the FOV at 0.5) on the full val images, pooled over all ranks.

    Each rank validates its share of the images (rank::world) and the sums are all-reduced,
    so every rank ends up with the same numbers (and takes the same early-stopping decision).
    """
    job = s.job
    s.net.raw.eval()
    sums = torch.zeros(5, dtype=_accumulator_dtype(job.device), device=job.device)  # loss*n, n, tp, fp, fn
    for batch in s.data.val_loader:
        images, masks, fov_weight = _to_device(s, batch)
        fov = fov_weight > 0.5
        with _autocast(s):
            logits = s.net.raw(images)
        logits = logits.float()
        pred = (logits > 0) & fov  # sigmoid(x) > 0.5  <=>  x > 0
        truth = (masks > 0.5) & fov
        counts = torch.stack([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()])
        sums[0] += s.net.loss_fn(logits, masks, weight=fov_weight).to(sums.dtype) * len(images)
        sums[1] += len(images)
        sums[2:] += counts.to(sums.dtype)
    loss_sum, n, tp_, fp, fn = all_reduce_tensor(sums, job.dist).tolist()  # one host sync
    denom = 2 * tp_ + fp + fn
    dice = 2 * tp_ / denom if denom > 0 else 1.0
    return loss_sum / max(n, 1), dice


def _progress(s: _Setup, loader: DataLoader, desc: str) -> Iterator:
    """A tqdm bar on rank 0 when stderr is a terminal; the plain loader otherwise."""
    if not (s.job.dist.is_main and sys.stderr.isatty()):
        return iter(loader)
    return iter(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True))


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_state(s: _Setup, state: _State) -> dict[str, Any]:
    opt = s.opt
    return {
        "format": 2,
        "model_name": s.job.model_name,
        "fingerprint": s.job.identity.fingerprint,
        "identity": s.job.identity.to_dict(),
        "epoch": state.epoch,
        "best_dice": state.best_dice,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "stopped_early": state.stopped_early,
        "history": [dict(r) for r in state.history],
        "model": s.net.raw.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict() if opt.scheduler is not None else {},
        "scaler": opt.scaler.state_dict(),
    }


def _restore(s: _Setup, saved: dict[str, Any], state: _State) -> None:
    opt = s.opt
    s.net.raw.load_state_dict(saved["model"])
    opt.optimizer.load_state_dict(saved["optimizer"])
    if opt.scheduler is not None and saved["scheduler"]:
        opt.scheduler.load_state_dict(saved["scheduler"])
    if saved["scaler"]:
        opt.scaler.load_state_dict(saved["scaler"])
    state.epoch = int(saved["epoch"])
    state.best_dice = float(saved["best_dice"])
    state.best_epoch = int(saved["best_epoch"])
    state.bad_epochs = int(saved["bad_epochs"])
    state.stopped_early = bool(saved["stopped_early"])
    state.history = [dict(r) for r in saved["history"]]


# ----------------------------------------------------------------------------- outputs


def _finish(s: _Setup, state: _State, out_dir: Path, report_dir: Path, run_id: str | None) -> dict[str, Any]:
    """Save the best model, the history and the summary; report them to the logger (rank 0 only)."""
    job = s.job
    params = job.params
    # this run's own best epoch, or TrainingError: never a best.pt another run left in the folder
    best = ckpt.own_best(job.checkpoint_dir, job.identity, state.best_epoch)
    s.net.raw.load_state_dict(best["model"])
    model = s.net.raw.to("cpu").eval()
    card = ModelCard(
        name=job.model_name,
        model_params=params.model_params(job.model_name),
        preprocess=dataclasses.asdict(params.preprocess),
        threshold=None,
        extra={
            "data_hash": s.data.hash,
            "code_hash": job.identity.code_hash,
            "run_fingerprint": job.identity.fingerprint,
            "best_epoch": state.best_epoch,
            "best_val_dice": state.best_dice,
            "train_image_size": params.preprocess.size,
            **_train_data_facts(s.data.train),
            "environment": training_environment(job.device),
        },
    )
    save_model_dir(model, card, out_dir)
    history_csv = report_dir / f"{job.model_name}.csv"
    _write_history(state.history, history_csv)
    summary = {
        "best_val_dice": round(state.best_dice, 6),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "n_params": count_parameters(model),
        "device": str(job.device),
        # RUN_ONLY_SUMMARY_KEYS: for the logger and the caller, not for the DVC outputs
        # summed over the epochs, so a resumed run reports the whole training time
        "train_seconds": round(sum(row["seconds"] for row in state.history), 2),
        "mlflow_run_id": run_id,
    }
    write_json(
        report_dir / f"{job.model_name}.json",
        {k: v for k, v in summary.items() if k not in RUN_ONLY_SUMMARY_KEYS},
    )
    if run_id is not None:
        samples = list(_sample_panels(model, s.data.val, N_SAMPLE_OVERLAYS))
        job.logger.log_outputs(summary, history_csv, samples, model, out_dir)
    return summary


def _train_data_facts(ds: VesselDataset) -> dict[str, Any]:
    """From the training split's index.csv: the median original width/height (for cross-dataset
    scaling) and, when its masks were the union of two observers' (``data.train_labels: union``),
    how many were (``train_labels``); a first-observer model's card has no ``train_labels``."""
    index = ds.split_dir / "index.csv"
    if not index.is_file():
        return {}
    frame = pd.read_csv(index, keep_default_na=False)
    facts: dict[str, Any] = {}
    if {"orig_w", "orig_h"} <= set(frame.columns):
        facts["train_orig_width"] = int(frame["orig_w"].median())
        facts["train_orig_height"] = int(frame["orig_h"].median())
    if SECOND_MASK_COLUMN in frame.columns:
        n = int((frame[SECOND_MASK_COLUMN].astype(str) != "").sum())
        facts["train_labels"] = f"union of two observers' masks on {n} of {len(frame)} training images"
    return facts


def _write_history(history: list[dict[str, float]], path: Path) -> None:
    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


@contextlib.contextmanager
def _logged_run(s: _Setup) -> Iterator[str | None]:
    """The logger's run on rank 0 (yields its id); nothing on the other ranks."""
    job = s.job
    if not job.dist.is_main:
        yield None
        return
    with job.logger.run(job.params, job.model_name, s.data.hash, str(job.device)) as run_id:
        yield run_id


@torch.no_grad()
def _sample_panels(model: nn.Module, ds: VesselDataset, n: int) -> Iterator[tuple[str, np.ndarray]]:
    """(id, image | truth | prediction RGB uint8 panel) for the first ``n`` val images."""
    model.eval()
    for k in range(min(n, ds.n_images)):
        item = ds[k]
        image, mask, _ = ds.load(k)
        logits = model(item["image"][None].to(next(model.parameters()).device)).float().cpu()
        pred = (logits[0, 0].numpy() > 0).astype(np.uint8) * 255
        grey = [np.repeat(m[..., None], 3, axis=2) for m in (mask * 255, pred)]
        yield item["id"], np.concatenate([image, *grey], axis=1)


def _say(s: _Setup, message: str) -> None:
    if s.job.dist.is_main:
        print(message, flush=True)
