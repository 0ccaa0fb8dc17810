"""The environment a model is trained in, recorded in its model card and its MLflow run.

Only values that are the same for the same machine type and the same lock file: the Python and
torch versions (and torch's CUDA/cuDNN builds on a GPU), a hash of the installed package set, the
CPU model, the SIMD kernel set torch picked for it, the GPU model, the number of torch CPU
threads. Nothing that changes from run to run (host names, dates, process ids), so the card stays
byte-reproducible.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
from pathlib import Path

import torch


def installed_packages() -> list[str]:
    """Sorted ``name==version`` of every installed distribution (names normalised, duplicates once)."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={dist.version}")
    return sorted(found)


def packages_sha256(packages: list[str] | None = None) -> str:
    """sha256 of the sorted ``name==version`` lines: equal exactly when the installed set is equal."""
    lines = installed_packages() if packages is None else sorted(packages)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def accelerator_name(device: torch.device) -> str:
    """The GPU's model name for a CUDA device, ``"mps"`` for Apple's, ``"none"`` on the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "mps"
    return "none"


def training_environment(device: torch.device) -> dict[str, str]:
    """What the model card and the MLflow run record about the machine and the software."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": f"{platform.system()}-{platform.machine()}",
        "packages_sha256": packages_sha256(),
        "cpu": cpu_model(),
        # The CPU's model name can be as vague as "AMD EPYC" on a virtual machine. The kernel set
        # torch dispatches to (AVX2, AVX512, ...) names the instruction set, which decides the float
        # rounding of a CPU-trained model, hence its bytes: two AVX2 machines can match, AVX2 and
        # AVX-512 do not.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": str(torch.get_num_threads()),
        "accelerator": accelerator_name(device),
    }
    if device.type == "cuda":
        env["cuda"] = str(torch.version.cuda)
        env["cudnn"] = str(torch.backends.cudnn.version())
    return env
