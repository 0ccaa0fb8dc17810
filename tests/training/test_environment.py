"""The training environment recorded in the model card: stable for one machine type and one lock."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import torch

from retinaseg.training.environment import (
    cpu_model,
    installed_packages,
    packages_sha256,
    training_environment,
)


def test_environment_names_the_software_and_the_machine():
    env = training_environment(torch.device("cpu"))
    assert env["python"] == platform.python_version() and env["torch"] == torch.__version__
    assert env["accelerator"] == "none" and env["cpu"] == cpu_model() and env["cpu"]
    assert env["torch_threads"] == str(torch.get_num_threads())
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    assert env == training_environment(torch.device("cpu"))  # nothing that changes between calls
    assert all(isinstance(v, str) for v in env.values())


def test_the_package_hash_follows_the_installed_set():
    packages = installed_packages()
    assert packages == sorted(packages) and any(p.startswith("torch==") for p in packages)
    assert any(p.startswith("retinaseg==") for p in packages)
    assert packages_sha256() == packages_sha256(packages) == packages_sha256(list(reversed(packages)))
    bumped = [p.replace("torch==", "torch==0.0.0+") if p.startswith("torch==") else p for p in packages]
    assert packages_sha256(bumped) != packages_sha256(packages)


def test_environment_records_the_kernel_set_torch_runs():
    """ATEN_CPU_CAPABILITY=default holds torch to its plain C++ kernels: the card must say so, since
    those round floats differently from the AVX2/AVX-512 ones the machine would otherwise get."""
    code = (
        "import json, torch; from retinaseg.training.environment import training_environment; "
        "print(json.dumps(training_environment(torch.device('cpu'))))"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["cpu_capability"] == "DEFAULT"
