"""Training throughput of the three models: images/second and peak memory per configuration.

For each model (widths from params.yaml; ``--unet-widths 16,32,64`` adds U-Net rows at those base
widths) it times full training steps (forward, loss, backward, AdamW step) on random 512×512
batches, warm-up steps excluded. On CPU: fp32, channels_last off/on. On CUDA (when present): fp32
vs AMP (bf16 where supported, else fp16 + GradScaler), channels_last off/on, torch.compile off/on.

Prints a Markdown table and writes ``reports/benchmarks/train_throughput.json`` with the machine
(torch version, device name, threads). ``--quick`` is a smoke run (64 px, batch 1, 1 step, CPU).

    python benchmarks/train_throughput.py                       # CPU (+ CUDA if present)
    python benchmarks/train_throughput.py --unet-widths 16,32,64 --steps 5
    python benchmarks/train_throughput.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch

from retinaseg.core.config import MODEL_NAMES, load_params
from retinaseg.core.fileio import write_json
from retinaseg.models.factory import build_model, count_parameters
from retinaseg.training.losses import build_loss

DEFAULT_OUT = Path("reports/benchmarks/train_throughput.json")


@dataclass(frozen=True)
class Variant:
    device: str
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool
    compile: bool


@dataclass
class Row:
    model: str
    label: str
    params: int
    device: str
    precision: str
    channels_last: bool
    compile: bool
    batch: int
    size: int
    steps: int
    seconds: float | None = None
    images_per_s: float | None = None
    s_per_image: float | None = None
    peak_mem_mb: float | None = None
    error: str | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml", help="model widths and the loss come from here")
    p.add_argument("--models", default=",".join(MODEL_NAMES), help="comma-separated model names")
    p.add_argument("--unet-widths", default="", help="extra U-Net rows at these base widths, e.g. 16,32,64")
    p.add_argument("--size", type=int, default=512, help="square image side")
    p.add_argument("--batch", type=int, default=2, help="batch size on CPU")
    p.add_argument("--cuda-batch", type=int, default=8, help="batch size on CUDA")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (CUDA+compile: at least 3)")
    p.add_argument("--devices", default=None, help="cpu,cuda (default: cpu, plus cuda when present)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, batch 1, 1 step, CPU only")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.cuda_batch, args.steps, args.warmup = 64, 1, 1, 1, 1
        args.devices = args.devices or "cpu"
    return args


def model_specs(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, label, params) for every model row to run."""
    params = load_params(args.params)
    specs = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model_params = params.model_params(name)
        width = model_params.get("base_channels")
        specs.append((name, f"{name}-{width}" if width else name, model_params))
    for width in [int(w) for w in args.unet_widths.split(",") if w.strip()]:
        unet = {**params.model_params("unet"), "base_channels": width}
        if not any(label == f"unet-{width}" for _, label, _ in specs):
            specs.append(("unet", f"unet-{width}", unet))
    return specs


def variants(devices: list[str], allow_compile: bool) -> list[Variant]:
    """fp32 on CPU (channels_last off/on); on CUDA the grid precision × channels_last × compile."""
    out = []
    for device in devices:
        if device == "cpu":
            out += [Variant("cpu", "fp32", False, False), Variant("cpu", "fp32", True, False)]
            continue
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        for precision, cl, comp in itertools.product(("fp32", amp), (False, True), (False, True)):
            if comp and not allow_compile:
                continue
            out.append(Variant(device, precision, cl, comp))
    return out


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # CPU: the process's peak resident set so far (Linux reports KiB); cumulative over rows
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_training(
    name: str,
    model_params: dict[str, Any],
    loss_fn,
    v: Variant,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
) -> tuple[float, float]:
    """Seconds for ``steps`` timed training steps (after ``warmup``) and peak memory in MiB."""
    torch.manual_seed(0)
    device = torch.device(v.device)
    model = build_model(name, model_params).to(device).train()
    memory_format = torch.channels_last if v.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    step_model = torch.compile(model) if v.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(v.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=v.precision == "fp16")
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=memory_format)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(v.device, dtype=dtype) if dtype else contextlib.nullcontext()
        with autocast:
            loss = loss_fn(step_model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    sync = torch.cuda.synchronize if v.device == "cuda" else (lambda: None)
    if v.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(max(warmup, 3 if v.compile else 0)):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - start, _peak_memory_mb(v.device)


def machine_info(devices: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "smp": smp.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": torch.multiprocessing.cpu_count(),
    }
    if "cuda" in devices:
        info.update(
            cuda=torch.version.cuda,
            gpu=torch.cuda.get_device_name(0),
            cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| model | params | device | precision | channels_last | compile | batch | size "
        "| img/s | s/img | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.error:
            perf = f"error: {r.error[:60]} | | "
        else:
            perf = f"{r.images_per_s:.3g} | {r.s_per_image:.3g} | {r.peak_mem_mb:.0f}"
        lines.append(
            f"| {r.label} | {r.params / 1e6:.2f} M | {r.device} | {r.precision} "
            f"| {'on' if r.channels_last else 'off'} | {'on' if r.compile else 'off'} "
            f"| {r.batch} | {r.size} | {perf} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = (
        args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    if "cuda" in devices and not torch.cuda.is_available():
        raise RuntimeError("--devices includes cuda but torch.cuda.is_available() is False")
    if "cuda" in devices:
        torch.backends.cudnn.benchmark = True
    loss_fn = build_loss(load_params(args.params).train.loss)
    rows = []
    for (name, label, model_params), v in itertools.product(
        model_specs(args), variants(devices, not args.no_compile)
    ):
        batch = args.batch if v.device == "cpu" else args.cuda_batch
        n_params = count_parameters(build_model(name, model_params))
        row = Row(
            name,
            label,
            n_params,
            v.device,
            v.precision,
            v.channels_last,
            v.compile,
            batch,
            args.size,
            args.steps,
        )
        try:
            seconds, peak = time_training(
                name, model_params, loss_fn, v, batch, args.size, args.steps, args.warmup
            )
        except Exception as exc:  # one failing variant (e.g. compile, OOM) must not lose the others
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        else:
            images = batch * args.steps
            row.seconds, row.peak_mem_mb = round(seconds, 4), round(peak, 1)
            row.images_per_s, row.s_per_image = images / seconds, seconds / images
        finally:
            if v.device == "cuda":
                torch.cuda.empty_cache()
        print(
            f"  {label:>22} {v.device} {v.precision} cl={int(v.channels_last)} compile={int(v.compile)}: "
            f"{row.error or f'{row.images_per_s:.3g} img/s'}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    return rows, machine_info(devices)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows, machine = run(args)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = {k: getattr(args, k) for k in ("size", "batch", "cuda_batch", "steps", "warmup", "quick")}
    report = {"machine": machine, "settings": settings, "results": [asdict(r) for r in rows]}
    write_json(args.out, report)
    print(markdown_table(rows))
    print(f"\nmachine: {json.dumps(machine)}\nwrote {args.out}")
    return 0 if all(r.error is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
