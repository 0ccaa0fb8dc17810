"""Distributed data-parallel helpers: the same entry point runs alone or under ``torchrun``.

``torchrun --nproc_per_node=N stages/train.py --model unet`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them and joins the process group (NCCL on CUDA,
gloo on CPU). Without them everything here degrades to the single-process case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, writes files and shows progress."""
        return self.rank == 0


def env_dist_info() -> DistInfo:
    """The ``DistInfo`` described by torchrun's environment variables (single process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=world,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; returns this process's ``DistInfo``.

    NCCL for CUDA devices (each process takes ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    info = env_dist_info()
    if not info.enabled or (dist.is_available() and dist.is_initialized()):
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    return info


def device_for_rank(device: torch.device, info: DistInfo) -> torch.device:
    """``cuda:LOCAL_RANK`` for a distributed CUDA run, else ``device`` unchanged."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def cleanup_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum ``values`` over all ranks (identity in a single process)."""
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_tensor(tensor: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """``tensor`` (on the training device) reduced over all ranks in place with ``op`` (``sum`` or
    ``max``); the tensor itself in a single process. Nothing is read back to the host here: the
    caller reads the result once (one host sync per epoch, not per step)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def broadcast_flag(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """Rank 0's ``flag`` on every rank (so all ranks take the same early-stopping decision)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled:
        dist.barrier()
