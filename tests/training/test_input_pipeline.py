"""The engine's input and accumulation paths that matter on a GPU, exercised on the CPU: the epoch
order (DistributedSampler's, so torchrun sees the same global batches), batches that do not depend on
the number of workers, autocast (bf16 on the CPU), channels-last, and the once-per-epoch loss read."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from retinaseg.data.dataset import VesselDataset
from retinaseg.data.transforms import build_train_transform
from retinaseg.training import engine
from retinaseg.training.distributed import DistInfo
from retinaseg.training.engine import EpochSampler, train_model


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def test_single_process_order_is_distributed_samplers_with_one_replica():
    data = _Sized(13)
    sampler = EpochSampler(data, seed=42)
    reference = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=42)
    for epoch in (1, 2, 7):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        pairs = list(sampler)
        assert [i for i, _ in pairs] == list(reference)
        assert len({s for _, s in pairs}) == 13  # one augmentation seed per item
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != first


@pytest.mark.parametrize(("n", "ranks", "batch"), [(24, 2, 3), (16, 4, 2)])
def test_ranks_batches_together_are_the_single_process_batches(n, ranks, batch):
    # torchrun --nproc_per_node=ranks with batch b sees, step by step, the items (and their
    # augmentation seeds) one process sees with batch ranks*b
    data = _Sized(n)
    single = EpochSampler(data, seed=5)
    per_rank = [EpochSampler(data, seed=5, num_replicas=ranks, rank=r) for r in range(ranks)]
    for s in (single, *per_rank):
        s.set_epoch(3)
    whole = list(single)
    shares = [list(s) for s in per_rank]
    for step in range(n // (ranks * batch)):
        together = {p for share in shares for p in share[step * batch : (step + 1) * batch]}
        assert together == set(whole[step * ranks * batch : (step + 1) * ranks * batch])


def _epoch_batches(tiny_params, processed, workers: int, epoch: int) -> list[dict]:
    params = tiny_params(**{"base.workers": workers, "train.samples_per_epoch": 6})
    transform = build_train_transform(params.augment, seed=params.base.seed)
    train = VesselDataset(processed / "train", transform=transform, length=6)
    val = VesselDataset(processed / "val")
    data = engine._build_data(params, train, val, "hash", torch.device("cpu"), DistInfo())
    data.sampler.set_epoch(epoch)
    return list(data.train_loader), list(data.val_loader)


def test_training_batches_are_the_same_with_0_and_2_workers(tiny_params, processed):
    for epoch in (1, 2):
        serial, serial_val = _epoch_batches(tiny_params, processed, 0, epoch)
        parallel, parallel_val = _epoch_batches(tiny_params, processed, 2, epoch)
        assert len(serial) == len(parallel) == 3
        for a, b in zip(serial + serial_val, parallel + parallel_val, strict=True):
            assert a["id"] == b["id"]
            for key in ("image", "mask", "fov"):
                assert torch.equal(a[key], b[key]), (epoch, key)
    # the epochs differ (order or augmentation)
    one, _ = _epoch_batches(tiny_params, processed, 0, 1)
    two, _ = _epoch_batches(tiny_params, processed, 0, 2)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(one, two, strict=True))


def test_loaders_use_persistent_workers_and_prefetch_only_with_workers(tiny_params, processed):
    params = tiny_params(**{"base.workers": 2})
    train = VesselDataset(processed / "train")
    data = engine._build_data(
        params, train, VesselDataset(processed / "val"), "h", torch.device("cpu"), DistInfo()
    )
    loader = data.train_loader
    assert (
        loader.num_workers == 2
        and loader.persistent_workers
        and loader.prefetch_factor == engine.PREFETCH_FACTOR
    )
    assert not loader.pin_memory  # pinned memory is for CUDA
    serial = engine._build_data(
        tiny_params(**{"base.workers": 0}), train, train, "h", torch.device("cpu"), DistInfo()
    )
    assert serial.train_loader.num_workers == 0 and not serial.train_loader.persistent_workers


def test_precision_and_memory_format_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.training_amp_dtype(cpu, True) is None  # the CPU trains in fp32
    assert engine.training_amp_dtype(cuda, False) is None
    assert engine.use_channels_last(cuda, True) and not engine.use_channels_last(cuda, False)
    assert engine.use_channels_last(cpu, True) and not engine.use_channels_last(cpu, False)
    assert not engine.use_channels_last(torch.device("mps"), True)


def _train(params, processed, tmp_path, tag):
    return train_model(
        params, "unet", processed, out_dir=tmp_path / tag / "model", report_dir=tmp_path / tag / "reports",
        checkpoint_dir=tmp_path / tag / "ckpt",
    )  # fmt: skip


def test_autocast_branch_trains_with_bf16_on_the_cpu(tiny_params, processed, tmp_path, monkeypatch, capsys):
    # the CUDA mixed-precision path (autocast, loss in fp32, scaler disabled for bf16), run on the CPU
    seen = []
    real_autocast = engine._autocast

    def spy(s):
        seen.append(s.opt.amp_dtype)
        return real_autocast(s)

    monkeypatch.setattr(engine, "training_amp_dtype", lambda device, amp: torch.bfloat16 if amp else None)
    monkeypatch.setattr(engine, "_autocast", spy)
    summary = _train(tiny_params(**{"train.amp": True}), processed, tmp_path, "bf16")
    assert seen and set(seen) == {torch.bfloat16}
    assert math.isfinite(summary["best_val_dice"]) and summary["epochs_run"] == 1
    seen.clear()
    _train(tiny_params(**{"train.amp": False}), processed, tmp_path, "fp32")
    assert set(seen) == {None}


def test_channels_last_model_trains_to_the_same_numbers_closely(
    tiny_params, processed, tmp_path, monkeypatch
):
    # the channels-last branch (model and batches channels-last), on the CPU
    formats = []
    real = engine._to_device

    def spy(s, batch):
        images, masks, fov = real(s, batch)
        formats.append(images.is_contiguous(memory_format=torch.channels_last))
        return images, masks, fov

    monkeypatch.setattr(engine, "_to_device", spy)
    on = _train(tiny_params(**{"train.channels_last": True}), processed, tmp_path, "cl")
    assert formats and all(formats)
    formats.clear()
    off = _train(tiny_params(**{"train.channels_last": False}), processed, tmp_path, "contiguous")
    assert formats and not any(formats)
    # the same arithmetic in another memory order: equal up to float rounding
    assert on["best_val_dice"] == pytest.approx(off["best_val_dice"], abs=0.02)


def test_a_non_finite_loss_is_read_at_the_epoch_end_and_names_its_first_step(
    tiny_params, processed, tmp_path, monkeypatch
):
    real = engine.build_loss

    def poisoned(loss_params):
        fn = real(loss_params)
        calls = {"n": 0}

        def loss(logits, masks, weight=None):
            calls["n"] += 1
            value = fn(logits, masks, weight=weight)
            return value * math.nan if calls["n"] == 2 else value  # the second step's loss only

        return loss

    monkeypatch.setattr(engine, "build_loss", poisoned)
    syncs = {"n": 0}
    real_reduce = engine.all_reduce_tensor

    def counting(tensor, info, op="sum"):
        syncs["n"] += 1
        return real_reduce(tensor, info, op)

    monkeypatch.setattr(engine, "all_reduce_tensor", counting)
    params = tiny_params(**{"train.samples_per_epoch": 8, "train.batch_size": 2})  # 4 steps
    with pytest.raises(RuntimeError, match=r"non-finite training loss \(nan\) at epoch 1, step 2 of unet"):
        _train(params, processed, tmp_path, "nan")
    assert syncs["n"] == 2  # the epoch's sum, then the first bad step: not one per step
    assert not (tmp_path / "nan" / "ckpt" / "last.pt").exists()
    assert not (tmp_path / "nan" / "model" / "model.pt").exists()


def test_the_decoded_image_cache_is_shared_among_workers_and_changes_nothing_trained(
    tiny_params, processed, tmp_path
):
    assert engine.cache_bytes_per_process(1024, 0) == 1024 * 2**20  # no workers: the main process's
    assert engine.cache_bytes_per_process(1024, 4) == 256 * 2**20  # each worker holds a share
    assert engine.cache_bytes_per_process(0, 2) == 0
    # the same run with and without the cache trains the same weights, byte for byte (on the CPU)
    cached = _train(tiny_params(**{"train.epochs": 2}), processed, tmp_path, "cached")
    plain = _train(tiny_params(**{"train.epochs": 2, "base.cache_mb": 0}), processed, tmp_path, "plain")
    assert cached["best_val_dice"] == plain["best_val_dice"]
    a = torch.load(tmp_path / "cached" / "model" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "plain" / "model" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
