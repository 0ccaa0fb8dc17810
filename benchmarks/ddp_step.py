"""DDP step time on CPU: 2 processes (gloo) vs 1 process, the same global batch, the cores shared fairly.

One training step = forward, BCE loss, backward (DDP all-reduces the gradients over gloo), AdamW step,
of the params.yaml U-Net (``models.unet``) on random images. The single process takes every core
(``torch.set_num_threads(cores)``) and the whole global batch; each of the 2 DDP processes takes
half the cores (``cores // 2``, as :mod:`retinaseg.core.budget` gives torchrun's processes) and half
the batch. For reference, the single process is also timed on half the cores. Warm-up steps are
excluded; the step time is the median over the timed steps (rank 0, after a barrier, so the slowest
rank counts). On a machine shared with other work, threads that wait for each other suffer most:
the JSON records the load average before the run.

    python benchmarks/ddp_step.py                        # 128 px, global batch 4, 8 steps
    python benchmarks/ddp_step.py --size 256 --steps 10
    python benchmarks/ddp_step.py --quick                # smoke run

Writes ``reports/benchmarks/ddp_step.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from retinaseg.core.budget import available_cores
from retinaseg.core.config import load_params
from retinaseg.core.fileio import write_json
from retinaseg.models.factory import build_model, count_parameters

DEFAULT_OUT = Path("reports/benchmarks/ddp_step.json")


def _steps(model: torch.nn.Module, batch: int, size: int, warmup: int, steps: int, sync: Any) -> list[float]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen)
    y = (torch.rand(batch, 1, size, size, generator=gen) > 0.9).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for i in range(warmup + steps):
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    torch.set_num_threads(max(1, available_cores() // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(_model(args))
        times = _steps(model, args.batch // world, args.size, args.warmup, args.steps, dist.barrier)
        if rank == 0:
            out.put(times)
    finally:
        dist.destroy_process_group()


def _model(args: argparse.Namespace) -> torch.nn.Module:
    params = load_params(args.params)
    return build_model("unet", params.model_params("unet"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args: argparse.Namespace) -> dict[str, Any]:
    cores = available_cores()
    load = os.getloadavg()[0]
    torch.set_num_threads(cores)
    torch.manual_seed(0)
    model = _model(args)
    single = _steps(model, args.batch, args.size, args.warmup, args.steps, lambda: None)
    half = max(1, cores // 2)  # the same process on half the cores: what one DDP rank gets
    torch.set_num_threads(half)
    torch.manual_seed(0)
    single_half = _steps(_model(args), args.batch, args.size, args.warmup, args.steps, lambda: None)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(2, _free_port(), args, queue), nprocs=2, join=True)
    ddp = queue.get()
    one, two = statistics.median(single), statistics.median(ddp)
    return {
        "what": "one training step (forward, BCE, backward, AdamW) of models.unet on random images; "
        "the same global batch; median over the timed steps",
        "machine": {
            "cores": cores,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_1min_before": round(load, 2),
        },
        "config": {
            "size": args.size,
            "global_batch": args.batch,
            "warmup_steps": args.warmup,
            "timed_steps": args.steps,
            "unet_params": count_parameters(model),
        },
        "single_process": {"threads": cores, "batch": args.batch, "step_s": one, "steps_s": single},
        "single_process_half_cores": {
            "threads": half,
            "batch": args.batch,
            "step_s": statistics.median(single_half),
            "steps_s": single_half,
        },
        "ddp_gloo_2_processes": {
            "threads_per_process": max(1, cores // 2),
            "batch_per_process": args.batch // 2,
            "step_s": two,
            "steps_s": ddp,
        },
        "speedup_ddp_vs_single": one / two,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4, help="global batch (even)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 px, 2 steps, 1 warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.steps, args.warmup = 64, 2, 1
    if args.batch % 2:
        parser.error("--batch must be even (it is split over 2 processes)")
    result = run(args)
    write_json(args.out, result)
    s, d = result["single_process"], result["ddp_gloo_2_processes"]
    print(
        f"1 process ({s['threads']} threads, batch {s['batch']}): {s['step_s']:.3f} s/step; "
        f"2 gloo processes ({d['threads_per_process']} thread(s), batch {d['batch_per_process']} each): "
        f"{d['step_s']:.3f} s/step; speedup {result['speedup_ddp_vs_single']:.2f}x; 1 process on "
        f"{result['single_process_half_cores']['threads']} thread(s): "
        f"{result['single_process_half_cores']['step_s']:.3f} s/step -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
